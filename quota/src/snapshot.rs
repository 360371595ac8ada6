//! Snapshots of a VE's private layer (btrfs subvolume snapshots; on xfs
//! reflinked copies in a project of their own): taking, listing and
//! deleting them, and restoring one in two crash-safe halves (stage a copy
//! beside the live layer, then swap it in), with the cleanup of a killed restore.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::btrfs;
use crate::disk::human_bytes;
use crate::error::{Error, Result, io_err};
use crate::pool::{Backend, Pool};
use crate::volume::copy_tree;

/// One snapshot of a VE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub created_unix: u64,
    /// Data only this snapshot holds (what deleting it frees).
    pub exclusive_bytes: u64,
}

/// Snapshot names: letters, digits, `.`, `_`, `-`; up to 64; not starting with `.`.
fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(format!(
            "invalid snapshot name {name:?}: letters, digits, '.', '_' and '-', up to 64, not starting with '.'"
        )))
    }
}

impl Pool {
    pub(crate) fn snapshots_dir(&self, ve: &str) -> PathBuf {
        self.dir.join("snapshots").join(ve)
    }

    /// Moves VE `old`'s snapshots and backup bases to VE `new` (a rename; done already or none
    /// = nothing to do).
    pub fn rename_snapshots(&self, old: &str, new: &str) -> Result<()> {
        let (from, to) = (self.snapshots_dir(old), self.snapshots_dir(new));
        if from.symlink_metadata().is_ok() && to.symlink_metadata().is_err() {
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        self.rename_backup_bases(old, new)
    }

    pub(crate) fn snapshot_names(&self, ve: &str) -> Result<Vec<String>> {
        let dir = self.snapshots_dir(ve);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    fn need_snapshots(&self, what: &'static str) -> Result<()> {
        if !self.backend.has_snapshots() {
            return Err(Error::Unsupported {
                backend: self.backend,
                what,
            });
        }
        Ok(())
    }

    /// Takes a read-only snapshot `name` of a VE's private layer. The caller
    /// makes it consistent (the VE frozen or stopped).
    pub fn create_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        self.need_snapshots("has no snapshots (use the btrfs or xfs pool)")?;
        check_snapshot_name(name)?;
        let dir = self.snapshots_dir(ve);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let dest = dir.join(name);
        if dest.symlink_metadata().is_ok() {
            return Err(Error::SnapshotExists {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        let from = self.ve_volume(ve).dir;
        if self.backend == Backend::Xfs {
            return self.copy_volume(&from, &dest, None);
        }
        btrfs::snapshot(&from, &dest, true).map_err(io_err(&dest))
    }

    /// On xfs: a new volume at `to` (a project of its own, with limit `limit`)
    /// holding reflinked copies of the files of volume `from`. Nothing is left
    /// when it fails.
    fn copy_volume(&self, from: &Path, to: &Path, limit: Option<u64>) -> Result<()> {
        self.make_volume(to)?;
        let made = self
            .limit_volume(to, limit)
            .and_then(|()| copy_tree(from, to, true));
        if made.is_err() {
            let _ = self.delete_volume(to);
        }
        made
    }

    /// A VE's snapshots, oldest first.
    pub fn list_snapshots(&self, ve: &str) -> Result<Vec<SnapshotInfo>> {
        let dir = self.snapshots_dir(ve);
        let mut out = Vec::new();
        for name in self.snapshot_names(ve)? {
            let path = dir.join(&name);
            let created = match self.backend {
                Backend::Btrfs => btrfs::created(&path).map_err(io_err(&path))?,
                _ => birth_time(&path)?,
            };
            out.push(SnapshotInfo {
                name,
                created_unix: created,
                exclusive_bytes: self.volume_exclusive(&path),
            });
        }
        out.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        Ok(out)
    }

    /// On xfs: all the snapshot's project holds, as reflinked files are charged
    /// in full to each project that has them (an upper bound of what deleting
    /// it frees).
    fn volume_exclusive(&self, path: &Path) -> u64 {
        if self.backend == Backend::Xfs {
            return self.project_quota(path).map_or(0, |q| q.bytes);
        }
        btrfs::subvolume_id(path)
            .ok()
            .and_then(|id| btrfs::qgroup_usage(self.fsid()?, id))
            .map_or(0, |q| q.exclusive)
    }

    /// Deletes snapshot `name` of a VE.
    pub fn remove_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        check_snapshot_name(name)?;
        let path = self.snapshots_dir(ve).join(name);
        if !self.is_volume(&path) {
            return Err(Error::NoSnapshot {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        self.delete_volume(&path)
    }

    /// Puts a VE's private layer back to snapshot `name` (the VE must be
    /// stopped; the caller checks). The snapshot stays. Crash-safe: the old layer
    /// is renamed aside before the new one takes its place, and a killed restore is
    /// rolled back by the next one (or finished by `finish_restore`).
    pub fn restore_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        self.stage_restore(ve, name)?;
        self.commit_restore(ve)
    }

    /// The first half of [`Pool::restore_snapshot`]: snapshot `name`'s files as
    /// a new volume beside the VE's own layer, which is not touched (the VE may
    /// run meanwhile). Fails, leaving nothing, when they do not fit the VE's
    /// disk limit. A staged volume left unused is removed by the next restore,
    /// `finish_restore` or the VE's removal.
    pub fn stage_restore(&self, ve: &str, name: &str) -> Result<()> {
        self.need_snapshots("has no snapshots (use the btrfs or xfs pool)")?;
        check_snapshot_name(name)?;
        let snap = self.snapshots_dir(ve).join(name);
        if !self.is_volume(&snap) {
            return Err(Error::NoSnapshot {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        self.finish_restore(ve)?;
        let fresh = self.dir.join("ves").join(format!(".{ve}.restore"));
        let limit = self.disk(ve)?.limit;
        let does_not_fit = |l: u64| Error::Setup {
            path: snap.clone(),
            why: format!(
                "VE {ve}: the snapshot does not fit the VE's disk limit {}",
                human_bytes(l)
            ),
        };
        if self.backend == Backend::Xfs {
            // A copy under the VE's limit: one that does not fit fails to write
            // (XFS answers ENOSPC at a project's limit).
            self.copy_volume(&snap, &fresh, limit)
                .map_err(|e| match (e, limit) {
                    (Error::Setup { why, .. }, Some(l))
                        if why.contains("quota") || why.contains("No space left") =>
                    {
                        does_not_fit(l)
                    }
                    (e, _) => e,
                })?;
        } else if self.quota_mode() == Some(btrfs::QuotaMode::Simple) {
            // Simple quotas charge data to the subvolume that wrote it: a
            // snapshot-made volume would hold the VE's files free of its limit.
            // Copy them into a new volume under the limit instead.
            btrfs::create_subvolume(&fresh).map_err(io_err(&fresh))?;
            if let Err(e) = btrfs::set_limit(&fresh, limit)
                .map_err(io_err(&fresh))
                .and_then(|()| copy_tree(&snap, &fresh, false))
            {
                let _ = self.delete_volume(&fresh);
                return Err(match (e, limit) {
                    (Error::Setup { why, .. }, Some(l)) if why.contains("quota") => does_not_fit(l),
                    (e, _) => e,
                });
            }
        } else {
            // A snapshot carries the limit of its day: the VE's current one
            // goes on it, if its files fit (usage is counted at commit).
            btrfs::snapshot(&snap, &fresh, false).map_err(io_err(&fresh))?;
            let fits = || -> Result<bool> {
                let Some(l) = limit else { return Ok(true) };
                btrfs::sync(&fresh).map_err(io_err(&fresh))?;
                let id = btrfs::subvolume_id(&fresh).map_err(io_err(&fresh))?;
                let used = self
                    .fsid()
                    .and_then(|f| btrfs::qgroup_usage(f, id))
                    .map_or(0, |q| q.referenced);
                Ok(used <= l)
            };
            let limited = fits().and_then(|ok| match limit {
                Some(l) if !ok => Err(does_not_fit(l)),
                _ => btrfs::set_limit(&fresh, limit).map_err(io_err(&fresh)),
            });
            if let Err(e) = limited {
                let _ = self.delete_volume(&fresh);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The second half of [`Pool::restore_snapshot`]: the staged volume takes
    /// the place of the VE's own layer (stopped VE).
    pub fn commit_restore(&self, ve: &str) -> Result<()> {
        let ves = self.dir.join("ves");
        let fresh = ves.join(format!(".{ve}.restore"));
        let old = ves.join(format!(".{ve}.old"));
        let live = self.ve_volume(ve).dir;
        if !self.is_volume(&fresh) {
            return Err(Error::Setup {
                path: fresh,
                why: format!("VE {ve}: no restore was staged"),
            });
        }
        fs::rename(&live, &old).map_err(io_err(&live))?;
        if let Err(e) = fs::rename(&fresh, &live) {
            let _ = fs::rename(&old, &live);
            let _ = self.delete_volume(&fresh);
            return Err(io_err(&live)(e));
        }
        self.delete_volume(&old)
    }

    /// Cleans up after a restore that was killed: the VE's layer is put back if
    /// it was renamed aside, and the half-made copy is deleted.
    pub fn finish_restore(&self, ve: &str) -> Result<()> {
        let ves = self.dir.join("ves");
        let fresh = ves.join(format!(".{ve}.restore"));
        let old = ves.join(format!(".{ve}.old"));
        let live = self.ve_volume(ve).dir;
        if old.symlink_metadata().is_ok() {
            if live.symlink_metadata().is_err() {
                fs::rename(&old, &live).map_err(io_err(&live))?;
            } else {
                self.delete_volume(&old)?;
            }
        }
        self.delete_volume(&fresh)
    }

    /// Whether a killed restore or rollback left a staged copy or a replaced
    /// layer of VE `ve` (what [`Pool::finish_restore`] removes).
    pub fn restore_left(&self, ve: &str) -> bool {
        let ves = self.dir.join("ves");
        [format!(".{ve}.restore"), format!(".{ve}.old")]
            .iter()
            .any(|n| ves.join(n).symlink_metadata().is_ok())
    }

    /// VEs with a restore's leftovers under `ves/` (`.NAME.restore`, a staged
    /// copy of a snapshot; `.NAME.old`, the layer it replaced): what a killed
    /// restore or rollback left, removed by [`Pool::finish_restore`].
    pub fn restore_leftovers(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("ves");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                let ve = n.strip_prefix('.')?;
                ve.strip_suffix(".restore")
                    .or_else(|| ve.strip_suffix(".old"))
                    .map(String::from)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// When a directory was made (its birth time), seconds since the epoch.
fn birth_time(path: &Path) -> Result<u64> {
    let md = fs::symlink_metadata(path).map_err(io_err(path))?;
    let t = md
        .created()
        .or_else(|_| md.modified())
        .map_err(io_err(path))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["s1", "before-upgrade", "2026.11.26_1"] {
            assert!(check_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshots_and_disk_limits_need_btrfs() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        pool.create_ve_volume("web1").unwrap();
        let err = pool.create_snapshot("web1", "s1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dir storage backend has no snapshots (use the btrfs or xfs pool)"
        );
        assert!(pool.list_snapshots("web1").unwrap().is_empty());
        assert_eq!(pool.disk("web1").unwrap().limit, None);
    }
}
