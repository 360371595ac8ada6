//! Storage for vectl: the pool that holds template versions and the VEs' private
//! layers, the volumes inside it, their snapshots and their disk limits.
//!
//! Backends sit behind [`Pool`]: `btrfs` (the default: a loop-mounted image file, a
//! block device or an existing btrfs mount; each volume is a subvolume with a quota
//! limit), `xfs` (the same sources; each volume a directory with an XFS project
//! quota, which `df` in the VE shows as its disk) and `dir` (plain directories on
//! any filesystem, no disk limits).
//! A [`Volume`] is one directory tree the pool accounts for: a VE's private layer
//! (`ves/<name>`, holding the overlay `upper` and `work` directories) or a template
//! version (`templates/<name>/<version>`).
//!
//! Modules, one concern each (`impl Pool` is spread over them):
//! - `pool`: the pool itself: [`Backend`], [`Source`], making, opening,
//!   unmounting and growing it, [`PoolSpace`].
//! - `volume`: [`Volume`]s: VE layers and template versions, created, cloned,
//!   sealed and deleted; [`usage`] of a tree.
//! - `snapshot`: a VE's snapshots and restoring one ([`SnapshotInfo`]).
//! - `backup`: a VE's backup bases and where a restore receives its layer.
//! - `disk`: disk use and limits, quota groups ([`DiskUsage`]), and
//!   [`human_bytes`], the one byte formatter of vectl's messages.
//! - `error`: [`Error`] and [`Result`].
//! - [`btrfs`]: the btrfs ioctls the pool calls.
//! - [`xfs`]: the XFS project and quota calls the pool makes.
//! - [`loopdev`]: loop devices for an image-backed pool.

mod backup;
pub mod btrfs;
mod disk;
mod error;
pub mod loopdev;
mod pool;
mod snapshot;
mod volume;
pub mod xfs;

pub use backup::REP;
pub use disk::{DiskUsage, human_bytes};
pub use error::{Error, Result};
pub use pool::{
    Backend, LostImage, MIN_POOL_BYTES, NewPool, Pool, PoolSpace, Source, UnknownBackend,
    is_mount_point,
};
pub use snapshot::SnapshotInfo;
pub use volume::{Usage, Volume, usage};
