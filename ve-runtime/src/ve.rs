//! The VE lifecycle: create, start, stop, destroy, set, list, show, exec.
//!
//! Every operation on a VE holds that VE's lock for its whole run, so commands on one
//! VE serialize and commands on different VEs run in parallel; create and destroy
//! also hold the host lock (names and ids). State is reconciled from the kernel each
//! time: a VE is running only if its recorded init is alive, and whatever a dead VE
//! or a killed vectl left behind (processes, cgroups, the state file) is cleaned up
//! by the next command that takes the VE's lock.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;

use crate::cgroup::Usage;
use crate::config::{FIRST_ID, MAX_ID, VeConfig, validate_hostname, validate_name};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{Lock, remove_file, temp_path};
use crate::host::{Host, VeLock};
use crate::launch;
use crate::limits::{KernelLimits, Limits, LimitsUpdate};
use crate::options::{CreateOptions, ExecOptions, StopOptions};
use crate::signal::{parse_signal, signal_name};
use crate::state::{self, RunState, Status};
use crate::sys;
use crate::units::Size;

/// One VE as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VeInfo {
    pub id: u32,
    pub name: String,
    pub status: Status,
    pub template: String,
    pub hostname: String,
    /// The init's pid on the host, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Seconds since start, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    pub limits: Limits,
    pub nics: Vec<netns::nic::Nic>,
    /// Its published ports (`publish` in JSON, as the option says).
    #[serde(rename = "publish", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<netns::model::PortMap>,
    /// No user namespace of its own (`--privileged`).
    pub privileged: bool,
    /// Its user namespace's host ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::IdRange>,
    /// --onboot, --boot-order, --restart.
    pub autostart: crate::config::Autostart,
    /// How its init last ended without `vectl stop` (while crashed or
    /// exited, or since it was started again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<crate::state::ExitRecord>,
    /// The host-side ports of its NICs while it runs, in NIC order (`stats`
    /// reads their counters).
    #[serde(skip)]
    pub host_ports: Vec<String>,
}

/// Sets a VE's status, pid and uptime from its runtime state (`None`: stopped).
fn set_run_state(info: &mut VeInfo, rs: Option<&RunState>) {
    info.status = if rs.is_some() {
        Status::Running
    } else {
        Status::Stopped
    };
    info.pid = rs.map(|r| r.pid);
    info.host_ports = rs.map(|r| r.ports.clone()).unwrap_or_default();
    info.uptime_secs = rs.map(|r| state::now_secs().saturating_sub(r.started_at));
}

/// One VE as `show` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VeDetails {
    #[serde(flatten)]
    pub info: VeInfo,
    pub created: String,
    pub init: Vec<String>,
    pub stop_signal: String,
    pub config_path: PathBuf,
    pub private_dir: PathBuf,
    pub template_dir: PathBuf,
    pub cgroups: Vec<PathBuf>,
    /// Limits in the kernel's units, as checked against this host.
    pub kernel_limits: KernelLimits,
    /// Current use, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why the VE cannot start as it is, such as an id another VE has too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Space the private layer takes.
    pub private_bytes: u64,
    /// The disk limit of the VE's private layer, as the pool enforces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
    /// Network interfaces.
    pub interfaces: Vec<netns::nic::NicInfo>,
    /// While running: what the VE's /proc/meminfo and the like show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_view: Option<ProcView>,
    /// While running: whether its console is a pty the supervisor holds
    /// (`vectl console`, `vectl logs`) rather than /dev/null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,
    /// While running: whether sysinfo(2) in it (busybox `free`, `uptime`)
    /// tells its own memory, swap, uptime and tasks, answered by the
    /// supervisor, rather than the host's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysinfo: Option<bool>,
}

/// What a running VE's /proc shows (`procview.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "shows", rename_all = "kebab-case")]
pub enum ProcView {
    /// Its own limits and use, from LXCFS at `lxcfs_dir`.
    Own { lxcfs_dir: PathBuf },
    /// The host's values, and why.
    HostValues { reason: String },
    /// Nothing: LXCFS restarted and the VE's binds are dead until `vectl host
    /// rebind-proc` binds them again.
    Broken { reason: String },
}

/// How `stop` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopOutcome {
    /// It was not running (leftovers, if any, were cleaned up).
    AlreadyStopped,
    /// Init halted within the timeout.
    Halted,
    /// It was killed (fast stop, timeout, or an init that ignores the signal).
    Killed,
}

/// What `set` did.
#[derive(Debug, Clone, Serialize)]
pub struct SetOutcome {
    /// Whether the running VE's kernel limits changed (false = stopped, only saved).
    pub live: bool,
    pub limits: Limits,
}

const DEFAULT_INIT: &str = "/sbin/init";

/// The signal that asks an init program to halt, from what it is: busybox init
/// halts on SIGUSR1, systemd powers off on SIGRTMIN+4, sysvinit and most others on
/// SIGTERM.
fn halt_signal_for(exe: &str) -> i32 {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    let base = base.strip_suffix(" (deleted)").unwrap_or(base);
    match base {
        "busybox" => libc::SIGUSR1,
        "systemd" => libc::SIGRTMIN() + 4,
        _ => libc::SIGTERM,
    }
}

impl Host {
    /// Resolves a name or numeric id to the VE's name.
    pub(crate) fn resolve(&self, name_or_id: &str) -> Result<String> {
        if !name_or_id.is_empty() && name_or_id.bytes().all(|b| b.is_ascii_digit()) {
            let id: u32 = name_or_id
                .parse()
                .map_err(|_| Error::NoSuchVe(name_or_id.to_string()))?;
            let target = fs::read_link(self.id_link(id))
                .map_err(|_| Error::NoSuchVe(name_or_id.to_string()))?;
            let name = target.to_string_lossy().into_owned();
            if validate_name(&name).is_ok() && self.config_path(&name).is_file() {
                return Ok(name);
            }
            return Err(Error::NoSuchVe(name_or_id.to_string()));
        }
        if let Err(e) = validate_name(name_or_id) {
            return Err(if crate::oci::is_managed(name_or_id) {
                Error::OciManaged(name_or_id.to_string())
            } else {
                e
            });
        }
        Ok(name_or_id.to_string())
    }

    /// Resolves a name or id of a VE that exists (has a config). Checked before any
    /// lock is taken, so a mistyped name leaves no trace on disk.
    pub(crate) fn resolve_existing(&self, name_or_id: &str) -> Result<String> {
        let ve = self.resolve(name_or_id)?;
        self.finish_rename_of(&ve)?;
        if self.config_path(&ve).exists() {
            Ok(ve)
        } else if crate::oci::is_managed(&ve) {
            Err(Error::OciManaged(ve))
        } else {
            Err(Error::NoSuchVe(ve))
        }
    }

    pub(crate) fn load_config(&self, ve: &str) -> Result<VeConfig> {
        VeConfig::load(&self.config_path(ve))?.ok_or_else(|| Error::NoSuchVe(ve.to_string()))
    }

