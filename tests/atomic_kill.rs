//! A writer SIGKILLed mid-write leaves the old file or the new one, never a torn one.
//!
//! The test re-runs its own binary as the writer (selected by an environment variable), kills it at
//! varying moments, and checks what is on disk after each kill.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qlab::store::atomic::write_atomic;

const CHILD_ENV: &str = "QLAB_ATOMIC_WRITER_PATH";
const SIZE: usize = 4 << 20;

/// Content number `i`: SIZE bytes all equal to a letter, so a torn mix is easy to see.
fn content(i: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; SIZE]
}

#[test]
fn writer_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = Path::new(&path);
    for i in 1.. {
        write_atomic(path, &content(i)).unwrap();
    }
}

#[test]
fn a_killed_writer_leaves_an_old_or_new_file_never_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.json");
    write_atomic(&path, &content(0)).unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 200));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), SIZE, "round {round}: torn length");
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "round {round}: mixed content"
        );
    }
}
