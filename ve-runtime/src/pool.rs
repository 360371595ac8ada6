//! The storage pool as the operator sees it: `pool info`, `pool grow`, `pool
//! check`, and snapshots of VEs' private layers.

use std::fs;
use std::time::Instant;

use serde::Serialize;

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::host::Host;
use crate::limits::Size;

/// `vectl pool info`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub backend: quota::Backend,
    pub dir: std::path::PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<quota::Source>,
    /// `simple` (squota), `qgroups`, or absent (no disk limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<&'static str>,
    #[serde(flatten)]
    pub space: quota::PoolSpace,
    pub ves: Vec<VolumeUse>,
    pub templates: Vec<VolumeUse>,
}

/// One volume's use in `pool info`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeUse {
    pub name: String,
    pub used_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

/// A problem `pool check` found, and whether `--repair` fixed it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolProblem {
    /// `orphan-volume`, `interrupted-move`, `missing-volume`,
    /// `restore-leftover`, `stale-qgroup`;
    /// and for information only, `foreign-qgroup` and `held-qgroup`.
    pub kind: &'static str,
    /// The VE, or the qgroup (`0/ID`).
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

/// How a snapshot was made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Size, use and free space of the pool, with every VE's and template's use.
    pub fn pool_info(&self) -> Result<PoolInfo> {
        let pool = self.pool();
        // Quota numbers are counted at commit.
        pool.commit()?;
        let (list, _) = self.list()?;
        let ves = list
            .iter()
            .map(|v| {
                let d = pool.disk(&v.name).unwrap_or_default();
                VolumeUse {
                    name: v.name.clone(),
                    used_bytes: d.used,
                    limit_bytes: d.limit,
                }
            })
            .collect();
        let mut templates = Vec::new();
        for tv in self.list_templates()? {
            let path = self.templates().path(&tv);
            templates.push(VolumeUse {
                name: tv.reference(),
                used_bytes: pool.volume_bytes(&path).unwrap_or(tv.size_bytes),
                limit_bytes: None,
            });
        }
        Ok(PoolInfo {
            backend: pool.backend(),
            dir: pool.dir().to_path_buf(),
            source: self.settings().pool_source.clone(),
            quota: pool.quota_mode().map(|m| match m {
                quota::btrfs::QuotaMode::Simple => "simple",
                quota::btrfs::QuotaMode::Qgroups => "qgroups",
            }),
            space: pool.space()?,
            ves,
            templates,
        })
    }

    /// Grows the pool online (see [`quota::Pool::grow`]). Returns the new space.
    pub fn pool_grow(&self, size: Option<u64>) -> Result<quota::PoolSpace> {
        let _host = self.lock_host()?;
        let pool = self.pool();
        let source = match (pool.backend(), &self.settings().pool_source) {
            (quota::Backend::Btrfs, Some(s)) => s.clone(),
            _ => {
                return Err(Error::Host(format!(
                    "pool {}: the {} backend cannot grow (it uses its file system as it is)",
                    pool.dir().display(),
                    pool.backend()
                )));
            }
        };
        pool.grow(&source, size)?;
        Ok(pool.space()?)
    }

    /// Finds (and with `repair`, fixes) what a crash can leave in the pool: a VE
    /// volume without a config (a killed create or destroy: removed), an
    /// upgrade or rollback left pending (finished, see [`crate::upgrade`]), a
    /// config without a volume (an empty private layer is made, so the VE
    /// starts from its template again), qgroups of deleted subvolumes (removed).
    pub fn pool_check(&self, repair: bool) -> Result<Vec<PoolProblem>> {
        let _host = self.lock_host()?;
        let pool = self.pool();
        let mut out = Vec::new();
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
                        crate::limits::human_bytes(bytes)
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
            out.push(PoolProblem {
                kind: "foreign-qgroup",
                subject: format!("0/{id}"),
                detail: if own_fs {
                    "quota group of a subvolume the kernel is still deleting (it goes when the kernel is done)".into()
                } else {
                    "a subvolume that is not vectl's, or one the kernel is still deleting: left alone".into()
                },
                repaired: false,
            });
        }
        Ok(out)
    }

    /// Takes snapshot `name` of a VE's private layer: frozen while running,
    /// as it is while stopped.
    pub fn snapshot_create(&self, name_or_id: &str, name: &str) -> Result<SnapshotMade> {
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
            return Err(Error::Host(format!(
                "VE {ve}: this host has no freezer for VE cgroups: stop the VE for a consistent copy of its files"
            )));
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

    /// A VE's snapshots.
    pub fn snapshot_list(&self, name_or_id: &str) -> Result<(String, Vec<quota::SnapshotInfo>)> {
        let ve = self.resolve_existing(name_or_id)?;
        let list = self
            .pool()
            .list_snapshots(&ve)
            .map_err(|e| ve_storage(&ve, e))?;
        Ok((ve, list))
    }

    /// Deletes a VE's snapshot.
    pub fn snapshot_remove(&self, name_or_id: &str, name: &str) -> Result<String> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        self.finish_move(&mut cfg)?;
        if let Some(m) = crate::upgrade::open_upgrades(&cfg.history)
            .into_iter()
            .find(|m| m.snapshot.as_deref() == Some(name))
        {
            return Err(Error::Host(format!(
                "VE {ve}: snapshot {name} is the way back from its upgrade from {} to {} (`vectl rollback {ve}` restores it)",
                m.from, m.to
            )));
        }
        self.pool()
            .remove_snapshot(&ve, name)
            .map_err(|e| ve_storage(&ve, e))?;
        Ok(ve)
    }

    /// Puts a stopped VE's private layer back to a snapshot; its disk limit is
    /// kept.
    pub fn snapshot_restore(&self, name_or_id: &str, name: &str) -> Result<String> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg: VeConfig = self.load_config(&ve)?;
        if let Some(rs) = self.alive_state(&ve)? {
            return Err(Error::Host(format!(
                "VE {ve}: running (init pid {}); stop it before restoring a snapshot",
                rs.pid
            )));
        }
        self.finish_move(&mut cfg)?;
        self.pool()
            .restore_snapshot(&ve, name)
            .map_err(|e| ve_storage(&ve, e))?;
        if let Some(Size(d)) = cfg.limits.disk {
            // Growing or equal always fits; a snapshot bigger than today's limit
            // keeps the snapshot's own (inherited) limit, which was met.
            let _ = self.pool().set_disk_limit(&ve, Some(d));
        }
        Ok(ve)
    }
}

