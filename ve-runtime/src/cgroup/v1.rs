//! cgroup v1 (legacy and hybrid hosts): one directory per controller hierarchy.
//!
//! Knobs: memory.limit_in_bytes, memory.memsw.limit_in_bytes (RAM + swap),
//! memory.soft_limit_in_bytes (RAM guarantee), cpu.cfs_quota_us (period 100 ms),
//! cpu.shares (CPU guarantee), cpuset.cpus, pids.max, blkio.throttle.* and
//! blkio.bfq.weight; the devices controller allows only the character devices a
//! VE's /dev holds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    CgroupBackend, CgroupVersion, KnobState, KnobWrite, MemoryView, PAYLOAD, Placement, Usage,
    apply_plan, changes, device_line, first_device, mkdir, read_knob, read_limit, read_procs_tree,
    rmdir_tree, shares_to_weight, weight_to_shares, write_knob,
};
use crate::error::{Error, Result};
use crate::limits::{IoLimits, KernelLimits};

/// One v1 hierarchy vectl uses.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The controllers bound to it (`cpu`, `cpuacct` may share one).
    pub controllers: Vec<String>,
    /// The parent of VE cgroups in it.
    pub parent: PathBuf,
    /// vectl's own cgroup in it (to move back to after placing a child); read
    /// from /proc/self/cgroup when needed if not given.
    pub own: Option<PathBuf>,
    /// The cgroup2 hierarchy of a hybrid host (no controllers; new processes
    /// are cloned into it, see [`Placement::Tasks`]).
    pub v2: bool,
}

/// The hierarchies without controllers that a VE gets a cgroup in besides the
/// controllers' (keys of /proc/self/cgroup): the named `systemd` one and a
/// hybrid host's cgroup2 one. systemd in a VE tracks its services there; it
/// needs its own cgroup in them, writable by its root (see `delegate`).
pub const TRACKING: &[&str] = &["name=systemd", "unified"];

impl Hierarchy {
    /// A hierarchy without controllers (see [`TRACKING`]).
    pub fn is_tracking(&self) -> bool {
        self.controllers
            .iter()
            .any(|c| TRACKING.contains(&c.as_str()))
    }

    /// Whether a VE's processes live in a payload cgroup below the VE's own
    /// one here. Not in the memory controller's hierarchy: a nested memory
    /// cgroup is charged to its parent, the VE (12 KiB on two CPUs, more with
    /// more), and nothing needs it (v1 delegates only the tracking
    /// hierarchies; LXCFS takes the lowest limit up the tree). A VE that an
    /// older vectl made has one there, and keeps using it.
    fn has_payload(&self) -> bool {
        !self.controllers.iter().any(|c| c == "memory")
    }
}

/// The v1 backend.
#[derive(Debug)]
pub struct V1 {
    hierarchies: Vec<Hierarchy>,
}

/// Device rules for a VE: nothing but the nodes vectl puts in its /dev, pseudo
/// terminals, fuse and tun. Block devices are never accessible, nor the host's
/// console (a VE's /dev/console is bound to /dev/null).
const DEVICE_RULES: &[&str] = &[
    "c 1:3 rwm",    // null
    "c 1:5 rwm",    // zero
    "c 1:7 rwm",    // full
    "c 1:8 rwm",    // random
    "c 1:9 rwm",    // urandom
    "c 5:0 rwm",    // tty
    "c 5:2 rwm",    // ptmx
    "c 136:* rwm",  // pts
    "c 10:229 rwm", // fuse
    "c 10:200 rwm", // net/tun
];

impl V1 {
    /// A backend over the given hierarchies (from [`super::open`], or a fake tree in tests).
    pub fn new(hierarchies: Vec<Hierarchy>) -> V1 {
        V1 { hierarchies }
    }

    fn hierarchy(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }

    fn ve_dir(&self, controller: &str, ve: &str) -> Option<PathBuf> {
        self.hierarchy(controller).map(|h| h.parent.join(ve))
    }

    fn need(&self, controller: &str, ve: &str) -> Result<PathBuf> {
        self.ve_dir(controller, ve).ok_or_else(|| {
            Error::Cgroups(format!(
                "VE {ve}: the {controller} controller is not mounted on this host"
            ))
        })
    }

