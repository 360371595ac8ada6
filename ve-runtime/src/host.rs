//! The host: its state directory (`--root`, default /var/lib/vectl), settings
//! (`vectl.toml`), pool, template store and cgroup backend.
//!
//! ```text
//! vectl.toml        host settings
//! pool/             storage pool (templates/, ves/)
//! ves/<name>.toml   VE configs; <name>.toml.destroying while a destroy runs
//! ids/<id>          symlink to the VE name holding that id (claims: crate::claims)
//! ips/<net>/<ip>    symlink to the VE name holding that address (made on first use)
//! userns/<b>-<n>    symlink to the VE name holding that host id range (the same)
//! run/<name>.json   runtime facts of running VEs
//! mnt/<name>/       mount point of the VE's root (inside its own mount namespace)
//! locks/            one lock file per VE, one for the host, one per template
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupBackend, CgroupSettings};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{Lock, write_atomic};
use crate::limits::{Capacity, HostFacts, IoDevice, Limits, NoIoDevice};
use crate::units::{Amount, Percent, Size};

/// The default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/vectl";

/// Host settings, `vectl.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// Settings format version.
    pub version: u32,
    /// Storage backend of the pool.
    #[serde(default)]
    pub backend: quota::Backend,
    /// The pool directory; absent = `<root>/pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_dir: Option<PathBuf>,
    /// btrfs: what the pool is mounted from (an image, a device, or the
    /// operator's own mount), so any command can mount it again after a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_source: Option<quota::Source>,
    /// Where VE cgroups go.
    #[serde(default)]
    pub cgroup: CgroupSettings,
    /// What guarantees may not promise away: kept for the host itself.
    #[serde(default)]
    pub reserve: Reserve,
    /// Limits a VE created without them gets.
    #[serde(default)]
    pub defaults: VeDefaults,
    /// What the root's host-global names derive from (`roots.rs`); none in a
    /// root made before roots had identities, which keeps its names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The /proc view through LXCFS (`procview.rs`).
    #[serde(default)]
    pub proc_view: crate::procview::ProcViewSettings,
}

/// The limits `create` gives a VE that names none of its own, so that no VE is
/// unbounded by accident: one runaway VE must not take the host's memory or
/// process table. `--ram unlimited` / `--pids unlimited` opt out per VE; `vectl
/// host set --default-ram/--default-pids` changes them per root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeDefaults {
    /// RAM limit (`None`: none, written `unlimited`; a missing key: 1G).
    #[serde(default = "default_ram", with = "limit_or_unlimited")]
    pub ram: Option<Amount>,
    /// Process and thread limit (`None`: none; a missing key: 2048).
    #[serde(default = "default_pids", with = "limit_or_unlimited")]
    pub pids: Option<u64>,
}

fn default_ram() -> Option<Amount> {
    Some(Amount::Bytes(Size(1 << 30)))
}

fn default_pids() -> Option<u64> {
    Some(2048)
}

/// An optional limit in vectl.toml, `unlimited` for none: a key left out keeps
/// its built-in default instead of meaning no limit.
mod limit_or_unlimited {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr<T> {
        Value(T),
        Word(String),
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<T>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(t) => t.serialize(s),
            None => s.serialize_str("unlimited"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> std::result::Result<Option<T>, D::Error> {
        match Repr::<T>::deserialize(d)? {
            Repr::Value(t) => Ok(Some(t)),
            Repr::Word(w) if w == "unlimited" => Ok(None),
            Repr::Word(w) => Err(serde::de::Error::custom(format!(
                "{w:?}: expected a limit or \"unlimited\""
            ))),
        }
    }
}

impl Default for VeDefaults {
    fn default() -> Self {
        VeDefaults {
            ram: default_ram(),
            pids: default_pids(),
        }
    }
}

/// The host's own share, kept out of VE guarantees by admission control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Share of the host's CPU time.
    pub cpu: Percent,
    /// RAM, absolute or a share of the host's.
    pub ram: Amount,
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve {
            cpu: Percent(5.0),
            ram: Amount::Bytes(Size(256 << 20)),
        }
    }
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            version: 1,
            backend: quota::Backend::Btrfs,
            pool_dir: None,
            pool_source: None,
            cgroup: CgroupSettings::default(),
            reserve: Reserve::default(),
            defaults: VeDefaults::default(),
            identity: None,
            proc_view: crate::procview::ProcViewSettings::default(),
        }
    }
}

