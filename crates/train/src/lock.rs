//! One training process per run directory: an advisory lock (`flock`, exclusive) on `<run>/coil.lock`, taken
//! before anything is written into the run and held until the process ends.
//!
//! The kernel drops the lock when the file is closed, which includes every way a process can die (SIGKILL, an
//! out-of-memory kill, a crash), so a lock can never outlive its holder and there is nothing to clean up by hand.
//! The file itself stays; it holds the holder's process id for the message a second process prints. It is never
//! deleted: removing a lock file while another process has it open would let two processes lock two different
//! files of the same name.
//!
//! Data-parallel workers started by a launcher that holds the lock do not lock again (they would wait on their
//! own launcher): the launcher names itself in [`HELD_BY_ENV`], and a worker whose parent process is that
//! launcher relies on its lock ([`held_by_parent`]).

use crate::error::{io, Result, TrainError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = "coil.lock";

/// Environment variable a launcher sets on its workers: its own process id, meaning "I hold the run's lock".
pub const HELD_BY_ENV: &str = "COIL_RUN_LOCK_HELD_BY";

/// The held lock of a run directory; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (creating it) for this process, or fails at once naming the directory and the process
    /// that holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match try_lock(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(in_use(run_dir, &path, holder(&mut file)));
            }
            Err(e) => return Err(io(&path)(e)),
        }
        let mut record = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "pid {}", std::process::id())?;
            file.flush()
        };
        record().map_err(io(&path))?;
        Ok(RunLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Fails when another process holds the lock of `run_dir` (an existing directory); takes nothing. For launchers
/// that only prepare a run that starts later (the Slurm executor).
pub fn ensure_free(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(LOCK_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match try_lock(&file) {
        Ok(()) => Ok(()), // released again when `file` closes
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(in_use(run_dir, &path, holder(&mut file)))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// True when this process was started by a launcher that holds the run's lock for it: [`HELD_BY_ENV`] names
/// the parent process.
pub fn held_by_parent() -> bool {
    let Ok(v) = std::env::var(HELD_BY_ENV) else {
        return false;
    };
    parent_pid().is_some_and(|p| v.trim() == p.to_string())
}

#[cfg(unix)]
fn parent_pid() -> Option<u32> {
    Some(std::os::unix::process::parent_id())
}

#[cfg(not(unix))]
fn parent_pid() -> Option<u32> {
    None
}

/// Non-blocking exclusive `flock`; `WouldBlock` when another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

/// No advisory lock on this platform: runs are not protected against a second process.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<()> {
    Ok(())
}

/// The process id recorded in a lock file, when it is readable.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().strip_prefix("pid ")?.trim().parse().ok()
}

fn in_use(run_dir: &Path, path: &Path, pid: Option<u32>) -> TrainError {
    TrainError::Locked(format!(
        "run directory {} is in use by another coil process ({}, holding {}); wait for it to finish or stop it, \
         or train into another directory (run.name=NAME or run.dir=DIR)",
        run_dir.display(),
        pid.map_or("process id unknown".to_string(), |p| format!("pid {p}")),
        path.display()
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_a_released_lock_is_free_again() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let run = tmp.path().join("run");
        let first = RunLock::acquire(&run).unwrap_or_else(|e| panic!("{e}"));
        let e = RunLock::acquire(&run).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains(&run.display().to_string())
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(ensure_free(&run).is_err());
        drop(first);
        ensure_free(&run).unwrap_or_else(|e| panic!("{e}"));
        RunLock::acquire(&run).unwrap_or_else(|e| panic!("{e}"));
    }
}