/// What `clone` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cloned {
    pub config: VeConfig,
    /// How the source's files were kept still for the copy.
    pub consistency: Consistency,
    pub frozen_ms: f64,
}

impl Host {
    /// Clones VE `src` as a new, stopped VE `dst`: a copy of its private layer
    /// (a snapshot where the pool can), on `template` (a version of any
    /// template; default the source's), with a new identity: name, id, hostname
    /// (`hostname` or `dst`), MACs and addresses on the same networks. Published
    /// ports are not copied (a host port belongs to one VE). A running source is
    /// frozen for the moment of the copy.
    ///
    /// Crash safety: `dst` exists once its config is written, last; a killed
    /// clone leaves only leftovers under `dst`'s name (volume, mount directory,
    /// id link, firewall entries), which the next clone, create or destroy of
    /// `dst` removes (`pool check --repair` too). A source left frozen is thawed
    /// by the next command on it (the frozen marker, see
    /// [`Host::with_layer_still`]); its `.SRC.clone` snapshot (btrfs) is
    /// replaced by the next clone from it and goes with its destroy.
    pub fn clone_ve(
        &self,
        src: &str,
        dst: &str,
        template: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<Cloned> {
        let src = self.resolve_existing(src)?;
        crate::config::validate_name(dst)?;
        if src == dst {
            return Err(Error::VeExists {
                ve: dst.to_string(),
                id: self.load_config(&src)?.id,
            });
        }
        let hostname = hostname.unwrap_or(dst).to_string();
        crate::config::validate_hostname(&hostname)?;
        let _host = self.lock_host()?;
        let _src_lock = self.lock_ve(&src)?;
        let _dst_lock = self.lock_ve(dst)?;
        let mut from = self.load_config(&src)?;
        // A killed upgrade or rollback of the source: its files and version
        // agree before they are copied.
        self.finish_move(&mut from)?;
        if let Some(existing) = VeConfig::load(&self.config_path(dst))? {
            return Err(Error::VeExists {
                ve: dst.to_string(),
                id: existing.id,
            });
        }
        // What a killed clone, create or destroy of that name left.
        let leftovers = self.tombstone_path(dst).exists()
            || self.pool().ve_volume(dst).dir.symlink_metadata().is_ok()
            || self.mount_dir(dst).symlink_metadata().is_ok();
        if leftovers {
            self.finish_interrupted(dst)?;
        }
        let tref: ve_templates::TemplateRef = template.unwrap_or(&from.template).parse()?;
        let tv = self.templates().resolve(&tref)?;
        let nics = self.allocate_nics(
            dst,
            &from
                .nics
                .iter()
                .map(|n| crate::net::NicRequest {
                    net: n.net.clone(),
                    ip: None,
                })
                .collect::<Vec<_>>(),
        )?;
        let id = self.free_id()?;
        let cfg = VeConfig {
            id,
            name: dst.to_string(),
            template: tv.reference(),
            hostname,
            init: from.init.clone(),
            stop_signal: from.stop_signal.clone(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            limits: from.limits.clone(),
            nics,
            publish: Vec::new(),
            history: Vec::new(),
        };
        // Leftovers of a create or clone that was killed before it wrote a config.
        self.pool().remove_ve_volume(dst)?;
        let copy = |from: &std::path::Path| {
            self.pool()
                .clone_ve_volume(from, dst)
                .map_err(|e| ve_storage(dst, e))
        };
        // The copy (`cp -a` where it is not a snapshot) keeps symlinks as
        // symlinks, FIFOs as FIFOs and sparse files sparse: nothing of the
        // source is followed or opened but its regular files.
        let (consistency, frozen_ms) = if self.pool().backend() == quota::Backend::Dir {
            // No snapshots: the source keeps still for the whole copy.
            let (_, c, ms) = self.with_layer_still(&src, || {
                let from = self
                    .pool()
                    .clone_source(&src)
                    .map_err(|e| ve_storage(&src, e))?;
                let copied = copy(&from);
                crate::failpoint::hit("clone-while-frozen");
                copied
            })?;
            crate::failpoint::hit("clone-after-copy");
            (c, ms)
        } else {
            // A read-only snapshot in a moment, copied from afterwards.
            let (from, c, ms) = self.with_layer_still(&src, || {
                let made = self
                    .pool()
                    .clone_source(&src)
                    .map_err(|e| ve_storage(&src, e));
                crate::failpoint::hit("clone-while-frozen");
                made
            })?;
            let copied = copy(&from);
            crate::failpoint::hit("clone-after-copy");
            let dropped = self.pool().drop_clone_source(&src);
            copied?;
            dropped.map_err(|e| ve_storage(&src, e))?;
            (c, ms)
        };
        let made = (|| -> Result<()> {
            if let Some(Size(d)) = cfg.limits.disk {
                self.pool()
                    .set_disk_limit(dst, Some(d))
                    .map_err(|e| ve_storage(dst, e))?;
            }
            let mnt = self.mount_dir(dst);
            fs::create_dir_all(&mnt).map_err(io_err(&mnt))?;
            let link = self.id_link(id);
            crate::fsutil::remove_file(&link)?;
            std::os::unix::fs::symlink(dst, &link).map_err(io_err(&link))?;
            self.firewall_ve(&cfg, true)?;
            crate::failpoint::hit("clone-before-config");
            cfg.store(&self.config_path(dst))
        })();
        if let Err(e) = made {
            let _ = self.finish_interrupted(dst);
            return Err(e);
        }
        Ok(Cloned {
            config: cfg,
            consistency,
            frozen_ms,
        })
    }
}

/// A pool error about one VE, as one line that names it (once).
fn ve_storage(ve: &str, e: quota::Error) -> Error {
    let msg = e.to_string();
    if msg.starts_with(&format!("VE {ve}: ")) {
        Error::Storage(e)
    } else {
        Error::Host(format!("VE {ve}: {msg}"))
    }
}
