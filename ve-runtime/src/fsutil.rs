//! Small file helpers: atomic writes and lock files.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Result, io_err};

/// Writes `data` to `path` atomically: a temporary file in the same directory,
/// written in full, then renamed over `path`. With `durable`, the file and the
/// directory are fsynced so the new contents survive a power cut; runtime state
/// (meaningless after a reboot) skips that.
pub(crate) fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(data).map_err(io_err(path))?;
    if durable {
        tmp.as_file().sync_all().map_err(io_err(path))?;
    }
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    if durable {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// An exclusive lock on a file, held until dropped (the kernel releases it when the
/// process dies, so a killed vectl never leaves a lock behind).
#[derive(Debug)]
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Takes the lock at `path`, waiting for other holders.
    pub(crate) fn acquire(path: &Path) -> Result<Lock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        file.lock().map_err(io_err(path))?;
        Ok(Lock { _file: file })
    }
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}
