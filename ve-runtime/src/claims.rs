//! Claims: what a VE holds that no other VE of the root may hold too (its id,
//! its address on each network, its range of host ids), kept as directories
//! of symlinks named by the thing and pointing at the VE's name:
//!
//! ```text
//! ids/<id>                 the VE with that id
//! ips/<net>/<address>      the VE with that address on that network
//! userns/<base>-<count>    the VE with that range of host ids
//! ```
//!
//! Picking a free one reads the directory's names (no VE config is opened),
//! so a create beside a thousand VEs costs what it costs beside ten. The
//! configs stay the truth: a claims directory that is missing (a root made
//! before claims, a network just made) is built from them once; a claim whose
//! VE has no config, or whose config no longer has the thing, is stale and
//! is taken over; `start` checks that its VE's claims are its own (one
//! readlink each), so a hand-edited config that collides is refused there.
//! Directories are built only where something is committed: a refused
//! create or start leaves the root as it was.
//!
//! Claims are taken under the host lock where a VE's config is first written
//! (create, clone, restore, failover) or changed (`set --net`, `set
//! --userns`, rename), and released by destroy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::VeConfig;
use crate::error::{Result, io_err};
use crate::fsutil::remove_file;
use crate::host::Host;
use crate::userns::IdRange;

/// One directory of claims.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    dir: PathBuf,
}

impl Claims {
    pub(crate) fn new(dir: PathBuf) -> Claims {
        Claims { dir }
    }

    /// Whether the directory is there (built).
    pub(crate) fn built(&self) -> bool {
        self.dir.is_dir()
    }

    /// The claimed keys (names only: no link is read). A missing directory has
    /// none.
    pub(crate) fn keys(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// The VE named by the claim on `key`, if there is one.
    pub(crate) fn holder(&self, key: &str) -> Option<String> {
        fs::read_link(self.dir.join(key))
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    /// Claims `key` for `ve`, replacing any claim on it (the caller has found
    /// it free or stale). The directory must be there: one made here would
    /// hold this claim alone and be taken for the whole ledger
    /// ([`Claims::build`] makes it).
    pub(crate) fn take(&self, key: &str, ve: &str) -> Result<()> {
        let link = self.dir.join(key);
        let tmp = self.temp(key, ve);
        remove_file(&tmp)?;
        std::os::unix::fs::symlink(ve, &tmp).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &link).map_err(io_err(&link))
    }

    /// Where [`Claims::take`] makes the link before renaming it into place:
    /// named by key and VE, so that a take killed in between leaves a file
    /// the VE's release finds.
    fn temp(&self, key: &str, ve: &str) -> PathBuf {
        self.dir.join(format!(".{key}.{ve}"))
    }

    /// Drops the claim on `key` if `ve` holds it (and what a killed take of
    /// it by `ve` left).
    pub(crate) fn release(&self, key: &str, ve: &str) -> Result<()> {
        remove_file(&self.temp(key, ve))?;
        if self.holder(key).as_deref() == Some(ve) {
            remove_file(&self.dir.join(key))?;
        }
        Ok(())
    }

    /// Drops every claim `ve` holds here, and what its killed takes left
    /// (reads every link: for cleaning up after a killed command, whose
    /// claims are not known).
    pub(crate) fn release_all(&self, ve: &str) -> Result<()> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let left_by_take = format!(".{ve}");
        for entry in rd {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            match name.strip_prefix('.') {
                Some(rest) if rest.ends_with(&left_by_take) => {
                    if self.holder(&name).as_deref() == Some(ve) {
                        remove_file(&entry.path())?;
                    }
                }
                Some(_) => {}
                None => self.release(&name, ve)?,
            }
        }
        Ok(())
    }

    /// Makes the directory from `claims` (key, VE) unless it is there: built
    /// aside and renamed into place, so a reader sees all of it or none. The
    /// first of two holders of one key keeps it.
    pub(crate) fn build(&self, claims: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        if self.built() {
            return Ok(());
        }
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.{}", std::process::id()));
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp)(e)),
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        for (key, ve) in claims {
            let link = tmp.join(&key);
            match std::os::unix::fs::symlink(&ve, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&link)(e)),
            }
        }
        match fs::rename(&tmp, &self.dir) {
            Ok(()) => Ok(()),
            // Built meanwhile by another command: that one stands.
            Err(_) if self.built() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }
}

/// The key of a range of host ids.
pub(crate) fn range_key(r: IdRange) -> String {
    format!("{}-{}", r.base, r.count)
}

/// The range a key names.
pub(crate) fn parse_range_key(key: &str) -> Option<IdRange> {
    let (base, count) = key.split_once('-')?;
    Some(IdRange {
        base: base.parse().ok()?,
        count: count.parse().ok()?,
    })
}

