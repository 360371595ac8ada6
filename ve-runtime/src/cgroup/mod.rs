//! cgroups for VEs, v1 and v2 behind one trait ([`CgroupBackend`]).
//!
//! Every VE gets two cgroups below the configured parent, in every hierarchy used:
//!
//! ```text
//! <parent>/<ve>       limits (written by vectl only)
//! <parent>/<ve>/ve    the VE's processes; the root of its cgroup namespace
//! ```
//!
//! The VE's root may mount cgroupfs and write the knobs of its own namespace root,
//! but those belong to `<ve>/ve`: the limits one level up still hold. Knob writes go
//! straight to the files (one `write(2)` each) and every kernel refusal is an error;
//! the controllers are stateless functions over a directory, so unit tests run them
//! against a temporary directory laid out like cgroupfs.

mod devices;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::KernelLimits;

pub use v1::V1;
pub use v2::V2;

/// The name of the payload cgroup below a VE's limits cgroup.
pub const PAYLOAD: &str = "ve";

/// Which cgroup version a backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// How a new process gets into a VE's payload cgroup.
#[derive(Debug)]
pub enum Placement {
    /// v2: clone3 with CLONE_INTO_CGROUP and the directory fd `dir`. `leaf`:
    /// where to go instead when the kernel answers EBUSY, because the VE
    /// enabled controllers in `dir` (its systemd, at boot) after it was chosen.
    CloneInto { dir: OwnedFd, leaf: Option<PathBuf> },
    /// v1: the single-threaded caller moves itself into `join` (writing "0" to each
    /// `tasks` file), clones, and moves back to `back`. Moving only the current
    /// thread avoids the RCU grace period a whole-process move waits for.
    Tasks {
        join: Vec<PathBuf>,
        back: Vec<PathBuf>,
        /// A hybrid host's cgroup2 hierarchy: clone3 with CLONE_INTO_CGROUP
        /// and this directory fd (moving a process through `cgroup.procs`
        /// waits for an RCU grace period, twice per start).
        into: Option<OwnedFd>,
    },
}

/// Current resource use of a VE, as the cgroups count it (cumulative counters since
/// the VE started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub pids: u64,
    pub cpu_usage_ns: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub oom_kills: u64,
}

/// A VE's memory and swap, limits and use, and its task count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryView {
    pub ram_limit: Option<u64>,
    /// Swap on top of RAM.
    pub swap_limit: Option<u64>,
    pub ram_used: u64,
    pub swap_used: u64,
    pub tasks: u64,
}

