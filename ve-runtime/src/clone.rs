//! `vectl clone`: a new, stopped VE from a copy of another's private layer,
//! with a new identity (name, id, hostname, MACs and addresses).

use crate::config::VeConfig;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::pool::ve_storage;
use crate::snapshot::Consistency;

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
    pub(crate) fn clone_ve(
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
        let tv = self.store().resolve(&tref)?;
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
        // The copy gets a range of its own (its files are not shifted: they
        // stay as on disk, seen through its own idmapped mounts).
        let (userns, _ids_lock) = match from.userns {
            Some(_) => {
                let (range, lock) = self.allocate_ids(dst)?;
                (Some(range), lock)
            }
            None => (None, None),
        };
        let cfg = VeConfig {
            id,
            name: dst.to_string(),
            template: tv.reference(),
            hostname,
            init: from.init.clone(),
            stop_signal: from.stop_signal.clone(),
            created: crate::state::now_rfc3339(),
            limits: from.limits.clone(),
            nics,
            ports: Vec::new(),
            userns,
            history: Vec::new(),
            autostart: Default::default(),
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
        let (consistency, frozen_ms) = if self.pool().backend() != quota::Backend::Btrfs {
            // No snapshots in a moment (dir: a plain copy; xfs: reflinked
            // copies): the source keeps still for the whole copy.
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
        let made = self.commit_new_ve(&cfg, "clone-before-config");
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
