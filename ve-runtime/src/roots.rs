//! The state roots of one host. Every root has an identity, recorded in its
//! settings at `init`, and every host-global object it makes is named from it
//! ([`netns::model::Names`]: nft tables, bridges, ports, IFBs; the default
//! cgroup parent `vectl-<identity>`), so two roots never see or touch each
//! other's. A root made before identities keeps the names it had (`vectl`,
//! `vn*`).
//!
//! What names cannot keep apart — subnets, published host ports, the cgroup
//! parent an operator gives — is checked against the other roots, which a root
//! finds in the host's registry: a directory (`/var/lib/vectl-roots`, or
//! `$VECTL_REGISTRY`) of one symlink per root, named by its identity (`legacy`
//! for a root from before identities) and pointing to its state directory. Every
//! command registers its root again if its entry is missing (one `readlink`
//! when it is there); an entry whose root is gone, or no longer has that
//! identity, counts for nothing and is replaced when its identity is taken again.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use netns::model::{IDENTITY_FIRST, Names, NetConfig};

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::Lock;
use crate::host::{Host, HostSettings};

/// The environment variable that moves the registry (tests give every host a
/// registry of its own).
pub const REGISTRY_ENV: &str = "VECTL_REGISTRY";

/// Where the registry is by default.
pub const DEFAULT_REGISTRY: &str = "/var/lib/vectl-roots";

/// The registry's name for a root without an identity.
const LEGACY: &str = "legacy";

/// The registry in use.
pub(crate) fn registry_dir() -> PathBuf {
    std::env::var_os(REGISTRY_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_REGISTRY), PathBuf::from)
}

/// The registry's name for a root with `identity`.
fn key(identity: Option<&str>) -> &str {
    identity.unwrap_or(LEGACY)
}

/// Another root on this host.
#[derive(Debug, Clone)]
pub(crate) struct OtherRoot {
    pub root: PathBuf,
    pub settings: HostSettings,
}

impl OtherRoot {
    /// Its networks (a network config it cannot read is skipped: it is that
    /// root's to report).
    pub(crate) fn nets(&self) -> Vec<NetConfig> {
        read_tomls(&self.root.join("nets"))
    }

    /// Its VEs' configs (unreadable ones skipped, as above).
    pub(crate) fn ves(&self) -> Vec<VeConfig> {
        read_tomls(&self.root.join("ves"))
    }
}

/// The `*.toml` files of `dir` that parse as `T`.
fn read_tomls<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".toml")))
        .filter_map(|e| {
            let mut text = String::new();
            fs::File::open(e.path())
                .and_then(|mut f| f.read_to_string(&mut text))
                .ok()?;
            toml::from_str(&text).ok()
        })
        .collect()
}

/// The root an entry points to, if it is alive: its settings are there and
/// have the entry's identity.
fn alive(entry: &str, root: &Path) -> Option<HostSettings> {
    let s = crate::host::load_settings(&root.join("vectl.toml")).ok()??;
    (key(s.identity.as_deref()) == entry).then_some(s)
}

/// `root` with symlinks resolved, so that two spellings of a root are one entry.
fn canonical(root: &Path) -> PathBuf {
    fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
}

