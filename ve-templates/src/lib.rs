//! OS templates for vectl: importing a root file system tree as an immutable,
//! numbered template version (`debian-12@3`) that VEs use as their overlayfs lower
//! layer.
//!
//! This crate owns the template store's layout and metadata. Where a version's tree
//! lives on disk (a directory, a btrfs subvolume) is the pool's business: the caller
//! passes a [`VolumeOps`] that creates, seals and deletes those volumes.
//!
//! Layout below the store directory:
//!
//! ```text
//! <name>/<version>/          the version's root tree, never written after publishing
//! <name>/<version>.toml      its metadata (written before the tree is published)
//! <name>/.staging-<version>  a version being built; removed if the build fails
//! ```

mod debootstrap;
mod diff;
mod digest;
mod dpkg;
mod failpoint;
mod import;
mod layer;
mod oci;
mod store;
mod tree;

use std::io;
use std::path::PathBuf;

pub use debootstrap::{DEFAULT_MIRROR as DEBIAN_MIRROR, Debootstrap};
pub use diff::{Conflict, conflicts};
pub use digest::tree_digest;
pub use dpkg::{PackageChange, changes as package_changes};
pub use import::{Progress, Source};
pub use store::{TemplateRef, TemplateStore, TemplateVersion, validate_name};
pub use tree::{Tree, read_capped};

/// Errors from the template store. Each names the template, version or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A template name that vectl does not accept.
    #[error(
        "invalid template name {0:?}: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"
    )]
    InvalidName(String),
    /// A template reference that does not parse (`name` or `name@version`).
    #[error("invalid template reference {0:?}: expected NAME or NAME@VERSION")]
    InvalidRef(String),
    /// No template of that name.
    #[error("template {0}: no such template (see `vectl template list`)")]
    UnknownTemplate(String),
    /// The template exists but not that version.
    #[error("template {name}: no version {version} (see `vectl template list`)")]
    UnknownVersion { name: String, version: u32 },
    /// The import source is missing, unreadable or of the wrong kind.
    #[error("{path}: {reason}")]
    BadSource { path: PathBuf, reason: String },
    /// A tar archive that cannot be read.
    #[error("{path}: not a readable tar archive: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    /// A member of a tar archive that cannot be unpacked (nothing is imported).
    #[error("{path}: cannot unpack {member}: {reason}")]
    BadMember {
        path: PathBuf,
        member: String,
        reason: String,
    },
    /// A version's metadata file that cannot be parsed.
    #[error("{path}: corrupt template metadata: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    /// A build's result is published only onto the version it ran on.
    #[error(
        "template {name}: {name}@{latest} was published while the build ran on {name}@{base}; run the build again"
    )]
    Superseded {
        name: String,
        base: u32,
        latest: u32,
    },
    /// A version that VEs use cannot be removed.
    #[error("template {reference}: in use by VE {ves} ({advice})")]
    InUse {
        reference: String,
        ves: String,
        /// What the operator can do about it.
        advice: String,
    },
    /// The pool refused to create, seal or delete a version's volume.
    #[error("template {name}: storage: {source}")]
    Volume {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the store needs from the pool: volumes for version trees.
pub trait VolumeOps {
    /// Creates an empty, writable volume at `path` (a directory inside the pool).
    fn create(&self, path: &std::path::Path) -> io::Result<()>;
    /// Makes a finished volume read-only where the backend can.
    fn seal(&self, path: &std::path::Path) -> io::Result<()>;
    /// Deletes a volume and everything in it; missing is fine.
    fn delete(&self, path: &std::path::Path) -> io::Result<()>;
    /// Space a volume takes: (allocated bytes, files).
    fn usage(&self, path: &std::path::Path) -> io::Result<(u64, u64)>;
    /// Creates `path` as a writable copy of the volume `base` where the backend
    /// can do that cheaply (a btrfs snapshot); returns false, creating nothing,
    /// where it cannot.
    fn snapshot(&self, base: &std::path::Path, path: &std::path::Path) -> io::Result<bool> {
        let _ = (base, path);
        Ok(false)
    }
}
