//! Disk accounting and limits: a VE's use against its limit, setting and
//! forcing limits (btrfs quota groups, XFS project quotas), the quota mode, and the qgroups that
//! deleted subvolumes leave behind (pending ones swept, stale ones found for
//! `pool check`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::pool::{Backend, Pool};
use crate::volume::usage;
use crate::{btrfs, xfs};

/// A VE's disk use against its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub used: u64,
    pub limit: Option<u64>,
}

/// The inode limit that goes with a disk limit on xfs: one per KiB, more than
/// the files that fit (each non-empty file takes a 4 KiB block), so it never
/// binds first, while `df -i` in the VE shows its own files against a total.
pub fn inodes_for(bytes: u64) -> u64 {
    (bytes / 1024).max(1024)
}

/// Formats a byte count for people: `1.5G`, `256M`, `12K` (the one formatter of
/// vectl's messages and tables).
pub fn human_bytes(b: u64) -> String {
    for (suffix, unit) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if b >= unit {
            let v = b as f64 / unit as f64;
            return if v >= 100.0 || (v - v.round()).abs() < 0.05 {
                format!("{:.0}{suffix}", v)
            } else {
                format!("{v:.1}{suffix}")
            };
        }
    }
    format!("{b}B")
}

impl Pool {
    /// Removes the qgroup a deleted subvolume leaves behind. The kernel may
    /// refuse (EBUSY) until its cleaner thread has dropped the subvolume, which
    /// takes up to its commit interval (30 s). Recent kernels then remove the
    /// group themselves; for older ones the id goes on a list that the next
    /// volume removal or creation sweeps ([`Pool::sweep_qgroups`]).
    pub(crate) fn forget_qgroup(&self, id: u64) -> Result<()> {
        match btrfs::destroy_qgroup(&self.dir, id) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.queue_qgroup(id),
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }

