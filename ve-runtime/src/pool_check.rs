//! `vectl pool check [--repair]`: what a crash can leave in the pool (orphan or
//! missing volumes, interrupted upgrades and restores, stale quota groups),
//! found and, on request, repaired.

use serde::Serialize;

use crate::error::Result;
use crate::host::Host;
use crate::pool::ve_storage;
use crate::units::Size;

/// A problem `pool check` found, and whether `--repair` fixed it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolProblem {
    /// `lost-image`, `orphan-volume`, `interrupted-move`, `missing-volume`,
    /// `restore-leftover`, `stale-qgroup`;
    /// and for information only, `foreign-qgroup` and `held-qgroup`.
    pub kind: &'static str,
    /// The VE, the qgroup (`0/ID`), or the pool image.
    pub subject: String,
    pub detail: String,
    pub repaired: bool,
}

impl PoolProblem {
    /// Kinds that are for information only: nothing for `--repair` to do.
    pub fn is_note(&self) -> bool {
        matches!(self.kind, "foreign-qgroup" | "held-qgroup")
    }
}

impl Host {
    /// Finds (and with `repair`, fixes) what a crash can leave in the pool, and
    /// an image pool whose image file is gone while mounted (reported, not
    /// repaired: see [`quota::LostImage`]): a VE
    /// volume without a config (a killed create or destroy: removed), an
    /// upgrade or rollback left pending (finished, see [`crate::upgrade`]), a
    /// config without a volume (an empty private layer is made, so the VE
    /// starts from its template again), qgroups of deleted subvolumes (removed).
    pub(crate) fn pool_check(&self, repair: bool) -> Result<Vec<PoolProblem>> {
        let _host = self.lock_host()?;
        let pool = self.pool();
        let mut out = Vec::new();
        // An image deleted under the mounted pool: nothing to repair here (the
        // operator copies the data back), but everything else is lost with it.
        if let Some(lost) = self.lost_pool_image() {
            out.push(PoolProblem {
                kind: "lost-image",
                subject: lost.image.display().to_string(),
                detail: lost.to_string(),
                repaired: false,
            });
        }
        for name in pool.ve_volumes()? {
            if self.config_path(&name).exists() {
                continue;
            }
            let _ve = self.lock_ve(&name)?;
            if self.config_path(&name).exists() {
                continue;
            }
            let repaired = repair && self.finish_interrupted(&name).is_ok();
            out.push(PoolProblem {
                kind: "orphan-volume",
                subject: name.clone(),
                detail: format!(
                    "{} has no VE config (left by a create or destroy that was killed)",
                    pool.ve_volume(&name).dir.display()
                ),
                repaired,
            });
        }
        for c in self.configs()? {
            let Some(m) = c.history.last().filter(|m| m.pending) else {
                continue;
            };
            let res = if repair {
                self.finish_move_of(&c.name).map(|_| ())
            } else {
                Ok(())
            };
            let what = if m.action == "upgrade" {
                "undone"
            } else {
                "completed"
            };
            out.push(PoolProblem {
                kind: "interrupted-move",
                subject: c.name.clone(),
                detail: match &res {
                    Err(e) => format!(
                        "VE {}: its {} from {} to {} was killed; finishing it: {e}",
                        c.name, m.action, m.from, m.to
                    ),
                    Ok(()) => format!(
                        "VE {}: its {} from {} to {} was killed (the next command on it: {what})",
                        c.name, m.action, m.from, m.to
                    ),
                },
                repaired: repair && res.is_ok(),
            });
        }
        let (list, _) = self.list()?;
        for v in &list {
            let vol = pool.ve_volume(&v.name);
            if vol.dir.exists() {
                continue;
            }
            let _ve = self.lock_ve(&v.name)?;
            let mut repaired = false;
            if repair {
                pool.finish_restore(&v.name)?;
                if !vol.dir.exists() {
                    pool.create_ve_volume(&v.name)?;
                    if let Some(Size(d)) = v.limits.disk {
                        pool.set_disk_limit(&v.name, Some(d))?;
                    }
                }
                repaired = true;
            }
            out.push(PoolProblem {
                kind: "missing-volume",
                subject: v.name.clone(),
                detail: format!(
                    "VE {} has no private layer at {}{}",
                    v.name,
                    vol.dir.display(),
                    if repaired {
                        ": made an empty one (the VE starts from its template again)"
                    } else {
                        ""
                    }
                ),
                repaired,
            });
        }
        for ve in pool.backup_leftovers()? {
            if self.config_path(&ve).exists() {
                continue;
            }
            let _ve = self.lock_ve(&ve)?;
            if self.config_path(&ve).exists() {
                continue;
            }
            let repaired = repair && self.finish_interrupted(&ve).is_ok();
            out.push(PoolProblem {
                kind: "backup-leftover",
                subject: ve.clone(),
                detail: format!(
                    "no VE {ve}: what a killed restore received, or the base of its next incremental backup"
                ),
                repaired,
            });
        }
        for ve in pool.restore_leftovers()? {
            if !self.config_path(&ve).exists() || !pool.ve_volume(&ve).dir.exists() {
                // (A missing volume is repaired above, with the restore.)
                continue;
            }
            let _ve = self.lock_ve(&ve)?;
            let res = if repair {
                pool.finish_restore(&ve).map_err(|e| ve_storage(&ve, e))
            } else {
                Ok(())
            };
            out.push(PoolProblem {
                kind: "restore-leftover",
                subject: ve.clone(),
                detail: match &res {
                    Err(e) => format!(
                        "VE {ve}: a copy left by a killed rollback or snapshot restore; cannot remove it: {e}"
                    ),
                    Ok(()) => format!(
                        "VE {ve}: a copy left by a killed rollback or snapshot restore (its own layer is untouched)"
                    ),
                },
                repaired: repair && res.is_ok(),
            });
        }
        // Queued groups whose subvolumes the kernel has dropped since go first:
        // that is the deferred end of earlier destroys, not a repair.
        pool.sweep_qgroups();
        let queued = pool.queued_qgroups();
        let (stale, foreign) = pool.stale_qgroups()?;
        for id in stale {
            let held = pool.qgroup_bytes(id).filter(|&b| b > 0);
            if let Some(bytes) = held {
                // Simple quotas: data of the deleted volume that snapshots still
                // share stays charged to its group until they go.
                out.push(PoolProblem {
                    kind: "held-qgroup",
                    subject: format!("0/{id}"),
                    detail: format!(
                        "quota group of a deleted volume, still charged {} for data snapshots share (it goes with them)",
                        crate::units::human_bytes(bytes)
                    ),
                    repaired: false,
                });
                continue;
            }
            let res = if repair {
                pool.remove_qgroup(id)
            } else {
                Ok(())
            };
            out.push(PoolProblem {
                kind: "stale-qgroup",
                subject: format!("0/{id}"),
                detail: match &res {
                    Err(e) => format!("quota group of a deleted subvolume; cannot remove it: {e}"),
                    Ok(()) => "quota group of a deleted subvolume".into(),
                },
                repaired: repair && res.is_ok(),
            });
        }
        let own_fs = !matches!(self.settings().pool_source, Some(quota::Source::Mounted));
        for id in foreign {
            // On the pool's own file system a subvolume that is none of its
            // volumes is one the kernel is still deleting. Older kernels keep
            // its group when they are done: it is queued for the next create
            // or destroy, as a destroy does (one that was killed did not).
            let queue = own_fs && (queued.contains(&id) || repair);
            let repaired =
                repair && own_fs && !queued.contains(&id) && pool.queue_qgroup(id).is_ok();
            out.push(PoolProblem {
                kind: "foreign-qgroup",
                subject: format!("0/{id}"),
                detail: if queue {
                    "quota group of a subvolume the kernel is still deleting (queued: the next create or destroy removes it when the kernel is done)".into()
                } else if own_fs {
                    "quota group of a subvolume the kernel is still deleting (recent kernels remove it then; `pool check --repair` queues it for older ones)".into()
                } else {
                    "a subvolume that is not vectl's, or one the kernel is still deleting: left alone".into()
                },
                repaired,
            });
        }
        Ok(out)
    }
}