/// A change of host settings (`vectl host set`); `None` = keep. For the VE
/// defaults `Some(None)` means no limit.
#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    pub reserve_cpu: Option<Percent>,
    pub reserve_ram: Option<Amount>,
    pub default_ram: Option<Option<Amount>>,
    pub default_pids: Option<Option<u64>>,
    /// Bind LXCFS's files into VEs at start.
    pub proc_view: Option<bool>,
    /// Where LXCFS is mounted.
    pub lxcfs_dir: Option<PathBuf>,
    /// Accept a raised reserve that does not fit beside the guarantees of the
    /// running VEs (admission control, see `admission.rs`).
    pub force: bool,
}

/// Options of `vectl init`; `None` = default (or keep what is there).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub cgroup_parent: Option<String>,
    pub backend: Option<quota::Backend>,
    pub pool_dir: Option<PathBuf>,
    /// btrfs: the size of a new pool image (default: half the free space).
    pub pool_size: Option<u64>,
    /// btrfs: a block device for the pool instead of an image.
    pub pool_dev: Option<PathBuf>,
    /// Do not make the default nat network.
    pub no_net: bool,
    /// The root's identity (default: a free one, at random).
    pub identity: Option<String>,
}

/// The directories `init` makes in the state directory (besides `locks`).
const INIT_DIRS: [&str; 6] = ["ves", "ids", "run", "mnt", "pool", "nets"];

/// The largest default pool image: bigger pools are asked for by size.
const MAX_DEFAULT_POOL: u64 = 1 << 40;

/// An opened host state directory.
#[derive(Debug)]
pub struct Host {
    root: PathBuf,
    settings: HostSettings,
    pool: quota::Pool,
    templates: ve_templates::TemplateStore,
    cgroups: OnceLock<Box<dyn CgroupBackend>>,
    capacity: OnceLock<Capacity>,
    io_device: OnceLock<std::result::Result<IoDevice, NoIoDevice>>,
}

impl Host {
    /// Opens an initialised state directory. A path that is not one (nothing
    /// there, an empty or foreign directory) is refused with
    /// [`Error::NotARoot`], and nothing is made: a mistyped `--root` must not
    /// become a new host with a pool, a loop device and a network.
    pub fn open(root: &Path) -> Result<Host> {
        check_root_path(root)?;
        if !root.join("vectl.toml").is_file() {
            return Err(Error::NotARoot(root.to_path_buf()));
        }
        Host::load(root)
    }

    /// Opens the state directory, initialising it with defaults on first use:
    /// for the commands that make things (`create`, `template import`), the
    /// implicit `vectl init`.
    pub fn open_or_init(root: &Path) -> Result<Host> {
        if root.join("vectl.toml").is_file() {
            return Host::load(root);
        }
        Ok(Host::init(root, &InitOptions::default())?.0)
    }

    /// Creates the state directory and settings if needed (idempotent). Returns the
    /// host and whether anything was created. Options that contradict existing
    /// settings are refused.
    pub fn init(root: &Path, opts: &InitOptions) -> Result<(Host, bool)> {
        check_root_path(root)?;
        let root_existed = root.exists();
        let made_before: Vec<bool> = INIT_DIRS.iter().map(|d| root.join(d).exists()).collect();
        let locks_existed = root.join("locks").exists();
        let res = Host::init_locked(root, opts);
        if res.is_err() && !root.join("vectl.toml").exists() {
            crate::roots::Registry::open().forget(root);
            // A first init that failed leaves nothing behind: what it made goes
            // (empty directories only; a pool it made was taken back already).
            for (d, existed) in INIT_DIRS.iter().zip(made_before).rev() {
                if !existed {
                    let _ = fs::remove_dir(root.join(d));
                }
            }
            if !locks_existed {
                let _ = fs::remove_file(root.join("locks/host.lock"));
                let _ = fs::remove_dir(root.join("locks"));
            }
            if !root_existed {
                let _ = fs::remove_dir(root);
            }
        }
        res
    }

