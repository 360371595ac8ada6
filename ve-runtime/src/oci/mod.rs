//! vectl's OCI runtime: the command line runc documents (`create`, `start`,
//! `state`, `kill`, `delete`, `exec`, `update`, `features`, `list`), for
//! podman, containerd and CRI-O, which drive runtimes through it.
//!
//! A container is a bundle's `config.json` (read with `oci-spec`) mapped onto
//! vectl's own machinery: the namespaces of the spec (new ones by clone3,
//! `path` ones joined first), vectl's cgroup code (v1 and v2) for the
//! cgroup of `linux.cgroupsPath` and its `linux.resources`, and the spec's
//! mounts, devices, masked and read-only paths, sysctls, hooks, rlimits,
//! capabilities, user, no_new_privs, user namespace mappings and seccomp
//! profile (compiled with libseccomp).
//!
//! State lives in the runtime's `--root` (default [`DEFAULT_ROOT`]), a
//! directory per container: `state.json` and, between `create` and `start`,
//! `exec.fifo`, which the container's init blocks on (runc's design: `start`
//! is the read that releases it). No process stays behind but the
//! container's own: the engine's monitor (conmon, containerd-shim) is its
//! parent, as with runc.

mod init;
mod resources;
mod seccomp;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use oci_spec::runtime::{
    LinuxDeviceType, LinuxNamespaceType, LinuxResources, PosixRlimitType, Process, Spec,
};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupBackend, CgroupSettings, CgroupVersion, Placement};
use crate::limits::KernelLimits;
use crate::sys::{self, Forked};
use init::{CapPlan, DevicePlan, HookPlan, MountPlan, Plan, ProcPlan};

/// Where container state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/vectl-oci";

/// The spec version this runtime implements.
pub const OCI_VERSION: &str = "1.0.2";

type R<T = ()> = std::result::Result<T, String>;

/// The runtime, bound to its state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub root: PathBuf,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
}

/// What `create` is asked.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// What `exec` is asked.
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub id: String,
    /// The process, as `--process FILE` gives it (config.json's `process`).
    pub process: Option<PathBuf>,
    /// Or a command line (with `cwd`, `env`, `tty`, `user` below).
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub tty: bool,
    pub user: Option<(u32, u32)>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// Where a container is in its life (the spec's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// The spec's state of a container (what `state` prints), with runc's extra
/// fields.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: BTreeMap<String, String>,
    /// The cgroup (below each hierarchy's root) it lives in.
    #[serde(skip)]
    pub cgroup: String,
}

/// What the runtime keeps of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    id: String,
    pid: i32,
    start_ticks: u64,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    annotations: BTreeMap<String, String>,
    cgroup_parent: String,
    cgroup_name: String,
    /// CLONE_NEW* flags of the namespaces it made (exec joins these).
    namespaces: u64,
    #[serde(default)]
    hooks: Option<oci_spec::runtime::Hooks>,
}

fn io<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Container ids as runc allows them.
fn check_id(id: &str) -> R {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid container id {id:?}: letters, digits, _ - . + only, not starting with ."
        ))
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn write_file_atomic(path: &Path, data: &[u8]) -> R {
    crate::fsutil::write_atomic(path, data, false).map_err(|e| e.to_string())
}

/// The cgroup parent of a runtime root's containers that name none: one per
/// root (`vectl-oci-` and a hash of its path), so that two roots' containers
/// of the same id never share a cgroup.
fn default_parent(root: &Path) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = root
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("vectl-oci-{:08x}", hash as u32)
}

/// A sysctl a container may set: one of a namespace it has of its own (runc's
/// rule); any other would change the host.
fn check_sysctl(key: &str, flags: u64) -> R<()> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let own = |ns: libc::c_int| flags & ns as u64 != 0;
    let well_formed = key
        .split('.')
        .all(|c| !c.is_empty() && c != ".." && !c.contains('/'));
    let namespaced = well_formed
        && if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
            own(libc::CLONE_NEWIPC)
        } else if key.starts_with("net.") {
            own(libc::CLONE_NEWNET)
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            own(libc::CLONE_NEWUTS)
        } else {
            false
        };
    if namespaced {
        Ok(())
    } else {
        Err(format!(
            "linux.sysctl {key}: not a sysctl of a namespace the container has of its own"
        ))
    }
}

/// A container's cgroup: the parent and the name vectl's backend takes.
fn cgroup_of(spec_path: Option<&Path>, id: &str, systemd: bool, root: &Path) -> (String, String) {
    let Some(p) = spec_path.map(|p| p.to_string_lossy().into_owned()) else {
        return (default_parent(root), id.to_string());
    };
    let colon: Vec<&str> = p.split(':').collect();
    if (systemd || !p.contains('/')) && colon.len() == 3 {
        // slice:prefix:name, as systemd would place it (no unit is made).
        let slice = if colon[0].is_empty() {
            "system.slice"
        } else {
            colon[0]
        };
        let name = if colon[1].is_empty() {
            format!("{}.scope", colon[2])
        } else {
            format!("{}-{}.scope", colon[1], colon[2])
        };
        return (slice.to_string(), name);
    }
    let trimmed = p.trim_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) => (format!("/{parent}"), name.to_string()),
        None if trimmed.is_empty() => (default_parent(root), id.to_string()),
        None => ("/".into(), trimmed.to_string()),
    }
}

