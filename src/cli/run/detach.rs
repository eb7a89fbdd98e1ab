//! `qlab run --detach`: start the same command again in a new session (setsid), so it survives the SSH
//! connection closing, with its output going to a log file in the sweep directory.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use color_eyre::eyre::{Result, WrapErr};

/// The current command line without `--detach`.
pub fn args_without_detach() -> Vec<OsString> {
    std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect()
}

/// Spawn `qlab <args>` detached from this terminal; returns its pid.
pub fn spawn_detached(args: &[OsString], log: &Path) -> Result<u32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .wrap_err_with(|| format!("cannot create {}", dir.display()))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .wrap_err_with(|| format!("cannot open {}", log.display()))?;
    let err = out
        .try_clone()
        .wrap_err_with(|| format!("cannot open {}", log.display()))?;
    let exe = std::env::current_exe().wrap_err("cannot find the qlab executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().wrap_err("cannot start the detached runner")?;
    Ok(child.id())
}