    fn init_locked(root: &Path, opts: &InitOptions) -> Result<(Host, bool)> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        fs::create_dir_all(root.join("locks")).map_err(io_err(root))?;
        let _lock = Lock::acquire(&root.join("locks/host.lock"))?;
        let settings_path = root.join("vectl.toml");
        let existing = load_settings(&settings_path)?;
        let created = existing.is_none();
        let settings = match existing {
            Some(s) => {
                check_init_matches(&s, opts, &settings_path)?;
                s
            }
            None => {
                let mut s = HostSettings::default();
                if let Some(b) = opts.backend {
                    s.backend = b;
                }
                if s.backend == quota::Backend::Dir
                    && (opts.pool_size.is_some() || opts.pool_dev.is_some())
                {
                    return Err(Error::Option {
                        option: "--pool-size and --pool-dev".into(),
                        reason: "for the btrfs and xfs backends, not --backend dir".into(),
                    });
                }
                if let Some(p) = &opts.pool_dir {
                    check_root_path(p)?;
                    if p.symlink_metadata().is_ok() && !p.is_dir() {
                        return Err(Error::state(p, "the pool directory is not a directory"));
                    }
                    s.pool_dir = Some(p.clone());
                }
                if let Some(parent) = &opts.cgroup_parent {
                    s.cgroup = cgroup::resolve_parent(&CgroupSettings {
                        parent: parent.clone(),
                        resolved: Default::default(),
                    })?;
                }
                let registry = crate::roots::Registry::open();
                if let Some(other) = registry
                    .others(root)
                    .into_iter()
                    .find(|o| o.settings.cgroup == s.cgroup)
                {
                    return Err(Error::Option {
                        option: format!("--cgroup-parent {}", s.cgroup.parent),
                        reason: format!(
                            "root {}'s cgroup parent already: give this root another",
                            other.root.display()
                        ),
                    });
                }
                // Last: the identity is recorded in the registry at once.
                let id = registry.claim_identity(opts.identity.as_deref(), root)?;
                if opts.cgroup_parent.is_none() {
                    s.cgroup.parent = format!("vectl-{id}");
                }
                s.identity = Some(id);
                s
            }
        };
        for sub in INIT_DIRS.iter().filter(|d| **d != "pool") {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let pool_dir = settings
            .pool_dir
            .clone()
            .unwrap_or_else(|| root.join("pool"));
        // The cgroup parent must work before the settings are written: a host whose
        // `init` failed is not initialised.
        let cg = cgroup::open(&settings.cgroup)?;
        let parents_before: Vec<bool> = cg.parents().iter().map(|p| p.exists()).collect();
        cg.prepare_parent()?;
        // A first init that fails from here takes the cgroup parents it made back.
        let undo_cgroups = || {
            if created {
                for (p, existed) in cg.parents().iter().zip(&parents_before) {
                    if !existed {
                        let _ = fs::remove_dir(p);
                    }
                }
            }
        };
        let mut settings = settings;
        if created && settings.backend.has_file_system() {
            match make_pool(root, &pool_dir, settings.backend, opts) {
                Ok(src) => settings.pool_source = Some(src),
                Err(e) => {
                    undo_cgroups();
                    return Err(e);
                }
            }
        } else if settings.backend.has_file_system() {
            // Mounted again if a reboot unmounted it.
            quota::Pool::open(&pool_dir, settings.backend, settings.pool_source.as_ref())?;
        }
        let made = |r: Result<()>| {
            if r.is_err() && created {
                undo_pool(&pool_dir, settings.pool_source.as_ref());
                undo_cgroups();
            }
            r
        };
        made(
            quota::Pool::init(&pool_dir, settings.backend)
                .map(drop)
                .map_err(Into::into),
        )?;
        if created {
            let text = toml::to_string(&settings)
                .map_err(|e| Error::state(&settings_path, e.to_string()))?;
            made(write_atomic(&settings_path, text.as_bytes(), true))?;
        }
        let host = Host::load(root)?;
        if created && !opts.no_net {
            // A host whose default network cannot be made is not initialised.
            if let Err(e) = host.create_default_net() {
                let _ = fs::remove_file(&settings_path);
                undo_pool(&pool_dir, settings.pool_source.as_ref());
                undo_cgroups();
                return Err(Error::DefaultNet(Box::new(e)));
            }
        }
        Ok((host, created))
    }