/// The operations vectl needs from a cgroup hierarchy, whatever its version.
pub trait CgroupBackend: std::fmt::Debug + Send + Sync {
    /// The version this backend drives.
    fn version(&self) -> CgroupVersion;
    /// Creates the parent cgroup (and, on v2, enables the controllers down to it).
    fn prepare_parent(&self) -> Result<()>;
    /// Creates the VE's cgroups and applies its limits. Leftovers of an earlier
    /// attempt are reused.
    fn create(&self, ve: &str, limits: &KernelLimits) -> Result<()>;
    /// Hands the VE's payload cgroup to its root (host id `owner`), the way
    /// cgroup v2 delegation is meant: the directory and its `cgroup.procs`,
    /// `cgroup.threads` and `cgroup.subtree_control`. Its root (systemd) may
    /// then make and manage cgroups below it; the VE's limits sit one level
    /// up, in files that stay the host's. On v2 the VE's controllers are
    /// enabled for the payload cgroup, so it can pass them on. On v1 only the
    /// hierarchies without controllers are delegated (`name=systemd` and a
    /// hybrid host's v2 one, see `v1::TRACKING`).
    fn delegate(&self, ve: &str, owner: u32) -> Result<()>;
    /// Changes limits of an existing VE cgroup in place. Writes only the knobs that
    /// differ from `old`; if one is refused, the ones already written go back to
    /// `old` and the refusal is returned. A RAM limit below what the VE uses is
    /// refused unless `force` (v1's kernel refuses it itself).
    fn apply(&self, ve: &str, old: &KernelLimits, new: &KernelLimits, force: bool) -> Result<()>;
    /// The limits the kernel holds now.
    fn read_limits(&self, ve: &str) -> Result<KernelLimits>;
    /// Whether the VE's cgroup exists.
    fn exists(&self, ve: &str) -> bool;
    /// Every process in the VE's cgroups.
    fn procs(&self, ve: &str) -> Result<Vec<i32>>;
    /// Kills every process in the VE's cgroups and waits until they are gone.
    fn kill_all(&self, ve: &str) -> Result<()>;
    /// Thaws the VE's cgroup if something froze it (vectl never leaves a VE frozen:
    /// a frozen VE would hang every command that enters it). Returns whether it was
    /// frozen.
    fn thaw(&self, ve: &str) -> Result<bool>;
    /// Freezes every process of the VE and waits until they are (for a consistent
    /// snapshot); [`CgroupBackend::thaw`] undoes it. `Ok(false)`: this host has
    /// no freezer for VE cgroups.
    fn freeze(&self, ve: &str) -> Result<bool>;
    /// Removes the VE's cgroups (which must be empty). Missing is fine.
    fn remove(&self, ve: &str) -> Result<()>;
    /// How a new process enters the VE's payload cgroup.
    fn placement(&self, ve: &str) -> Result<Placement>;
    /// Makes the kernel count the VE's I/O on disk `major:minor`, for
    /// [`CgroupBackend::usage`]. v1's blkio counts only on a disk where
    /// throttling is on, and recent kernels (this 6.18 host) turn it on at the
    /// first throttle written for that disk: a VE without an I/O limit would
    /// show no I/O at all. v1 writes "no limit" for the disk; v2's io.stat
    /// counts every disk, so it does nothing.
    fn count_io(&self, _ve: &str, _major: u32, _minor: u32) -> Result<()> {
        Ok(())
    }
    /// Current use.
    fn usage(&self, ve: &str) -> Result<Usage>;
    /// What sysinfo(2) in the VE tells (`sysinfo.rs`), from the few files that
    /// hold it: cheaper than [`CgroupBackend::read_limits`] and
    /// [`CgroupBackend::usage`], which read every controller.
    fn memory_view(&self, ve: &str) -> Result<MemoryView>;
    /// The directories this backend would use for a VE (for `show`).
    fn paths(&self, ve: &str) -> Vec<PathBuf>;
    /// The parent directories of all VE cgroups, one per hierarchy.
    fn parents(&self) -> Vec<PathBuf>;
}

/// Host settings for cgroups, kept in vectl.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSettings {
    /// The parent of all VE cgroups, as given: `vectl` (below each hierarchy's
    /// root), `/a/b`, or `./name` (below vectl's own cgroup at `vectl init`).
    pub parent: String,
    /// `./`-relative parents resolved at init, per controller (`unified` on v2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolved: BTreeMap<String, String>,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings {
            parent: "vectl".into(),
            resolved: BTreeMap::new(),
        }
    }
}