fn backend(parent: &str) -> R<Box<dyn CgroupBackend>> {
    cgroup::open(&CgroupSettings {
        parent: parent.trim_start_matches("./").to_string(),
        resolved: BTreeMap::new(),
    })
    .map_err(|e| e.to_string())
}

fn ns_flag(t: LinuxNamespaceType) -> i32 {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

fn cstrings(v: &[String], what: &str) -> R<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{what}: a NUL byte in {s:?}")))
        .collect()
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::__rlimit_resource_t
}

fn cap_set(s: &Option<oci_spec::runtime::Capabilities>) -> R<caps::CapsHashSet> {
    let mut out = caps::CapsHashSet::new();
    for c in s.iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        let cap: caps::Capability = name
            .parse()
            .map_err(|_| format!("process.capabilities: unknown capability {name}"))?;
        out.insert(cap);
    }
    Ok(out)
}

/// The process part of a plan (the container's init, or an exec).
fn proc_plan(p: &Process, console: Option<RawFd>) -> R<ProcPlan> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err("process.args is empty".into());
    }
    let env = p.env().clone().unwrap_or_default();
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let c = p.capabilities().clone().unwrap_or_default();
    let caps = CapPlan {
        bounding: cap_set(c.bounding())?,
        effective: cap_set(c.effective())?,
        permitted: cap_set(c.permitted())?,
        inheritable: cap_set(c.inheritable())?,
        ambient: cap_set(c.ambient())?,
    };
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
        .collect();
    if !p.cwd().is_absolute() {
        return Err(format!("process.cwd {} is not absolute", p.cwd().display()));
    }
    Ok(ProcPlan {
        argv: cstrings(&args, "process.args")?,
        env: cstrings(&env, "process.env")?,
        cwd: p.cwd().clone(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        groups: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        caps,
        rlimits,
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        seccomp: None,
        console,
        console_size: p
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16)),
        path,
    })
}

