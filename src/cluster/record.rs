//! What a run directory keeps of its cluster jobs: `job.json` (the job qlab submitted last, and the earlier
//! ones), written on the login node; `node.json`, written by the job on its node before anything else, which
//! proves that the node sees the run directory.

use serde::{Deserialize, Serialize};

use crate::store::atomic::{read_json, write_json_atomic};
use crate::store::{RunPaths, StoreError, now_secs};

/// `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The backend that runs it (`slurm`).
    pub backend: String,
    pub job_id: String,
    /// Seconds since the Unix epoch.
    pub submitted: f64,
    /// The host qlab submitted from.
    pub submit_host: Option<String>,
    /// Earlier jobs of this run, oldest first.
    #[serde(default)]
    pub previous: Vec<String>,
}

impl JobRecord {
    pub fn read(run: &RunPaths) -> Result<Option<JobRecord>, StoreError> {
        read_json(&run.job_record())
    }

    /// Record a new job of the run, keeping the ids of the earlier ones.
    pub fn write_new(run: &RunPaths, backend: &str, job_id: &str) -> Result<JobRecord, StoreError> {
        let mut previous = match Self::read(run) {
            Ok(Some(old)) => {
                let mut p = old.previous;
                p.push(old.job_id);
                p
            }
            _ => Vec::new(),
        };
        previous.retain(|p| p != job_id);
        let record = JobRecord {
            backend: backend.to_string(),
            job_id: job_id.to_string(),
            submitted: now_secs(),
            submit_host: crate::store::lock::hostname(),
            previous,
        };
        write_json_atomic(&run.job_record(), &record)?;
        Ok(record)
    }
}

/// `node.json`: the job's first write on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMarker {
    pub job_id: String,
    pub host: Option<String>,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started: f64,
    /// `$SLURM_RESTART_COUNT`: how many times the job was requeued before this start.
    pub restarts: u32,
}

impl NodeMarker {
    pub fn read(run: &RunPaths) -> Option<NodeMarker> {
        read_json(&run.node_marker()).ok().flatten()
    }

    /// Write the marker of job `job_id` running here.
    pub fn write(run: &RunPaths, job_id: &str, restarts: u32) -> Result<(), StoreError> {
        write_json_atomic(
            &run.node_marker(),
            &NodeMarker {
                job_id: job_id.to_string(),
                host: crate::store::lock::hostname(),
                pid: std::process::id(),
                started: now_secs(),
                restarts,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_job_keeps_the_earlier_ids() {
        let (_dir, run) = RunPaths::in_temp_dir();
        assert_eq!(JobRecord::read(&run).unwrap(), None);
        JobRecord::write_new(&run, "slurm", "10").unwrap();
        let r = JobRecord::write_new(&run, "slurm", "12").unwrap();
        assert_eq!(
            (r.job_id.as_str(), r.previous.as_slice()),
            ("12", &["10".to_string()][..])
        );
        let back = JobRecord::read(&run).unwrap().unwrap();
        // serde_json reads a float back to within one ulp (no float_roundtrip feature): compare the time apart.
        assert!((back.submitted - r.submitted).abs() < 1e-3);
        assert_eq!(
            JobRecord {
                submitted: r.submitted,
                ..back
            },
            r
        );
        NodeMarker::write(&run, "12", 1).unwrap();
        let m = NodeMarker::read(&run).unwrap();
        assert_eq!((m.job_id.as_str(), m.restarts), ("12", 1));
    }
}