/// Controllers vectl puts VEs into on v1, and whether a VE can run without them.
const V1_CONTROLLERS: &[(&str, bool)] = &[
    ("memory", true),
    ("cpu", true),
    ("pids", true),
    ("cpuacct", false),
    ("cpuset", false),
    ("freezer", false),
    ("devices", false),
    ("blkio", false),
];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    /// v1 controllers bound to it; empty for cgroup2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup mounts in a `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || pre[3] != "/" {
            continue;
        }
        let path = PathBuf::from(unescape_mount_path(pre[4]));
        match post[0] {
            "cgroup2" => out.push(Mount {
                path,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => {
                // Controllers, and a named hierarchy's `name=X` (what
                // /proc/self/cgroup calls it).
                let controllers = post[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .filter(|o| !o.starts_with("no") && *o != "clone_children")
                    .map(str::to_string)
                    .collect();
                out.push(Mount {
                    path,
                    controllers,
                    v2: false,
                });
            }
            _ => {}
        }
    }
    out
}

pub(crate) fn unescape_mount_path(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The calling process's cgroup per controller (`unified` for the v2 line), from a
/// `/proc/self/cgroup` text.
pub fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert("unified".to_string(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// The version this host's VEs use: v1 when the memory controller is on a v1
/// hierarchy (legacy or hybrid hosts), else v2.
pub fn host_version(mounts: &[Mount]) -> Result<CgroupVersion> {
    if mounts
        .iter()
        .any(|m| !m.v2 && m.controllers.iter().any(|c| c == "memory"))
    {
        return Ok(CgroupVersion::V1);
    }
    let v2 = mounts
        .iter()
        .find(|m| m.v2)
        .ok_or_else(|| Error::Cgroups("no cgroup file system is mounted".into()))?;
    let ctrls = fs::read_to_string(v2.path.join("cgroup.controllers")).unwrap_or_default();
    if !ctrls.split_whitespace().any(|c| c == "memory") {
        return Err(Error::Cgroups(format!(
            "the memory controller is not available (not in {}/cgroup.controllers, not mounted as v1)",
            v2.path.display()
        )));
    }
    Ok(CgroupVersion::V2)
}

/// Resolves a `./`-relative parent against the caller's own cgroups, for storing
/// in the host settings. Other parents are kept as given.
pub fn resolve_parent(settings: &CgroupSettings) -> Result<CgroupSettings> {
    let mut out = CgroupSettings {
        parent: settings.parent.clone(),
        resolved: BTreeMap::new(),
    };
    validate_parent(&settings.parent)?;
    if let Some(rel) = settings.parent.strip_prefix("./") {
        let own = read_file("/proc/self/cgroup")?;
        for (ctrl, path) in parse_proc_cgroup(&own) {
            let joined = Path::new(&path).join(rel);
            out.resolved
                .insert(ctrl, joined.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

fn validate_parent(p: &str) -> Result<()> {
    let rel = p.strip_prefix("./").unwrap_or(p).trim_start_matches('/');
    let ok = !rel.is_empty()
        && rel.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_graphic())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "cgroup parent",
            value: p.to_string(),
            rule: "expected a path like vectl, /machine/vectl or ./vectl",
        })
    }
}

/// The parent directory for `controller` inside a hierarchy mounted at `mount`.
fn parent_dir(settings: &CgroupSettings, controller: &str, mount: &Path) -> PathBuf {
    let rel = match settings.resolved.get(controller) {
        Some(r) => r.clone(),
        None => settings.parent.trim_start_matches("./").to_string(),
    };
    mount.join(rel.trim_start_matches('/'))
}

/// Opens the backend for this host.
pub fn open(settings: &CgroupSettings) -> Result<Box<dyn CgroupBackend>> {
    let mounts = match standard_mounts() {
        Some(m) => m,
        None => parse_mountinfo(&read_file("/proc/self/mountinfo")?),
    };
    match host_version(&mounts)? {
        CgroupVersion::V1 => {
            let mut hierarchies: Vec<v1::Hierarchy> = Vec::new();
            for (ctrl, required) in V1_CONTROLLERS {
                let Some(m) = mounts
                    .iter()
                    .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
                else {
                    if *required {
                        return Err(Error::Cgroups(format!(
                            "the {ctrl} controller is not mounted"
                        )));
                    }
                    continue;
                };
                if hierarchies.iter().any(|h| h.mount == m.path) {
                    continue;
                }
                hierarchies.push(v1::Hierarchy {
                    mount: m.path.clone(),
                    controllers: m.controllers.clone(),
                    parent: parent_dir(settings, ctrl, &m.path),
                    own: None,
                    v2: false,
                });
            }
            for key in v1::TRACKING {
                let found = mounts.iter().find(|m| match *key {
                    "unified" => m.v2,
                    named => !m.v2 && m.controllers.iter().any(|c| c == named),
                });
                if let Some(m) = found {
                    hierarchies.push(v1::Hierarchy {
                        mount: m.path.clone(),
                        controllers: vec![(*key).to_string()],
                        parent: parent_dir(settings, key, &m.path),
                        own: None,
                        v2: m.v2,
                    });
                }
            }
            Ok(Box::new(V1::new(hierarchies)))
        }
        CgroupVersion::V2 => {
            let m = mounts
                .iter()
                .find(|m| m.v2)
                .ok_or_else(|| Error::Cgroups("no cgroup2 mount".into()))?;
            Ok(Box::new(V2::new(
                m.path.clone(),
                parent_dir(settings, "unified", &m.path),
            )))
        }
    }
}

/// The cgroup mounts at the standard place, found with a few stat calls instead of
/// reading /proc/self/mountinfo (which the kernel renders at some cost, on every
/// vectl run): cgroup2 on /sys/fs/cgroup, or v1 hierarchies in its subdirectories
/// (co-mounted controllers share a device number). `None` for anything else; then
/// the caller reads mountinfo.
fn standard_mounts() -> Option<Vec<Mount>> {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
    use std::os::unix::fs::MetadataExt;
    let root = Path::new("/sys/fs/cgroup");
    let kind = statfs(root).ok()?.filesystem_type();
    if kind == CGROUP2_SUPER_MAGIC {
        return Some(vec![Mount {
            path: root.to_path_buf(),
            controllers: Vec::new(),
            v2: true,
        }]);
    }
    if kind != TMPFS_MAGIC {
        return None;
    }
    let mut found: Vec<(u64, Mount)> = Vec::new();
    for (ctrl, _) in V1_CONTROLLERS {
        let path = root.join(ctrl);
        if statfs(&path).ok()?.filesystem_type() != CGROUP_SUPER_MAGIC {
            continue;
        }
        let dev = fs::metadata(&path).ok()?.dev();
        match found.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, m)) => m.controllers.push((*ctrl).to_string()),
            None => found.push((
                dev,
                Mount {
                    path,
                    controllers: vec![(*ctrl).to_string()],
                    v2: false,
                },
            )),
        }
    }
    // systemd's named hierarchy, at its standard place.
    let named = root.join("systemd");
    if statfs(&named).is_ok_and(|s| s.filesystem_type() == CGROUP_SUPER_MAGIC) {
        found.push((
            0,
            Mount {
                path: named,
                controllers: vec!["name=systemd".to_string()],
                v2: false,
            },
        ));
    }
    let unified = root.join("unified");
    if statfs(&unified).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC) {
        found.push((
            0,
            Mount {
                path: unified,
                controllers: Vec::new(),
                v2: true,
            },
        ));
    }
    Some(found.into_iter().map(|(_, m)| m).collect())
}

