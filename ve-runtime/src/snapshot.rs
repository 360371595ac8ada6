//! Snapshots of VEs' private layers as the operator sees them: create (the VE
//! frozen while running), list, remove and restore; and keeping a VE's layer
//! still while something copies it (also used by clone).

use std::fs;
use std::time::Instant;

use serde::Serialize;

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::host::Host;
use crate::pool::ve_storage;
use crate::units::Size;

/// How a snapshot was made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The VE was stopped.
    Stopped,
    /// The VE's processes were frozen for the snapshot.
    Frozen,
}

/// What `snapshot create` did.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotMade {
    pub ve: String,
    pub name: String,
    pub consistency: Consistency,
    /// How long the VE was frozen (0 when stopped).
    pub frozen_ms: f64,
}

impl Host {
    /// Takes snapshot `name` of a VE's private layer: frozen while running,
    /// as it is while stopped.
    pub(crate) fn snapshot_create(&self, name_or_id: &str, name: &str) -> Result<SnapshotMade> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        self.finish_move(&mut self.load_config(&ve)?)?;
        let ((), consistency, frozen_ms) = self.with_layer_still(&ve, || {
            self.pool()
                .create_snapshot(&ve, name)
                .map_err(|e| ve_storage(&ve, e))
        })?;
        Ok(SnapshotMade {
            ve,
            name: name.to_string(),
            consistency,
            frozen_ms,
        })
    }

    /// Runs `f` while VE `ve`'s private layer keeps still: as it is when the VE
    /// is stopped, with its processes frozen while it runs (a marker lets the
    /// next command thaw it if vectl dies meanwhile). The caller holds the VE's
    /// lock. Returns what `f` made, how, and for how long the VE was frozen (ms).
    pub(crate) fn with_layer_still<T>(
        &self,
        ve: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Consistency, f64)> {
        if self.alive_state(ve)?.is_none() {
            return Ok((f()?, Consistency::Stopped, 0.0));
        }
        let cg = self.cgroups()?;
        let marker = self.frozen_marker(ve);
        fs::write(&marker, b"").map_err(io_err(&marker))?;
        let t0 = Instant::now();
        let frozen = match cg.freeze(ve) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&marker);
                return Err(e);
            }
        };
        if !frozen {
            let _ = fs::remove_file(&marker);
            return Err(Error::ve(
                ve,
                "this host has no freezer for VE cgroups: stop the VE for a consistent copy of its files",
            ));
        }
        let made = f();
        let thawed = cg.thaw(ve);
        let frozen_ms = t0.elapsed().as_secs_f64() * 1000.0;
        if thawed.is_ok() {
            let _ = fs::remove_file(&marker);
        }
        let made = made?;
        thawed?;
        Ok((made, Consistency::Frozen, frozen_ms))
    }

    /// Freezes running VE `ve` until [`Host::thaw_held`] (a marker lets the
    /// next command thaw it if vectl dies meanwhile). The caller holds the
    /// VE's lock.
    pub(crate) fn freeze_held(&self, ve: &str) -> Result<()> {
        let cg = self.cgroups()?;
        let marker = self.frozen_marker(ve);
        fs::write(&marker, b"").map_err(io_err(&marker))?;
        match cg.freeze(ve) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let _ = fs::remove_file(&marker);
                Err(Error::ve(
                    ve,
                    "this host has no freezer for VE cgroups: migrate with --clean-stop",
                ))
            }
            Err(e) => {
                let _ = cg.thaw(ve);
                let _ = fs::remove_file(&marker);
                Err(e)
            }
        }
    }

    /// Thaws what [`Host::freeze_held`] froze (a stopped VE too: there is
    /// nothing to thaw then).
    pub(crate) fn thaw_held(&self, ve: &str) -> Result<()> {
        if self.alive_state(ve)?.is_some() {
            self.cgroups()?.thaw(ve)?;
        }
        crate::fsutil::remove_file(&self.frozen_marker(ve))
    }

    /// A VE's snapshots.
    pub(crate) fn snapshot_list(
        &self,
        name_or_id: &str,
    ) -> Result<(String, Vec<quota::SnapshotInfo>)> {
        let ve = self.resolve_existing(name_or_id)?;
        let list = self
            .pool()
            .list_snapshots(&ve)
            .map_err(|e| ve_storage(&ve, e))?;
        Ok((ve, list))
    }

    /// Deletes a VE's snapshot.
    pub(crate) fn snapshot_remove(&self, name_or_id: &str, name: &str) -> Result<String> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        self.finish_move(&mut cfg)?;
        if let Some(m) = crate::upgrade::open_upgrades(&cfg.history)
            .into_iter()
            .find(|m| m.snapshot.as_deref() == Some(name))
        {
            return Err(Error::ve(
                &ve,
                format!(
                    "snapshot {name} is the way back from its upgrade from {} to {} (`vectl rollback {ve}` restores it)",
                    m.from, m.to
                ),
            ));
        }
        self.pool()
            .remove_snapshot(&ve, name)
            .map_err(|e| ve_storage(&ve, e))?;
        Ok(ve)
    }

    /// Puts a stopped VE's private layer back to a snapshot; its disk limit is
    /// kept.
    pub(crate) fn snapshot_restore(&self, name_or_id: &str, name: &str) -> Result<String> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg: VeConfig = self.load_config(&ve)?;
        if let Some(rs) = self.alive_state(&ve)? {
            return Err(Error::ve(
                &ve,
                format!(
                    "running (init pid {}); stop it before restoring a snapshot",
                    rs.pid
                ),
            ));
        }
        self.finish_move(&mut cfg)?;
        // Staged, then put in place: a vectl killed in between leaves the
        // staged copy, which the next command on the VE removes.
        self.pool()
            .stage_restore(&ve, name)
            .map_err(|e| ve_storage(&ve, e))?;
        crate::failpoint::hit("restore-after-stage");
        self.pool()
            .commit_restore(&ve)
            .map_err(|e| ve_storage(&ve, e))?;
        if let Some(Size(d)) = cfg.limits.disk {
            // Growing or equal always fits; a snapshot bigger than today's limit
            // keeps the snapshot's own (inherited) limit, which was met.
            let _ = self.pool().set_disk_limit(&ve, Some(d));
        }
        Ok(ve)
    }
}