    fn load(root: &Path) -> Result<Host> {
        check_root_path(root)?;
        let settings_path = root.join("vectl.toml");
        let settings =
            load_settings(&settings_path)?.ok_or_else(|| Error::NotARoot(root.to_path_buf()))?;
        let pool_dir = settings
            .pool_dir
            .clone()
            .unwrap_or_else(|| root.join("pool"));
        let pool = match quota::Pool::open(&pool_dir, settings.backend, None) {
            Ok(p) => p,
            // Not mounted (after a reboot): mount it, one command at a time.
            Err(quota::Error::Setup { .. }) if settings.pool_source.is_some() => {
                let _lock = Lock::acquire(&root.join("locks/host.lock"))?;
                quota::Pool::open(&pool_dir, settings.backend, settings.pool_source.as_ref())?
            }
            Err(e) => return Err(e.into()),
        };
        let templates =
            ve_templates::TemplateStore::new(&pool.templates_dir(), &root.join("locks"));
        // The registry knows every root that was used since it was made (or
        // cleared): one readlink when the entry is there.
        // A registry that cannot be written (a read-only /var/lib) does not stop
        // the command; a clash of identities does.
        if let Err(e @ Error::Refused { .. }) =
            crate::roots::Registry::open().register(settings.identity.as_deref(), root)
        {
            return Err(e);
        }
        let host = Host {
            root: root.to_path_buf(),
            settings,
            pool,
            templates,
            cgroups: OnceLock::new(),
            capacity: OnceLock::new(),
            io_device: OnceLock::new(),
        };
        // A create or destroy killed while it changed the firewall: finished
        // now, whatever the command (one stat when there is nothing to do).
        if host.firewall_marker().exists() {
            drop(host.lock_host()?);
        }
        Ok(host)
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Host settings.
    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }
    /// The storage pool.
    pub(crate) fn pool(&self) -> &quota::Pool {
        &self.pool
    }
    /// The template store.
    pub(crate) fn store(&self) -> &ve_templates::TemplateStore {
        &self.templates
    }

    /// The cgroup backend (opened on first use).
    pub fn cgroups(&self) -> Result<&dyn CgroupBackend> {
        if let Some(c) = self.cgroups.get() {
            return Ok(c.as_ref());
        }
        let c = cgroup::open(&self.settings.cgroup)?;
        Ok(self.cgroups.get_or_init(|| c).as_ref())
    }

    /// Makes a VE's new cgroups count its I/O where the kernel would not
    /// (cgroup v1 without an I/O limit, see [`CgroupBackend::count_io`]).
    /// Best effort: without a disk under the pool, or where the kernel
    /// refuses, the VE runs and its I/O counters stay at 0.
    pub(crate) fn count_io(&self, ve: &str, limits: &crate::limits::KernelLimits) -> Result<()> {
        let cg = self.cgroups()?;
        if cg.version() == cgroup::CgroupVersion::V1
            && limits.io.is_none()
            && let Ok(d) = &self.facts().io_device
        {
            let _ = cg.count_io(ve, d.major, d.minor);
        }
        Ok(())
    }

    /// What the host has: online CPUs and RAM.
    pub fn capacity(&self) -> Capacity {
        *self.capacity.get_or_init(read_capacity)
    }

    /// What limits are checked against: capacity, and the disk that holds VE files.
    /// What resolving `limits` needs to know about the host: the disk to
    /// throttle is looked up only when they have disk I/O settings (it costs a
    /// walk through sysfs, on every `set`).
    pub fn facts_for(&self, limits: &Limits) -> HostFacts {
        let needs_disk = limits.io_limit.is_some()
            || limits.iops_limit.is_some()
            || limits.io_weight.is_some()
            || limits.io_guarantee.is_some();
        if needs_disk {
            return self.facts();
        }
        HostFacts {
            capacity: self.capacity(),
            io_device: Err(NoIoDevice::NotLookedUp),
        }
    }

