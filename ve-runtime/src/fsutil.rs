//! Small file helpers: atomic writes and lock files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
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
///
/// A lock file may be removed ([`Lock::remove`], by its holder: a destroyed VE's).
/// A waiter that opened it before then gets the lock on an unlinked file, which
/// no longer locks anything: so after locking, the path must still name the file
/// locked (same device and inode), else the waiter opens the path again.
#[derive(Debug)]
pub struct Lock {
    file: fs::File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock at `path`, waiting for other holders.
    pub(crate) fn acquire(path: &Path) -> Result<Lock> {
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            file.lock().map_err(io_err(path))?;
            let held = file.metadata().map_err(io_err(path))?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Lock {
                        file,
                        path: path.to_path_buf(),
                    });
                }
                // Removed (or removed and made again) while we waited.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
    }

    /// Removes the lock file, then lets go of the lock: for a lock nobody needs
    /// any more (a destroyed VE's). Whoever waits for it takes a new one.
    pub(crate) fn remove(self) -> Result<()> {
        remove_file(&self.path)?;
        drop(self.file);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_waiter_on_a_removed_lock_file_takes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ve-a.lock");
        let first = Lock::acquire(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = Lock::acquire(&p).unwrap();
            let held = lock.file.metadata().unwrap().ino();
            tx.send(()).unwrap();
            (lock, held)
        });
        // The waiter has the old file open and waits for it.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        first.remove().unwrap();
        let (lock, held) = waiter.join().unwrap();
        // It holds the file the path names now, not the unlinked one (whose
        // inode number a new file may reuse only once nobody has it open)...
        assert_eq!(fs::metadata(&path).unwrap().ino(), held);
        // ... so a third taker waits for it.
        let p = path.clone();
        let third = std::thread::spawn(move || Lock::acquire(&p).map(|_| ()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!third.is_finished());
        drop(lock);
        third.join().unwrap().unwrap();
    }
}