    /// The knob values that express `l`, in the order they must be written when
    /// going from `old` (RAM and RAM+swap limits must stay ordered, and a VE's
    /// cpuset must always contain its payload's).
    fn state(&self, ve: &str, l: &KernelLimits, old: Option<&KernelLimits>) -> Result<KnobState> {
        let mut st = Vec::new();
        let mem = self.need("memory", ve)?;
        let limit = KnobWrite::new(
            &mem,
            "memory.limit_in_bytes",
            l.memory_bytes.map_or("-1".into(), |b| b.to_string()),
        );
        let memsw_file = mem.join("memory.memsw.limit_in_bytes").exists();
        if !memsw_file && l.swap_bytes.is_some() {
            return Err(Error::Cgroups(format!(
                "VE {ve}: this host cannot limit swap (no memory.memsw.* files: boot the kernel with swapaccount=1)"
            )));
        }
        let memsw = memsw_file.then(|| {
            let v = match (l.memory_bytes, l.swap_bytes) {
                (Some(m), Some(s)) => (m + s).to_string(),
                _ => "-1".into(),
            };
            KnobWrite::new(&mem, "memory.memsw.limit_in_bytes", v)
        });
        // RAM+swap may never be below RAM: raise it first, lower it last.
        let raising = match (old.and_then(|o| o.memory_bytes), l.memory_bytes) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(o), Some(n)) => n > o,
        };
        if raising {
            st.extend(memsw.clone());
            st.push(limit);
        } else {
            st.push(limit);
            st.extend(memsw);
        }
        st.push(KnobWrite::new(
            &mem,
            "memory.soft_limit_in_bytes",
            l.memory_low.map_or("-1".into(), |b| b.to_string()),
        ));
        let cpu = self.need("cpu", ve)?;
        let quota = l.cpu_quota_us.map_or("-1".into(), |q| q.to_string());
        // LXCFS reads a VE's CPU limit from its init's own cgroup, the payload:
        // that gets a copy. v1 refuses a child quota above its parent's, so the
        // copy is lifted first and set last (only when the quota changes: a
        // plan writes only what differs from the kernel's).
        let payload = cpu.join(PAYLOAD);
        if payload.is_dir() && old.is_none_or(|o| o.cpu_quota_us != l.cpu_quota_us) {
            st.push(KnobWrite::new(&payload, "cpu.cfs_quota_us", "-1"));
        }
        st.push(KnobWrite::new(&cpu, "cpu.cfs_quota_us", quota.clone()));
        if payload.is_dir() {
            st.push(KnobWrite::new(&payload, "cpu.cfs_quota_us", quota));
        }
        st.push(KnobWrite::new(
            &cpu,
            "cpu.shares",
            l.cpu_weight.map_or(1024, weight_to_shares).to_string(),
        ));
        if let Some(set) = self.ve_dir("cpuset", ve) {
            let parent = read_knob(set.parent().unwrap_or(&set), "cpuset.cpus")?;
            let new = l.cpuset.clone().unwrap_or_else(|| parent.clone());
            let was = old
                .and_then(|o| o.cpuset.clone())
                .unwrap_or_else(|| parent.clone());
            // The VE's set first widens to both, then the payload follows, then the
            // VE's set narrows: a cpuset may never lose CPUs its children use.
            if was != new {
                st.push(KnobWrite::new(&set, "cpuset.cpus", union_list(&was, &new)));
            }
            st.push(KnobWrite::new(
                &set.join(PAYLOAD),
                "cpuset.cpus",
                new.clone(),
            ));
            st.push(KnobWrite::new(&set, "cpuset.cpus", new));
        } else if l.cpuset.is_some() {
            self.need("cpuset", ve)?;
        }
        st.push(KnobWrite::new(
            &self.need("pids", ve)?,
            "pids.max",
            l.pids.map_or("max".into(), |n| n.to_string()),
        ));
        let io_dev = l.io.or(old.and_then(|o| o.io));
        if let Some(dev) = io_dev {
            let blk = self.need("blkio", ve)?;
            let io = l.io.unwrap_or(IoLimits {
                bps: None,
                iops: None,
                ..dev
            });
            let d = format!("{}:{}", dev.major, dev.minor);
            let bps = format!("{d} {}", io.bps.unwrap_or(0));
            let iops = format!("{d} {}", io.iops.unwrap_or(0));
            // v1's throttling is not hierarchical: the limit goes on the payload
            // cgroup that holds the VE's processes as well (the VE cannot reach it).
            for dir in [blk.clone(), blk.join(PAYLOAD)] {
                for (file, value) in [
                    ("blkio.throttle.read_bps_device", &bps),
                    ("blkio.throttle.write_bps_device", &bps),
                    ("blkio.throttle.read_iops_device", &iops),
                    ("blkio.throttle.write_iops_device", &iops),
                ] {
                    st.push(KnobWrite::new(&dir, file, value.clone()));
                }
            }
        }
        if let Some(blk) = self.ve_dir("blkio", ve)
            && (l.io_weight.is_some() || blk.join("blkio.bfq.weight").exists())
        {
            st.push(KnobWrite::new(
                &blk,
                "blkio.bfq.weight",
                l.io_weight.unwrap_or(100).to_string(),
            ));
        }
        Ok(st)
    }
}