/// The host's registry of roots.
#[derive(Debug)]
pub(crate) struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub(crate) fn open() -> Registry {
        Registry {
            dir: registry_dir(),
        }
    }

    pub(crate) fn lock(&self) -> Result<Lock> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        Lock::acquire(&self.dir.join(".lock"))
    }

    fn target(&self, entry: &str) -> Option<PathBuf> {
        fs::read_link(self.dir.join(entry)).ok()
    }

    /// The live roots of the registry, but `root`, with their entries' names.
    fn live(&self, root: &Path) -> Vec<(String, OtherRoot)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Some(target) = self.target(&name) else {
                continue;
            };
            if target == root {
                continue;
            }
            if let Some(settings) = alive(&name, &target) {
                out.push((
                    name,
                    OtherRoot {
                        root: target,
                        settings,
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The other live roots of this host.
    pub(crate) fn others(&self, root: &Path) -> Vec<OtherRoot> {
        self.live(&canonical(root))
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// Records `root` under its identity. A second root without an identity is
    /// not recorded (the first keeps the entry); a live root that has the
    /// identity already is an error.
    pub(crate) fn register(&self, identity: Option<&str>, root: &Path) -> Result<()> {
        let entry = key(identity);
        // Every command comes here: one readlink when the entry names the root
        // as given (the usual case), path resolution only otherwise.
        if self.target(entry).as_deref() == Some(root) {
            return Ok(());
        }
        let root = &canonical(root);
        if self.target(entry).as_deref() == Some(root) {
            return Ok(());
        }
        let _lock = self.lock()?;
        if let Some(other) = self.target(entry)
            && other != *root
            && alive(entry, &other).is_some()
        {
            if identity.is_none() {
                return Ok(());
            }
            return Err(Error::Refused {
                what: root.display().to_string(),
                reason: format!(
                    "its identity {entry} is root {}'s too (a copied state directory?): \
                     names on the host would clash; give this root another two \
                     letters as `identity` in its vectl.toml",
                    other.display()
                ),
            });
        }
        self.write(entry, root)
    }

    /// Removes `root`'s entry (if it is `root`'s).
    pub(crate) fn unregister(&self, identity: Option<&str>, root: &Path) -> Result<()> {
        let root = &canonical(root);
        let entry = key(identity);
        let _lock = self.lock()?;
        if self.target(entry).as_deref() == Some(root) {
            crate::fsutil::remove_file(&self.dir.join(entry))?;
        }
        Ok(())
    }

    /// Removes every entry that points to `root` (a first `init` that failed).
    pub(crate) fn forget(&self, root: &Path) {
        let root = canonical(root);
        let Ok(_lock) = self.lock() else {
            return;
        };
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if fs::read_link(e.path()).is_ok_and(|t| t == root) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// The identities a new root may take: none that a live root has (or a
    /// root being made, whose entry is there before its settings), nor one
    /// whose interface prefix a link of this host's already starts with. The
    /// caller holds the lock.
    fn free_identities(&self) -> Vec<String> {
        let taken: BTreeSet<String> = fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|name| {
                        self.target(name).is_some_and(|t| {
                            t.is_dir()
                                && match crate::host::load_settings(&t.join("vectl.toml")) {
                                    Ok(Some(s)) => key(s.identity.as_deref()) == name,
                                    Ok(None) => true,
                                    Err(_) => false,
                                }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let links: Vec<String> = fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut free = Vec::new();
        for a in IDENTITY_FIRST.chars() {
            for b in 'a'..='z' {
                let id = format!("{a}{b}");
                let prefix = Names::new(Some(&id)).prefix();
                if !taken.contains(&id) && !links.iter().any(|l| l.starts_with(&prefix)) {
                    free.push(id);
                }
            }
        }
        free
    }

    /// Picks the identity of a new root (`wanted`, if given and free; else a
    /// random free one) and records `root` under it.
    pub(crate) fn claim_identity(&self, wanted: Option<&str>, root: &Path) -> Result<String> {
        let root = &canonical(root);
        let _lock = self.lock()?;
        let id = {
            let free = self.free_identities();
            match wanted {
                Some(w) => {
                    if !Names::valid_identity(w) {
                        return Err(Error::Option {
                            option: format!("--identity {w}"),
                            reason: format!(
                                "an identity is two lower-case letters, the first one of {IDENTITY_FIRST}"
                            ),
                        });
                    }
                    if !free.iter().any(|f| f == w) {
                        let whose = self
                            .target(w)
                            .filter(|t| alive(w, t).is_some())
                            .map_or_else(
                                || {
                                    format!(
                                        "interfaces named {}* exist",
                                        Names::new(Some(w)).prefix()
                                    )
                                },
                                |t| format!("it is root {}'s", t.display()),
                            );
                        return Err(Error::Option {
                            option: format!("--identity {w}"),
                            reason: format!("taken: {whose}"),
                        });
                    }
                    w.to_string()
                }
                None => {
                    if free.is_empty() {
                        return Err(Error::Refused {
                            what: root.display().to_string(),
                            reason: "no free root identity on this host".into(),
                        });
                    }
                    let mut b = [0u8; 4];
                    fs::File::open("/dev/urandom")
                        .and_then(|mut f| f.read_exact(&mut b))
                        .map_err(io_err(Path::new("/dev/urandom")))?;
                    free[u32::from_ne_bytes(b) as usize % free.len()].clone()
                }
            }
        };
        self.write(&id, root)?;
        Ok(id)
    }

    /// Points entry `entry` at `root` (replacing what was there); the caller
    /// holds the lock.
    fn write(&self, entry: &str, root: &Path) -> Result<()> {
        let path = self.dir.join(entry);
        let tmp = self.dir.join(format!(".{entry}.tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(root, &tmp).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

impl Host {
    /// How this root names what it makes on the host.
    pub fn names(&self) -> Names {
        Names::new(self.settings().identity.as_deref())
    }

    /// The state directories of the other live roots of this host.
    pub fn other_roots(&self) -> Vec<PathBuf> {
        self.others().into_iter().map(|o| o.root).collect()
    }

    /// The other live roots of this host.
    pub(crate) fn others(&self) -> Vec<OtherRoot> {
        Registry::open().others(self.root())
    }
}

/// The state directories of every live root of this host (the registry's).
pub fn registered_roots() -> Vec<PathBuf> {
    // No root is named "": every live one is an other.
    Registry::open()
        .others(Path::new(""))
        .into_iter()
        .map(|o| o.root)
        .collect()
}

/// What `vectl host teardown` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TornDown {
    /// VEs that were running and were stopped.
    pub stopped: Vec<String>,
    /// Networks whose links (bridges, IFBs, VLAN links, routes) went.
    pub networks: Vec<String>,
    /// The nft tables removed (one name, in the ip, ip6 and bridge families).
    pub nft_tables: String,
    /// cgroup parent directories removed.
    pub cgroups: Vec<PathBuf>,
    /// The pool, if vectl had mounted it (an image or a device) and unmounted it.
    pub unmounted: Option<PathBuf>,
}

impl Host {
    /// Takes everything this root made on the host away and leaves its state
    /// directory as it is: stops its VEs, removes its networks' links and its
    /// nft tables and cgroup parents, unmounts the pool vectl mounted (its loop
    /// device goes with it) and leaves the registry. Nothing of another root's
    /// is touched: every name removed is this root's (see [`Names`]). The
    /// next command on the root makes what it needs again, as after a reboot.
    pub fn teardown(&self, stop: crate::options::StopOptions) -> Result<TornDown> {
        let mut done = TornDown::default();
        for cfg in self.configs()? {
            if let crate::ve::StopOutcome::AlreadyStopped = self.stop(&cfg.name, stop)? {
                continue;
            }
            done.stopped.push(cfg.name);
        }
        let _host = self.lock_host()?;
        for net in self.net_configs()? {
            let n = net.clone();
            netns::link::on_host(|h| async move { netns::link::net_down(&h, &n).await }).map_err(
                |e| Error::Net {
                    net: net.name.clone(),
                    reason: e.to_string(),
                },
            )?;
            crate::fsutil::remove_file(&self.net_marker(&net.name))?;
            done.networks.push(net.name);
        }
        netns::nft::Firewall {
            names: self.names(),
            ..Default::default()
        }
        .apply()
        .map_err(Error::Netns)?;
        done.nft_tables = self.names().table();
        for dir in self.cgroups()?.parents() {
            match fs::remove_dir(&dir) {
                Ok(()) => done.cgroups.push(dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Refused {
                        what: dir.display().to_string(),
                        reason: format!(
                            "cannot remove the cgroup parent: {e} (cgroups of another owner below it?)"
                        ),
                    });
                }
            }
        }
        // A pool vectl mounted (an image or a device, btrfs or xfs); never
        // the operator's own mount.
        if matches!(
            self.settings().pool_source,
            Some(quota::Source::Image { .. } | quota::Source::Device { .. })
        ) {
            let dir = self.storage().dir().to_path_buf();
            if quota::is_mount_point(&dir) {
                quota::Pool::unmount(&dir)?;
                done.unmounted = Some(dir);
            }
        }
        Registry::open().unregister(self.settings().identity.as_deref(), self.root())?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with `identity` at `dir/name` (settings only).
    fn root(dir: &Path, name: &str, identity: Option<&str>) -> PathBuf {
        let r = dir.join(name);
        fs::create_dir_all(&r).unwrap();
        let s = HostSettings {
            identity: identity.map(str::to_string),
            ..HostSettings::default()
        };
        fs::write(r.join("vectl.toml"), toml::to_string(&s).unwrap()).unwrap();
        r
    }

    #[test]
    fn roots_register_find_each_other_and_never_share_an_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry {
            dir: tmp.path().join("reg"),
        };
        let a = root(tmp.path(), "a", Some("ab"));
        let b = root(tmp.path(), "b", Some("ac"));
        reg.register(Some("ab"), &a).unwrap();
        reg.register(Some("ac"), &b).unwrap();
        let others: Vec<PathBuf> = reg.others(&a).into_iter().map(|o| o.root).collect();
        assert_eq!(others, vec![b.clone()]);
        // A copy of root a has its identity: refused, naming a.
        let copy = root(tmp.path(), "copy", Some("ab"));
        let e = reg.register(Some("ab"), &copy).unwrap_err().to_string();
        assert!(
            e.contains("identity ab") && e.contains(&a.display().to_string()),
            "{e}"
        );
        // A new root never gets a live root's identity, nor one being made.
        let c = tmp.path().join("c");
        fs::create_dir_all(&c).unwrap();
        let free = reg.free_identities();
        assert!(!free.iter().any(|f| f == "ab" || f == "ac"));
        let id = reg.claim_identity(None, &c).unwrap();
        assert!(Names::valid_identity(&id) && id != "ab" && id != "ac");
        assert!(
            !reg.free_identities().contains(&id),
            "claimed before its settings exist"
        );
        let e = reg.claim_identity(Some("ac"), &c).unwrap_err().to_string();
        assert!(e.contains(&b.display().to_string()), "{e}");
        assert!(
            reg.claim_identity(Some("na"), &c).is_err(),
            "not a valid identity"
        );
        reg.forget(&c);
        assert!(reg.free_identities().contains(&id));
        // A root that is gone counts for nothing; its identity is free again.
        fs::remove_dir_all(&b).unwrap();
        assert!(reg.others(&a).is_empty());
        assert!(reg.free_identities().iter().any(|f| f == "ac"));
        // Unregistering takes only the root's own entry.
        reg.unregister(Some("ab"), &copy).unwrap();
        assert_eq!(fs::read_link(reg.dir.join("ab")).unwrap(), a);
        reg.unregister(Some("ab"), &a).unwrap();
        assert!(fs::read_link(reg.dir.join("ab")).is_err());
    }

    #[test]
    fn an_identity_that_is_not_two_letters_is_a_corrupt_setting() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().join("r");
        fs::create_dir_all(&r).unwrap();
        fs::write(r.join("vectl.toml"), "version = 1\nidentity = \"../x\"\n").unwrap();
        let e = crate::host::load_settings(&r.join("vectl.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity \"../x\""), "{e}");
        assert!(alive("../x", &r).is_none());
    }

    #[test]
    fn a_second_root_from_before_identities_is_not_recorded_over_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry {
            dir: tmp.path().join("reg"),
        };
        let a = root(tmp.path(), "a", None);
        let b = root(tmp.path(), "b", None);
        reg.register(None, &a).unwrap();
        reg.register(None, &b).unwrap();
        assert_eq!(fs::read_link(reg.dir.join(LEGACY)).unwrap(), a);
        assert_eq!(reg.others(&b).len(), 1);
    }
}
