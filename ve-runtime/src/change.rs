//! Changes of a VE's identity after create: its hostname (live), its NICs and
//! its name (while stopped).
//!
//! A rename touches several files: the private volume (and its snapshots) in
//! the pool, the config, the id link. It is written down first
//! (`run/rename-OLD` holds the new name) and every step can be done again, so
//! a killed rename is finished by the next command that looks at either name
//! or lists the VEs ([`Host::finish_renames`]).

use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;

use netns::nic::{Nic, NicRequest};

use crate::config::{VeConfig, validate_hostname, validate_name};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_file, write_atomic};
use crate::host::Host;
use crate::sys;

/// What `rename` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Renamed {
    pub old: String,
    pub new: String,
    /// The hostname followed the name (it was the old name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

const RENAME_PREFIX: &str = "rename-";

impl Host {
    /// Sets a VE's hostname: in its config, at once in its UTS namespace if it
    /// runs (returns whether it did), and in its /etc files at its next start.
    pub(crate) fn set_hostname(&self, name_or_id: &str, hostname: &str) -> Result<bool> {
        validate_hostname(hostname)?;
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        cfg.hostname = hostname.to_string();
        cfg.store(&self.config_path(&ve))?;
        let Some(rs) = self.alive_state(&ve)? else {
            return Ok(false);
        };
        let init = sys::pidfd_open(rs.pid).map_err(|e| Error::ve(&ve, format!("pidfd: {e}")))?;
        sys::in_helper(|| {
            nix::sched::setns(init.as_fd(), nix::sched::CloneFlags::CLONE_NEWUTS)
                .map_err(|e| format!("join its UTS namespace: {e}"))?;
            nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
            Ok(String::new())
        })
        .map_err(|e| Error::ve(&ve, format!("hostname {hostname}: {e}")))?;
        Ok(true)
    }

    /// Gives a stopped VE the NICs asked for: a NIC on a network it stays on
    /// keeps its address (unless another is asked for) and MAC; new ones get
    /// free addresses and MACs. The firewall follows at once; the VE's /etc
    /// files at its next start.
    pub(crate) fn set_nics(&self, name_or_id: &str, reqs: &[NicRequest]) -> Result<Vec<Nic>> {
        let ve = self.resolve_existing(name_or_id)?;
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(&ve)?;
        let cfg = self.load_config(&ve)?;
        if let Some(rs) = self.alive_state(&ve)? {
            return Err(Error::ve(
                &ve,
                format!(
                    "running (init pid {}): its NICs change while it is stopped (vectl stop {ve})",
                    rs.pid
                ),
            ));
        }
        let keep = |r: &NicRequest| match (&r.ip, cfg.nics.iter().find(|n| n.net == r.net)) {
            (None, Some(n)) => NicRequest {
                net: r.net.clone(),
                ip: Some(n.ip.to_string()),
            },
            _ => r.clone(),
        };
        let reqs: Vec<NicRequest> = reqs.iter().map(keep).collect();
        let mut nics = self.allocate_nics(&ve, &reqs)?;
        for n in &mut nics {
            if let Some(old) = cfg.nics.iter().find(|o| o.net == n.net && o.ip == n.ip) {
                n.mac = old.mac;
            }
        }
        let new = VeConfig {
            nics,
            ..cfg.clone()
        };
        self.check_net_settings(&new)?;
        self.admit_net(&new, &new.limits)?;
        self.mark_firewall()?;
        self.apply_firewall(Some(&new))
            .map_err(|e| crate::net::for_ve(&ve, e))?;
        // The new addresses are claimed before the config has them, the old
        // ones released after (a kill between leaves a stale claim, which
        // the next allocation on a full network frees).
        self.claim_all(&new)?;
        if let Err(e) = new.store(&self.config_path(&ve)) {
            // Refused: the new addresses go back.
            let _ = self.release_dropped(&new, &cfg);
            return Err(e);
        }
        self.release_dropped(&cfg, &new)?;
        self.finish_firewall()?;
        Ok(new.nics)
    }

