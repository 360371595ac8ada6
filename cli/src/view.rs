//! The CLI's own views of data that ve-runtime hands over in its leaf crates'
//! types (the storage pool's space and snapshots); their JSON is the same as
//! those types'.
//!
//! Two leaf-crate types are used as they are, through ve-runtime's named
//! re-exports: the network's host-service rule (parsed from `--allow-host`)
//! and the pool's source (printed by `pool info`).

use serde::Serialize;

pub use ve_runtime::{HostAccess, PoolSource};

/// A pool's totals (`pool grow`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSpaceView {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// One snapshot of a VE (`snapshot list`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub created_unix: u64,
    /// Data only this snapshot holds.
    pub exclusive_bytes: u64,
}