impl Host {
    /// The claims on addresses of network `net`, built from the configs if
    /// this root has none yet.
    pub(crate) fn address_claims(&self, net: &str) -> Result<Claims> {
        let c = Claims::new(self.root().join("ips").join(net));
        if !c.built() {
            let configs = self.configs()?;
            c.build(configs.iter().flat_map(|v| {
                v.nics
                    .iter()
                    .filter(|n| n.net == net)
                    .map(|n| (n.ip.to_string(), v.name.clone()))
            }))?;
        }
        Ok(c)
    }

    /// The claims on ranges of host ids, built from the configs if this root
    /// has none yet.
    pub(crate) fn range_claims(&self) -> Result<Claims> {
        let c = Claims::new(self.root().join("userns"));
        if !c.built() {
            let configs = self.configs()?;
            c.build(
                configs
                    .iter()
                    .filter_map(|v| v.userns.map(|r| (range_key(r), v.name.clone()))),
            )?;
        }
        Ok(c)
    }

    /// The claims on addresses of `net`, as they are: not built before the
    /// first commit on the network (an allocation that is refused changes
    /// nothing).
    pub(crate) fn address_claims_as_is(&self, net: &str) -> Claims {
        Claims::new(self.root().join("ips").join(net))
    }

    /// Whether the claim on `key` in `claims` stops `ve` from having it: held
    /// by another VE whose config has it (`has`).
    pub(crate) fn claim_blocks(
        &self,
        claims: &Claims,
        key: &str,
        ve: &str,
        has: impl Fn(&VeConfig) -> bool,
    ) -> Option<String> {
        let mut holder = claims.holder(key)?;
        // A rename (under its VEs' locks only) retargets a claim and then
        // removes the old config: a holder without a config is stale only if
        // the claim still names it.
        for _ in 0..3 {
            if holder == ve || crate::config::validate_name(&holder).is_err() {
                return None;
            }
            match VeConfig::load(&self.config_path(&holder)).ok().flatten() {
                Some(c) => return has(&c).then_some(holder),
                None => match claims.holder(key) {
                    Some(now) if now != holder => holder = now,
                    _ => return None,
                },
            }
        }
        Some(holder)
    }

    /// Claims everything of `cfg` for it (the caller holds the host lock and
    /// has checked that each is free): its id, its addresses, its range.
    pub(crate) fn claim_all(&self, cfg: &VeConfig) -> Result<()> {
        Claims::new(self.root().join("ids")).take(&cfg.id.to_string(), &cfg.name)?;
        for nic in &cfg.nics {
            self.address_claims(&nic.net)?
                .take(&nic.ip.to_string(), &cfg.name)?;
        }
        if let Some(r) = cfg.userns {
            self.range_claims()?.take(&range_key(r), &cfg.name)?;
        }
        Ok(())
    }

    /// Drops the claims of `cfg` that `old` had and it has not (after a
    /// change of its NICs or range, or for all of them with an empty `cfg`).
    pub(crate) fn release_dropped(&self, old: &VeConfig, cfg: &VeConfig) -> Result<()> {
        let ve = &old.name;
        for nic in &old.nics {
            if !cfg.nics.iter().any(|n| n.net == nic.net && n.ip == nic.ip) {
                Claims::new(self.root().join("ips").join(&nic.net))
                    .release(&nic.ip.to_string(), ve)?;
            }
        }
        if let Some(r) = old.userns
            && cfg.userns != Some(r)
        {
            Claims::new(self.root().join("userns")).release(&range_key(r), ve)?;
        }
        Ok(())
    }

    /// Drops every claim of `ve` whose config is gone: from its last config
    /// when there is one (`cfg`), else by reading every claim.
    pub(crate) fn release_claims(&self, ve: &str, cfg: Option<&VeConfig>) -> Result<()> {
        let ids = Claims::new(self.root().join("ids"));
        let Some(cfg) = cfg else {
            ids.release_all(ve)?;
            let ips = self.root().join("ips");
            if let Ok(rd) = fs::read_dir(&ips) {
                for e in rd.flatten() {
                    if !e.file_name().to_string_lossy().starts_with('.') {
                        Claims::new(e.path()).release_all(ve)?;
                    }
                }
            }
            return Claims::new(self.root().join("userns")).release_all(ve);
        };
        ids.release(&cfg.id.to_string(), ve)?;
        let none = VeConfig {
            nics: Vec::new(),
            userns: None,
            ..cfg.clone()
        };
        self.release_dropped(cfg, &none)
    }

