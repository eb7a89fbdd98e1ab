//! SLURM through its own commands: the batch script (`#SBATCH` lines from `[cluster]`, the warning signal,
//! requeue), `sbatch --parsable`, `squeue` with a delimited `--format` (Debian's SLURM 22.05 has no
//! `--json`), `sacct` when accounting storage exists (often it does not), `scancel` and `scontrol requeue`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use super::script::{JobSpec, shell_quote};
use super::{Backend, ClusterError, JobInfo};

/// The SLURM backend; its commands are found on PATH.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slurm;

/// squeue's fields, `|`-separated; the reason last, as it is free text.
const SQUEUE_FORMAT: &str = "%i|%T|%N|%M|%r";

impl Backend for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn script(&self, job: &JobSpec) -> String {
        let s = &job.settings;
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!(
                "# qlab: run {} as one SLURM job; submitted with `sbatch --parsable job.sbatch`.",
                job.run_id
            ),
            format!(
                "# SLURM sends SIGUSR1 {} s before the time limit: qlab checkpoints{}; scancel (SIGTERM) checkpoints and stops.",
                s.signal_lead,
                if s.requeue {
                    ", requeues the job and exits, and the job resumes from that checkpoint"
                } else {
                    " and exits; the next `qlab run --backend slurm` resubmits it"
                }
            ),
        ];
        let mut opt = |o: String| lines.push(format!("#SBATCH {o}"));
        opt(format!("--job-name={}", job.name));
        opt(format!(
            "--output={}",
            job.run_dir.join("slurm-%j.out").display()
        ));
        opt("--open-mode=append".into());
        opt(format!("--chdir={}", job.workdir.display()));
        opt(format!("--signal=B:USR1@{}", s.signal_lead));
        if s.requeue {
            opt("--requeue".into());
        }
        for (name, value) in [
            ("partition", &s.partition),
            ("account", &s.account),
            ("qos", &s.qos),
            ("time", &s.time),
            ("gres", &s.gres),
            ("mem", &s.mem),
        ] {
            if let Some(v) = value {
                opt(format!("--{name}={v}"));
            }
        }
        if let Some(n) = s.gpus {
            opt(format!("--gpus={n}"));
        }
        if let Some(n) = s.cpus_per_task {
            opt(format!("--cpus-per-task={n}"));
        }
        for extra in &s.sbatch_args {
            opt(extra.clone());
        }
        lines.extend(s.setup.iter().cloned());
        // exec: qlab becomes the batch shell, so the B: signal reaches it directly (no trap, no wait).
        let command: Vec<String> = job.command.iter().map(|w| shell_quote(w)).collect();
        lines.push(format!("exec {}", command.join(" ")));
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    fn submit_command(&self, script: &Path) -> String {
        format!(
            "sbatch --parsable {}",
            shell_quote(&script.display().to_string())
        )
    }

    fn submit(&self, script: &Path) -> Result<String, ClusterError> {
        let out = run("sbatch", &[OsStr::new("--parsable"), script.as_os_str()])?;
        if !out.status.success() {
            return Err(ClusterError::Refused {
                tool: "sbatch",
                message: slurm_message(&out),
            });
        }
        parse_sbatch(&String::from_utf8_lossy(&out.stdout))
    }

    fn query(&self, ids: &[String]) -> Result<Vec<JobInfo>, ClusterError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = run(
            "squeue",
            &[
                "--me",
                "--noheader",
                "--states=all",
                "--format",
                SQUEUE_FORMAT,
            ],
        )?;
        if !out.status.success() {
            return Err(ClusterError::Unreachable {
                tool: "squeue",
                message: slurm_message(&out),
            });
        }
        let mut known = parse_squeue(&String::from_utf8_lossy(&out.stdout))?;
        known.retain(|j| ids.contains(&j.id));
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !known.iter().any(|j| &j.id == *id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            // Jobs squeue forgot (after MinJobAge); sacct knows them where accounting storage is set up.
            known.extend(sacct(&missing));
        }
        Ok(known)
    }

    fn cancel(&self, id: &str) -> Result<(), ClusterError> {
        let out = run("scancel", &[id])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Refused {
                tool: "scancel",
                message: slurm_message(&out),
            })
        }
    }

    fn requeue(&self, id: &str) -> Result<(), ClusterError> {
        let out = run("scontrol", &["requeue", id])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Refused {
                tool: "scontrol requeue",
                message: slurm_message(&out),
            })
        }
    }
}

fn run<S: AsRef<OsStr>>(tool: &'static str, args: &[S]) -> Result<Output, ClusterError> {
    Command::new(tool).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClusterError::Missing { tool }
        } else {
            ClusterError::Unreachable {
                tool,
                message: e.to_string(),
            }
        }
    })
}

/// SLURM's own words from stderr (or stdout), the `sbatch: error: ` prefixes dropped, lines joined.
fn slurm_message(out: &Output) -> String {
    let text = if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let lines: Vec<String> = String::from_utf8_lossy(text)
        .lines()
        .map(|l| {
            let l = l.trim();
            match l.split_once(": error: ") {
                Some((_, rest)) => rest.to_string(),
                None => l.to_string(),
            }
        })
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        format!("exited with {}", out.status)
    } else {
        lines.join("; ")
    }
}

/// `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
fn parse_sbatch(stdout: &str) -> Result<String, ClusterError> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let id = line.split(';').next().unwrap_or("");
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(id.to_string())
    } else {
        Err(ClusterError::Output {
            tool: "sbatch",
            line: line.to_string(),
            expected: "a job id",
        })
    }
}

fn non_empty(s: &str, none: &[&str]) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && !none.contains(&s)).then(|| s.to_string())
}