fn read_file(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(crate::error::io_err(Path::new(path)))
}

/// Writes one knob with a single write(2), as cgroupfs wants. Refusals name the VE,
/// the knob, the value and the kernel's reason.
pub(crate) fn write_knob(ve: &str, dir: &Path, knob: &str, value: &str) -> Result<()> {
    let path = dir.join(knob);
    // O_TRUNC is ignored by cgroupfs and keeps the fake trees of unit tests exact;
    // no O_CREAT: a missing knob must fail, not appear.
    let res = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        // An empty value must still be one write(2) (cpuset.cpus "" = inherit);
        // write_all of nothing would not call write at all.
        .and_then(|mut f| {
            f.write_all(if value.is_empty() {
                b"\n"
            } else {
                value.as_bytes()
            })
        });
    res.map_err(|e| Error::Kernel {
        ve: ve.to_string(),
        knob: knob.to_string(),
        value: value.to_string(),
        reason: knob_reason(knob, &e),
        path,
    })
}

fn knob_reason(knob: &str, e: &io::Error) -> String {
    match (e.raw_os_error(), knob) {
        (Some(libc::EBUSY), k) if k.starts_with("memory.") => {
            "the VE uses more memory than that and the kernel could not reclaim enough".into()
        }
        (Some(libc::ENOENT), _) => "no such knob (is the controller enabled?)".into(),
        (Some(libc::EINVAL), _) => "invalid value".into(),
        _ => e.to_string(),
    }
}

/// Reads one knob, trimmed.
pub(crate) fn read_knob(dir: &Path, knob: &str) -> Result<String> {
    let path = dir.join(knob);
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(crate::error::io_err(&path))
}

/// Reads a numeric knob; `max` and v1's "unlimited" sentinels read as `None`.
pub(crate) fn read_limit(dir: &Path, knob: &str) -> Result<Option<u64>> {
    let s = read_knob(dir, knob)?;
    if s == "max" || s == "-1" {
        return Ok(None);
    }
    let v: u64 = s.parse().map_err(|_| {
        Error::Cgroups(format!(
            "{}: unexpected value {s:?}",
            dir.join(knob).display()
        ))
    })?;
    // v1 reports "unlimited" memory as a huge page-aligned number.
    Ok(if v >= (i64::MAX as u64) & !0xfff {
        None
    } else {
        Some(v)
    })
}

/// One write of a knob: directory, file, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnobWrite {
    pub dir: PathBuf,
    pub file: &'static str,
    pub value: String,
}

impl KnobWrite {
    pub(crate) fn new(dir: &Path, file: &'static str, value: impl Into<String>) -> KnobWrite {
        KnobWrite {
            dir: dir.to_path_buf(),
            file,
            value: value.into(),
        }
    }
}