/// Mount options as flags, propagation and data (mount(8)'s names).
fn mount_options(opts: &[String]) -> (MsFlags, MsFlags, Option<MsFlags>, String, bool) {
    let (mut set, mut remount, mut prop) = (MsFlags::empty(), MsFlags::empty(), None);
    let mut data: Vec<&str> = Vec::new();
    let mut bind = false;
    for o in opts {
        let f = match o.as_str() {
            "bind" => {
                bind = true;
                MsFlags::MS_BIND
            }
            "rbind" => {
                bind = true;
                MsFlags::MS_BIND | MsFlags::MS_REC
            }
            "ro" => {
                remount |= MsFlags::MS_RDONLY;
                MsFlags::MS_RDONLY
            }
            "rw" | "defaults" | "exec" | "suid" | "dev" | "atime" | "diratime" | "async" => {
                MsFlags::empty()
            }
            "nosuid" => {
                remount |= MsFlags::MS_NOSUID;
                MsFlags::MS_NOSUID
            }
            "nodev" => {
                remount |= MsFlags::MS_NODEV;
                MsFlags::MS_NODEV
            }
            "noexec" => {
                remount |= MsFlags::MS_NOEXEC;
                MsFlags::MS_NOEXEC
            }
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "noatime" => {
                remount |= MsFlags::MS_NOATIME;
                MsFlags::MS_NOATIME
            }
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "dirsync" => MsFlags::MS_DIRSYNC,
            "mand" => MsFlags::empty(),
            "private" => {
                prop = Some(MsFlags::MS_PRIVATE);
                MsFlags::empty()
            }
            "rprivate" => {
                prop = Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
                MsFlags::empty()
            }
            "shared" => {
                prop = Some(MsFlags::MS_SHARED);
                MsFlags::empty()
            }
            "rshared" => {
                prop = Some(MsFlags::MS_SHARED | MsFlags::MS_REC);
                MsFlags::empty()
            }
            "slave" => {
                prop = Some(MsFlags::MS_SLAVE);
                MsFlags::empty()
            }
            "rslave" => {
                prop = Some(MsFlags::MS_SLAVE | MsFlags::MS_REC);
                MsFlags::empty()
            }
            "unbindable" | "runbindable" => {
                prop = Some(MsFlags::MS_UNBINDABLE);
                MsFlags::empty()
            }
            // Options a runtime takes itself, not the kernel.
            "tmpcopyup" | "copy-symlink" | "idmap" | "ridmap" | "z" | "Z" | "U" | "notmpcopyup" => {
                MsFlags::empty()
            }
            other => {
                data.push(other);
                MsFlags::empty()
            }
        };
        set |= f;
    }
    (set, remount, prop, data.join(","), bind)
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Runtime {
        Runtime {
            root: root.into(),
            systemd_cgroup,
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn load(&self, id: &str) -> R<Saved> {
        check_id(id)?;
        let p = self.dir(id).join("state.json");
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("container {id} does not exist"));
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        serde_json::from_slice(&text).map_err(io(p.display()))
    }

    fn status_of(&self, s: &Saved) -> Status {
        let alive = crate::state::proc_stat(s.pid)
            .is_some_and(|st| st.alive() && st.start_ticks == s.start_ticks);
        if !alive {
            Status::Stopped
        } else if self.dir(&s.id).join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    fn state_of(&self, s: &Saved) -> State {
        let status = self.status_of(s);
        State {
            oci_version: OCI_VERSION.into(),
            id: s.id.clone(),
            status,
            pid: if status == Status::Stopped { 0 } else { s.pid },
            bundle: s.bundle.clone(),
            rootfs: s.rootfs.clone(),
            created: s.created.clone(),
            owner: String::new(),
            annotations: s.annotations.clone(),
            cgroup: format!(
                "{}/{}",
                s.cgroup_parent.trim_end_matches('/'),
                s.cgroup_name
            ),
        }
    }

    /// `state ID`.
    pub fn state(&self, id: &str) -> R<State> {
        Ok(self.state_of(&self.load(id)?))
    }

    /// `list`: every container of this root (ones half-made are `creating`).
    pub fn list(&self) -> R<Vec<State>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("{}: {e}", self.root.display())),
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if check_id(&id).is_err() || !e.path().is_dir() {
                continue;
            }
            match self.load(&id) {
                Ok(s) => out.push(self.state_of(&s)),
                Err(_) => out.push(State {
                    oci_version: OCI_VERSION.into(),
                    id,
                    status: Status::Creating,
                    pid: 0,
                    bundle: PathBuf::new(),
                    rootfs: PathBuf::new(),
                    created: String::new(),
                    owner: String::new(),
                    annotations: BTreeMap::new(),
                    cgroup: String::new(),
                }),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// `create`: sets the container up with its process waiting for `start`.
    pub fn create(&self, o: &CreateOptions) -> R {
        check_id(&o.id)?;
        let bundle =
            fs::canonicalize(&o.bundle).map_err(io(format!("bundle {}", o.bundle.display())))?;
        let config = bundle.join("config.json");
        let spec = Spec::load(&config).map_err(io(config.display()))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io(self.root.display()))?;
        let dir = self.dir(&o.id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!("container {} exists already", o.id));
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        let made = self.create_in(o, &bundle, &spec, &dir);
        if made.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        made
    }

    fn create_in(&self, o: &CreateOptions, bundle: &Path, spec: &Spec, dir: &Path) -> R {
        let process = spec
            .process()
            .as_ref()
            .ok_or("config.json has no process")?;
        let root = spec.root().as_ref().ok_or("config.json has no root")?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let rootfs =
            fs::canonicalize(&rootfs).map_err(io(format!("root.path {}", rootfs.display())))?;
        let default_linux = oci_spec::runtime::Linux::default();
        let linux = spec.linux().as_ref().unwrap_or(&default_linux);
        if process.terminal().unwrap_or(false) && o.console_socket.is_none() {
            return Err("process.terminal is set but no --console-socket was given".into());
        }

        // Namespaces: new ones by clone flags, `path` ones joined before.
        let mut flags: u64 = 0;
        let mut join: Vec<(OwnedFd, i32, PathBuf)> = Vec::new();
        for ns in linux.namespaces().iter().flatten() {
            let f = ns_flag(ns.typ());
            match ns.path() {
                Some(p) => {
                    let fd = nix::fcntl::open(
                        p,
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(io(format!("namespace {}", p.display())))?;
                    join.push((fd, f, p.clone()));
                }
                None => {
                    if f == libc::CLONE_NEWTIME {
                        return Err(
                            "a new time namespace is not supported by vectl's OCI runtime".into(),
                        );
                    }
                    flags |= f as u64;
                }
            }
        }
        if flags & libc::CLONE_NEWNS as u64 == 0 {
            return Err("config.json: vectl's OCI runtime needs a new mount namespace".into());
        }
        let userns = flags & libc::CLONE_NEWUSER as u64 != 0;

        // The cgroup and its limits.
        let (cg_parent, cg_name) = cgroup_of(
            linux.cgroups_path().as_deref(),
            &o.id,
            self.systemd_cgroup,
            &self.root,
        );
        // `..` or `.` would name the hierarchy's root or the parent itself,
        // which a failed create would kill and remove.
        if cg_name.is_empty()
            || cg_name == "."
            || cg_name == ".."
            || cg_parent.split('/').any(|c| c == "." || c == "..")
        {
            return Err(format!(
                "linux.cgroupsPath {:?}: not a cgroup path",
                linux.cgroups_path().clone().unwrap_or_default()
            ));
        }
        let cg = backend(&cg_parent)?;
        // Another container's (or anything's) cgroup is not taken over: a
        // failed create would kill what runs there (runc refuses it too).
        if cg.exists(&cg_name) && !cg.procs(&cg_name).unwrap_or_default().is_empty() {
            return Err(format!(
                "linux.cgroupsPath: the cgroup {cg_parent}/{cg_name} already holds processes"
            ));
        }
        let limits = match linux.resources() {
            Some(r) => resources::overlay(&KernelLimits::default(), r)
                .map_err(|e| format!("linux.resources: {e}"))?,
            None => KernelLimits::default(),
        };
        cg.prepare_parent().map_err(|e| e.to_string())?;
        if let Err(e) = cg.create(&cg_name, &limits) {
            let _ = cg.remove(&cg_name);
            return Err(e.to_string());
        }
        let saved_base = Saved {
            id: o.id.clone(),
            pid: 0,
            start_ticks: 0,
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.clone(),
            created: now_rfc3339(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            cgroup_parent: cg_parent,
            cgroup_name: cg_name.clone(),
            namespaces: flags,
            hooks: spec.hooks().clone(),
        };
        let result = self.launch(
            o, spec, process, linux, &rootfs, flags, userns, join, &*cg, saved_base, dir,
        );
        if result.is_err() {
            let _ = cg.kill_all(&cg_name);
            let _ = cg.remove(&cg_name);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        o: &CreateOptions,
        spec: &Spec,
        process: &Process,
        linux: &oci_spec::runtime::Linux,
        rootfs: &Path,
        flags: u64,
        userns: bool,
        join: Vec<(OwnedFd, i32, PathBuf)>,
        cg: &dyn CgroupBackend,
        mut saved: Saved,
        dir: &Path,
    ) -> R {
        let id = &o.id;
        let fifo_path = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(io(fifo_path.display()))?;
        // Writable by the container's root whatever the umask (with a user
        // namespace it is some unprivileged host uid); the directory stays 0700.
        fs::set_permissions(
            &fifo_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o622),
        )
        .map_err(io(fifo_path.display()))?;
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io(fifo_path.display()))?;
        let console = match &o.console_socket {
            Some(p) => Some(connect_console(p)?),
            None => None,
        };

        let mut proc_plan = proc_plan(process, console.as_ref().map(|c| c.as_raw_fd()))?;
        if let Some(sc) = linux.seccomp() {
            proc_plan.seccomp = Some(seccomp::compile(sc)?);
        }
        let cgroup_dirs = cgroup_mount_dirs(cg, &saved.cgroup_name);
        let mut mounts = Vec::new();
        for m in spec.mounts().iter().flatten() {
            let opts = m.options().clone().unwrap_or_default();
            let (flags, remount, propagation, data, bind) = mount_options(&opts);
            let fstype = m.typ().clone();
            let bind = bind || fstype.as_deref() == Some("bind");
            let is_cgroup = matches!(fstype.as_deref(), Some("cgroup" | "cgroup2"));
            if !m.destination().is_absolute() {
                return Err(format!(
                    "mount destination {} is not absolute",
                    m.destination().display()
                ));
            }
            mounts.push(MountPlan {
                dest: m.destination().clone(),
                source: m.source().clone(),
                fstype,
                flags: if bind {
                    flags | MsFlags::MS_BIND
                } else {
                    flags
                },
                remount: (bind && !remount.is_empty()).then_some(remount),
                propagation,
                data,
                bind,
                cgroups: if is_cgroup {
                    cgroup_dirs.clone()
                } else {
                    Vec::new()
                },
            });
        }
        let mut devices = Vec::new();
        for d in linux.devices().iter().flatten() {
            let kind = match d.typ() {
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                _ => libc::S_IFCHR,
            };
            devices.push(DevicePlan {
                path: d.path().clone(),
                kind,
                major: d.major() as u32,
                minor: d.minor() as u32,
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            });
        }
        let propagation = match linux.rootfs_propagation().as_deref() {
            Some("shared") | Some("rshared") => MsFlags::MS_SHARED,
            Some("slave") | Some("rslave") => MsFlags::MS_SLAVE,
            _ => MsFlags::MS_PRIVATE,
        };
        let hooks = spec.hooks().clone().unwrap_or_default();
        let new_uts = flags & libc::CLONE_NEWUTS as u64 != 0;
        let mut plan = Plan {
            rootfs: rootfs.to_path_buf(),
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            root_propagation: propagation,
            mounts,
            devices,
            masked: linux
                .masked_paths()
                .iter()
                .flatten()
                .map(PathBuf::from)
                .collect(),
            readonly: linux
                .readonly_paths()
                .iter()
                .flatten()
                .map(PathBuf::from)
                .collect(),
            hostname: spec.hostname().clone().filter(|_| new_uts),
            domainname: spec.domainname().clone().filter(|_| new_uts),
            sysctl: linux
                .sysctl()
                .iter()
                .flatten()
                .map(|(k, v)| check_sysctl(k, flags).map(|()| (k.clone(), v.clone())))
                .collect::<R<_>>()?,
            userns,
            process: proc_plan,
            create_hooks: hook_plans(hooks.create_container())?,
            start_hooks: hook_plans(hooks.start_container())?,
            state_json: Vec::new(),
            fifo: fifo.as_raw_fd(),
            preserve_fds: o.preserve_fds,
        };
        plan.sysctl.sort();
        let mut state = self.state_of(&saved);
        state.status = Status::Creating;
        plan.state_json = serde_json::to_vec(&state).unwrap_or_default();

        // Into the namespaces that exist (the user namespace first).
        let mut join = join;
        join.sort_by_key(|(_, f, _)| {
            if *f == libc::CLONE_NEWUSER {
                0
            } else if *f == libc::CLONE_NEWNS {
                2
            } else {
                1
            }
        });
        for (fd, f, p) in &join {
            nix::sched::setns(fd, nix::sched::CloneFlags::from_bits_truncate(*f))
                .map_err(io(format!("join namespace {}", p.display())))?;
        }
        drop(join);

        // What a `delete` needs if this runtime is killed from here on: the
        // cgroup (pid 0 reads as stopped until the real state replaces it).
        let early = serde_json::to_vec_pretty(&saved).map_err(io("state"))?;
        write_file_atomic(&dir.join("state.json"), &early)?;
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io("pipe"))?;
        let (rep_r, rep_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io("pipe"))?;
        let placement = cg
            .placement(&saved.cgroup_name)
            .map_err(|e| e.to_string())?;
        let (cgroup_fd, back) = match placement {
            Placement::CloneInto { dir, .. } => (Some(dir), Vec::new()),
            Placement::Tasks { join, back, into } => {
                crate::launch::move_self(&join).map_err(io("join the container's cgroup"))?;
                (into, back)
            }
        };
        debug_assert!(
            sys::single_threaded(),
            "clone3 needs a single-threaded vectl"
        );
        let forked = sys::clone3(flags, cgroup_fd.as_ref().map(|f| f.as_fd()));
        let _ = crate::launch::move_self(&back);
        let (pid, pidfd) = match forked.map_err(io("clone3"))? {
            Forked::Child => {
                drop(go_w);
                drop(rep_r);
                // Host root running vectl's binary until it execs the
                // container's process: nobody (a process of a joined PID
                // namespace, an early `exec`) may ptrace it or open its
                // /proc files meanwhile. The exec makes the process dumpable
                // again.
                if let Err(e) = crate::security::set_non_dumpable() {
                    let _ = fs::File::from(rep_w).write_all(format!("{e}").as_bytes());
                    sys::exit_now(1);
                }
                let mut keep: Vec<RawFd> = vec![go_r.as_raw_fd(), rep_w.as_raw_fd(), plan.fifo];
                keep.extend(plan.process.console);
                keep.extend(crate::exec::preserved_fds(plan.preserve_fds));
                if let Err(e) = sys::close_fds_except(&keep) {
                    let _ = fs::File::from(rep_w)
                        .write_all(format!("close descriptors: {e}").as_bytes());
                    sys::exit_now(1);
                }
                let mut report = Some(rep_w);
                let msg = match plan.run(go_r, &mut report) {
                    Ok(never) => match never {},
                    Err(m) => m,
                };
                // Before the report was sent, the runtime reads it; after,
                // the engine's stderr does.
                match report {
                    Some(fd) => {
                        let _ = fs::File::from(fd).write_all(msg.as_bytes());
                    }
                    None => {
                        let _ = writeln!(std::io::stderr(), "vectl-oci: {id}: {msg}");
                    }
                }
                sys::exit_now(127);
            }
            Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(go_r);
        drop(rep_w);
        let abort = |e: String| {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            e
        };
        let mut go = fs::File::from(go_w);
        if userns {
            if let Err(e) = write_id_maps(pid, linux) {
                return Err(abort(e));
            }
            if go.write_all(b"g").is_err() {
                return Err(abort("release the container's init".into()));
            }
        }
        drop(go);
        let mut rep = fs::File::from(rep_r);
        let mut buf = Vec::new();
        let mut first = [0u8; 1];
        match rep.read(&mut first) {
            Ok(1) if first[0] == 0 => {}
            Ok(1) => {
                buf.push(first[0]);
                let _ = rep.read_to_end(&mut buf);
                return Err(abort(String::from_utf8_lossy(&buf).into_owned()));
            }
            _ => return Err(abort("the container's init ended during its setup".into())),
        }
        drop(rep);
        drop(fifo);
        drop(console);
        saved.pid = pid;
        saved.start_ticks = crate::state::proc_stat(pid)
            .map(|s| s.start_ticks)
            .unwrap_or(0);
        let mut state = self.state_of(&saved);
        state.status = Status::Created;
        let state_json = serde_json::to_vec(&state).unwrap_or_default();
        #[allow(deprecated)]
        let early: Vec<oci_spec::runtime::Hook> = hooks
            .prestart()
            .iter()
            .flatten()
            .chain(hooks.create_runtime().iter().flatten())
            .cloned()
            .collect();
        for h in hook_plans(&Some(early))? {
            if let Err(e) = init::run_hook(&h, &state_json) {
                return Err(abort(e));
            }
        }
        let text = serde_json::to_vec_pretty(&saved).map_err(io("state"))?;
        if let Err(e) = write_file_atomic(&dir.join("state.json"), &text) {
            return Err(abort(e));
        }
        if let Some(p) = &o.pid_file
            && let Err(e) = write_file_atomic(p, pid.to_string().as_bytes())
        {
            return Err(abort(e));
        }
        drop(pidfd);
        Ok(())
    }

    /// `start`: releases the process `create` set up.
    pub fn start(&self, id: &str) -> R {
        let s = self.load(id)?;
        match self.status_of(&s) {
            Status::Created => {}
            st => return Err(format!("container {id} is {st}, not created")),
        }
        let fifo_path = self.dir(id).join("exec.fifo");
        // Non-blocking: the init may be gone; then nothing ever writes.
        let fd = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io(fifo_path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut f = fs::File::from(fd);
        loop {
            let mut b = [0u8; 1];
            if let Ok(1) = f.read(&mut b) {
                break;
            }
            if self.status_of(&s) == Status::Stopped {
                let _ = fs::remove_file(&fifo_path);
                return Err(format!(
                    "container {id}: its process ended before it started"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {id}: its process did not take the start"
                ));
            }
            let mut pfd = [nix::poll::PollFd::new(
                f.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
        }
        fs::remove_file(&fifo_path).map_err(io(fifo_path.display()))?;
        let state = serde_json::to_vec(&self.state_of(&s)).unwrap_or_default();
        let hooks = s.hooks.clone().unwrap_or_default();
        for h in hook_plans(hooks.poststart())? {
            // A failing poststart hook is logged, not fatal (the spec).
            if let Err(e) = init::run_hook(&h, &state) {
                eprintln!("vectl-oci: {id}: poststart {e}");
            }
        }
        Ok(())
    }

    /// `kill ID SIG [--all]`.
    pub fn kill(&self, id: &str, sig: i32, all: bool) -> R {
        let s = self.load(id)?;
        let st = self.status_of(&s);
        if all {
            let cg = backend(&s.cgroup_parent)?;
            for pid in cg.procs(&s.cgroup_name).map_err(|e| e.to_string())? {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::try_from(sig).map_err(io("signal"))?,
                );
            }
            return Ok(());
        }
        if st == Status::Stopped {
            return Err(format!("container {id} is not running"));
        }
        let pidfd = sys::pidfd_open(s.pid).map_err(io(format!("pidfd of {}", s.pid)))?;
        // The pid may have been reused between load and open: check again.
        if self.status_of(&s) == Status::Stopped {
            return Err(format!("container {id} is not running"));
        }
        sys::pidfd_send_signal(pidfd.as_fd(), sig).map_err(io(format!("signal {sig}")))
    }

    /// `delete [--force] ID`.
    pub fn delete(&self, id: &str, force: bool) -> R {
        check_id(id)?;
        let dir = self.dir(id);
        let s = match self.load(id) {
            Ok(s) => s,
            Err(_) if dir.is_dir() => {
                // A create that never finished: nothing of it runs.
                return fs::remove_dir_all(&dir).map_err(io(dir.display()));
            }
            Err(e) if force => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let st = self.status_of(&s);
        if st == Status::Running && !force {
            return Err(format!("container {id} is running: stop it or use --force"));
        }
        let cg = backend(&s.cgroup_parent)?;
        if st != Status::Stopped {
            let _ =
                sys::pidfd_open(s.pid).map(|fd| sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL));
        }
        cg.kill_all(&s.cgroup_name).map_err(|e| e.to_string())?;
        cg.remove(&s.cgroup_name).map_err(|e| e.to_string())?;
        let mut state = self.state_of(&s);
        state.status = Status::Stopped;
        let state = serde_json::to_vec(&state).unwrap_or_default();
        let hooks = s.hooks.clone().unwrap_or_default();
        for h in hook_plans(hooks.poststop())? {
            if let Err(e) = init::run_hook(&h, &state) {
                eprintln!("vectl-oci: {id}: poststop {e}");
            }
        }
        fs::remove_dir_all(&dir).map_err(io(dir.display()))
    }

    /// `update --resources FILE ID`: changes limits of a live container
    /// (`resources`: runtime-spec LinuxResources JSON).
    pub fn update(&self, id: &str, resources: serde_json::Value) -> R {
        let r: LinuxResources = serde_json::from_value(resources).map_err(io("resources"))?;
        let r = &r;
        let s = self.load(id)?;
        let cg = backend(&s.cgroup_parent)?;
        let old = cg.read_limits(&s.cgroup_name).map_err(|e| e.to_string())?;
        let new = resources::overlay(&old, r)?;
        cg.apply(&s.cgroup_name, &old, &new, false)
            .map_err(|e| e.to_string())
    }

    /// `exec`: runs a process in a running container. Returns its exit status
    /// (0 with `--detach` once it runs).
    pub fn exec(&self, o: &ExecOptions) -> R<i32> {
        let s = self.load(&o.id)?;
        // Not into a created one: its init still holds the runtime's fifo.
        match self.status_of(&s) {
            Status::Running => {}
            st => {
                return Err(format!(
                    "container {} is {st}, not running: nothing to exec in",
                    o.id
                ));
            }
        }
        let process: Process = match &o.process {
            Some(p) => {
                let text = fs::read(p).map_err(io(p.display()))?;
                serde_json::from_slice(&text).map_err(io(p.display()))?
            }
            None => {
                if o.args.is_empty() {
                    return Err("exec: give a command or --process FILE".into());
                }
                let spec = Spec::load(s.bundle.join("config.json")).map_err(io("config.json"))?;
                let mut p = spec.process().clone().ok_or("config.json has no process")?;
                p.set_args(Some(o.args.clone()));
                p.set_terminal(Some(o.tty));
                if let Some(cwd) = &o.cwd {
                    p.set_cwd(cwd.clone());
                }
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(o.env.iter().cloned());
                p.set_env(Some(env));
                if let Some((u, g)) = o.user {
                    let mut user = p.user().clone();
                    user.set_uid(u);
                    user.set_gid(g);
                    p.set_user(user);
                }
                p
            }
        };
        if process.terminal().unwrap_or(false) && o.console_socket.is_none() {
            return Err("exec: a terminal needs --console-socket".into());
        }
        let console = match &o.console_socket {
            Some(p) if process.terminal().unwrap_or(false) => Some(connect_console(p)?),
            _ => None,
        };
        let mut plan = proc_plan(&process, console.as_ref().map(|c| c.as_raw_fd()))?;
        // The container's own seccomp profile applies to what enters it.
        let spec = Spec::load(s.bundle.join("config.json")).map_err(io("config.json"))?;
        if let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            plan.seccomp = Some(seccomp::compile(sc)?);
        }
        let cg = backend(&s.cgroup_parent)?;
        let placement = cg.placement(&s.cgroup_name).map_err(|e| e.to_string())?;
        let target = sys::pidfd_open(s.pid).map_err(io("pidfd of the container's init"))?;
        // The pid may have been reused since the status was read: check again
        // now that the pidfd holds the process (its namespaces are joined).
        if self.status_of(&s) != Status::Running {
            return Err(format!("container {} is not running", s.id));
        }
        let (rep_r, rep_w) = sys::report_channel().map_err(io("socketpair"))?;
        // Every namespace of its init, the user namespace only if it has its own.
        let mut ns = libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWCGROUP;
        let user_ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).ok();
        if user_ns(&s.pid.to_string()) != user_ns("self") {
            ns |= libc::CLONE_NEWUSER;
        }
        let pid = match sys::clone3(0, None).map_err(io("fork"))? {
            Forked::Child => {
                drop(rep_r);
                if let Err(msg) =
                    enter_and_spawn(&plan, &placement, target, ns, &rep_w, o.preserve_fds)
                {
                    let _ = nix::unistd::write(&rep_w, format!("err:{msg}").as_bytes());
                    sys::exit_now(1);
                }
                sys::exit_now(0);
            }
            Forked::Parent { pid, .. } => pid,
        };
        drop(rep_w);
        drop(console);
        // The helper reports the process's pid (`pid:N;`); a failure of it or
        // of the process before exec comes as `err:...`.
        let (text, _) = sys::read_reports(rep_r.as_fd());
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let (child, msg) = parse_exec_report(&text);
        let Some(child) = child else {
            return Err(if msg.is_empty() {
                "exec: the helper process ended".into()
            } else {
                msg
            });
        };
        if !msg.is_empty() {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            return Err(msg);
        }
        if let Some(p) = &o.pid_file {
            write_file_atomic(p, child.to_string().as_bytes())?;
        }
        if o.detach {
            return Ok(0);
        }
        // The process is our child (CLONE_PARENT): wait for it.
        loop {
            match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(format!("wait for the process: {e}")),
            }
        }
    }
}

/// In the forked helper of `exec`: into the container's cgroup and
/// namespaces, made non-dumpable and holding no fd but stdio first; confined
/// (limits, user, capabilities, seccomp) next; only then a child born in its
/// PID namespace (the runtime's child) execs the process.
fn enter_and_spawn(
    plan: &ProcPlan,
    placement: &Placement,
    target: OwnedFd,
    ns: i32,
    report: &OwnedFd,
    preserve: i32,
) -> R {
    crate::security::set_non_dumpable().map_err(|e| e.to_string())?;
    let mut keep = vec![target.as_raw_fd(), report.as_raw_fd()];
    keep.extend(plan.console);
    keep.extend(crate::exec::preserved_fds(preserve));
    match placement {
        Placement::Tasks { join, .. } => {
            crate::launch::move_self(join).map_err(io("join the container's cgroup"))?;
        }
        Placement::CloneInto { .. } => {}
    }
    if let Placement::CloneInto { dir, .. }
    | Placement::Tasks {
        into: Some(dir), ..
    } = placement
    {
        let procs = format!("/proc/self/fd/{}/cgroup.procs", dir.as_raw_fd());
        fs::write(&procs, b"0").map_err(io("join the container's cgroup"))?;
    }
    plan.set_oom_score_adj()?;
    // Nothing of the host's file system stays open (the cgroup directory fd
    // goes too; this process ends by exit_now, so nothing closes it twice).
    sys::close_fds_except(&keep).map_err(io("close descriptors"))?;
    // SAFETY: setns with a pidfd and a mask of namespace types joins all of
    // them at once (Linux 5.8+).
    let rc = unsafe { libc::setns(target.as_raw_fd(), ns) };
    if rc != 0 {
        return Err(format!(
            "join the container's namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The init's pidfd is not the process's to hold.
    drop(target);
    let exe = plan.prepare()?;
    // Confined before anything of it is in the container's PID namespace: the
    // child forked there only execs.
    plan.confine()?;
    match sys::fork_parent().map_err(io("fork into the container"))? {
        None => {
            let e = plan.exec(&exe).err().unwrap_or_default();
            let _ = nix::unistd::write(report, format!("err:{e}").as_bytes());
            sys::exit_now(127);
        }
        Some(pid) => {
            nix::unistd::write(report, format!("pid:{pid};").as_bytes()).map_err(io("report"))?;
            Ok(())
        }
    }
}

/// Splits what `exec`'s helper and process reported: the pid, and the
/// failure if any.
fn parse_exec_report(text: &str) -> (Option<i32>, String) {
    let mut pid = None;
    let mut rest = text.to_string();
    if let Some(at) = text.find("pid:")
        && let Some(len) = text[at + 4..].find(';')
    {
        pid = text[at + 4..at + 4 + len].parse().ok();
        rest = format!("{}{}", &text[..at], &text[at + 5 + len..]);
    }
    let msg = rest
        .split("err:")
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    (pid, msg)
}

/// The container's cgroup directories, as a `cgroup` mount shows them: one
/// directory on v2, one per hierarchy (by its mount's name) on v1.
fn cgroup_mount_dirs(cg: &dyn CgroupBackend, name: &str) -> Vec<(String, PathBuf)> {
    let paths = cg.paths(name);
    if cg.version() == CgroupVersion::V2 {
        return paths
            .into_iter()
            .take(1)
            .map(|p| (String::new(), p))
            .collect();
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix("/sys/fs/cgroup").ok()?;
            let first = rel.components().next()?;
            Some((first.as_os_str().to_string_lossy().into_owned(), p.clone()))
        })
        .collect()
}

fn hook_plans(hooks: &Option<Vec<oci_spec::runtime::Hook>>) -> R<Vec<HookPlan>> {
    let mut out = Vec::new();
    for h in hooks.iter().flatten() {
        let path = CString::new(h.path().as_os_str().as_bytes())
            .map_err(|_| format!("hook {}: a NUL byte", h.path().display()))?;
        let mut argv = h.args().clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(h.path().to_string_lossy().into_owned());
        }
        out.push(HookPlan {
            path,
            argv: cstrings(&argv, "hook args")?,
            env: cstrings(&h.env().clone().unwrap_or_default(), "hook env")?,
        });
    }
    Ok(out)
}

fn write_id_maps(pid: i32, linux: &oci_spec::runtime::Linux) -> R {
    let line = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, text) in [
        ("uid_map", line(linux.uid_mappings())),
        ("gid_map", line(linux.gid_mappings())),
    ] {
        if text.is_empty() {
            return Err(
                format!("a user namespace needs linux.{file} mappings").replace("_map", "Mappings")
            );
        }
        let p = format!("/proc/{pid}/{file}");
        fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(())
}

fn connect_console(p: &Path) -> R<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("console socket"))?;
    let addr = UnixAddr::new(p).map_err(io(format!("console socket {}", p.display())))?;
    connect(sock.as_raw_fd(), &addr).map_err(io(format!("console socket {}", p.display())))?;
    Ok(sock)
}

