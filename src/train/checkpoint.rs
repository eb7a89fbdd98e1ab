//! Checkpoints: adapter (PEFT layout), optimizer state, schedule and data cursor, written into a temp dir and
//! renamed into place when complete, so that any directory named like a checkpoint is whole.
//!
//! ```text
//! <checkpoint>/adapter/adapter_model.safetensors, adapter_config.json
//! <checkpoint>/optimizer.safetensors     AdamW moments and step count
//! <checkpoint>/trainer_state.json        step, data cursor, seed, schedule (written last)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use super::schedule::Schedule;
use crate::store::RunPaths;
use crate::store::atomic::sync_dir;

/// Where the trainer stands: everything besides tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Data cursor: the epoch in progress (0-based) and the micro-batches of its shuffled order consumed.
    /// The order itself is a pure function of `seed` and the epoch, which is the whole RNG state.
    pub epoch: u32,
    pub position: usize,
    pub seed: u64,
    pub total_steps: u64,
    pub schedule: Schedule,
}

/// Writes a checkpoint's files. The file system in production; tests inject failures through it.
pub trait FileWriter: Send + Sync {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
}

/// Writes and fsyncs real files.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsWriter;

impl FileWriter for FsWriter {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut f = fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
}

pub const ADAPTER_DIR: &str = "adapter";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// The pieces of a checkpoint, already serialized except the adapter, which the model writes itself.
pub struct CheckpointParts<'a> {
    pub save_adapter: &'a dyn Fn(&Path) -> Result<(), TrainError>,
    pub optimizer: Vec<u8>,
    pub state: &'a TrainerState,
}

/// Write a checkpoint to `dest` atomically (temp dir + rename); returns its size in bytes. On error the temp
/// dir is removed and whatever was at `dest` before is untouched.
pub fn save(
    dest: &Path,
    parts: CheckpointParts<'_>,
    writer: &dyn FileWriter,
) -> Result<u64, TrainError> {
    let parent = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
    let tmp = parent.join(format!(".tmp-{name}"));
    let result = write_dir(&tmp, &parts, writer).and_then(|bytes| {
        if dest.exists() {
            fs::remove_dir_all(dest).map_err(|e| TrainError::io(dest, e))?;
        }
        fs::rename(&tmp, dest).map_err(|e| TrainError::io(dest, e))?;
        sync_dir(&parent).map_err(|e| TrainError::io(&parent, e))?;
        Ok(bytes)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_dir(
    tmp: &Path,
    parts: &CheckpointParts<'_>,
    writer: &dyn FileWriter,
) -> Result<u64, TrainError> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).map_err(|e| TrainError::io(tmp, e))?;
    }
    let adapter = tmp.join(ADAPTER_DIR);
    fs::create_dir_all(&adapter).map_err(|e| TrainError::io(&adapter, e))?;
    (parts.save_adapter)(&adapter)?;
    let opt = tmp.join(OPTIMIZER_FILE);
    writer
        .write(&opt, &parts.optimizer)
        .map_err(|e| TrainError::io(&opt, e))?;
    let state = tmp.join(STATE_FILE);
    let json =
        serde_json::to_vec_pretty(parts.state).map_err(|e| TrainError::State(e.to_string()))?;
    writer
        .write(&state, &json)
        .map_err(|e| TrainError::io(&state, e))?;
    sync_dir(&adapter)
        .and_then(|_| sync_dir(tmp))
        .map_err(|e| TrainError::io(tmp, e))?;
    dir_size(tmp)
}

fn dir_size(dir: &Path) -> Result<u64, TrainError> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| TrainError::io(entry.path(), e))?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// A complete checkpoint found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub dir: PathBuf,
    pub state: TrainerState,
}

impl Found {
    pub fn adapter_dir(&self) -> PathBuf {
        self.dir.join(ADAPTER_DIR)
    }
    pub fn optimizer_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let p = self.dir.join(OPTIMIZER_FILE);
        fs::read(&p).map_err(|e| TrainError::io(&p, e))
    }
}

/// Read a checkpoint's trainer state (None when `dir` is not a complete checkpoint).
pub fn read(dir: &Path) -> Option<Found> {
    let bytes = fs::read(dir.join(STATE_FILE)).ok()?;
    let state = serde_json::from_slice(&bytes).ok()?;
    Some(Found {
        dir: dir.to_owned(),
        state,
    })
}

fn complete_in(dir: &Path) -> Vec<Found> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| read(&e.path()))
        .collect()
}

/// The newest complete checkpoint of a run, among step checkpoints and epoch stages.
pub fn newest(run: &RunPaths) -> Option<Found> {
    let mut all = complete_in(&run.checkpoints());
    all.extend(complete_in(&run.root.join("stages")));
    all.into_iter().max_by_key(|f| f.state.step)
}

/// Delete step checkpoints beyond the newest `keep` (stages are never deleted) and leftover temp dirs.
pub fn prune(run: &RunPaths, keep: usize) -> Result<(), TrainError> {
    let dir = run.checkpoints();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut steps: Vec<PathBuf> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            fs::remove_dir_all(entry.path()).map_err(|e| TrainError::io(entry.path(), e))?;
        } else if name.starts_with("step-") {
            steps.push(entry.path());
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for old in &steps[..excess] {
        fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::settings::{ScheduleKind, Warmup};

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            epoch: 0,
            position: step as usize,
            seed: 1,
            total_steps: 10,
            schedule: Schedule::new(ScheduleKind::Constant, 0.1, Warmup::Steps(0), 10),
        }
    }

    fn write(dest: &Path, step: u64, writer: &dyn FileWriter) -> Result<u64, TrainError> {
        let adapter = |d: &Path| {
            fs::write(d.join("adapter_model.safetensors"), b"A").map_err(|e| TrainError::io(d, e))
        };
        save(
            dest,
            CheckpointParts {
                save_adapter: &adapter,
                optimizer: vec![1, 2, 3],
                state: &state(step),
            },
            writer,
        )
    }

    struct Failing;
    impl FileWriter for Failing {
        fn write(&self, _: &Path, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("No space left on device"))
        }
    }

    #[test]
    fn newest_complete_checkpoint_wins_and_prune_keeps_stages() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunPaths {
            root: dir.path().to_owned(),
        };
        fs::create_dir_all(run.checkpoints()).unwrap();
        fs::create_dir_all(run.root.join("stages")).unwrap();
        for s in [2, 4, 6] {
            assert!(write(&run.checkpoint(s), s, &FsWriter).unwrap() > 0);
        }
        write(&run.stage("e1"), 5, &FsWriter).unwrap();
        fs::create_dir_all(run.checkpoints().join(".tmp-step-00000008")).unwrap();
        assert_eq!(newest(&run).unwrap().state.step, 6);
        prune(&run, 2).unwrap();
        let mut left: Vec<_> = fs::read_dir(run.checkpoints())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["step-00000004", "step-00000006"]);
        assert!(read(&run.stage("e1")).is_some());
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint_and_no_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunPaths {
            root: dir.path().to_owned(),
        };
        fs::create_dir_all(run.checkpoints()).unwrap();
        write(&run.checkpoint(2), 2, &FsWriter).unwrap();
        let err = write(&run.checkpoint(4), 4, &Failing)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("No space left") && err.contains("optimizer.safetensors"),
            "{err}"
        );
        assert_eq!(newest(&run).unwrap().state.step, 2);
        assert_eq!(fs::read_dir(run.checkpoints()).unwrap().count(), 1);
    }
}