    /// Changes when a VE starts by itself (at once: the supervisor and `host
    /// boot` read the config each time).
    pub(crate) fn set_autostart(
        &self,
        name_or_id: &str,
        change: &crate::config::AutostartChange,
    ) -> Result<crate::config::Autostart> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        cfg.autostart = change.applied_to(&cfg.autostart);
        cfg.store(&self.config_path(&ve))?;
        Ok(cfg.autostart)
    }

    fn rename_marker(&self, old: &str) -> PathBuf {
        self.root()
            .join("run")
            .join(format!("{RENAME_PREFIX}{old}"))
    }

    /// Renames a stopped VE. Its id, addresses, MACs, limits, files and
    /// snapshots stay; a hostname that was the old name becomes the new one.
    pub(crate) fn rename(&self, name_or_id: &str, new: &str) -> Result<Renamed> {
        validate_name(new)?;
        let old = self.resolve_existing(name_or_id)?;
        if old == new {
            return Err(Error::ve(&old, "has that name already"));
        }
        // A rename killed earlier is finished first; then both names are
        // locked, in name order (two renames in opposite directions must not
        // wait for each other).
        self.finish_renames()?;
        let (first, second) = if old.as_str() < new {
            (old.as_str(), new)
        } else {
            (new, old.as_str())
        };
        let _lock_first = self.lock_ve(first)?;
        let _lock_second = self.lock_ve(second)?;
        let mut cfg = self.load_config(&old)?;
        if let Some(rs) = self.alive_state(&old)? {
            return Err(Error::ve(
                &old,
                format!(
                    "running (init pid {}): a VE is renamed while it is stopped (vectl stop {old})",
                    rs.pid
                ),
            ));
        }
        self.finish_move(&mut cfg)?;
        self.clean_up_stopped(&old)?;
        if let Some(other) = VeConfig::load(&self.config_path(new))? {
            return Err(Error::VeExists {
                ve: new.to_string(),
                id: other.id,
            });
        }
        for p in [self.tombstone_path(new), self.pool().ve_volume(new).dir] {
            if p.symlink_metadata().is_ok() {
                return Err(Error::ve(
                    new,
                    format!(
                        "{} exists (left by a killed create or destroy: `vectl pool check --repair`)",
                        p.display()
                    ),
                ));
            }
        }
        let marker = self.rename_marker(&old);
        write_atomic(&marker, new.as_bytes(), true)?;
        crate::failpoint::hit("rename-after-marker");
        let hostname = (cfg.hostname == old).then(|| new.to_string());
        self.finish_rename(&old)?;
        Ok(Renamed {
            old,
            new: new.to_string(),
            hostname,
        })
    }

    /// Finishes the rename of `old` that its marker records (every step again:
    /// each is done or can be). The caller holds the VE's lock or runs where
    /// no other command can have the VE.
    fn finish_rename(&self, old: &str) -> Result<()> {
        let marker = self.rename_marker(old);
        let new = match fs::read_to_string(&marker) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&marker)(e)),
        };
        validate_name(&new)?;
        let (from, to) = (
            self.pool().ve_volume(old).dir,
            self.pool().ve_volume(&new).dir,
        );
        if from.exists() && !to.exists() {
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        crate::failpoint::hit("rename-after-volume");
        self.pool().rename_snapshots(old, &new)?;
        let (old_cfg, new_cfg) = (self.config_path(old), self.config_path(&new));
        if let Some(mut cfg) = VeConfig::load(&old_cfg)? {
            if let Some(other) = VeConfig::load(&new_cfg)?
                && other.id != cfg.id
            {
                return Err(Error::ve(
                    old,
                    format!(
                        "its rename to {new} was left half-done and VE {new} (id {}) exists \
                         now; its files are at {}",
                        other.id,
                        to.display()
                    ),
                ));
            }
            if cfg.hostname == old {
                cfg.hostname = new.clone();
            }
            cfg.name = new.clone();
            cfg.store(&new_cfg)?;
            // Its claims name it by its new name (each replaced at once).
            self.claim_all(&cfg)?;
            crate::failpoint::hit("rename-after-config");
            remove_file(&old_cfg)?;
        }
        // What is kept by name: the last exit and the console logs.
        for (a, b) in [
            (self.exit_path(old), self.exit_path(&new)),
            (
                crate::console::log_path(self.root(), old),
                crate::console::log_path(self.root(), &new),
            ),
            (
                crate::console::log_path(self.root(), old).with_extension("log.1"),
                crate::console::log_path(self.root(), &new).with_extension("log.1"),
            ),
        ] {
            if a.exists() {
                fs::rename(&a, &b).map_err(io_err(&a))?;
            }
        }
        let _ = fs::remove_dir(self.mount_dir(old));
        remove_file(&marker)
    }

    /// Finishes every rename a killed `vectl rename` left half-done.
    pub(crate) fn finish_renames(&self) -> Result<()> {
        let run = self.root().join("run");
        let Ok(entries) = fs::read_dir(&run) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some(old) = name.to_str().and_then(|n| n.strip_prefix(RENAME_PREFIX)) {
                let _lock = self.lock_ve(old)?;
                self.finish_rename(old)?;
            }
        }
        Ok(())
    }

    /// Finishes a rename of `ve` that was killed half-way, if there is one.
    pub(crate) fn finish_rename_of(&self, ve: &str) -> Result<()> {
        if self.rename_marker(ve).exists() {
            let _lock = self.lock_ve(ve)?;
            self.finish_rename(ve)?;
        }
        Ok(())
    }
}