    /// Capacity and the disk to throttle (looked up once per command).
    pub fn facts(&self) -> HostFacts {
        HostFacts {
            capacity: self.capacity(),
            io_device: self
                .io_device
                .get_or_init(|| io_device_of(self.pool.dir()))
                .clone(),
        }
    }

    /// Changes host settings (`vectl host set`) and saves them in one write:
    /// everything is checked first, so a refused value changes nothing. A
    /// raised reserve must fit beside the running VEs' guarantees unless
    /// `change.force`.
    pub fn set_settings(&mut self, change: &SettingsChange) -> Result<()> {
        let _lock = self.lock_host()?;
        let mut settings =
            load_settings(&self.root.join("vectl.toml"))?.unwrap_or_else(|| self.settings.clone());
        if let Some(c) = change.reserve_cpu {
            if !(0.0..100.0).contains(&c.0) {
                return Err(Error::Option {
                    option: format!("--reserve-cpu {c}"),
                    reason: "not between 0% and 100%".into(),
                });
            }
            settings.reserve.cpu = c;
        }
        if let Some(r) = change.reserve_ram {
            let bytes = r.bytes_of(self.capacity().ram_bytes);
            if bytes >= self.capacity().ram_bytes {
                return Err(Error::Option {
                    option: format!("--reserve-ram {r}"),
                    reason: "all of the host's RAM or more".into(),
                });
            }
            settings.reserve.ram = r;
        }
        self.admit_reserve(&settings.reserve, change.force)?;
        if let Some(ram) = change.default_ram {
            let probe = Limits {
                ram,
                ..Limits::default()
            };
            if let Err(e) =
                probe.resolve("default", crate::config::FIRST_ID, &self.facts_for(&probe))
            {
                let reason = match e {
                    Error::BadLimit { reason, .. } => reason,
                    e => e.to_string(),
                };
                return Err(Error::Option {
                    option: "--default-ram".into(),
                    reason,
                });
            }
            settings.defaults.ram = ram;
        }
        if let Some(pids) = change.default_pids {
            if pids == Some(0) {
                return Err(Error::Option {
                    option: "--default-pids 0".into(),
                    reason: "a VE needs at least one process".into(),
                });
            }
            settings.defaults.pids = pids;
        }
        if let Some(on) = change.proc_view {
            settings.proc_view.enabled = on;
        }
        if let Some(dir) = &change.lxcfs_dir {
            if !dir.is_absolute() {
                return Err(Error::Option {
                    option: format!("--lxcfs-dir {}", dir.display()),
                    reason: "not an absolute path".into(),
                });
            }
            settings.proc_view.lxcfs_dir = dir.clone();
        }
        let path = self.root.join("vectl.toml");
        let text = toml::to_string(&settings).map_err(|e| Error::state(&path, e.to_string()))?;
        write_atomic(&path, text.as_bytes(), true)?;
        self.settings = settings;
        Ok(())
    }

    /// The limits of a new VE: `update` on top of the root's defaults. A RAM
    /// guarantee beyond the default RAM limit raises that limit to it (a VE
    /// promised 2G is not capped at a 1G it never asked for).
    pub(crate) fn new_ve_limits(&self, update: &crate::limits::LimitsUpdate) -> Limits {
        let defaults = Limits {
            ram: self.settings.defaults.ram,
            pids: self.settings.defaults.pids,
            ..Limits::default()
        };
        let mut limits = update.applied_to(&defaults);
        let total = self.capacity().ram_bytes;
        if update.ram.is_none()
            && let (Some(ram), Some(g)) = (limits.ram, limits.ram_guarantee)
            && g.bytes_of(total) > ram.bytes_of(total)
        {
            limits.ram = Some(g);
        }
        limits
    }

    /// The host reserve in bytes of RAM and a fraction of CPU time.
    pub fn reserve(&self) -> (f64, u64) {
        let cap = self.capacity();
        let ram = self.settings.reserve.ram.bytes_of(cap.ram_bytes);
        (self.settings.reserve.cpu.0 / 100.0, ram)
    }

