//! The /proc view: a VE's `/proc/meminfo`, `cpuinfo`, `stat`, `uptime`,
//! `loadavg`, `swaps`, `diskstats` and `/sys/devices/system/cpu/online` show
//! its own limits and use instead of the host's.
//!
//! LXCFS does the work (the FUSE server LXC and Incus use): it answers each read
//! from the reader's cgroups and PID namespace. vectl only binds its files over
//! the VE's at start, and binds them again in running VEs after LXCFS restarted
//! (a restarted FUSE server is a new mount; the old binds then answer ENOTCONN).
//! No process per VE: one LXCFS serves every VE of every root on the host.
//!
//! When LXCFS is not running a VE still starts, with the host's values, and
//! `show` says so ([`crate::RunState::proc_view`]).

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use crate::step::{Step, StepError, step};
use crate::sys;

/// Where Debian's and Ubuntu's `lxcfs` package mounts it.
pub const DEFAULT_LXCFS_DIR: &str = "/var/lib/lxcfs";

/// The files LXCFS virtualizes that a VE gets, relative to both LXCFS's
/// directory and the VE's root. Those the running LXCFS lacks are left out.
pub const FILES: &[&str] = &[
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "sys/devices/system/cpu/online",
];

/// Host settings of the /proc view (`vectl host set --proc-view`, `--lxcfs-dir`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcViewSettings {
    /// Bind LXCFS's files into VEs at start.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where LXCFS is mounted.
    #[serde(default = "default_dir")]
    pub lxcfs_dir: PathBuf,
}

fn yes() -> bool {
    true
}

fn default_dir() -> PathBuf {
    PathBuf::from(DEFAULT_LXCFS_DIR)
}

impl Default for ProcViewSettings {
    fn default() -> Self {
        ProcViewSettings {
            enabled: true,
            lxcfs_dir: default_dir(),
        }
    }
}

/// A running LXCFS, found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lxcfs {
    pub dir: PathBuf,
    /// The entries of [`FILES`] it serves.
    pub files: Vec<&'static str>,
}

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Why a VE shows the host's values when the operator turned the view off.
pub const VIEW_OFF: &str = "the /proc view is off (vectl host set --proc-view on)";

impl Lxcfs {
    /// Whether LXCFS is mounted and answering at `dir`; the reason if not, in
    /// words for `show` and a start's warning.
    pub fn probe(dir: &Path) -> std::result::Result<Lxcfs, String> {
        probe(dir)
    }
}

fn probe(dir: &Path) -> std::result::Result<Lxcfs, String> {
    let not = |why: String| format!("LXCFS is not running at {}: {why}", dir.display());
    let st = rustix::fs::statfs(dir).map_err(|e| not(std::io::Error::from(e).to_string()))?;
    if st.f_type != FUSE_SUPER_MAGIC {
        return Err(not("not a FUSE mount".into()));
    }
    // One read: a dead server's mount answers ENOTCONN.
    let meminfo = dir.join("proc/meminfo");
    let mut byte = [0u8; 1];
    fs::File::open(&meminfo)
        .and_then(|mut f| f.read(&mut byte))
        .map_err(|e| not(format!("{}: {e}", meminfo.display())))?;
    let files = FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).is_file())
        .collect();
    Ok(Lxcfs {
        dir: dir.to_path_buf(),
        files,
    })
}

/// In a starting VE's mount namespace, before pivot_root: binds LXCFS's files
/// over the VE's fresh /proc and /sys at `root`, read-only.
pub(crate) fn bind_at_start(lxcfs: &Lxcfs, root: &Path) -> Step {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    for f in &lxcfs.files {
        let (src, dst) = (lxcfs.dir.join(f), root.join(f));
        if !dst.is_file() {
            continue;
        }
        mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step(|| format!("bind {} over /{f}", src.display())))?;
        mount(
            None::<&str>,
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(step(|| format!("remount /{f} read-only")))?;
    }
    Ok(())
}

/// Per running VE, by name: what a rebind did there, or why it could not.
pub type RebindReport = Vec<(String, std::result::Result<Rebound, String>)>;

/// What [`rebind`] did in one VE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebound {
    /// Files bound anew (their old binds were dead, or there were none).
    pub bound: Vec<String>,
    /// Files whose binds answered already.
    pub live: Vec<String>,
    /// Files left alone: something of the VE's own is mounted there.
    pub foreign: Vec<String>,
}