    /// At start: the VE's claims are its own (the caller has checked its id
    /// is unique). A claim missing or stale is
    /// taken; one another VE really holds (a config edited by hand to collide)
    /// refuses the start.
    pub(crate) fn claim_own(&self, cfg: &VeConfig) -> Result<()> {
        let ve = &cfg.name;
        // Its id is its own ([`Host::check_unique_id`] came first).
        let ids = Claims::new(self.root().join("ids"));
        if ids.holder(&cfg.id.to_string()).as_deref() != Some(ve.as_str()) {
            ids.take(&cfg.id.to_string(), ve)?;
        }
        for nic in &cfg.nics {
            let claims = self.address_claims_as_is(&nic.net);
            let key = nic.ip.to_string();
            // No claims yet (the first create, clone or change on the
            // network makes them), or this one is the VE's.
            if !claims.built() || claims.holder(&key).as_deref() == Some(ve.as_str()) {
                continue;
            }
            if let Some(other) = self.claim_blocks(&claims, &key, ve, |c| {
                c.nics.iter().any(|n| n.net == nic.net && n.ip == nic.ip)
            }) {
                return Err(crate::Error::Start {
                    ve: ve.clone(),
                    reason: format!(
                        "its address {} on network {} is VE {other}'s too (edited config?)",
                        nic.ip, nic.net
                    ),
                });
            }
            claims.take(&key, ve)?;
        }
        if let Some(r) = cfg.userns {
            let claims = Claims::new(self.root().join("userns"));
            let key = range_key(r);
            if claims.built() && claims.holder(&key).as_deref() != Some(ve.as_str()) {
                // Overlaps (not only equal ranges) were refused when the
                // range was picked; an edited config is caught here by key.
                if let Some(other) = self.claim_blocks(&claims, &key, ve, |c| c.userns == Some(r)) {
                    return Err(crate::Error::Start {
                        ve: ve.clone(),
                        reason: format!(
                            "its host id range {r} is VE {other}'s too (edited config?)"
                        ),
                    });
                }
                claims.take(&key, ve)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vectl-claims-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn claims_are_taken_replaced_and_released_only_by_their_holder() {
        let d = tmp();
        let c = Claims::new(d.join("ips").join("n"));
        assert!(c.keys().unwrap().is_empty());
        assert!(!c.built());
        assert!(c.take("10.0.0.2", "a").is_err());
        assert!(!c.built());
        c.build([]).unwrap();
        c.take("10.0.0.2", "a").unwrap();
        c.take("10.0.0.3", "b").unwrap();
        assert_eq!(c.holder("10.0.0.2").as_deref(), Some("a"));
        let mut keys = c.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["10.0.0.2", "10.0.0.3"]);
        c.release("10.0.0.3", "a").unwrap();
        assert_eq!(c.holder("10.0.0.3").as_deref(), Some("b"));
        c.take("10.0.0.3", "a").unwrap();
        assert_eq!(c.holder("10.0.0.3").as_deref(), Some("a"));
        c.release_all("a").unwrap();
        assert!(c.keys().unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn what_a_killed_take_left_goes_with_its_ves_release() {
        let d = tmp();
        let c = Claims::new(d.join("ids"));
        c.build([]).unwrap();
        let all = |c: &Claims| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&c.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // A take killed between its link and the rename, by two VEs.
        std::os::unix::fs::symlink("a", c.temp("100", "a")).unwrap();
        std::os::unix::fs::symlink("ab", c.temp("101", "ab")).unwrap();
        assert!(c.keys().unwrap().is_empty(), "a leftover is no claim");
        c.release("100", "a").unwrap();
        assert_eq!(all(&c), [".101.ab"]);
        std::os::unix::fs::symlink("a", c.temp("102", "a")).unwrap();
        c.take("103", "a").unwrap();
        c.release_all("a").unwrap();
        assert_eq!(all(&c), [".101.ab"], "only a's go");
        c.release_all("ab").unwrap();
        assert!(all(&c).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_build_is_whole_and_does_not_replace_one_made_meanwhile() {
        let d = tmp();
        let c = Claims::new(d.join("userns"));
        c.build([
            ("1-2".to_string(), "a".to_string()),
            ("1-2".to_string(), "b".to_string()),
            ("5-2".to_string(), "c".to_string()),
        ])
        .unwrap();
        assert_eq!(c.holder("1-2").as_deref(), Some("a"));
        assert_eq!(c.keys().unwrap().len(), 2);
        c.build([("9-2".to_string(), "z".to_string())]).unwrap();
        assert!(c.holder("9-2").is_none());
        // No work directory is left beside it.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        assert_eq!(
            parse_range_key(&range_key(IdRange { base: 7, count: 3 })),
            Some(IdRange { base: 7, count: 3 })
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