    pub(crate) fn config_path(&self, ve: &str) -> PathBuf {
        self.root.join("ves").join(format!("{ve}.toml"))
    }
    pub(crate) fn tombstone_path(&self, ve: &str) -> PathBuf {
        self.root.join("ves").join(format!("{ve}.toml.destroying"))
    }
    pub(crate) fn run_path(&self, ve: &str) -> PathBuf {
        self.root.join("run").join(format!("{ve}.json"))
    }
    /// How the VE's init last ended without `vectl stop` (the supervisor's
    /// record, [`crate::state::ExitRecord`]).
    pub(crate) fn exit_path(&self, ve: &str) -> PathBuf {
        self.root.join("run").join(format!("{ve}.exit"))
    }
    /// Exists while `vectl stop` ends the VE: its init's end is no crash.
    pub(crate) fn stopping_marker(&self, ve: &str) -> PathBuf {
        self.root.join("run").join(format!("{ve}.stopping"))
    }
    pub(crate) fn mount_dir(&self, ve: &str) -> PathBuf {
        self.root.join("mnt").join(ve)
    }
    pub(crate) fn id_link(&self, id: u32) -> PathBuf {
        self.root.join("ids").join(id.to_string())
    }
    /// Takes a VE's lock (`locks/ve-NAME.lock`). The lock file goes when the
    /// lock is let go and the VE does not exist (destroyed, or a create that
    /// failed): see [`VeLock`].
    pub(crate) fn lock_ve(&self, ve: &str) -> Result<VeLock> {
        let lock = Lock::acquire(&self.root.join("locks").join(format!("ve-{ve}.lock")))?;
        let lock = VeLock {
            lock: Some(lock),
            traces: vec![
                self.config_path(ve),
                self.tombstone_path(ve),
                self.pool().ve_volume(ve).dir,
                self.mount_dir(ve),
            ],
        };
        // A snapshot whose vectl died while the VE was frozen: thaw it first.
        let marker = self.frozen_marker(ve);
        if marker.exists() {
            self.cgroups()?.thaw(ve)?;
            let _ = fs::remove_file(&marker);
        }
        // A start that died while the VE's disk limit was lifted: put it back.
        if self.disk_lifted_marker(ve).exists() {
            let limit = crate::config::VeConfig::load(&self.config_path(ve))?
                .and_then(|c| c.limits.disk)
                .map(|Size(d)| d);
            self.put_back_disk_limit(ve, limit)?;
        }
        // A set, rollback or restore that was killed half-way: finish it.
        self.finish_killed_changes(ve)?;
        Ok(lock)
    }
    /// Exists while a start has the VE's disk limit lifted.
    pub(crate) fn disk_lifted_marker(&self, ve: &str) -> PathBuf {
        self.root.join("run").join(format!("{ve}.disk-lifted"))
    }
    /// Exists while vectl holds the VE frozen (for a snapshot).
    pub(crate) fn frozen_marker(&self, ve: &str) -> PathBuf {
        self.root.join("run").join(format!("{ve}.frozen"))
    }
    /// Takes the host's lock; first of all under it, a firewall change a
    /// killed vectl left is finished ([`Host::finish_firewall`]).
    pub(crate) fn lock_host(&self) -> Result<Lock> {
        let lock = Lock::acquire(&self.root.join("locks/host.lock"))?;
        self.finish_firewall()?;
        Ok(lock)
    }
}

/// A VE's lock, held until dropped. When it is let go and nothing of the VE is
/// on disk (no config, tombstone, private volume or mount directory: it was
/// destroyed, or never made), its lock file is removed too, so names that come
/// and go leave no lock files behind. Removing it is safe: the holder removes it,
/// and a waiter that had it open takes the lock anew ([`Lock::acquire`]).
#[derive(Debug)]
pub(crate) struct VeLock {
    lock: Option<Lock>,
    /// The VE's files: while one exists, the VE does.
    traces: Vec<PathBuf>,
}

impl Drop for VeLock {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        if !self.traces.iter().any(|p| p.symlink_metadata().is_ok()) {
            // A lock file left behind is harmless: the next destroy removes it.
            let _ = lock.remove();
        }
    }
}

pub(crate) fn load_settings(path: &Path) -> Result<Option<HostSettings>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        what: "host settings",
        reason,
    };
    let s: HostSettings =
        toml::from_str(&text).map_err(|e| corrupt(e.message().replace('\n', " ")))?;
    if let Some(i) = &s.identity
        && !netns::model::Names::valid_identity(i)
    {
        return Err(corrupt(format!(
            "identity {i:?}: two lower-case letters, the first one of {}",
            netns::model::IDENTITY_FIRST
        )));
    }
    Ok(Some(s))
}

