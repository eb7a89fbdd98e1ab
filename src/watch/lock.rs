//! Who trains a run right now: the pid in its lock file, if that process is alive.

use std::path::Path;

/// The pid written in a run's lock file when that process still lives; `None` when the file is absent,
/// holds no pid, or its process is gone (a stale lock after a crash).
///
/// Accepts a bare pid (`1234`) or a JSON object with a `pid` field.
pub fn live_lock_holder(lock_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(lock_file).ok()?;
    let pid = parse_pid(&text)?;
    pid_is_alive(pid).then_some(pid)
}

fn parse_pid(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Ok(pid) = t.parse::<u32>() {
        return Some(pid);
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
pub fn pid_is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_pid_holds_the_lock_and_a_dead_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        assert_eq!(live_lock_holder(&lock), None);
        std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(live_lock_holder(&lock), Some(std::process::id()));
        std::fs::write(&lock, format!("{{\"pid\": {}}}", std::process::id())).unwrap();
        assert_eq!(live_lock_holder(&lock), Some(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&lock, dead.to_string()).unwrap();
        assert_eq!(live_lock_holder(&lock), None);
        std::fs::write(&lock, "garbage").unwrap();
        assert_eq!(live_lock_holder(&lock), None);
    }
}
