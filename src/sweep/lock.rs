//! The per-run advisory lock: a process training a run holds an exclusive lock on the run's `lock` file
//! (which records its pid), so two processes never train the same run. The OS releases it when the process
//! dies, even by SIGKILL.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};

use crate::store::{RunPaths, StoreError};

/// Held while this process trains a run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(run: &RunPaths) -> Result<File, StoreError> {
    let path = run.lock();
    std::fs::create_dir_all(&run.root).map_err(|e| StoreError::io(&run.root, e))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))
}

fn recorded_pid(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut s));
    s.trim().to_string()
}

impl RunLock {
    /// Take the run's lock, or fail with [`StoreError::Locked`] naming the holder's pid.
    pub fn acquire(run: &RunPaths) -> Result<RunLock, StoreError> {
        let path = run.lock();
        let mut file = open(run)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path,
                    pid: recorded_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|_| file.sync_data())
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(RunLock { _file: file })
    }

    /// The pid of the live process holding the run, if any (the lock is probed, not kept).
    pub fn holder(run: &RunPaths) -> Option<u32> {
        if !run.lock().exists() {
            return None;
        }
        let mut file = open(run).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => recorded_pid(&mut file).parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_run_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunPaths {
            root: dir.path().join("r"),
        };
        assert_eq!(RunLock::holder(&run), None);
        let held = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert_eq!(RunLock::holder(&run), Some(std::process::id()));
        drop(held);
        assert_eq!(RunLock::holder(&run), None);
        RunLock::acquire(&run).unwrap();
    }
}