/// `features`: what this runtime implements (runtime-spec's features.md).
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "sync", "async", "noatime", "atime", "nodiratime", "diratime", "relatime", "strictatime",
            "dirsync", "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable",
            "runbindable", "tmpcopyup"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"org.opencontainers.runtime-spec.features": "vectl"}
    })
}

/// The OCI containers of the runtime root `root` that are alive, for
/// `vectl list` (marked as OCI-managed there).
pub fn managed(root: &Path) -> Vec<State> {
    Runtime::new(root, false).list().unwrap_or_default()
}

/// The runtime root vectl's own commands look at for OCI containers:
/// `$VECTL_OCI_ROOT`, else [`DEFAULT_ROOT`].
pub fn default_root() -> PathBuf {
    std::env::var_os("VECTL_OCI_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// Whether `name` is a container of the default runtime root (vectl's own
/// lifecycle verbs refuse those: the engine owns them).
pub fn is_managed(name: &str) -> bool {
    check_id(name).is_ok() && default_root().join(name).join("state.json").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sysctls_of_the_containers_own_namespaces_are_taken() {
        let net = libc::CLONE_NEWNET as u64;
        let ipc = libc::CLONE_NEWIPC as u64;
        assert!(check_sysctl("net.ipv4.ip_forward", net).is_ok());
        assert!(check_sysctl("net.ipv4.ip_forward", ipc).is_err());
        assert!(check_sysctl("kernel.shmmax", ipc).is_ok());
        assert!(check_sysctl("fs.mqueue.msg_max", ipc).is_ok());
        assert!(check_sysctl("kernel.core_pattern", net | ipc).is_err());
        assert!(check_sysctl("vm.overcommit_memory", net | ipc).is_err());
        assert!(check_sysctl("net.ipv4..conf", net).is_err());
        assert!(check_sysctl("net/../../kernel/core_pattern", net).is_err());
    }

    #[test]
    fn cgroup_paths_as_engines_give_them() {
        let r = Path::new("/run/vectl-oci");
        assert_eq!(
            cgroup_of(
                Some(Path::new("/libpod_parent/libpod-abc")),
                "abc",
                false,
                r
            ),
            ("/libpod_parent".into(), "libpod-abc".into())
        );
        assert_eq!(
            cgroup_of(Some(Path::new("machine.slice:libpod:abc")), "abc", true, r),
            ("machine.slice".into(), "libpod-abc.scope".into())
        );
        // No cgroupsPath: a parent per runtime root.
        let (a, name) = cgroup_of(None, "abc", false, r);
        let (b, _) = cgroup_of(None, "abc", false, Path::new("/tmp/other-root"));
        assert!(
            a.starts_with("vectl-oci-") && b.starts_with("vectl-oci-"),
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert_eq!(name, "abc");
    }

    #[test]
    fn exec_reports_parse_in_any_order() {
        assert_eq!(parse_exec_report("pid:42;"), (Some(42), String::new()));
        assert_eq!(
            parse_exec_report("err:exec /x: ENOENTpid:42;"),
            (Some(42), "exec /x: ENOENT".into())
        );
        assert_eq!(
            parse_exec_report("err:setns: EPERM"),
            (None, "setns: EPERM".into())
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("0154b2fa1bc0").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id(".hidden").is_err());
        assert!(check_id("").is_err());
    }

    #[test]
    fn mount_options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = [
            "nosuid",
            "noexec",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, remount, prop, data, bind) = mount_options(&o);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY));
        assert!(remount.contains(MsFlags::MS_RDONLY));
        assert_eq!(prop, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(data, "mode=755,size=65536k");
        assert!(!bind);
    }
}