/// Makes the btrfs or xfs file system of a new host's pool: on `--pool-dev`, on
/// the operator's mount at `--pool-dir`, or (the default) in a sparse image file
/// `ROOT/pool.img` of `--pool-size` (default: half the free space, at most 1 TiB).
fn make_pool(
    root: &Path,
    pool_dir: &Path,
    backend: quota::Backend,
    opts: &InitOptions,
) -> Result<quota::Source> {
    let how = if let Some(dev) = &opts.pool_dev {
        quota::NewPool::Device { path: dev.clone() }
    } else if opts.pool_dir.is_some() && opts.pool_size.is_none() {
        quota::NewPool::Mounted
    } else {
        let image = root.join("pool.img");
        let size = match opts.pool_size {
            Some(s) => s,
            None => {
                let st = nix::sys::statvfs::statvfs(root)
                    .map_err(|e| Error::state(root, e.to_string()))?;
                let half = st.blocks_available() * st.fragment_size() / 2;
                let size = (half.min(MAX_DEFAULT_POOL)) & !((1 << 20) - 1);
                if size < backend.min_pool_bytes() {
                    return Err(Error::state(
                        root,
                        format!(
                            "only {} free, too little for a pool (free some space, give --pool-dev, or use --backend dir)",
                            crate::units::human_bytes(half * 2)
                        ),
                    ));
                }
                size
            }
        };
        // A leftover of an `init` that was killed before it wrote the settings:
        // nothing can be in it yet.
        if image.exists() {
            undo_pool(
                pool_dir,
                Some(&quota::Source::Image {
                    path: image.clone(),
                }),
            );
        }
        quota::NewPool::Image { path: image, size }
    };
    Ok(quota::Pool::make(pool_dir, backend, &how)?)
}

/// Takes back what [`make_pool`] made for an `init` that failed later.
fn undo_pool(pool_dir: &Path, source: Option<&quota::Source>) {
    if let Some(quota::Source::Image { path }) = source {
        let _ = quota::Pool::unmount(pool_dir);
        let _ = fs::remove_file(path);
    } else if let Some(quota::Source::Device { .. }) = source {
        let _ = quota::Pool::unmount(pool_dir);
    }
}

fn check_init_matches(s: &HostSettings, opts: &InitOptions, path: &Path) -> Result<()> {
    let differs = |what: &str, have: String| {
        Err(Error::state(
            path,
            format!(
                "already initialised with {what} {have}; remove the state directory to change it"
            ),
        ))
    };
    if let Some(p) = &opts.cgroup_parent
        && *p != s.cgroup.parent
    {
        return differs("cgroup parent", s.cgroup.parent.clone());
    }
    if let Some(i) = &opts.identity
        && Some(i) != s.identity.as_ref()
    {
        return differs(
            "identity",
            s.identity
                .clone()
                .unwrap_or_else(|| "none (a root from before identities)".into()),
        );
    }
    if let Some(b) = opts.backend
        && b != s.backend
    {
        return differs("backend", s.backend.to_string());
    }
    if let Some(d) = &opts.pool_dir
        && Some(d) != s.pool_dir.as_ref()
    {
        return differs("pool directory", format!("{:?}", s.pool_dir));
    }
    if let Some(d) = &opts.pool_dev
        && s.pool_source != Some(quota::Source::Device { path: d.clone() })
    {
        return differs("pool source", format!("{:?}", s.pool_source));
    }
    if opts.pool_size.is_some() {
        return Err(Error::state(
            path,
            "already initialised; `vectl pool grow --size SIZE` changes the pool's size",
        ));
    }
    Ok(())
}

/// Paths end up in overlayfs mount options, where ',', ':' and '\' are separators.
fn check_root_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if !p.is_absolute() {
        return Err(Error::state(
            p,
            "the state directory must be an absolute path",
        ));
    }
    if s.contains([',', ':', '\\']) || s.chars().any(char::is_whitespace) {
        return Err(Error::state(
            p,
            "the state directory may not contain ',', ':', '\\' or white space (overlayfs cannot take such paths)",
        ));
    }
    Ok(())
}