/// Lines of `squeue --format '%i|%T|%N|%M|%r'`.
fn parse_squeue(stdout: &str) -> Result<Vec<JobInfo>, ClusterError> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.splitn(5, '|').collect();
            let [id, state, node, elapsed, reason] = f.as_slice() else {
                return Err(ClusterError::Output {
                    tool: "squeue",
                    line: line.to_string(),
                    expected: "5 fields: id|state|nodes|elapsed|reason",
                });
            };
            Ok(JobInfo {
                id: id.trim().to_string(),
                state: state.trim().to_string(),
                reason: non_empty(reason, &["None", "(null)"]),
                node: non_empty(node, &["(null)"]),
                elapsed: non_empty(elapsed, &[]),
            })
        })
        .collect()
}

/// What sacct knows of `ids`; nothing where accounting storage is disabled (the usual small cluster).
fn sacct(ids: &[&str]) -> Vec<JobInfo> {
    let list = ids.join(",");
    let args = [
        "--noheader",
        "--parsable2",
        "--allocations",
        "--jobs",
        list.as_str(),
        "--format",
        "JobID,State,NodeList,Elapsed",
    ];
    match run("sacct", &args) {
        Ok(out) if out.status.success() => parse_sacct(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => {
            tracing::debug!("sacct: {}", slurm_message(&out));
            Vec::new()
        }
        Err(e) => {
            tracing::debug!("{e}");
            Vec::new()
        }
    }
}

/// Lines of `sacct --parsable2 --format JobID,State,NodeList,Elapsed` (`CANCELLED by 0` becomes CANCELLED).
fn parse_sacct(stdout: &str) -> Vec<JobInfo> {
    stdout
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let [id, state, node, elapsed] = f.as_slice() else {
                return None;
            };
            Some(JobInfo {
                id: id.trim().to_string(),
                state: state.split_whitespace().next()?.to_string(),
                reason: None,
                node: non_empty(node, &["None assigned"]),
                elapsed: non_empty(elapsed, &[]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::ClusterSection;

    #[test]
    fn squeue_lines_become_jobs() {
        let jobs = parse_squeue(
            "3|PENDING||0:00|Resources\n1|RUNNING|vm|0:01|None\n2|COMPLETED|vm|0:30|None\n9|PENDING||0:00|a|b\n",
        )
        .unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[0].describe(), "PENDING (Resources)");
        assert_eq!(jobs[1].describe(), "RUNNING on vm 0:01");
        assert_eq!(
            (jobs[2].state.as_str(), jobs[2].reason.as_deref()),
            ("COMPLETED", None)
        );
        assert_eq!(jobs[3].reason.as_deref(), Some("a|b"));
        let err = parse_squeue("garbage\n").unwrap_err().to_string();
        assert!(err.contains("\"garbage\": 5 fields"), "{err}");
    }

    #[test]
    fn sbatch_and_sacct_outputs() {
        assert_eq!(parse_sbatch("42\n").unwrap(), "42");
        assert_eq!(parse_sbatch("42;gpu-cluster\n").unwrap(), "42");
        assert!(parse_sbatch("Submitted batch job 42").is_err());
        let jobs = parse_sacct("5|CANCELLED by 0|n1|00:01:02\n6|PENDING|None assigned|00:00:00\n");
        assert_eq!(jobs[0].state, "CANCELLED");
        assert_eq!(jobs[1].node, None);
    }

    fn spec(settings: ClusterSection) -> JobSpec {
        JobSpec {
            name: "qlab-s-m-d-1234abcd".into(),
            run_id: "m-d-1234abcd".into(),
            run_dir: PathBuf::from("/shared/runs/s/m-d-1234abcd"),
            workdir: PathBuf::from("/shared/exp"),
            settings,
            command: vec![
                "/shared/bin/qlab".into(),
                "run".into(),
                "/shared/exp/my study.toml".into(),
            ],
        }
    }

    #[test]
    fn the_script_carries_every_setting_and_execs_qlab() {
        let settings = ClusterSection {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            qos: Some("normal".into()),
            time: Some("04:00:00".into()),
            gpus: Some(1),
            cpus_per_task: Some(8),
            mem: Some("64G".into()),
            sbatch_args: vec!["--constraint=a100".into()],
            setup: vec!["module load cuda/12.4".into()],
            signal_lead: 300,
            ..ClusterSection::default()
        };
        let text = Slurm.script(&spec(settings));
        for line in [
            "#!/bin/bash\n",
            "#SBATCH --job-name=qlab-s-m-d-1234abcd\n",
            "#SBATCH --output=/shared/runs/s/m-d-1234abcd/slurm-%j.out\n",
            "#SBATCH --chdir=/shared/exp\n",
            "#SBATCH --signal=B:USR1@300\n",
            "#SBATCH --requeue\n",
            "#SBATCH --partition=gpu\n#SBATCH --account=lab\n#SBATCH --qos=normal\n#SBATCH --time=04:00:00\n",
            "#SBATCH --mem=64G\n#SBATCH --gpus=1\n#SBATCH --cpus-per-task=8\n#SBATCH --constraint=a100\n",
            "module load cuda/12.4\nexec /shared/bin/qlab run '/shared/exp/my study.toml'\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let gres = Slurm.script(&spec(ClusterSection {
            gres: Some("gpu:a100:2".into()),
            requeue: false,
            ..ClusterSection::default()
        }));
        assert!(gres.contains("#SBATCH --gres=gpu:a100:2\n"), "{gres}");
        assert!(
            !gres.contains("--requeue") && !gres.contains("--gpus"),
            "{gres}"
        );
    }
}