/// A set of knob values (a whole limits state), by (directory, file).
pub(crate) type KnobState = Vec<KnobWrite>;

/// The value `state` leaves a knob at (its last write), if any.
pub(crate) fn value_in<'a>(state: &'a KnobState, dir: &Path, file: &str) -> Option<&'a str> {
    state
        .iter()
        .rev()
        .find(|w| w.dir == dir && w.file == file)
        .map(|w| w.value.as_str())
}

/// The writes that take knobs from `old` to `new`: every knob of `new` whose value
/// differs, in `new`'s order (which encodes what must go first).
pub(crate) fn changes(old: &KnobState, new: &KnobState) -> Vec<KnobWrite> {
    new.iter()
        .filter(|w| value_in(old, &w.dir, w.file) != Some(w.value.as_str()))
        .cloned()
        .collect()
}

/// Performs `plan`. If the kernel refuses a write, every knob already written goes
/// back to its value in `restore` (newest first) and the refusal is returned: the
/// VE's limits stay as they were.
pub(crate) fn apply_plan(ve: &str, plan: &[KnobWrite], restore: &KnobState) -> Result<()> {
    for (i, w) in plan.iter().enumerate() {
        if let Err(e) = write_knob(ve, &w.dir, w.file, &w.value) {
            let mut undone: Vec<(&Path, &str)> = Vec::new();
            for done in plan[..i].iter().rev() {
                if undone.contains(&(done.dir.as_path(), done.file)) {
                    continue;
                }
                undone.push((done.dir.as_path(), done.file));
                if let Some(v) = value_in(restore, &done.dir, done.file) {
                    // Best effort: the original refusal is what the caller reports.
                    let _ = write_knob(ve, &done.dir, done.file, v);
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Parses a cgroup "MAJ:MIN value" or "MAJ:MIN key=value ..." file into the line
/// for one device (without the device), if present.
pub(crate) fn device_line(text: &str, major: u32, minor: u32) -> Option<&str> {
    let dev = format!("{major}:{minor}");
    text.lines().find_map(|l| {
        let (d, rest) = l.split_once(' ')?;
        (d == dev).then_some(rest.trim())
    })
}

/// The first "MAJ:MIN" device a device file mentions.
pub(crate) fn first_device(text: &str) -> Option<(u32, u32)> {
    let first = text.lines().next()?.split_whitespace().next()?;
    let (maj, min) = first.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// Converts between cpu.weight (1..10000, default 100) and v1 cpu.shares (2..262144,
/// default 1024) at the kernel's own ratio.
pub(crate) fn weight_to_shares(w: u64) -> u64 {
    (w * 1024 / 100).clamp(2, 262_144)
}

pub(crate) fn shares_to_weight(s: u64) -> u64 {
    ((s * 100 + 512) / 1024).clamp(1, 10_000)
}

/// Creates a directory; an existing one is fine.
pub(crate) fn mkdir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(crate::error::io_err(dir)(e)),
    }
}

/// Removes a cgroup directory, waiting briefly while exiting tasks leave it.
pub(crate) fn rmdir(dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(crate::error::io_err(dir)(e)),
        }
    }
}

/// The pids listed in a `cgroup.procs` file (missing file = none).
pub(crate) fn read_procs(dir: &Path) -> Result<Vec<i32>> {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(crate::error::io_err(&path)(e)),
    }
}

/// Pids in a cgroup and all cgroups below it.
pub(crate) fn read_procs_tree(dir: &Path) -> Result<Vec<i32>> {
    let mut out = read_procs(dir)?;
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::error::io_err(dir)(e)),
    };
    for entry in rd.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(read_procs_tree(&entry.path())?);
        }
    }
    Ok(out)
}

