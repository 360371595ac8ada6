//! Storage for vectl: the pool that holds template versions and the VEs' private
//! layers, and the volumes inside it.
//!
//! Backends sit behind [`Pool`]: `dir` (any filesystem, no disk limits) today; the
//! loop-backed btrfs pool with per-volume qgroup limits comes later and keeps this API.
//! A [`Volume`] is one directory tree the pool accounts for: a VE's private layer
//! (`ves/<name>`, holding the overlay `upper` and `work` directories) or a template
//! version (`templates/<name>/<version>`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors from the pool. Each names the path or volume it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path of the pool.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The pool directory does not exist or is not a directory.
    #[error("pool {0}: not a directory (run `vectl init`)")]
    NotAPool(PathBuf),
    /// A volume that should be new already exists.
    #[error("volume {0} already exists")]
    VolumeExists(PathBuf),
    /// The backend cannot do what was asked (for example a disk limit on `dir`).
    #[error("the {backend} storage backend {what}")]
    Unsupported {
        backend: Backend,
        what: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The storage backend of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Plain directories on any filesystem. No disk limits, no snapshots.
    #[default]
    Dir,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Dir => f.write_str("dir"),
        }
    }
}

/// A storage pool: a directory with `templates/` and `ves/` below it.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
    backend: Backend,
}

/// The private layer of one VE: overlay upper and work directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume's own directory (`<pool>/ves/<name>`).
    pub dir: PathBuf,
}

impl Volume {
    /// The overlay upper directory: the VE's own files.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
}

/// Space used below a path, as `du` would count it (allocated blocks, hard links once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

impl Pool {
    /// Creates the pool's directories if needed (idempotent) and opens it.
    pub fn init(dir: &Path, backend: Backend) -> Result<Pool> {
        for sub in ["", "templates", "ves"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let pool = Pool {
            dir: dir.to_path_buf(),
            backend,
        };
        Ok(pool)
    }

    /// Opens an existing pool.
    pub fn open(dir: &Path, backend: Backend) -> Result<Pool> {
        if !dir.join("ves").is_dir() || !dir.join("templates").is_dir() {
            return Err(Error::NotAPool(dir.to_path_buf()));
        }
        Ok(Pool {
            dir: dir.to_path_buf(),
            backend,
        })
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pool's backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where template versions live.
    pub fn templates_dir(&self) -> PathBuf {
        self.dir.join("templates")
    }

    /// The private volume of a VE (which may not exist yet).
    pub fn ve_volume(&self, ve: &str) -> Volume {
        Volume {
            dir: self.dir.join("ves").join(ve),
        }
    }

    /// Creates a VE's private volume with empty `upper` and `work` directories.
    /// A leftover volume of the same name (from a create that was killed before it
    /// wrote the VE's config) is the caller's to remove first.
    pub fn create_ve_volume(&self, ve: &str) -> Result<Volume> {
        let vol = self.ve_volume(ve);
        match fs::create_dir(&vol.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::VolumeExists(vol.dir));
            }
            Err(e) => return Err(io_err(&vol.dir)(e)),
        }
        fs::set_permissions(&vol.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&vol.dir))?;
        for p in [vol.upper(), vol.work()] {
            fs::create_dir(&p).map_err(io_err(&p))?;
        }
        // The VE's root directory gets its mode from the upper layer once written;
        // until then overlayfs shows the template's. Keep upper at the usual 0755.
        fs::set_permissions(vol.upper(), fs::Permissions::from_mode(0o755))
            .map_err(io_err(&vol.upper()))?;
        Ok(vol)
    }

    /// Removes a VE's private volume and everything in it. Missing is fine.
    pub fn remove_ve_volume(&self, ve: &str) -> Result<()> {
        remove_tree(&self.ve_volume(ve).dir)
    }

    /// Creates an empty directory volume at `path` (inside the pool) for a template
    /// version being built.
    pub fn create_dir_volume(&self, path: &Path) -> Result<()> {
        fs::create_dir(path).map_err(io_err(path))
    }

    /// Seals a finished template version: from now on nothing writes to it.
    /// On `dir` this is a promise kept by vectl (overlayfs never writes to a lower
    /// layer); btrfs makes the subvolume read-only.
    pub fn seal_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir => {
                fs::metadata(path).map_err(io_err(path))?;
                Ok(())
            }
        }
    }

    /// Deletes a volume created by [`Pool::create_dir_volume`]. Missing is fine.
    pub fn delete_volume(&self, path: &Path) -> Result<()> {
        remove_tree(path)
    }

    /// Disk limits are not available on every backend.
    pub fn set_disk_limit(&self, _ve: &str, _bytes: Option<u64>) -> Result<()> {
        match self.backend {
            Backend::Dir => Err(Error::Unsupported {
                backend: self.backend,
                what: "has no disk limits (use the btrfs pool)",
            }),
        }
    }

    /// Space used by a VE's private layer.
    pub fn ve_usage(&self, ve: &str) -> Result<Usage> {
        usage(&self.ve_volume(ve).dir)
    }
}

/// Removes a directory tree; a missing path is not an error.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Counts allocated bytes and files below `path` without following symlinks or
/// crossing into other filesystems; hard-linked files count once.
pub fn usage(path: &Path) -> Result<Usage> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;

    let root = fs::symlink_metadata(path).map_err(io_err(path))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&p)(e)),
        };
        if md.dev() != dev {
            continue;
        }
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            continue;
        }
        total.bytes += md.blocks() * 512;
        total.files += 1;
        if md.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&p)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(io_err(&p))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_lifecycle_on_dir_backend() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        Pool::init(tmp.path(), Backend::Dir).unwrap(); // idempotent
        let vol = pool.create_ve_volume("web1").unwrap();
        assert!(vol.upper().is_dir() && vol.work().is_dir());
        assert!(matches!(
            pool.create_ve_volume("web1"),
            Err(Error::VolumeExists(_))
        ));
        fs::write(vol.upper().join("f"), vec![1u8; 10000]).unwrap();
        let u = pool.ve_usage("web1").unwrap();
        assert!(u.bytes >= 10000 && u.files == 4, "{u:?}");
        pool.remove_ve_volume("web1").unwrap();
        pool.remove_ve_volume("web1").unwrap();
        assert!(!vol.dir.exists());
    }

    #[test]
    fn dir_backend_refuses_disk_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        let err = pool.set_disk_limit("web1", Some(1 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dir storage backend has no disk limits (use the btrfs pool)"
        );
    }

    #[test]
    fn open_requires_an_initialised_pool() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Pool::open(&tmp.path().join("nope"), Backend::Dir),
            Err(Error::NotAPool(_))
        ));
    }
}