/// The union of two CPU lists, as a CPU list.
fn union_list(a: &str, b: &str) -> String {
    let mut all: Vec<u32> = Vec::new();
    for list in [a, b] {
        // Kernel CPU lists: a bare number is a CPU, not a count.
        match list.parse() {
            Ok(crate::units::Cpus::List(l)) => all.extend(l),
            Ok(crate::units::Cpus::Count(n)) => all.push(n),
            Err(_) if list == "0" => all.push(0),
            Err(_) => {}
        }
    }
    all.sort_unstable();
    all.dedup();
    crate::units::cpu_list(&all)
}

/// Reads a throttle file's value for the device, 0 meaning none.
fn throttle(dir: &std::path::Path, file: &str, dev: (u32, u32)) -> Result<Option<u64>> {
    let text = read_knob(dir, file)?;
    Ok(device_line(&text, dev.0, dev.1)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0))
}

/// Sums the "MAJ:MIN Read N" / "MAJ:MIN Write N" lines of a blkio statistics file.
fn blkio_sum(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => r += n,
            "Write" => w += n,
            _ => {}
        }
    }
    (r, w)
}

/// v1's flag for a cpuset's new children to start with its CPUs and nodes.
const CLONE_CHILDREN: &str = "cgroup.clone_children";

/// Gives a fresh cpuset cgroup its parent's CPUs and memory nodes (v1 starts it
/// with none, and no task can join it then), unless the kernel did
/// ([`CLONE_CHILDREN`]).
fn inherit_cpuset(ve: &str, dir: &std::path::Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_knob(dir, file)?.is_empty() {
            write_knob(ve, dir, file, &read_knob(parent, file)?)?;
        }
    }
    Ok(())
}

/// Restricts device access of a fresh VE cgroup (devices controller).
pub(crate) fn apply_devices(ve: &str, dir: &std::path::Path) -> Result<()> {
    write_knob(ve, dir, "devices.deny", "a")?;
    for rule in DEVICE_RULES {
        write_knob(ve, dir, "devices.allow", rule)?;
    }
    Ok(())
}

impl CgroupBackend for V1 {
    fn count_io(&self, ve: &str, major: u32, minor: u32) -> Result<()> {
        // A limit of 0 is none; writing it turns throttling, and with it the
        // VE's counters, on for the disk. Only one file: one is enough.
        let blk = self.need("blkio", ve)?;
        write_knob(
            ve,
            &blk,
            "blkio.throttle.read_bps_device",
            &format!("{major}:{minor} 0"),
        )
    }

    fn delegate(&self, ve: &str, owner: u32) -> Result<()> {
        let id = Some(nix::unistd::Uid::from_raw(owner));
        let gid = Some(nix::unistd::Gid::from_raw(owner));
        // Only the hierarchies without controllers: the VE's limits live in the
        // controllers' ones, which stay the host's.
        for h in self.hierarchies.iter().filter(|h| h.is_tracking()) {
            let payload = h.parent.join(ve).join(PAYLOAD);
            let files: &[&str] = if h.v2 {
                &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"]
            } else {
                &["cgroup.procs", "tasks"]
            };
            let paths =
                std::iter::once(payload.clone()).chain(files.iter().map(|f| payload.join(f)));
            for p in paths {
                nix::unistd::chown(&p, id, gid)
                    .map_err(|e| crate::error::io_err(&p)(std::io::Error::from(e)))?;
            }
        }
        Ok(())
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn prepare_parent(&self) -> Result<()> {
        for h in &self.hierarchies {
            std::fs::create_dir_all(&h.parent).map_err(crate::error::io_err(&h.parent))?;
            if h.controllers.iter().any(|c| c == "cpuset") {
                // Every level below the mount needs CPUs and memory nodes of its own.
                let mut levels: Vec<&std::path::Path> = h
                    .parent
                    .ancestors()
                    .take_while(|p| *p != h.mount.as_path())
                    .collect();
                levels.reverse();
                for dir in levels {
                    inherit_cpuset("-", dir)?;
                }
                // New VE cgroups (and their children: the flag is inherited)
                // get the parent's CPUs and memory nodes from the kernel. Each
                // write to a cpuset.cpus makes the kernel walk every sibling
                // and rebuild the scheduler domains' accounting over every
                // cpuset: with 1000 VEs, a write per start costs that much.
                if read_knob(&h.parent, CLONE_CHILDREN)? != "1" {
                    write_knob("-", &h.parent, CLONE_CHILDREN, "1")?;
                }
            }
        }
        Ok(())
    }

    fn create(&self, ve: &str, limits: &KernelLimits) -> Result<()> {
        for h in &self.hierarchies {
            let dir = h.parent.join(ve);
            mkdir(&dir)?;
            if h.controllers.iter().any(|c| c == "devices") {
                apply_devices(ve, &dir)?;
            }
            if h.controllers.iter().any(|c| c == "cpuset") {
                inherit_cpuset(ve, &dir)?;
            }
            if h.has_payload() {
                mkdir(&dir.join(PAYLOAD))?;
                if h.controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(ve, &dir.join(PAYLOAD))?;
                }
            }
        }
        let old = self.read_limits(ve)?;
        self.apply(ve, &old, limits, false)
    }

