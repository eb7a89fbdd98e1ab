//! The per-run advisory lock: one process trains a run at a time; the lock file names its pid.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};

use super::{RunPaths, StoreError};

/// Held while a process trains a run; released when dropped or when the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Take the run's lock, or fail with the pid of the process that holds it.
    pub fn acquire(run: &RunPaths) -> Result<RunLock, StoreError> {
        let path = run.lock();
        std::fs::create_dir_all(&run.root).map_err(|e| StoreError::io(&run.root, e))?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    pid: read_pid(&mut file).unwrap_or_else(|| "unknown".into()),
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| write!(file, "{}", std::process::id()))
            .and_then(|_| file.sync_data());
        written.map_err(|e| StoreError::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// The pid of the live process holding the run's lock, if any.
pub fn holder(run: &RunPaths) -> Option<u32> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(run.lock())
        .ok()?;
    match file.try_lock() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => read_pid(&mut file).and_then(|p| p.parse().ok()),
        Err(TryLockError::Error(_)) => None,
    }
}

fn read_pid(file: &mut File) -> Option<String> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_is_free_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunPaths {
            root: dir.path().join("r"),
        };
        let lock = RunLock::acquire(&run).unwrap();
        // flock locks are per open file description, so a second open in the same process conflicts too.
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert_eq!(holder(&run), Some(std::process::id()));
        drop(lock);
        assert_eq!(holder(&run), None);
        assert!(RunLock::acquire(&run).is_ok());
    }
}