/// How a VE's copy of one of [`FILES`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// LXCFS's, answering.
    Live,
    /// A bind of an LXCFS that is gone (ENOTCONN).
    Dead,
    /// The kernel's own (procfs or sysfs): never bound.
    Kernel,
    /// Anything else: the VE's own mount.
    Foreign,
}

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

fn target_state(fd: BorrowedFd<'_>) -> Target {
    match rustix::fs::fstatfs(fd) {
        Ok(st) => match st.f_type {
            FUSE_SUPER_MAGIC => Target::Live,
            PROC_SUPER_MAGIC | SYSFS_MAGIC => Target::Kernel,
            _ => Target::Foreign,
        },
        Err(rustix::io::Errno::NOTCONN) => Target::Dead,
        Err(_) => Target::Foreign,
    }
}

/// How the running VE with init `pid` sees its /proc/meminfo, looked at from
/// the host through its root without following its symlinks.
pub(crate) fn meminfo_state(pid: i32) -> Target {
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
    let Ok(root) = fs::File::open(format!("/proc/{pid}/root")) else {
        return Target::Foreign;
    };
    match openat2(
        root.as_fd(),
        "proc/meminfo",
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => target_state(fd.as_fd()),
        Err(_) => Target::Foreign,
    }
}

/// Binds LXCFS's files again in the running VE whose init's pidfd is `init`:
/// dead binds (LXCFS restarted) are detached and replaced, missing ones (the
/// VE started while LXCFS was down) added. Runs in a helper process that joins
/// the VE's mount namespace; paths in it are resolved without following
/// symlinks, and what the VE mounted itself is left alone.
pub(crate) fn rebind(init: BorrowedFd<'_>, lxcfs: &Lxcfs) -> std::result::Result<Rebound, String> {
    use rustix::mount::{OpenTreeFlags, open_tree};
    // The trees are cloned here, in the host's mount namespace.
    let mut trees = Vec::new();
    for f in &lxcfs.files {
        let src = lxcfs.dir.join(f);
        let tree = open_tree(
            rustix::fs::CWD,
            &src,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| format!("open_tree {}: {e}", src.display()))?;
        crate::userns::set_mount_attr(tree.as_fd(), crate::userns::MOUNT_ATTR_LOCKED_DOWN, None)
            .map_err(|e| format!("make the bind of {} read-only: {e}", src.display()))?;
        trees.push((*f, tree));
    }
    let done = sys::in_helper(|| {
        rebind_in(init, &trees)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::to_string(&d).map_err(|e| e.to_string()))
    })?;
    serde_json::from_str(&done).map_err(|e| format!("the rebinding helper's report: {e}"))
}

/// The helper's work, in the VE's mount namespace.
fn rebind_in(init: BorrowedFd<'_>, trees: &[(&'static str, OwnedFd)]) -> Step<Rebound> {
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
    use rustix::mount::{MoveMountFlags, UnmountFlags, move_mount, unmount};
    setns(init, CloneFlags::CLONE_NEWNS)
        .map_err(step(|| "join the VE's mount namespace".into()))?;
    // setns put this process at the namespace's root: the VE's.
    let root = openat2(
        rustix::fs::CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .map_err(step(|| "open the VE's root".into()))?;
    let mut done = Rebound::default();
    for (f, tree) in trees {
        let open = || {
            openat2(
                root.as_fd(),
                *f,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
        };
        let Ok(target) = open() else {
            done.foreign.push(f.to_string());
            continue;
        };
        match target_state(target.as_fd()) {
            Target::Live => {
                done.live.push(f.to_string());
                continue;
            }
            Target::Foreign => {
                done.foreign.push(f.to_string());
                continue;
            }
            Target::Kernel => {}
            Target::Dead => {
                drop(target);
                // The dead bind goes; what is under it is the kernel's file.
                let path = format!("/{f}");
                unmount(path.as_str(), UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(step(|| format!("detach the dead bind on {path}")))?;
            }
        }
        let target = open().map_err(step(|| format!("open /{f} in the VE")))?;
        if !matches!(target_state(target.as_fd()), Target::Kernel) {
            return Err(StepError::Refused(format!(
                "/{f} in the VE changed while it was being bound"
            )));
        }
        move_mount(
            tree.as_fd(),
            "",
            target.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(step(|| format!("bind LXCFS's {f} over /{f}")))?;
        done.bound.push(f.to_string());
    }
    Ok(done)
}