    fn apply(&self, ve: &str, old: &KernelLimits, new: &KernelLimits, force: bool) -> Result<()> {
        let before = self.state(ve, old, Some(old))?;
        let after = self.state(ve, new, Some(old))?;
        if let Some(limit) = new.memory_bytes
            && old.memory_bytes.is_none_or(|o| limit < o)
        {
            // Lowering RAM first is always in order (RAM+swap stays above it);
            // the plan below writes the same value again and rolls it back.
            let mem = self.need("memory", ve)?;
            lower_ram(ve, &mem, limit, force)?;
        }
        apply_plan(ve, &changes(&before, &after), &before)
    }

    fn read_limits(&self, ve: &str) -> Result<KernelLimits> {
        let mem = self.need("memory", ve)?;
        let memory_bytes = read_limit(&mem, "memory.limit_in_bytes")?;
        let memsw = if mem.join("memory.memsw.limit_in_bytes").exists() {
            read_limit(&mem, "memory.memsw.limit_in_bytes")?
        } else {
            None
        };
        let cpu = self.need("cpu", ve)?;
        let shares: u64 = read_knob(&cpu, "cpu.shares")?.parse().unwrap_or(1024);
        let cpuset = match self.ve_dir("cpuset", ve) {
            Some(set) => {
                let mine = read_knob(&set, "cpuset.cpus")?;
                let parent = read_knob(set.parent().unwrap_or(&set), "cpuset.cpus")?;
                (mine != parent).then_some(mine)
            }
            None => None,
        };
        let mut io = None;
        let mut io_weight = None;
        if let Some(blk) = self.ve_dir("blkio", ve) {
            let text = read_knob(&blk, "blkio.throttle.read_bps_device")?;
            let iops_text = read_knob(&blk, "blkio.throttle.read_iops_device")?;
            if let Some(dev) = first_device(&text).or_else(|| first_device(&iops_text)) {
                let bps = throttle(&blk, "blkio.throttle.read_bps_device", dev)?;
                let iops = throttle(&blk, "blkio.throttle.read_iops_device", dev)?;
                if bps.is_some() || iops.is_some() {
                    io = Some(IoLimits {
                        major: dev.0,
                        minor: dev.1,
                        bps,
                        iops,
                    });
                }
            }
            if blk.join("blkio.bfq.weight").exists() {
                let w = read_knob(&blk, "blkio.bfq.weight")?;
                let w: u64 = w
                    .split_whitespace()
                    .last()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                io_weight = (w != 100).then_some(w);
            }
        }
        Ok(KernelLimits {
            memory_bytes,
            memory_low: read_limit(&mem, "memory.soft_limit_in_bytes")?,
            swap_bytes: match (memory_bytes, memsw) {
                (Some(m), Some(s)) => Some(s.saturating_sub(m)),
                _ => None,
            },
            cpu_quota_us: read_limit(&cpu, "cpu.cfs_quota_us")?,
            cpu_weight: (shares != 1024).then(|| shares_to_weight(shares)),
            cpuset,
            pids: read_limit(&self.need("pids", ve)?, "pids.max")?,
            io,
            io_weight,
        })
    }

    fn exists(&self, ve: &str) -> bool {
        self.hierarchies.iter().any(|h| h.parent.join(ve).is_dir())
    }