    /// The VE's runtime state if its init is alive. The state file is only a hint:
    /// when it is missing or damaged, the state is rebuilt from the kernel (the
    /// process in the VE's cgroup that is PID 1 of its own namespace) and, if
    /// `repair`, written back (the caller holds the VE's lock).
    pub(crate) fn alive_state_with(&self, ve: &str, repair: bool) -> Result<Option<RunState>> {
        let path = self.run_path(ve);
        match RunState::load(&path) {
            Ok(Some(rs)) if rs.is_alive() => {
                if repair {
                    self.cgroups()?.thaw(ve)?;
                }
                return Ok(Some(rs));
            }
            Ok(Some(_)) => return Ok(None),
            Ok(None) | Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        let cg = self.cgroups()?;
        if !cg.exists(ve) {
            return Ok(None);
        }
        let Some(rs) = cg.procs(ve)?.into_iter().find_map(state::recover) else {
            return Ok(None);
        };
        if repair {
            rs.store(&path)?;
        }
        Ok(Some(rs))
    }

    /// [`Host::alive_state_with`] for commands that hold the VE's lock.
    pub(crate) fn alive_state(&self, ve: &str) -> Result<Option<RunState>> {
        self.alive_state_with(ve, true)
    }

    /// Removes what a VE that is not running left behind: processes still in its
    /// cgroups, the cgroups, the state file. Called with the VE's lock held.
    pub(crate) fn clean_up_stopped(&self, ve: &str) -> Result<()> {
        let cg = self.cgroups()?;
        if cg.exists(ve) {
            cg.kill_all(ve)?;
            cg.remove(ve)?;
        }
        // The ports, proxy-ARP entries and traffic classes of its NICs.
        let (cfg, destroyed) = match VeConfig::load(&self.config_path(ve))? {
            Some(c) => (Some(c), false),
            None => (VeConfig::load_from(&self.tombstone_path(ve), ve)?, true),
        };
        if let Some(cfg) = cfg.filter(|c| !c.nics.is_empty()) {
            self.detach_nics(&cfg, destroyed)?;
        }
        remove_file(&self.run_path(ve))?;
        remove_file(&self.stopping_marker(ve))
    }

    /// Creates a VE (stopped).
    pub(crate) fn create(&self, opts: &CreateOptions) -> Result<VeConfig> {
        let name = opts.name.as_str();
        validate_name(name)?;
        // A killed rename may be about to take this name: finished first.
        self.finish_renames()?;
        let tref: ve_templates::TemplateRef = opts.template.parse()?;
        let hostname = opts.hostname.clone().unwrap_or_else(|| name.to_string());
        validate_hostname(&hostname)?;
        let init = match &opts.init {
            Some(cmd) => Some(parse_command(name, cmd)?),
            None => None,
        };
        if let Some(sig) = &opts.stop_signal {
            parse_signal(sig).map_err(|reason| Error::BadLimit {
                ve: name.to_string(),
                reason: format!("--stop-signal: {reason}"),
            })?;
        }
        let limits = self.new_ve_limits(&opts.limits);
        limits.resolve(name, opts.id.unwrap_or(FIRST_ID), &self.facts_for(&limits))?;
        self.check_disk_limit(name, &limits)?;
        if let Some(id) = opts.id
            && !(FIRST_ID..=MAX_ID).contains(&id)
        {
            return Err(Error::BadId {
                id,
                reason: format!("ids run from {FIRST_ID} to {MAX_ID}"),
            });
        }

        // Checked before locking too, so a refused create leaves no trace on disk.
        self.store().resolve(&tref)?;
        if let Some(existing) = VeConfig::load(&self.config_path(name))? {
            return Err(Error::VeExists {
                ve: name.to_string(),
                id: existing.id,
            });
        }
        let _host = self.lock_host()?;
        let _ve = self.lock_ve(name)?;
        let tv = self.store().resolve(&tref)?;
        if let Some(existing) = VeConfig::load(&self.config_path(name))? {
            return Err(Error::VeExists {
                ve: name.to_string(),
                id: existing.id,
            });
        }
        if self.tombstone_path(name).exists() {
            self.finish_interrupted(name)?;
        }
        let id = match opts.id {
            Some(id) => {
                let holder = match self.id_holder(id)? {
                    Some(h) => Some(h),
                    None => self
                        .config_ids()?
                        .into_iter()
                        .find(|(_, i)| *i == id)
                        .map(|(n, _)| n),
                };
                if let Some(holder) = holder {
                    return Err(Error::BadId {
                        id,
                        reason: format!("in use by VE {holder}"),
                    });
                }
                id
            }
            None => self.free_id()?,
        };
        let nic_reqs = match &opts.nics {
            Some(r) => r.clone(),
            None if self.net(crate::net::DEFAULT_NET).is_ok() => vec![netns::nic::NicRequest {
                net: crate::net::DEFAULT_NET.into(),
                ip: None,
            }],
            None => Vec::new(),
        };
        let nics = self.allocate_nics(name, &nic_reqs)?;
        let (userns, _ids_lock) = if opts.privileged {
            (None, None)
        } else {
            let (range, lock) = self.allocate_ids(name)?;
            (Some(range), lock)
        };
        let mut cfg = VeConfig {
            id,
            name: name.to_string(),
            template: tv.reference(),
            hostname,
            init,
            stop_signal: opts.stop_signal.clone(),
            created: state::now_rfc3339(),
            limits,
            nics,
            ports: opts.ports.clone(),
            userns,
            history: Vec::new(),
            autostart: opts.autostart.clone(),
        };
        cfg.ports.sort();
        cfg.ports.dedup();
        self.check_net_settings(&cfg)?;
        // As if it started now: a VE that could never start is refused up front.
        self.admit(name, &cfg.limits, opts.force)?;
        if !opts.force {
            self.admit_net(&cfg, &cfg.limits)?;
        }
        // Leftovers of a create that was killed before it wrote the config
        // (its claims come after its volume).
        if self.pool().ve_volume(name).dir.exists() {
            self.release_claims(name, None)?;
        }
        self.pool().remove_ve_volume(name)?;
        crate::failpoint::hit("create-before-volume");
        // Everything made from here on goes again if a step fails (a full
        // state root, a refused disk limit or firewall element).
        let made = (|| {
            self.pool().create_ve_volume(name)?;
            if let Some(Size(d)) = cfg.limits.disk {
                self.pool()
                    .set_disk_limit(name, Some(d))
                    .map_err(|e| disk_error(name, e))?;
            }
            let mnt = self.mount_dir(name);
            fs::create_dir_all(&mnt).map_err(io_err(&mnt))?;
            crate::failpoint::hit("create-after-volume");
            self.claim_all(&cfg)?;
            if !cfg.nics.is_empty() {
                // Its addresses and MACs are allowed before it can first send.
                self.mark_firewall()?;
                self.firewall_ve(&cfg, true)?;
                crate::failpoint::hit("create-after-firewall");
            }
            cfg.store(&self.config_path(name))?;
            remove_file(&self.firewall_marker())
        })();
        if let Err(e) = made {
            let _ = self.finish_destroy(name);
            if !cfg.nics.is_empty() && self.apply_firewall(None).is_ok() {
                let _ = remove_file(&self.firewall_marker());
            }
            return Err(match e {
                e @ Error::Io { .. } => Error::ve(name, format!("not created: {e}")),
                e => e,
            });
        }
        Ok(cfg)
    }

    /// Whether a VE holds `id` (its link or any config).
    pub(crate) fn id_taken(&self, id: u32) -> Result<bool> {
        Ok(self.id_holder(id)?.is_some() || self.config_ids()?.iter().any(|(_, i)| *i == id))
    }

    /// The VE holding `id`, if any (a link whose VE has no config is free).
    fn id_holder(&self, id: u32) -> Result<Option<String>> {
        let Ok(target) = fs::read_link(self.id_link(id)) else {
            return Ok(None);
        };
        let name = target.to_string_lossy().into_owned();
        if validate_name(&name).is_err() {
            return Ok(None);
        }
        Ok(VeConfig::load(&self.config_path(&name))?
            .filter(|c| c.id == id)
            .map(|c| c.name))
    }

    /// The config file of every VE (`ves/NAME.toml` with a valid name),
    /// loaded or not.
    pub(crate) fn config_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root().join("ves");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".toml"))
                .is_some_and(|n| validate_name(n).is_ok())
            {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// The name and id of every VE whose config loads.
    fn config_ids(&self) -> Result<Vec<(String, u32)>> {
        let mut out: Vec<_> = self
            .configs()?
            .into_iter()
            .map(|c| (c.name, c.id))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Refuses a VE whose id another VE's config has too (ids are unique unless
    /// a config was edited): both would get the same id-derived kernel objects.
    /// The VE's own id link is enough; without it every config is read
    /// (`start` then makes the link: [`Host::claim_own`]).
    pub(crate) fn check_unique_id(&self, ve: &str, id: u32) -> Result<()> {
        let ids = crate::claims::Claims::new(self.root().join("ids"));
        if ids.holder(&id.to_string()).as_deref() == Some(ve) {
            return Ok(());
        }
        let twins: Vec<String> = self
            .config_ids()?
            .into_iter()
            .filter(|(n, i)| *i == id && n != ve)
            .map(|(n, _)| n)
            .collect();
        if twins.is_empty() {
            return Ok(());
        }
        Err(Error::DuplicateId {
            ve: ve.to_string(),
            id,
            other: twins.join(", "),
        })
    }

    /// The lowest id not held by a VE: the lowest without an id link when
    /// there are as many links as configs (no config is read), else the
    /// lowest that neither a config nor a link to a VE that exists has. A
    /// link to a VE that exists keeps its id taken even when the VE's config
    /// says another (edited): putting the config back must not make a
    /// duplicate. The id a config was edited *to* is not seen on the fast
    /// path: a new VE may get it, and the edited VE is then refused at start
    /// ([`Host::check_unique_id`] names the other), never both running.
    pub(crate) fn free_id(&self) -> Result<u32> {
        let ids = crate::claims::Claims::new(self.root().join("ids"));
        let linked: std::collections::BTreeSet<u32> =
            ids.keys()?.iter().filter_map(|k| k.parse().ok()).collect();
        let used = if linked.len() >= self.config_files()?.len() {
            linked
        } else {
            let mut used: std::collections::BTreeSet<u32> =
                self.config_ids()?.into_iter().map(|(_, id)| id).collect();
            for id in linked {
                let held = ids
                    .holder(&id.to_string())
                    .is_some_and(|n| validate_name(&n).is_ok() && self.config_path(&n).is_file());
                if held {
                    used.insert(id);
                }
            }
            used
        };
        (FIRST_ID..=MAX_ID)
            .find(|id| !used.contains(id))
            .ok_or(Error::NoFreeId)
    }

    /// Takes the locks for a change to `ve` that may commit guarantees: the host
    /// lock too (before the VE's, as create and destroy take them) when the VE's
    /// config or `also` has guarantees, so admission checks cannot race.
    pub(crate) fn lock_for_guarantees(
        &self,
        ve: &str,
        also: Option<&LimitsUpdate>,
    ) -> Result<(Option<Lock>, VeLock, VeConfig)> {
        let has = |l: &Limits| {
            l.cpu_guarantee.is_some() || l.ram_guarantee.is_some() || l.net_guarantee.is_some()
        };
        let wants = |cfg: &VeConfig| {
            has(&cfg.limits) || also.is_some_and(|u| has(&u.applied_to(&cfg.limits)))
        };
        let mut host = None;
        loop {
            let lock = self.lock_ve(ve)?;
            let cfg = self.load_config(ve)?;
            if host.is_some() || !wants(&cfg) {
                return Ok((host, lock, cfg));
            }
            drop(lock);
            host = Some(self.lock_host()?);
        }
    }

    /// Starts a VE; returns once its init runs. Admission control refuses a VE
    /// whose guarantees do not fit beside the running VEs' unless `force`.
    pub(crate) fn start(&self, name_or_id: &str, force: bool) -> Result<RunState> {
        self.start_unless(name_or_id, force, false)?
            .ok_or_else(|| Error::Start {
                ve: name_or_id.to_string(),
                reason: "internal: not started".into(),
            })
    }

    /// Starts a VE; with `pending_restart` (the supervisor's restart) only
    /// while the record of its init's end is still there: `None` when an
    /// operator's stop or start came first (checked under the VE's lock, so
    /// a `vectl stop` just before this start is never undone by it).
    pub(crate) fn start_unless(
        &self,
        name_or_id: &str,
        force: bool,
        pending_restart: bool,
    ) -> Result<Option<RunState>> {
        let ve = self.resolve_existing(name_or_id)?;
        self.ensure_nets_up(&ve)?;
        let (_host, _lock, mut cfg) = self.lock_for_guarantees(&ve, None)?;
        if pending_restart && !self.exit_path(&ve).exists() {
            return Ok(None);
        }
        if let Some(rs) = self.alive_state(&ve)? {
            return Err(Error::AlreadyRunning { ve, pid: rs.pid });
        }
        self.check_unique_id(&ve, cfg.id)?;
        self.claim_own(&cfg)?;
        // A killed upgrade or rollback: its files and version agree first.
        self.finish_move(&mut cfg)?;
        self.clean_up_stopped(&ve)?;
        let tref: ve_templates::TemplateRef = cfg.template.parse()?;
        let tv = self.store().resolve(&tref).map_err(|e| Error::Start {
            ve: ve.clone(),
            reason: format!("its template: {e}"),
        })?;
        let vol = self.pool().ve_volume(&ve);
        if !vol.upper().is_dir() || !vol.work().is_dir() {
            return Err(Error::Start {
                ve: ve.clone(),
                reason: format!("its private layer {} is missing", vol.dir.display()),
            });
        }
        let limits = cfg
            .limits
            .resolve(&ve, cfg.id, &self.facts_for(&cfg.limits))?;
        self.admit(&ve, &cfg.limits, force)?;
        let nets = self.nets_of(&cfg)?;
        if !force {
            self.admit_net(&cfg, &cfg.limits)?;
        }
        let attachments = self.attachments(&cfg, &nets);
        crate::net::write_net_files(
            &vol.upper(),
            &self.store().path(&tv),
            &cfg.hostname,
            &cfg.nics,
            &nets,
        )?;
        let cg = self.cgroups()?;
        cg.prepare_parent()?;
        cg.create(&ve, &limits)?;
        self.count_io(&ve, &limits)?;
        if let Some(range) = cfg.userns {
            cg.delegate(&ve, range.host_id(0))?;
        }
        crate::failpoint::hit("start-after-cgroup");
        let mountpoint = self.mount_dir(&ve);
        fs::create_dir_all(&mountpoint).map_err(io_err(&mountpoint))?;
        let last_exit = crate::state::ExitRecord::load(&self.exit_path(&ve));
        let view = &self.settings().proc_view;
        let (proc_view, proc_view_off) = if view.enabled {
            match crate::procview::Lxcfs::probe(&view.lxcfs_dir) {
                Ok(l) => (Some(l), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, Some(crate::procview::VIEW_OFF.into()))
        };
        let console = crate::console::Console::open(self.root(), cfg.userns.map(|r| r.host_id(0)));
        let spec = launch::Spec {
            ve: ve.clone(),
            lower: self.store().path(&tv),
            volume: vol.dir.clone(),
            mountpoint,
            userns: cfg.userns,
            hostname: cfg.hostname.clone(),
            init: cfg
                .init
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_INIT.to_string()]),
            proc_view,
            console: console
                .as_ref()
                .map(|c| (c.slave.as_raw_fd(), c.path.clone())),
            // The supervisor that takes the console answers sysinfo(2) too,
            // when /proc shows the VE's own values (busybox `free` takes
            // part of its figures from /proc/meminfo).
            sysinfo: console.is_some() && proc_view_off.is_none(),
        };
        let run_path = self.run_path(&ve);
        let mut recorded = None;
        let placement = cg.placement(&ve)?;
        // overlayfs makes its work directory anew on every mount, which btrfs
        // refuses (EDQUOT) in a VE at its disk limit: a full VE could never start
        // again. The limit is lifted for the moment of the mount and put back once
        // init runs (a marker lets the next command put it back if vectl dies).
        let lifted = match cfg.limits.disk {
            Some(Size(d)) if self.pool().backend().has_limits() => {
                self.lift_disk_limit(&ve)?;
                Some(d)
            }
            _ => None,
        };
        let started = launch::start(&spec, placement, &mut |child| {
            let ns = fs::File::open(format!("/proc/{}/ns/net", child.pid)).map_err(io_err(
                &PathBuf::from(format!("/proc/{}/ns/net", child.pid)),
            ))?;
            let wired = if attachments.is_empty() {
                netns::bring_up_loopback(ns.as_fd()).map(|()| Vec::new())
            } else {
                netns::link::attach(ns.as_fd(), &attachments)
            };
            let ports = wired.map_err(|source| Error::Network {
                ve: ve.clone(),
                source,
            })?;
            let stat = state::proc_stat(child.pid).ok_or_else(|| Error::Start {
                ve: ve.clone(),
                reason: "init died during setup".into(),
            })?;
            let rs = RunState {
                pid: child.pid,
                start_ticks: stat.start_ticks,
                boot_id: state::boot_id(),
                started_at: state::now_secs(),
                ports,
                console: console.is_some(),
                sysinfo: false,
                last_exit: last_exit.clone(),
                proc_view_off: proc_view_off.clone(),
            };
            // Until init runs, its end is a failed start, not a crash: the
            // supervisor is told as by `vectl stop` (removed on success). The
            // exit record went into the run state: removed now, before init
            // runs and could end (and be recorded again).
            crate::fsutil::write_atomic(
                &self.stopping_marker(&ve),
                rs.pid.to_string().as_bytes(),
                false,
            )?;
            rs.store(&run_path)?;
            remove_file(&self.exit_path(&ve))?;
            recorded = Some(rs);
            Ok(())
        });
        if let Some(d) = lifted {
            // If this fails the marker stays, and the next command on the VE
            // puts the limit back; the start itself stands.
            let _ = self.put_back_disk_limit(&ve, Some(d));
        }
        match (started, recorded) {
            (Ok(started), Some(mut rs)) => {
                let _ = remove_file(&self.stopping_marker(&ve));
                // The VE runs either way: a supervisor that went away meanwhile
                // leaves it without a console (`show` says so), not unstarted.
                if let Some(c) = console {
                    let before = (rs.console, rs.sysinfo);
                    let answered = started.sysinfo.is_some();
                    match c.hand_over(&ve, rs.pid, started.sysinfo) {
                        Ok(()) => rs.sysinfo = answered,
                        Err(_) => rs.console = false,
                    }
                    if (rs.console, rs.sysinfo) != before {
                        let _ = rs.store(&run_path);
                    }
                }
                Ok(Some(rs))
            }
            (Ok(_), None) => Err(Error::Start {
                ve,
                reason: "internal: no state recorded".into(),
            }),
            (Err(e), _) => {
                let _ = self.clean_up_stopped(&ve);
                // How the VE ended before this start still stands.
                if let Some(x) = &last_exit {
                    let _ = x.store(&self.exit_path(&ve));
                }
                Err(e)
            }
        }
    }

    /// Stops a VE: asks init to halt, waits up to the timeout, kills what is left.
    pub(crate) fn stop(&self, name_or_id: &str, opts: StopOptions) -> Result<StopOutcome> {
        let ve = self.resolve_existing(name_or_id)?;
        let _lock = self.lock_ve(&ve)?;
        let cfg = self.load_config(&ve)?;
        self.stop_locked(&cfg, opts)
    }

    pub(crate) fn stop_locked(&self, cfg: &VeConfig, opts: StopOptions) -> Result<StopOutcome> {
        let ve = cfg.name.as_str();
        let Some(rs) = self.alive_state(ve)? else {
            // A crashed VE stopped by hand is just stopped: its run state goes
            // first, so the supervisor never finds a dead init without a record.
            self.clean_up_stopped(ve)?;
            remove_file(&self.exit_path(ve))?;
            return Ok(StopOutcome::AlreadyStopped);
        };
        // The supervisor sees the init end: this tells it that is no crash.
        crate::fsutil::write_atomic(
            &self.stopping_marker(ve),
            rs.pid.to_string().as_bytes(),
            false,
        )?;
        remove_file(&self.exit_path(ve))?;
        let mut outcome = StopOutcome::Killed;
        if !opts.fast && !opts.timeout.is_zero() {
            let sig = match &cfg.stop_signal {
                Some(s) => parse_signal(s).map_err(|e| Error::Stop {
                    ve: ve.to_string(),
                    reason: e.to_string(),
                })?,
                None => {
                    let exe = fs::read_link(format!("/proc/{}/exe", rs.pid)).unwrap_or_default();
                    halt_signal_for(&exe.to_string_lossy())
                }
            };
            // An init in its own PID namespace only receives signals it listens
            // for; if it does not, asking is pointless: kill at once.
            if state::init_listens(rs.pid, sig)
                && let Ok(pidfd) = sys::pidfd_open(rs.pid)
                && rs.is_alive()
            {
                crate::failpoint::hit("stop-before-signal");
                if sys::pidfd_send_signal(pidfd.as_fd(), sig).is_ok()
                    && wait_exit(&pidfd, opts.timeout)
                {
                    outcome = StopOutcome::Halted;
                }
            }
        }
        crate::failpoint::hit("stop-before-kill");
        self.clean_up_stopped(ve)?;
        Ok(outcome)
    }

    /// Destroys a VE: its config, private files, cgroups and id. A running VE is
    /// refused unless `force` (then it is killed first).
    pub(crate) fn destroy(&self, name_or_id: &str, force: bool) -> Result<()> {
        let ve = match self.resolve(name_or_id) {
            Ok(v) => v,
            Err(Error::NoSuchVe(_)) if name_or_id.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(Error::NoSuchVe(name_or_id.to_string()));
            }
            Err(e) => return Err(e),
        };
        let exists = |h: &Host| {
            h.config_path(&ve).exists()
                || h.tombstone_path(&ve).exists()
                || h.pool().ve_volume(&ve).dir.exists()
                || h.mount_dir(&ve).exists()
        };
        if !exists(self) {
            return Err(Error::NoSuchVe(ve));
        }
        // A backup sending from one of its snapshots ends first.
        let turn = self.backup_turn(&ve)?;
        let done = self.destroy_in_turn(ve.clone(), force);
        if !self.config_path(&ve).exists() {
            let _ = turn.remove();
        }
        done
    }

    fn destroy_in_turn(&self, ve: String, force: bool) -> Result<()> {
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(&ve)?;
        let Some(cfg) = VeConfig::load(&self.config_path(&ve))? else {
            // A destroy or create that was killed half-way: finish the job.
            let leftovers = self.tombstone_path(&ve).exists()
                || self.pool().ve_volume(&ve).dir.exists()
                || self.mount_dir(&ve).exists();
            if leftovers {
                return self.finish_interrupted(&ve);
            }
            return Err(Error::NoSuchVe(ve));
        };
        // Its NICs' ports, shaping and firewall elements are found through the
        // networks' configs: one that cannot be read is refused before anything
        // changes, rather than leaving the VE half-destroyed.
        if !cfg.nics.is_empty() {
            self.net_configs()
                .map_err(|e| Error::ve(&ve, format!("cannot destroy it: {e}")))?;
        }
        if let Some(rs) = self.alive_state(&ve)? {
            if !force {
                return Err(Error::Running { ve, pid: rs.pid });
            }
            self.stop_locked(
                &cfg,
                StopOptions {
                    timeout: Duration::ZERO,
                    fast: true,
                },
            )?;
        }
        let cfg_path = self.config_path(&ve);
        if !cfg.nics.is_empty() {
            self.mark_firewall()?;
        }
        fs::rename(&cfg_path, self.tombstone_path(&ve)).map_err(io_err(&cfg_path))?;
        crate::failpoint::hit("destroy-after-tombstone");
        self.finish_destroy(&ve)?;
        self.firewall_ve(&cfg, false)?;
        remove_file(&self.firewall_marker())
    }

    /// [`Host::finish_destroy`] for a destroy or create that was killed: which
    /// firewall entries it left is not known, so the ruleset is made again from
    /// the configs. The caller holds the host lock.
    pub(crate) fn finish_interrupted(&self, ve: &str) -> Result<()> {
        self.finish_destroy(ve)?;
        if !self.net_configs()?.is_empty() {
            self.apply_firewall(None)?;
        }
        Ok(())
    }

    /// Removes everything of a VE whose config is gone or tombstoned. Idempotent.
    pub(crate) fn finish_destroy(&self, ve: &str) -> Result<()> {
        self.clean_up_stopped(ve)?;
        self.pool().remove_ve_volume(ve)?;
        let mnt = self.mount_dir(ve);
        match fs::remove_dir(&mnt) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&mnt)(e)),
        }
        // Its claims, from the config the destroy tombstoned (a create killed
        // before its config was written left only the claims to go by).
        // (`load_from`: `load` wants the file named after the VE, and took
        // every tombstone for corrupt, so each destroy read every claim.)
        let last = VeConfig::load_from(&self.tombstone_path(ve), ve)
            .ok()
            .flatten();
        self.release_claims(ve, last.as_ref())?;
        remove_file(&temp_path(&self.config_path(ve)))?;
        remove_file(&temp_path(&self.run_path(ve)))?;
        remove_file(&self.exit_path(ve))?;
        // Its console logs: a later VE of the same name must not show them.
        let log = crate::console::log_path(self.root(), ve);
        remove_file(&log.with_extension("log.1"))?;
        remove_file(&log)?;
        remove_file(&self.set_marker(ve))?;
        remove_file(&temp_path(&self.set_marker(ve)))?;
        remove_file(&self.tombstone_path(ve))
    }

    /// Changes limits: live on a running VE (then saved), saved only on a stopped
    /// one. A refused change leaves kernel and config as they were.
    /// With `force`, admission control is skipped and a RAM limit below what the VE
    /// uses is written even where the kernel would OOM-kill to meet it (v2).
    ///
    /// Config and kernel cannot change together, so the old limits are written
    /// first to a marker (`run/NAME.set-pending`), then the new config, then the
    /// kernel; the marker goes last. A vectl killed in between leaves the marker,
    /// and the next command that takes the VE's lock (or `show`) finishes the
    /// change ([`Host::finish_set`]): the config's limits are written to the
    /// kernel, or, where the kernel refuses them, kernel and config go back to
    /// the marker's.
    pub(crate) fn set(
        &self,
        name_or_id: &str,
        update: &LimitsUpdate,
        force: bool,
    ) -> Result<SetOutcome> {
        let ve = self.resolve_existing(name_or_id)?;
        let (_host, _lock, cfg) = self.lock_for_guarantees(&ve, Some(update))?;
        let limits = update.applied_to(&cfg.limits);
        let new_k = limits.resolve(&ve, cfg.id, &self.facts_for(&limits))?;
        self.check_disk_limit(&ve, &limits)?;
        self.admit(&ve, &limits, force)?;
        let net_changed = update.net_limit.is_some() || update.net_guarantee.is_some();
        if net_changed {
            let mut next = cfg.clone();
            next.limits = limits.clone();
            self.check_net_settings(&next)?;
            if !force {
                self.admit_net(&next, &limits)?;
            }
        }
        // The intent: the limits to go back to.
        let marker = self.set_marker(&ve);
        let old_text = toml::to_string(&cfg.limits).map_err(|e| Error::Corrupt {
            path: marker.clone(),
            what: "pending limits change",
            reason: e.to_string(),
        })?;
        // Not durable: the marker matters only while the kernel holds the VE's
        // limits, which a reboot clears (start writes the config's).
        crate::fsutil::write_atomic(&marker, old_text.as_bytes(), false)?;
        let mut next = cfg.clone();
        next.limits = limits.clone();
        if let Err(e) = next.store(&self.config_path(&ve)) {
            let _ = remove_file(&temp_path(&self.config_path(&ve)));
            let _ = remove_file(&marker);
            return Err(e);
        }
        crate::failpoint::hit("set-after-config");
        // A --disk given is written even when the config already says so: it
        // puts back a limit changed outside vectl (`btrfs qgroup limit`).
        match self.apply_limits(&cfg, &limits, &new_k, update.disk.is_some(), force) {
            Ok(live) => {
                crate::failpoint::hit("set-after-kernel");
                remove_file(&marker)?;
                Ok(SetOutcome { live, limits })
            }
            Err(e) => {
                // The kernel is as it was: so is the config, then the marker goes.
                if cfg.store(&self.config_path(&ve)).is_ok() {
                    let _ = remove_file(&marker);
                }
                Err(e)
            }
        }
    }

    /// Marks a change of a VE's limits in flight; holds the limits before it.
    fn set_marker(&self, ve: &str) -> PathBuf {
        self.root().join("run").join(format!("{ve}.set-pending"))
    }

    /// Writes `limits` (resolved: `new_k`) to the kernel for VE `cfg`, whose
    /// config holds the limits the kernel had: the disk limit if `write_disk`,
    /// and, while it runs, its cgroups and NIC shaping. Returns whether it runs.
    /// A refused write puts back every one already made.
    fn apply_limits(
        &self,
        cfg: &VeConfig,
        limits: &Limits,
        new_k: &KernelLimits,
        write_disk: bool,
        force: bool,
    ) -> Result<bool> {
        let ve = cfg.name.as_str();
        let net_changed = cfg.limits.net_limit != limits.net_limit
            || cfg.limits.net_guarantee != limits.net_guarantee;
        // The disk limit belongs to the VE's volume, running or not. It goes first:
        // it is the one a VE's use can refuse, and it is the easiest to put back.
        let old_disk = cfg.limits.disk.map(|Size(d)| d);
        let new_disk = limits.disk.map(|Size(d)| d);
        if write_disk {
            self.pool()
                .set_disk_limit(ve, new_disk)
                .map_err(|e| disk_error(ve, e))?;
        }
        // Back exactly as it was, whatever the VE wrote meanwhile.
        let undo_disk = || {
            if write_disk {
                let _ = self.pool().force_disk_limit(ve, old_disk);
            }
        };
        let live = self.alive_state(ve)?.is_some();
        if !live {
            return Ok(false);
        }
        let old_k = match self.cgroups().and_then(|cg| {
            let current = cg.read_limits(ve)?;
            cg.apply(ve, &current, new_k, force)?;
            Ok(current)
        }) {
            Ok(current) => current,
            Err(e) => {
                undo_disk();
                return Err(e);
            }
        };
        if net_changed && let Err(e) = self.reshape_nics(cfg, limits) {
            let _ = self.cgroups()?.apply(ve, new_k, &old_k, true);
            let mut now = cfg.clone();
            now.limits = limits.clone();
            let _ = self.reshape_nics(&now, &cfg.limits);
            undo_disk();
            return Err(e);
        }
        Ok(true)
    }

    /// Finishes what a killed vectl left half-done on VE `ve`, for every command
    /// that takes the VE's lock: a change of limits ([`Host::finish_set`]).
    pub(crate) fn finish_killed_changes(&self, ve: &str) -> Result<()> {
        self.finish_set(ve)
    }

    /// Finishes a change of limits a killed vectl left (see [`Host::set`]), with
    /// the VE's lock held: the config's limits are written to the kernel; if
    /// the kernel refuses them, the kernel and the config go back to the limits
    /// before the change. Then the marker goes. Nothing to do without one.
    pub(crate) fn finish_set(&self, ve: &str) -> Result<()> {
        let marker = self.set_marker(ve);
        if !marker.exists() {
            return Ok(());
        }
        let Some(cfg) = VeConfig::load(&self.config_path(ve))? else {
            return remove_file(&marker);
        };
        let before: Option<Limits> = fs::read_to_string(&marker)
            .ok()
            .and_then(|t| toml::from_str(&t).ok());
        let mut from = cfg.clone();
        if let Some(b) = &before {
            from.limits = b.clone();
        }
        let write_disk = self.pool().backend().has_limits()
            && (before.is_none() || from.limits.disk != cfg.limits.disk);
        let forward = cfg
            .limits
            .resolve(ve, cfg.id, &self.facts_for(&cfg.limits))
            .and_then(|k| self.apply_limits(&from, &cfg.limits, &k, write_disk, false));
        if let Err(e) = forward {
            let Some(before) = before else {
                return Err(Error::ve(
                    ve,
                    format!(
                        "a change of its limits was killed and the kernel refuses its config's limits ({}): {e}",
                        marker.display()
                    ),
                ));
            };
            let old_k = before.resolve(ve, cfg.id, &self.facts_for(&before))?;
            self.apply_limits(&cfg, &before, &old_k, write_disk, true)?;
            let mut back = cfg.clone();
            back.limits = before;
            back.store(&self.config_path(ve))?;
        }
        remove_file(&marker)
    }

    /// Publishes ports of a VE on the host's addresses (`add`) and withdraws
    /// others (`remove`, matched by host port and protocol). Takes effect at once,
    /// running or not; returns the VE's published ports. `check_only` checks the
    /// change without making it.
    pub(crate) fn map_ports(
        &self,
        name_or_id: &str,
        add: &[netns::model::PortMap],
        remove: &[netns::model::PortMap],
        check_only: bool,
    ) -> Result<Vec<netns::model::PortMap>> {
        let ve = self.resolve_existing(name_or_id)?;
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        for r in remove {
            let before = cfg.ports.len();
            cfg.ports
                .retain(|p| !(p.host_port == r.host_port && p.proto == r.proto));
            if cfg.ports.len() == before {
                return Err(Error::BadLimit {
                    ve,
                    reason: format!(
                        "--unpublish {}/{}: that port is not published by this VE",
                        r.host_port, r.proto
                    ),
                });
            }
        }
        for a in add {
            if let Some(p) = cfg
                .ports
                .iter()
                .find(|p| p.host_port == a.host_port && p.proto == a.proto)
                && p != a
            {
                return Err(Error::BadLimit {
                    ve,
                    reason: format!(
                        "--publish {a}: host port {}/{} is published to port {} already (--unpublish it first)",
                        a.host_port, a.proto, p.ve_port
                    ),
                });
            }
            cfg.ports.push(*a);
        }
        cfg.ports.sort();
        cfg.ports.dedup();
        self.check_net_settings(&cfg)?;
        if check_only {
            return Ok(cfg.ports);
        }
        self.apply_firewall(Some(&cfg))
            .map_err(|e| crate::net::for_ve(&ve, e))?;
        if let Err(e) = cfg.store(&self.config_path(&ve)) {
            let _ = self.apply_firewall(None);
            return Err(e);
        }
        Ok(cfg.ports)
    }

    /// Lifts a VE's disk limit for a moment (see `start`), marked in
    /// `run/NAME.disk-lifted` until [`Host::put_back_disk_limit`].
    pub(crate) fn lift_disk_limit(&self, ve: &str) -> Result<()> {
        let marker = self.disk_lifted_marker(ve);
        fs::write(&marker, b"").map_err(io_err(&marker))?;
        Ok(self.pool().force_disk_limit(ve, None)?)
    }

    /// Puts a lifted disk limit back and removes the marker.
    pub(crate) fn put_back_disk_limit(&self, ve: &str, limit: Option<u64>) -> Result<()> {
        self.pool().force_disk_limit(ve, limit)?;
        remove_file(&self.disk_lifted_marker(ve))
    }

    /// A disk limit needs a pool that can enforce one: refused up front otherwise.
    fn check_disk_limit(&self, ve: &str, limits: &Limits) -> Result<()> {
        if limits.disk.is_some() && !self.pool().backend().has_limits() {
            return Err(Error::BadLimit {
                ve: ve.to_string(),
                reason: "--disk: the dir storage backend has no disk limits (initialise the host with the btrfs or xfs pool)".into(),
            });
        }
        Ok(())
    }

    /// Binds LXCFS's files again in every running VE of this root whose binds
    /// are dead or missing (`vectl host rebind-proc`, run after LXCFS
    /// restarted). Waits up to `wait` for LXCFS to answer first. Each VE's
    /// outcome is returned; one VE's failure does not stop the others.
    pub(crate) fn rebind_proc_view(
        &self,
        wait: std::time::Duration,
    ) -> Result<crate::procview::RebindReport> {
        let view = &self.settings().proc_view;
        if !view.enabled {
            return Err(Error::Refused {
                what: "rebind-proc".into(),
                reason: crate::procview::VIEW_OFF.into(),
            });
        }
        let deadline = std::time::Instant::now() + wait;
        let lxcfs = loop {
            match crate::procview::Lxcfs::probe(&view.lxcfs_dir) {
                Ok(l) => break l,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(why) => {
                    return Err(Error::Refused {
                        what: "rebind-proc".into(),
                        reason: why,
                    });
                }
            }
        };
        let (ves, _) = self.list()?;
        let mut out = Vec::new();
        for info in ves {
            let ve = info.name;
            let Ok(_lock) = self.lock_ve(&ve) else {
                continue;
            };
            let Some(mut rs) = self.alive_state(&ve)? else {
                continue;
            };
            if crate::procview::meminfo_state(rs.pid) == crate::procview::Target::Live {
                continue;
            }
            let done = sys::pidfd_open(rs.pid)
                .map_err(|e| format!("pidfd_open: {e}"))
                .and_then(|init| crate::procview::rebind(init.as_fd(), &lxcfs));
            if done.is_ok() && rs.proc_view_off.is_some() {
                rs.proc_view_off = None;
                rs.store(&self.run_path(&ve))?;
            }
            out.push((ve, done));
        }
        Ok(out)
    }

    /// Every VE, by id. Configs that cannot be read are returned as errors beside
    /// the list rather than failing it.
    pub(crate) fn list(&self) -> Result<(Vec<VeInfo>, Vec<Error>)> {
        self.list_on(false)
    }

    /// [`Host::list`] with the VEs read on several threads
    /// ([`crate::stats::par_map`]): for commands that only read (`vectl
    /// list`, `stats`). Not for one that goes on to enter a VE's mount
    /// namespace: `setns` refuses a process whose threads may still share its
    /// file system state.
    pub(crate) fn list_in_threads(&self) -> Result<(Vec<VeInfo>, Vec<Error>)> {
        self.list_on(true)
    }

    fn list_on(&self, threads: bool) -> Result<(Vec<VeInfo>, Vec<Error>)> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        if let Err(e) = self.finish_renames() {
            errors.push(e);
        }
        let one = |path: std::path::PathBuf| {
            VeConfig::load(&path).map(|cfg| cfg.map(|cfg| self.info(cfg)))
        };
        let files = self.config_files()?;
        let read: Vec<_> = if threads {
            crate::stats::par_map(files, one)
        } else {
            files.into_iter().map(one).collect()
        };
        for one in read {
            match one {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        out.sort_by_key(|i| i.id);
        for w in out.windows(2) {
            if w[0].id == w[1].id {
                errors.push(Error::DuplicateId {
                    ve: w[1].name.clone(),
                    id: w[1].id,
                    other: w[0].name.clone(),
                });
            }
        }
        Ok((out, errors))
    }

    fn info(&self, cfg: VeConfig) -> VeInfo {
        let rs = self.alive_state_with(&cfg.name, false).ok().flatten();
        let mut info = VeInfo {
            id: cfg.id,
            status: Status::Stopped,
            pid: None,
            uptime_secs: None,
            name: cfg.name,
            template: cfg.template,
            hostname: cfg.hostname,
            limits: cfg.limits,
            nics: cfg.nics,
            ports: cfg.ports,
            privileged: cfg.userns.is_none(),
            userns: cfg.userns,
            autostart: cfg.autostart,
            last_exit: None,
            host_ports: Vec::new(),
        };
        set_run_state(&mut info, rs.as_ref());
        info.last_exit = match &rs {
            Some(rs) => rs.last_exit.clone(),
            None => crate::state::ExitRecord::load(&self.exit_path(&info.name)),
        };
        if let (None, Some(x)) = (&rs, &info.last_exit) {
            info.status = x.status();
        }
        info
    }

    /// What the cgroups of a VE listed as running say it uses; zero for a
    /// stopped one. The VE may stop or start again while its cgroups are read
    /// (no lock is held, `stats` and `show` only look): when a read fails, `info`
    /// is brought up to date and a VE that stopped meanwhile is stopped, one
    /// that started again is read again. Only a failure on a VE that kept
    /// running is an error.
    pub(crate) fn usage_of(&self, info: &mut VeInfo) -> Result<Usage> {
        let mut tries = 0;
        loop {
            if info.status != Status::Running {
                return Ok(Usage::default());
            }
            let err = match self.cgroups()?.usage(&info.name) {
                Ok(u) => return Ok(u),
                Err(e) => e,
            };
            let now = self.alive_state_with(&info.name, false).ok().flatten();
            // Its cgroup files gone while its init is still there (a zombie
            // not yet reaped): the VE is being stopped, and shows as stopped.
            let stopping = matches!(&err, Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ENODEV));
            tries += 1;
            if stopping {
                set_run_state(info, None);
                continue;
            }
            if now.as_ref().map(|r| r.pid) == info.pid || tries == 3 {
                return Err(err);
            }
            set_run_state(info, now.as_ref());
        }
    }

    /// Everything about one VE.
    pub(crate) fn show(&self, name_or_id: &str) -> Result<VeDetails> {
        let ve = self.resolve_existing(name_or_id)?;
        if self.set_marker(&ve).exists() {
            // A change of limits was killed half-way: config and kernel agree
            // again before they are shown.
            drop(self.lock_ve(&ve)?);
        }
        let cfg = self.load_config(&ve)?;
        let kernel_limits = cfg
            .limits
            .resolve(&ve, cfg.id, &self.facts_for(&cfg.limits))?;
        let tref: ve_templates::TemplateRef = cfg.template.parse()?;
        let template_dir = self
            .store()
            .resolve(&tref)
            .map(|tv| self.store().path(&tv))
            .unwrap_or_default();
        let mut info = self.info(cfg.clone());
        let usage = self.usage_of(&mut info)?;
        let usage = (info.status == Status::Running).then_some(usage);
        let stop_signal = match (&cfg.stop_signal, info.pid) {
            (Some(s), _) => s.clone(),
            (None, Some(pid)) => {
                let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                signal_name(halt_signal_for(&exe.to_string_lossy()))
            }
            (None, None) => "auto".into(),
        };
        let vol = self.pool().ve_volume(&ve);
        let disk = self.pool().disk(&ve).ok();
        // Only a look: no lock is held, so nothing is repaired or thawed (a
        // start or snapshot may be under way).
        let alive = self.alive_state_with(&ve, false)?;
        let console = alive.as_ref().map(|rs| rs.console);
        let sysinfo = alive.as_ref().map(|rs| rs.sysinfo);
        let proc_view = match alive {
            None => None,
            Some(rs) => {
                use crate::procview::Target;
                let dir = &self.settings().proc_view.lxcfs_dir;
                Some(match crate::procview::meminfo_state(rs.pid) {
                    Target::Live => ProcView::Own {
                        lxcfs_dir: dir.clone(),
                    },
                    Target::Dead => ProcView::Broken {
                        reason: format!(
                            "the LXCFS it was started with is gone; its /proc/meminfo and the \
                             like fail until LXCFS runs at {} and `vectl host rebind-proc` \
                             binds them anew",
                            dir.display()
                        ),
                    },
                    Target::Kernel => ProcView::HostValues {
                        reason: rs.proc_view_off.unwrap_or_else(|| "not bound".into()),
                    },
                    Target::Foreign => ProcView::HostValues {
                        reason: "the VE mounted something of its own over /proc/meminfo".into(),
                    },
                })
            }
        };
        Ok(VeDetails {
            proc_view,
            console,
            sysinfo,
            created: cfg.created.clone(),
            init: cfg
                .init
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_INIT.to_string()]),
            stop_signal,
            config_path: self.config_path(&ve),
            private_bytes: disk.map_or(0, |d| d.used),
            disk_limit_bytes: disk.and_then(|d| d.limit),
            private_dir: vol.dir,
            template_dir,
            cgroups: self.cgroups()?.paths(&ve),
            interfaces: self.nic_infos(&cfg),
            kernel_limits,
            usage,
            problems: self
                .check_unique_id(&ve, cfg.id)
                .err()
                .map(|e| e.to_string())
                .into_iter()
                .collect(),
            info,
        })
    }

    /// Runs a command in a running VE; returns its exit status.
    pub(crate) fn exec(&self, name_or_id: &str, opts: &ExecOptions) -> Result<i32> {
        let (ve, rs, pidfd, placement) = {
            let ve = self.resolve_existing(name_or_id)?;
            let _lock = self.lock_ve(&ve)?;
            self.load_config(&ve)?;
            let rs = self
                .alive_state(&ve)?
                .ok_or_else(|| Error::NotRunning(ve.clone()))?;
            let pidfd = sys::pidfd_open(rs.pid).map_err(|_| Error::NotRunning(ve.clone()))?;
            // The pidfd pins the process: check it is still our init.
            if !rs.is_alive() {
                return Err(Error::NotRunning(ve));
            }
            let placement = self.cgroups()?.placement(&ve)?;
            (ve, rs, pidfd, placement)
        };
        // What the running init has, whatever its config says now; never a
        // guess (joining a VE's user namespace's namespaces without it would
        // leave the command host root there).
        let profile = match crate::userns::has_own_userns(rs.pid) {
            Ok(true) => crate::security::Profile::Userns,
            Ok(false) => crate::security::Profile::Privileged,
            Err(e) => {
                return Err(Error::Exec {
                    ve,
                    reason: format!("cannot tell whether its init has a user namespace: {e}"),
                });
            }
        };
        let sysinfo = (rs.proc_view_off.is_none() && crate::sysinfo::supervised(self.root()))
            .then(|| self.root());
        crate::exec::run(&ve, rs.pid, pidfd, placement, profile, sysinfo, opts)
    }

    /// Opens an interactive login shell in a running VE (root's shell from its
    /// /etc/passwd, else /bin/sh). The VE's files are read inside its root: a
    /// VE's /etc/passwd may be a symlink, a FIFO or a huge file.
    pub(crate) fn enter(&self, name_or_id: &str) -> Result<i32> {
        let ve = self.resolve_existing(name_or_id)?;
        // No lock is held: nothing is repaired or thawed.
        let rs = self
            .alive_state_with(&ve, false)?
            .ok_or_else(|| Error::NotRunning(ve.clone()))?;
        // Pinned, and checked again once its root is open: the pid is the init's.
        let _pin = sys::pidfd_open(rs.pid).map_err(|_| Error::NotRunning(ve.clone()))?;
        let root = ve_templates::Tree::open(Path::new(&format!("/proc/{}/root", rs.pid))).ok();
        if !rs.is_alive() {
            return Err(Error::NotRunning(ve));
        }
        let shell = root
            .and_then(|root| root_shell(&root))
            .unwrap_or_else(|| "/bin/sh".to_string());
        let base = shell.rsplit('/').next().unwrap_or("sh").to_string();
        self.exec(
            &ve,
            &ExecOptions {
                argv: vec![shell],
                tty: true,
                arg0: Some(format!("-{base}")),
                ..ExecOptions::default()
            },
        )
    }
}

