//! The CLI's own views of data that ve-runtime hands over in its leaf crates'
//! types (the storage pool's space and snapshots), so the CLI does not reach
//! into `ve_runtime::quota` for them; their JSON is the same as those types'.
//!
//! Two leaf-crate types are still named here, for want of a named re-export
//! in ve-runtime: the network's host-service rule (parsed from
//! `--allow-host`) and the pool's source (printed by `pool info`).

use serde::Serialize;

pub use ve_runtime::netns::model::HostAccess;
pub use ve_runtime::quota::Source as PoolSource;

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