    fn procs(&self, ve: &str) -> Result<Vec<i32>> {
        let mut all = Vec::new();
        for h in &self.hierarchies {
            all.extend(read_procs_tree(&h.parent.join(ve))?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn thaw(&self, ve: &str) -> Result<bool> {
        let Some(dir) = self.ve_dir("freezer", ve).filter(|d| d.is_dir()) else {
            return Ok(false);
        };
        if read_knob(&dir, "freezer.state")? == "THAWED" {
            return Ok(false);
        }
        write_knob(ve, &dir, "freezer.state", "THAWED")?;
        Ok(true)
    }

    fn freeze(&self, ve: &str) -> Result<bool> {
        let Some(dir) = self.ve_dir("freezer", ve).filter(|d| d.is_dir()) else {
            return Ok(false);
        };
        write_knob(ve, &dir, "freezer.state", "FROZEN")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_knob(&dir, "freezer.state")? != "FROZEN" {
            if Instant::now() > deadline {
                let _ = write_knob(ve, &dir, "freezer.state", "THAWED");
                return Err(Error::Cgroups(format!(
                    "VE {ve}: its processes did not freeze within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }

    fn kill_all(&self, ve: &str) -> Result<()> {
        // Frozen tasks cannot die.
        self.thaw(ve)?;
        // No freezing: once the VE's init (PID 1 of its namespace) dies, the kernel
        // kills the rest of the namespace and refuses new processes in it, so this
        // loop converges; and a vectl killed half-way leaves nothing frozen.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut round = 0;
        loop {
            let pids = self.procs(ve)?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if Instant::now() > deadline {
                return Err(Error::Stop {
                    ve: ve.to_string(),
                    reason: format!("processes {pids:?} survive SIGKILL"),
                });
            }
            super::kill_pause(round);
            round += 1;
        }
    }

    fn remove(&self, ve: &str) -> Result<()> {
        for h in &self.hierarchies {
            rmdir_tree(&h.parent.join(ve))?;
        }
        Ok(())
    }

    fn placement(&self, ve: &str) -> Result<Placement> {
        // A VE started by a vectl older than the tracking hierarchies has no
        // cgroup there: its new processes join the others only.
        let payload = |h: &Hierarchy| {
            let dir = h.parent.join(ve).join(PAYLOAD);
            if h.has_payload() {
                (!h.is_tracking() || dir.is_dir()).then_some(dir)
            } else if dir.is_dir() {
                Some(dir)
            } else {
                Some(h.parent.join(ve))
            }
        };
        let mut into = None;
        if let Some(dir) = self.hierarchies.iter().filter(|h| h.v2).find_map(payload) {
            let fd = nix::fcntl::open(
                &dir,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(crate::error::sys_err(format!("open {}", dir.display())))?;
            into = Some(fd);
        }
        let v1: Vec<&Hierarchy> = self.hierarchies.iter().filter(|h| !h.v2).collect();
        let join = v1
            .iter()
            .filter_map(|h| payload(h))
            .map(|dir| dir.join("tasks"))
            .collect();
        let mine = if self.hierarchies.iter().any(|h| h.own.is_none()) {
            let text = std::fs::read_to_string("/proc/self/cgroup").map_err(
                crate::error::io_err(std::path::Path::new("/proc/self/cgroup")),
            )?;
            super::parse_proc_cgroup(&text)
        } else {
            Default::default()
        };
        let back = v1
            .iter()
            .map(|h| {
                let own = h.own.clone().unwrap_or_else(|| {
                    let rel = h
                        .controllers
                        .iter()
                        .find_map(|c| mine.get(c))
                        .map_or("", |p| p.trim_start_matches('/'));
                    h.mount.join(rel)
                });
                own.join("tasks")
            })
            .collect();
        Ok(Placement::Tasks { join, back, into })
    }

    fn usage(&self, ve: &str) -> Result<Usage> {
        let mut u = Usage::default();
        let num = |d: &std::path::Path, f: &str| -> Result<u64> {
            Ok(read_knob(d, f)?.parse().unwrap_or(0))
        };
        if let Some(d) = self.ve_dir("memory", ve) {
            u.memory_bytes = num(&d, "memory.usage_in_bytes")?;
            if d.join("memory.memsw.usage_in_bytes").exists() {
                u.swap_bytes =
                    num(&d, "memory.memsw.usage_in_bytes")?.saturating_sub(u.memory_bytes);
            }
            // v1 counts an OOM kill in the cgroup of the killed task: add up the tree.
            let mut dirs = vec![d];
            while let Some(d) = dirs.pop() {
                let text =
                    std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
                u.oom_kills += text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if let Ok(rd) = std::fs::read_dir(&d) {
                    dirs.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
        if let Some(d) = self.ve_dir("pids", ve) {
            u.pids = num(&d, "pids.current")?;
        }
        if let Some(d) = self.ve_dir("cpuacct", ve) {
            u.cpu_usage_ns = num(&d, "cpuacct.usage")?;
        }
        if let Some(d) = self.ve_dir("blkio", ve) {
            (u.io_read_bytes, u.io_write_bytes) =
                blkio_sum(&read_knob(&d, "blkio.throttle.io_service_bytes_recursive")?);
            (u.io_read_ops, u.io_write_ops) =
                blkio_sum(&read_knob(&d, "blkio.throttle.io_serviced_recursive")?);
        }
        Ok(u)
    }

    fn memory_view(&self, ve: &str) -> Result<MemoryView> {
        let mem = self.need("memory", ve)?;
        let num = |d: &std::path::Path, f: &str| -> u64 {
            read_knob(d, f).map_or(0, |v| v.parse().unwrap_or(0))
        };
        let ram_limit = read_limit(&mem, "memory.limit_in_bytes")?;
        let ram_used: u64 = read_knob(&mem, "memory.usage_in_bytes")?
            .parse()
            .unwrap_or(0);
        // RAM+swap, where the host accounts swap (swapaccount=1).
        let memsw = read_limit(&mem, "memory.memsw.limit_in_bytes").ok();
        let (swap_limit, swap_used) = match memsw {
            Some(both) => (
                match (ram_limit, both) {
                    (Some(r), Some(b)) => Some(b.saturating_sub(r)),
                    _ => None,
                },
                num(&mem, "memory.memsw.usage_in_bytes").saturating_sub(ram_used),
            ),
            None => (Some(0), 0),
        };
        Ok(MemoryView {
            ram_limit,
            swap_limit,
            ram_used,
            swap_used,
            tasks: self
                .ve_dir("pids", ve)
                .map_or(0, |d| num(&d, "pids.current")),
        })
    }

    fn paths(&self, ve: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.parent.join(ve)).collect()
    }

    fn parents(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.parent.clone()).collect()
    }
}

/// Lowers memory.limit_in_bytes of the VE's cgroup `mem` to `limit`. v1's kernel
/// reclaims what it can and refuses (EBUSY) a limit below what the VE still uses.
/// Without `force` the refusal names the usage; with `force` vectl makes room
/// ([`super::make_room`]) and tries again, until the limit holds.
fn lower_ram(ve: &str, mem: &std::path::Path, limit: u64, force: bool) -> Result<()> {
    let used = || -> u64 {
        read_knob(mem, "memory.usage_in_bytes")
            .ok()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0)
    };
    let refused = |why: &str| Error::Kernel {
        ve: ve.to_string(),
        knob: "memory.limit_in_bytes".into(),
        value: limit.to_string(),
        reason: format!(
            "the VE uses {} and the kernel could not reclaim enough{why}",
            crate::units::human_bytes(used())
        ),
        path: mem.join("memory.limit_in_bytes"),
    };
    let mut fits = || match write_knob(ve, mem, "memory.limit_in_bytes", &limit.to_string()) {
        Ok(()) => Ok(true),
        Err(Error::Kernel { reason, .. }) if reason.contains("could not reclaim") => Ok(false),
        Err(e) => Err(e),
    };
    if !force {
        return if fits()? { Ok(()) } else { Err(refused("")) };
    }
    super::make_room(mem, &used, &mut fits, &refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake v1 tree: memory, cpu and pids hierarchies (and blkio, memsw files
    /// when asked), knob files pre-created as the kernel shows them for a fresh
    /// cgroup.
    fn fake(root: &std::path::Path, extra: bool) -> V1 {
        let mut hs = Vec::new();
        let mut ctrls = vec!["memory", "cpu", "pids"];
        if extra {
            ctrls.push("blkio");
        }
        for c in ctrls {
            let mount = root.join(c);
            fs::create_dir_all(mount.join("vectl/web1").join(PAYLOAD)).unwrap();
            hs.push(Hierarchy {
                mount: mount.clone(),
                controllers: vec![c.to_string()],
                parent: mount.join("vectl"),
                own: Some(mount.clone()),
                v2: false,
            });
        }
        let put = |ctrl: &str, file: &str, v: &str| {
            fs::write(root.join(ctrl).join("vectl/web1").join(file), v).unwrap();
        };
        put("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        put(
            "memory",
            "memory.soft_limit_in_bytes",
            "9223372036854771712\n",
        );
        put("cpu", "cpu.cfs_quota_us", "-1\n");
        put("cpu", &format!("{PAYLOAD}/cpu.cfs_quota_us"), "-1\n");
        put("cpu", "cpu.shares", "1024\n");
        put("pids", "pids.max", "max\n");
        if extra {
            put(
                "memory",
                "memory.memsw.limit_in_bytes",
                "9223372036854771712\n",
            );
            for f in [
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_bps_device",
                "blkio.throttle.read_iops_device",
                "blkio.throttle.write_iops_device",
            ] {
                put("blkio", f, "");
                put("blkio", &format!("{PAYLOAD}/{f}"), "");
            }
        }
        V1::new(hs)
    }

    fn read(root: &std::path::Path, p: &str) -> String {
        fs::read_to_string(root.join(p)).unwrap().trim().to_string()
    }

    #[test]
    fn limits_land_in_the_v1_knobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        let l = KernelLimits {
            memory_bytes: Some(256 << 20),
            memory_low: Some(128 << 20),
            cpu_quota_us: Some(50_000),
            cpu_weight: Some(2500),
            pids: Some(200),
            ..Default::default()
        };
        cg.create("web1", &l).unwrap();
        let r = |p: &str| read(tmp.path(), p);
        assert_eq!(r("memory/vectl/web1/memory.limit_in_bytes"), "268435456");
        assert_eq!(
            r("memory/vectl/web1/memory.soft_limit_in_bytes"),
            "134217728"
        );
        assert_eq!(r("cpu/vectl/web1/cpu.cfs_quota_us"), "50000");
        // The payload carries a copy, for LXCFS.
        assert_eq!(r("cpu/vectl/web1/ve/cpu.cfs_quota_us"), "50000");
        assert_eq!(r("cpu/vectl/web1/cpu.shares"), "25600");
        assert_eq!(r("pids/vectl/web1/pids.max"), "200");
        assert_eq!(cg.read_limits("web1").unwrap(), l);
    }

    #[test]
    fn swap_and_io_limits_use_memsw_and_throttle_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), true);
        let l = KernelLimits {
            memory_bytes: Some(256 << 20),
            swap_bytes: Some(64 << 20),
            io: Some(IoLimits {
                major: 254,
                minor: 0,
                bps: Some(10 << 20),
                iops: None,
            }),
            ..Default::default()
        };
        cg.apply("web1", &cg.read_limits("web1").unwrap(), &l, false)
            .unwrap();
        let r = |p: &str| read(tmp.path(), p);
        assert_eq!(
            r("memory/vectl/web1/memory.memsw.limit_in_bytes"),
            "335544320"
        );
        assert_eq!(
            r("blkio/vectl/web1/blkio.throttle.write_bps_device"),
            "254:0 10485760"
        );
        assert_eq!(
            r("blkio/vectl/web1/blkio.throttle.read_iops_device"),
            "254:0 0"
        );
        // Removing the I/O limit writes 0 for the device.
        let none = KernelLimits {
            io: None,
            ..l.clone()
        };
        cg.apply("web1", &l, &none, false).unwrap();
        assert_eq!(
            r("blkio/vectl/web1/blkio.throttle.read_bps_device"),
            "254:0 0"
        );
    }

    #[test]
    fn ram_plus_swap_is_raised_before_ram_and_lowered_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), true);
        let small = KernelLimits {
            memory_bytes: Some(64 << 20),
            swap_bytes: Some(0),
            ..Default::default()
        };
        let big = KernelLimits {
            memory_bytes: Some(512 << 20),
            swap_bytes: Some(0),
            ..Default::default()
        };
        let up = changes(
            &cg.state("web1", &small, None).unwrap(),
            &cg.state("web1", &big, Some(&small)).unwrap(),
        );
        let files: Vec<&str> = up.iter().map(|w| w.file).collect();
        assert_eq!(
            files,
            ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
        );
        let down = changes(
            &cg.state("web1", &big, None).unwrap(),
            &cg.state("web1", &small, Some(&big)).unwrap(),
        );
        let files: Vec<&str> = down.iter().map(|w| w.file).collect();
        assert_eq!(
            files,
            ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        );
    }

    #[test]
    fn only_changed_knobs_are_written_and_unlimited_is_spelled_per_knob() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        let old = KernelLimits {
            memory_bytes: Some(1 << 30),
            cpu_quota_us: Some(10_000),
            pids: Some(10),
            ..Default::default()
        };
        // The kernel holds other values than `old` claims: untouched knobs keep them.
        let new = KernelLimits {
            memory_bytes: None,
            ..old.clone()
        };
        cg.apply("web1", &old, &new, false).unwrap();
        let r = |p: &str| read(tmp.path(), p);
        assert_eq!(r("memory/vectl/web1/memory.limit_in_bytes"), "-1");
        assert_eq!(r("cpu/vectl/web1/cpu.cfs_quota_us"), "-1");
        assert_eq!(r("pids/vectl/web1/pids.max"), "max");
    }

    #[test]
    fn the_payload_keeps_a_copy_of_the_cpu_quota_through_changes_and_non_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        let r = |p: &str| read(tmp.path(), p);
        let at = |q: Option<u64>| KernelLimits {
            cpu_quota_us: q,
            pids: Some(10),
            ..Default::default()
        };
        cg.apply("web1", &at(None), &at(Some(50_000)), false)
            .unwrap();
        assert_eq!(r("cpu/vectl/web1/ve/cpu.cfs_quota_us"), "50000");
        // Another knob changes, the quota does not: the copy stays.
        let mut more = at(Some(50_000));
        more.pids = Some(20);
        cg.apply("web1", &at(Some(50_000)), &more, false).unwrap();
        assert_eq!(r("cpu/vectl/web1/ve/cpu.cfs_quota_us"), "50000");
        cg.apply("web1", &more, &at(Some(150_000)), false).unwrap();
        assert_eq!(r("cpu/vectl/web1/cpu.cfs_quota_us"), "150000");
        assert_eq!(r("cpu/vectl/web1/ve/cpu.cfs_quota_us"), "150000");
        cg.apply("web1", &at(Some(150_000)), &at(None), false)
            .unwrap();
        assert_eq!(r("cpu/vectl/web1/ve/cpu.cfs_quota_us"), "-1");
    }

    #[test]
    fn a_swap_limit_without_swap_accounting_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        let l = KernelLimits {
            memory_bytes: Some(64 << 20),
            swap_bytes: Some(0),
            ..Default::default()
        };
        let e = cg
            .apply("web1", &KernelLimits::default(), &l, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot limit swap") && e.contains("swapaccount=1"),
            "{e}"
        );
    }

    #[test]
    fn a_refused_knob_rolls_back_the_ones_written_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        // pids.max missing: the kernel would refuse (here: ENOENT).
        fs::remove_file(tmp.path().join("pids/vectl/web1/pids.max")).unwrap();
        let old = KernelLimits::default();
        let new = KernelLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(5),
            ..Default::default()
        };
        let e = cg.apply("web1", &old, &new, false).unwrap_err().to_string();
        assert!(e.contains("pids.max = 5"), "{e}");
        assert_eq!(
            read(tmp.path(), "memory/vectl/web1/memory.limit_in_bytes"),
            "-1",
            "memory limit restored"
        );
    }