/// The largest /etc/passwd vectl reads to find root's shell.
const PASSWD_MAX: u64 = 4 << 20;

/// Root's login shell in a VE's tree, if its /etc/passwd names one that exists
/// there as a regular file.
fn root_shell(root: &ve_templates::Tree) -> Option<String> {
    let passwd = root
        .read_to_string(Path::new("etc/passwd"), PASSWD_MAX)
        .ok()?;
    let shell = passwd
        .lines()
        .find(|l| l.starts_with("root:"))
        .and_then(|l| l.rsplit(':').next())
        .filter(|s| s.starts_with('/'))?;
    let is_file = root
        .metadata(Path::new(shell))
        .ok()
        .flatten()
        .is_some_and(|m| m.is_file());
    is_file.then(|| shell.to_string())
}

/// Splits an init command line like a shell would (quotes, escapes).
fn parse_command(ve: &str, cmd: &str) -> Result<Vec<String>> {
    let argv = shell_words::split(cmd).map_err(|e| Error::BadLimit {
        ve: ve.to_string(),
        reason: format!("--init {cmd:?}: {e}"),
    })?;
    if argv.is_empty() {
        return Err(Error::BadLimit {
            ve: ve.to_string(),
            reason: "--init: empty command".into(),
        });
    }
    if !argv[0].starts_with('/') {
        return Err(Error::BadLimit {
            ve: ve.to_string(),
            reason: format!("--init {cmd:?}: the program must be an absolute path in the VE"),
        });
    }
    Ok(argv)
}