fn read_capacity() -> Capacity {
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1)
        .max(1) as u32;
    let ram_bytes = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Capacity { cpus, ram_bytes }
}

/// The file system type of the mount holding `dir` (`tmpfs`, `nfs4`...), from
/// the longest mount point in /proc/self/mountinfo that contains it.
fn fs_type_of(dir: &Path) -> Option<String> {
    let dir = fs::canonicalize(dir).ok()?;
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = PathBuf::from(crate::cgroup::unescape_mount_path(left.split(' ').nth(4)?));
            let fstype = right.split(' ').next()?;
            dir.starts_with(&point)
                .then(|| (point.as_os_str().len(), fstype.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, t)| t)
}

/// The sysfs node of the one block device a btrfs at `dir` lives on.
fn btrfs_device(dir: &Path) -> std::result::Result<PathBuf, NoIoDevice> {
    let fsid = quota::btrfs::fsid(dir).map_err(unreadable(dir))?;
    let devs = PathBuf::from(format!("/sys/fs/btrfs/{fsid}/devices"));
    let nodes: Vec<PathBuf> = fs::read_dir(&devs)
        .map_err(unreadable(&devs))?
        .flatten()
        .filter_map(|e| fs::canonicalize(e.path()).ok())
        .collect();
    match nodes.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(NoIoDevice::Spanning {
            dir: dir.to_path_buf(),
            devices: nodes.len(),
        }),
    }
}

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> NoIoDevice + '_ {
    move |e| NoIoDevice::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The whole disk under `dir`, for I/O limits: the kernel throttles disks, so a
/// partition is traded for its disk. Errors say why there is none (tmpfs, a
/// network file system, a btrfs spanning devices...).
fn io_device_of(dir: &Path) -> std::result::Result<IoDevice, NoIoDevice> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(dir).map_err(unreadable(dir))?;
    let dev = md.dev();
    let (major, minor) = (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    );
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let mut node = match fs::canonicalize(&sys) {
        Ok(node) => node,
        // btrfs gives each subvolume an anonymous device number: its disk is
        // the one device of the file system (the pool's loop device, say).
        Err(_) if quota::btrfs::is_btrfs(dir) => btrfs_device(dir)?,
        Err(_) => {
            return Err(NoIoDevice::NotBlock {
                dir: dir.to_path_buf(),
                fstype: fs_type_of(dir).unwrap_or_else(|| "an unknown file system".into()),
                major,
                minor,
            });
        }
    };
    if node.join("partition").exists() {
        node.pop();
    }
    let name = node
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (major, minor) = fs::read_to_string(node.join("dev"))
        .ok()
        .and_then(|d| {
            let (a, b) = d.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((major, minor));
    let scheduler = fs::read_to_string(node.join("queue/scheduler"))
        .ok()
        .and_then(|s| {
            let open = s.find('[')?;
            let close = s[open..].find(']')? + open;
            Some(s[open + 1..close].to_string())
        })
        .unwrap_or_else(|| "none".into());
    Ok(IoDevice {
        major,
        minor,
        name,
        scheduler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults_of(toml_text: &str) -> VeDefaults {
        let s: HostSettings = toml::from_str(&format!("version = 1\n{toml_text}")).unwrap();
        s.defaults
    }

    #[test]
    fn ve_defaults_keep_each_built_in_value_a_file_leaves_out() {
        let built_in = VeDefaults::default();
        assert_eq!(defaults_of(""), built_in);
        let d = defaults_of("[defaults]\npids = 4096\n");
        assert_eq!(d.ram, built_in.ram);
        assert_eq!(d.pids, Some(4096));
        let d = defaults_of("[defaults]\nram = \"unlimited\"\n");
        assert_eq!(d.ram, None);
        assert_eq!(d.pids, built_in.pids);
        assert!(
            toml::from_str::<HostSettings>("version = 1\n[defaults]\nram = \"banana\"\n").is_err()
        );
        // What is written reads back the same, `unlimited` included.
        let mut s = HostSettings::default();
        s.defaults.pids = None;
        let back: HostSettings = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