    #[test]
    fn placement_moves_the_thread_via_tasks_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), false);
        let Placement::Tasks { join, back, .. } = cg.placement("web1").unwrap() else {
            panic!("v1 places by tasks files");
        };
        // The fake VE has a memory payload, as an older vectl made it: kept.
        assert_eq!(join[0], tmp.path().join("memory/vectl/web1/ve/tasks"));
        assert_eq!(join[1], tmp.path().join("cpu/vectl/web1/ve/tasks"));
        assert_eq!(back[2], tmp.path().join("pids/tasks"));
        // A VE made now has none in the memory hierarchy: its processes live
        // in its own memory cgroup, and in the payloads of the others.
        fs::remove_dir_all(tmp.path().join("memory/vectl/web1/ve")).unwrap();
        let Placement::Tasks { join, .. } = cg.placement("web1").unwrap() else {
            panic!("v1 places by tasks files");
        };
        assert_eq!(join[0], tmp.path().join("memory/vectl/web1/tasks"));
        assert_eq!(join[1], tmp.path().join("cpu/vectl/web1/ve/tasks"));
    }

    #[test]
    fn cpu_lists_unite() {
        assert_eq!(union_list("0-1", "3"), "0-1,3");
        assert_eq!(union_list("2", "2"), "2");
    }

    #[test]
    fn blkio_statistics_add_up() {
        let text = "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n8:0 Read 10\nTotal 12298\n";
        assert_eq!(blkio_sum(text), (4106, 8192));
    }
}