    /// Puts qgroup `id` on the list that the next volume removal or creation
    /// sweeps ([`Pool::sweep_qgroups`]): for the group of a subvolume the
    /// kernel is still deleting (a destroy that was killed never queued it).
    pub fn queue_qgroup(&self, id: u64) -> Result<()> {
        if self.queued_qgroups().contains(&id) {
            return Ok(());
        }
        let path = self.pending_qgroups_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).map_err(io_err(&path))
    }

    /// The qgroups waiting on that list.
    pub fn queued_qgroups(&self) -> Vec<u64> {
        fs::read_to_string(self.pending_qgroups_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The qgroups of deleted subvolumes still to remove, one id a line.
    fn pending_qgroups_path(&self) -> PathBuf {
        self.dir.join(".vectl-pending-qgroups")
    }

    /// Removes the pending qgroups (see `Pool::forget_qgroup`) whose
    /// subvolumes the kernel has dropped by now. Best effort and cheap: nothing
    /// to do is one failed open. Called with the host lock held.
    pub fn sweep_qgroups(&self) {
        let path = self.pending_qgroups_path();
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        let left: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&id| {
                let gone = btrfs::subvolume_exists(&self.dir, id).is_ok_and(|e| !e)
                    && btrfs::destroy_qgroup(&self.dir, id).is_ok();
                !gone
            })
            .collect();
        if left.is_empty() {
            let _ = fs::remove_file(&path);
        } else {
            let text: String = left.iter().map(|id| format!("{id}\n")).collect();
            let tmp = path.with_extension("tmp");
            if fs::write(&tmp, text).is_ok() {
                let _ = fs::rename(&tmp, &path);
            }
        }
    }

    /// Sets (`None`: removes) a VE volume's disk limit. A limit below what the
    /// volume uses is refused, naming the use; data is never touched.
    pub fn set_disk_limit(&self, ve: &str, bytes: Option<u64>) -> Result<()> {
        match self.backend {
            Backend::Dir => Err(Error::Unsupported {
                backend: self.backend,
                what: "has no disk limits (use the btrfs or xfs pool)",
            }),
            Backend::Btrfs | Backend::Xfs => {
                if let Some(limit) = bytes {
                    let shrinking = self.disk(ve)?.limit.is_none_or(|l| limit < l);
                    if shrinking {
                        // Use is counted at commit (btrfs) or once delayed
                        // allocations are written out (xfs): commit first.
                        self.commit()?;
                        let used = self.disk(ve)?.used;
                        if used > limit {
                            return Err(Error::BelowUsage {
                                ve: ve.to_string(),
                                limit: human_bytes(limit),
                                used: human_bytes(used),
                            });
                        }
                    }
                }
                self.force_disk_limit(ve, bytes)
            }
        }
    }

    /// Sets a VE volume's limit without looking at its use (btrfs and xfs take a limit
    /// below use; writes then fail until the volume shrinks). For putting a
    /// limit back, not for operators' changes. A no-op on `dir`.
    pub fn force_disk_limit(&self, ve: &str, bytes: Option<u64>) -> Result<()> {
        let dir = self.ve_volume(ve).dir;
        self.limit_volume(&dir, bytes)
    }

    /// Sets (`None`: removes) the limit of any volume of the pool.
    pub(crate) fn limit_volume(&self, dir: &Path, bytes: Option<u64>) -> Result<()> {
        match self.backend {
            Backend::Dir => Ok(()),
            Backend::Btrfs => btrfs::set_limit(dir, bytes).map_err(io_err(dir)),
            Backend::Xfs => {
                let id = self.project_of(dir)?;
                xfs::set_limits(&self.dir, id, bytes, bytes.map(inodes_for)).map_err(io_err(dir))
            }
        }
    }

    /// The project of an xfs volume; one without is not a volume of the pool.
    fn project_of(&self, dir: &Path) -> Result<u32> {
        match xfs::project(dir).map_err(io_err(dir))? {
            0 => Err(Error::Setup {
                path: dir.to_path_buf(),
                why: "has no XFS project (not a volume of the pool)".into(),
            }),
            id => Ok(id),
        }
    }

    /// An xfs volume's project use and limits.
    pub(crate) fn project_quota(&self, dir: &Path) -> Result<xfs::ProjectQuota> {
        let id = self.project_of(dir)?;
        xfs::quota(&self.dir, id).map_err(io_err(dir))
    }

    /// A VE volume's disk use and limit.
    pub fn disk(&self, ve: &str) -> Result<DiskUsage> {
        let dir = self.ve_volume(ve).dir;
        match self.backend {
            Backend::Dir => Ok(DiskUsage {
                used: usage(&dir)?.bytes,
                limit: None,
            }),
            Backend::Btrfs => {
                let id = btrfs::subvolume_id(&dir).map_err(io_err(&dir))?;
                let q = self
                    .fsid()
                    .and_then(|f| btrfs::qgroup_usage(f, id))
                    .ok_or_else(|| Error::Setup {
                        path: self.dir.clone(),
                        why: format!("no quota group for VE {ve} (are quotas enabled?)"),
                    })?;
                Ok(DiskUsage {
                    used: q.referenced,
                    limit: q.max_referenced,
                })
            }
            Backend::Xfs => {
                let q = self.project_quota(&dir)?;
                Ok(DiskUsage {
                    used: q.bytes,
                    limit: q.bytes_limit,
                })
            }
        }
    }

    /// Disk used by any volume of the pool (a template version, say): its
    /// qgroup's referenced bytes on btrfs, its project's on xfs, a walk of its
    /// files otherwise.
    pub fn volume_bytes(&self, path: &Path) -> Result<u64> {
        if self.backend == Backend::Xfs
            && let Ok(q) = self.project_quota(path)
        {
            return Ok(q.bytes);
        }
        if self.backend == Backend::Btrfs && btrfs::is_subvolume(path) {
            let id = btrfs::subvolume_id(path).map_err(io_err(path))?;
            if let Some(q) = self.fsid().and_then(|f| btrfs::qgroup_usage(f, id)) {
                return Ok(q.referenced);
            }
        }
        Ok(usage(path)?.bytes)
    }

    /// How quotas are accounted (`None`: not btrfs, or quotas are off).
    pub fn quota_mode(&self) -> Option<btrfs::QuotaMode> {
        self.fsid().and_then(btrfs::quota_mode)
    }

    /// Commits the file system so quota numbers are current (btrfs counts at
    /// commit, xfs delayed allocations once written out). A no-op on `dir`.
    pub fn commit(&self) -> Result<()> {
        if self.backend.has_limits() {
            btrfs::sync(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// The qgroups whose subvolume is gone (`0/ID` with no tree), and those of
    /// subvolumes that exist but are none of the pool's volumes (deleted ones the
    /// kernel's cleaner has not dropped yet, which it then removes itself, or the
    /// operator's own on a shared btrfs): (stale, other).
    pub fn stale_qgroups(&self) -> Result<(Vec<u64>, Vec<u64>)> {
        let Some(fsid) = self.fsid() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let known = self.volume_ids();
        let mut stale = Vec::new();
        let mut other = Vec::new();
        for id in btrfs::qgroup_ids(fsid) {
            if id == 5 || known.contains(&id) {
                continue;
            }
            if btrfs::subvolume_exists(&self.dir, id).map_err(io_err(&self.dir))? {
                other.push(id);
            } else {
                stale.push(id);
            }
        }
        Ok((stale, other))
    }

    /// The subvolume ids of the pool's volumes: templates/*/*, ves/*,
    /// snapshots/*/*.
    fn volume_ids(&self) -> std::collections::HashSet<u64> {
        let mut out = std::collections::HashSet::new();
        let mut visit = |dir: &Path, depth: u32| {
            let mut stack = vec![(dir.to_path_buf(), 0)];
            while let Some((d, level)) = stack.pop() {
                for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if level + 1 == depth {
                        if btrfs::is_subvolume(&p)
                            && let Ok(id) = btrfs::subvolume_id(&p)
                        {
                            out.insert(id);
                        }
                    } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((p, level + 1));
                    }
                }
            }
        };
        visit(&self.dir.join("templates"), 2);
        visit(&self.dir.join("ves"), 1);
        visit(&self.dir.join("snapshots"), 2);
        out
    }

    /// The bytes qgroup `0/id` is charged (`None`: no such group).
    pub fn qgroup_bytes(&self, id: u64) -> Option<u64> {
        btrfs::qgroup_usage(self.fsid()?, id).map(|q| q.referenced)
    }

    /// Removes a stale qgroup (see [`Pool::stale_qgroups`]).
    pub fn remove_qgroup(&self, id: u64) -> Result<()> {
        btrfs::destroy_qgroup(&self.dir, id).map_err(io_err(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_backend_refuses_disk_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        let err = pool.set_disk_limit("web1", Some(1 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dir storage backend has no disk limits (use the btrfs or xfs pool)"
        );
    }

    #[test]
    fn sizes_for_messages() {
        assert_eq!(human_bytes(50 << 20), "50M");
        assert_eq!(human_bytes(1536), "1.5K");
    }
}
