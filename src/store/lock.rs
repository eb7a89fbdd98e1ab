//! The per-run advisory lock: one process trains a run at a time; the lock file names its pid, its host and,
//! inside a SLURM job, the job id (a pid means nothing on another host).
//!
//! Testing the lock takes it for a moment, so a watcher can make an `acquire` fail at that instant: both
//! `acquire` and [`holder`] look again shortly before believing a holder is there.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::time::Duration;

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
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries < ACQUIRE_TRIES => {
                    tries += 1;
                    std::thread::sleep(ACQUIRE_PAUSE);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        pid: read_holder(&mut file)
                            .map(|h| h.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        path,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
            }
        }
        let me = LockHolder::this_process();
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| write!(file, "{}", me.file_text()))
            .and_then(|_| file.sync_data());
        written.map_err(|e| StoreError::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// How often, and how far apart, `acquire` tries before reporting the holder (a watcher's probe is brief).
const ACQUIRE_TRIES: u32 = 10;
const ACQUIRE_PAUSE: Duration = Duration::from_millis(50);

/// Who holds a run's lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub host: Option<String>,
    /// The SLURM job the holder runs in (`$SLURM_JOB_ID`).
    pub job: Option<String>,
}

impl LockHolder {
    fn this_process() -> LockHolder {
        LockHolder {
            pid: std::process::id(),
            host: hostname(),
            job: std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty()),
        }
    }

    /// `PID`, then `host NAME` and `job ID` lines.
    fn file_text(&self) -> String {
        let mut text = self.pid.to_string();
        if let Some(h) = &self.host {
            text.push_str(&format!("\nhost {h}"));
        }
        if let Some(j) = &self.job {
            text.push_str(&format!("\njob {j}"));
        }
        text
    }

    fn parse(text: &str) -> Option<LockHolder> {
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let mut holder = LockHolder {
            pid,
            host: None,
            job: None,
        };
        for line in lines {
            match line.split_once(' ') {
                Some(("host", h)) => holder.host = Some(h.trim().to_owned()),
                Some(("job", j)) => holder.job = Some(j.trim().to_owned()),
                _ => {}
            }
        }
        Some(holder)
    }
}

impl std::fmt::Display for LockHolder {
    /// `123`, `123 on node7`, `123 on node7, SLURM job 4411`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)?;
        if let Some(h) = &self.host {
            write!(f, " on {h}")?;
        }
        if let Some(j) = &self.job {
            write!(f, ", SLURM job {j}")?;
        }
        Ok(())
    }
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
}

/// The pid of the live process holding the run's lock, if any.
pub fn holder(run: &RunPaths) -> Option<u32> {
    holder_info(run).map(|h| h.pid)
}

/// The live process holding the run's lock (pid, host, SLURM job), if any.
pub fn holder_info(run: &RunPaths) -> Option<LockHolder> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(run.lock())
        .ok()?;
    for attempt in 0..2 {
        match file.try_lock() {
            Ok(()) => return None,
            // Maybe another watcher's probe: look once more.
            Err(TryLockError::WouldBlock) if attempt == 0 => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(TryLockError::WouldBlock) => return read_holder(&mut file),
            Err(TryLockError::Error(_)) => return None,
        }
    }
    None
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    LockHolder::parse(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_is_free_after_drop() {
        let (_dir, run) = RunPaths::in_temp_dir();
        let lock = RunLock::acquire(&run).unwrap();
        // flock locks are per open file description, so a second open in the same process conflicts too.
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert_eq!(holder(&run), Some(std::process::id()));
        let info = holder_info(&run).unwrap();
        assert_eq!(info.host, hostname());
        assert!(err.contains(&info.to_string()), "{err}");
        drop(lock);
        assert_eq!(holder(&run), None);
        assert!(RunLock::acquire(&run).is_ok());
    }

    #[test]
    fn the_lock_file_names_pid_host_and_job() {
        let h = LockHolder {
            pid: 7,
            host: Some("node3".into()),
            job: Some("4411".into()),
        };
        assert_eq!(h.file_text(), "7\nhost node3\njob 4411");
        assert_eq!(LockHolder::parse(&h.file_text()), Some(h.clone()));
        assert_eq!(h.to_string(), "7 on node3, SLURM job 4411");
        let old = LockHolder::parse("123").unwrap();
        assert_eq!((old.pid, old.host, old.job), (123, None, None));
        assert_eq!(LockHolder::parse(""), None);
    }
}