/// Makes a VE fit a lower memory limit (`set --force --ram`, on both cgroup
/// versions): while `fits` says it does not (it tries the limit, after what
/// reclaim the kernel can do), kills the VE's process that the kernel's OOM
/// killer would pick — highest oom_score, never the VE's init (pid 1 in its own
/// namespace), never an unkillable one (oom_score_adj -1000) — and waits for its
/// memory to go. vectl does the killing itself rather than let v2's kernel do
/// it on the write of memory.max: the kernel goes on killing while the memory of
/// a victim it killed is not freed yet, and on a slow machine that took the VE's
/// init too.
pub(crate) fn make_room(
    procs: &Path,
    used: &dyn Fn() -> u64,
    fits: &mut dyn FnMut() -> Result<bool>,
    refused: &dyn Fn(&str) -> Error,
) -> Result<()> {
    let mut killed = 0;
    while !fits()? {
        let Some(victim) = oom_victim(procs) else {
            return Err(refused(" (only the VE's init is left)"));
        };
        if killed >= 256 {
            return Err(refused(" (gave up after killing 256 processes)"));
        }
        let before = used();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        );
        killed += 1;
        // The memory is freed when the victim's address space goes, shortly after
        // the signal; wait for that (or for the process to be gone) a little.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && used() >= before
            && Path::new(&format!("/proc/{victim}/stat")).exists()
            && !is_zombie(victim)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    Ok(())
}

/// The process below cgroup `procs` the kernel's OOM killer would pick:
/// highest oom_score, not the VE's init (its pid in its own namespace is 1),
/// not unkillable.
fn oom_victim(procs: &Path) -> Option<i32> {
    let pids = read_procs_tree(procs).ok()?;
    pids.into_iter()
        .filter(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ns_pid = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last().map(str::to_string));
            let adj = fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
            ns_pid.as_deref() != Some("1") && adj.trim() != "-1000" && !is_zombie(*pid)
        })
        .filter_map(|pid| {
            let score: i64 = fs::read_to_string(format!("/proc/{pid}/oom_score"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((score, pid))
        })
        .max()
        .map(|(_, pid)| pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

/// The pause before looking again whether killed processes are gone:
/// 0.1 ms, doubling each round up to 2 ms. Most VEs are gone within the
/// first (a fixed 1 ms made every stop wait at least that).
pub(crate) fn kill_pause(round: u32) {
    let us = 100u64 << round.min(5);
    std::thread::sleep(std::time::Duration::from_micros(us.min(2000)));
}

/// Removes a cgroup tree bottom-up (the VE's root may have made sub-cgroups).
pub(crate) fn rmdir_tree(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::error::io_err(dir)(e)),
    };
    for entry in rd.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&entry.path())?;
        }
    }
    rmdir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 1 253:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn mountinfo_yields_cgroup_hierarchies() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].controllers, vec!["cpu"]);
        assert_eq!(m[2].controllers, vec!["name=systemd"]);
        assert!(m[3].v2);
        assert_eq!(m[4].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(host_version(&m).unwrap(), CgroupVersion::V1);
    }

    #[test]
    fn proc_cgroup_maps_controllers_to_paths() {
        let own = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/u\n9:name=systemd:/\n");
        assert_eq!(own["memory"], "/a/b");
        assert_eq!(own["cpuacct"], "/");
        assert_eq!(own["unified"], "/u");
    }

    #[test]
    fn parents_resolve_per_controller() {
        let s = CgroupSettings {
            parent: "./t1".into(),
            resolved: [("memory".to_string(), "/a/b/t1".to_string())].into(),
        };
        assert_eq!(
            parent_dir(&s, "memory", Path::new("/sys/fs/cgroup/memory")),
            PathBuf::from("/sys/fs/cgroup/memory/a/b/t1")
        );
        let s = CgroupSettings::default();
        assert_eq!(
            parent_dir(&s, "cpu", Path::new("/sys/fs/cgroup/cpu")),
            PathBuf::from("/sys/fs/cgroup/cpu/vectl")
        );
        for bad in ["", "./", "a/../b", "/", "a//b"] {
            assert!(validate_parent(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn escaped_mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }

    #[test]
    fn knob_refusals_name_ve_knob_and_value() {
        let tmp = tempfile::tempdir().unwrap();
        let e = write_knob("web1", tmp.path(), "memory.max", "1").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("VE web1: the kernel refused memory.max = 1: no such knob"),
            "{msg}"
        );
        fs::write(tmp.path().join("pids.max"), "max\n").unwrap();
        assert_eq!(read_limit(tmp.path(), "pids.max").unwrap(), None);
        write_knob("web1", tmp.path(), "pids.max", "64").unwrap();
        assert_eq!(read_limit(tmp.path(), "pids.max").unwrap(), Some(64));
        fs::write(
            tmp.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(
            read_limit(tmp.path(), "memory.limit_in_bytes").unwrap(),
            None
        );
    }
}
