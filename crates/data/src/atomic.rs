//! Crash-safe output files: everything coil-data writes goes to a temporary sibling first and is renamed
//! into place only when complete, so an interrupted run never leaves a half-written file behind. A process
//! killed mid-write (SIGKILL: no destructor runs) leaves its `PATH.tmp.<pid>`; the next write of the same path
//! removes such leftovers of processes that no longer exist.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A buffered file that becomes visible at `path` only after [`AtomicFile::commit`].
/// Dropping it without committing removes the temporary file.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Open `PATH.tmp.<pid>` for writing, creating the parent folder if needed.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        remove_stale_temporaries(path);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Append bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.write_all(bytes).map_err(|e| DataError::io(&self.tmp, e)),
            None => Err(DataError::file(&self.path, "write after commit")),
        }
    }

    /// Flush, sync and rename into place.
    pub fn commit(mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let file = w
                .into_inner()
                .map_err(|e| DataError::io(&self.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| DataError::io(&self.tmp, e))?;
        }
        fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Removes `PATH.tmp.<pid>` siblings left by processes that are gone. Where liveness cannot be told (no
/// `/proc`), nothing is removed; a live writer's file is never touched.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let prefix = format!("{}.tmp.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Write a whole file atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.bin");
        // pid 1 is alive everywhere; u32::MAX - 1 is above any pid limit, so no such process exists
        let live = dir.path().join("x.bin.tmp.1");
        let dead = dir.path().join(format!("x.bin.tmp.{}", u32::MAX - 1));
        let other = dir.path().join("y.bin.tmp.4294967294");
        for p in [&live, &dead, &other] {
            fs::write(p, b"partial").unwrap_or_else(|e| panic!("{e}"));
        }
        write_file(&path, b"whole").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&path).unwrap_or_default(), b"whole");
        assert!(live.exists() && other.exists());
        assert_eq!(dead.exists(), !Path::new("/proc/self").exists());
    }
}