/// Waits until the process behind `pidfd` exits, up to `timeout`.
fn wait_exit(pidfd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::ZERO),
        ) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// A pool error about a VE's disk limit, as one line naming the VE.
fn disk_error(ve: &str, e: quota::Error) -> Error {
    match e {
        // Already "VE NAME: the disk limit ... is below the ... it uses".
        e @ quota::Error::BelowUsage { .. } => Error::Storage(e),
        e => Error::BadLimit {
            ve: ve.to_string(),
            reason: format!("--disk: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halt_signal_suits_the_init() {
        assert_eq!(halt_signal_for("/bin/busybox"), libc::SIGUSR1);
        assert_eq!(
            halt_signal_for("/usr/lib/systemd/systemd"),
            libc::SIGRTMIN() + 4
        );
        assert_eq!(halt_signal_for("/sbin/init"), libc::SIGTERM);
    }

    #[test]
    fn init_commands_split_like_a_shell() {
        assert_eq!(
            parse_command("w", "/bin/httpd -f -h '/var/my www'").unwrap(),
            vec!["/bin/httpd", "-f", "-h", "/var/my www"]
        );
        assert!(parse_command("w", "httpd -f").is_err());
        assert!(parse_command("w", "'/bin/sh").is_err());
        assert!(parse_command("w", "  ").is_err());
    }
}
