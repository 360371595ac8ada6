//! The crate's error type: every failure of the pool names the path, volume or
//! VE it concerns.

use std::io;
use std::path::{Path, PathBuf};

use crate::Backend;

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
    /// A disk limit below what the volume already uses.
    #[error("VE {ve}: the disk limit {limit} is below the {used} the VE already uses")]
    BelowUsage {
        ve: String,
        limit: String,
        used: String,
    },
    /// A snapshot of that name exists already.
    #[error("VE {ve}: a snapshot named {name:?} exists already")]
    SnapshotExists { ve: String, name: String },
    /// No snapshot of that name.
    #[error("VE {ve}: no snapshot named {name:?}")]
    NoSnapshot { ve: String, name: String },
    /// A name that cannot be used.
    #[error("{0}")]
    BadName(String),
    /// Setting up or mounting the pool failed.
    #[error("pool {path}: {why}")]
    Setup { path: PathBuf, why: String },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps an I/O error on `path` to [`Error::Io`] naming it.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An errno from a nix call (an ioctl, say) as an `io::Error`.
pub(crate) fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
