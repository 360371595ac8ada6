//! Small file helpers: atomic writes and lock files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, io_err};

/// The temporary file `write_atomic` uses for `path`: `.NAME.tmp` beside it. The
/// name is fixed, not random: writers of a file hold its lock, and a temporary file
/// left by a killed writer is simply overwritten by the next one (or removed with
/// the VE) instead of piling up.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `data` to `path` atomically: the whole content to a temporary file in the
/// same directory, then a rename over `path`. With `durable`, the data reaches the
/// disk before the rename, so after a crash or power cut `path` holds either the
/// old or the new content, never a torn one; runtime state (meaningless after a
/// reboot) skips that. The directory is not fsynced: the rename itself reaches the
/// disk with the file system's next journal commit (seconds), and losing it means
/// the previous, complete version — cheaper than a second flush on every `set`.
/// The caller holds the lock that guards `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let tmp = temp_path(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    if durable {
        f.sync_data().map_err(io_err(&tmp))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
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
