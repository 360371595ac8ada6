//! cgroup v1 (legacy and hybrid hosts): one directory per controller hierarchy.
//!
//! Knobs: memory.limit_in_bytes, cpu.cfs_quota_us (period 100 ms), pids.max; the
//! devices controller allows only the character devices a VE's /dev holds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    CgroupBackend, CgroupVersion, Knob, PAYLOAD, Placement, Usage, apply_knobs, mkdir, read_knob,
    read_limit, read_procs_tree, rmdir_tree, write_knob,
};
use crate::error::{Error, Result};
use crate::limits::KernelLimits;

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
}

/// The v1 knobs for `l`, in the order they are written.
pub(crate) fn knobs(l: &KernelLimits) -> Vec<Knob> {
    vec![
        Knob {
            controller: "memory",
            file: "memory.limit_in_bytes",
            value: l.memory_bytes.map_or("-1".into(), |b| b.to_string()),
        },
        Knob {
            controller: "cpu",
            file: "cpu.cfs_quota_us",
            value: l.cpu_quota_us.map_or("-1".into(), |q| q.to_string()),
        },
        Knob {
            controller: "pids",
            file: "pids.max",
            value: l.pids.map_or("max".into(), |n| n.to_string()),
        },
    ]
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
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn prepare_parent(&self) -> Result<()> {
        for h in &self.hierarchies {
            std::fs::create_dir_all(&h.parent).map_err(crate::error::io_err(&h.parent))?;
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
            mkdir(&dir.join(PAYLOAD))?;
        }
        let old = self.read_limits(ve)?;
        self.apply(ve, &old, limits)
    }

    fn apply(&self, ve: &str, old: &KernelLimits, new: &KernelLimits) -> Result<()> {
        apply_knobs(ve, &|c| self.ve_dir(c, ve), &knobs(old), &knobs(new))
    }

    fn read_limits(&self, ve: &str) -> Result<KernelLimits> {
        let dir = |c: &str| {
            self.ve_dir(c, ve)
                .ok_or_else(|| Error::Cgroups(format!("the {c} controller is not mounted")))
        };
        Ok(KernelLimits {
            memory_bytes: read_limit(&dir("memory")?, "memory.limit_in_bytes")?,
            cpu_quota_us: read_limit(&dir("cpu")?, "cpu.cfs_quota_us")?,
            pids: read_limit(&dir("pids")?, "pids.max")?,
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

    fn kill_all(&self, ve: &str) -> Result<()> {
        // Frozen tasks cannot die.
        self.thaw(ve)?;
        // No freezing: once the VE's init (PID 1 of its namespace) dies, the kernel
        // kills the rest of the namespace and refuses new processes in it, so this
        // loop converges; and a vectl killed half-way leaves nothing frozen.
        let deadline = Instant::now() + Duration::from_secs(10);
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
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn remove(&self, ve: &str) -> Result<()> {
        for h in &self.hierarchies {
            rmdir_tree(&h.parent.join(ve))?;
        }
        Ok(())
    }

    fn placement(&self, ve: &str) -> Result<Placement> {
        let join = self
            .hierarchies
            .iter()
            .map(|h| h.parent.join(ve).join(PAYLOAD).join("tasks"))
            .collect();
        let mine = if self.hierarchies.iter().any(|h| h.own.is_none()) {
            let text = std::fs::read_to_string("/proc/self/cgroup").map_err(
                crate::error::io_err(std::path::Path::new("/proc/self/cgroup")),
            )?;
            super::parse_proc_cgroup(&text)
        } else {
            Default::default()
        };
        let back = self
            .hierarchies
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
        Ok(Placement::Tasks { join, back })
    }

    fn usage(&self, ve: &str) -> Result<Usage> {
        let mut u = Usage::default();
        if let Some(d) = self.ve_dir("memory", ve) {
            u.memory_bytes = read_knob(&d, "memory.usage_in_bytes")?.parse().unwrap_or(0);
        }
        if let Some(d) = self.ve_dir("pids", ve) {
            u.pids = read_knob(&d, "pids.current")?.parse().unwrap_or(0);
        }
        if let Some(d) = self.ve_dir("cpuacct", ve) {
            u.cpu_usage_ns = read_knob(&d, "cpuacct.usage")?.parse().unwrap_or(0);
        }
        Ok(u)
    }

    fn paths(&self, ve: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.parent.join(ve)).collect()
    }

    fn parents(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.parent.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake v1 tree: one directory per controller, knob files pre-created as the
    /// kernel would show them for a fresh cgroup.
    fn fake(root: &std::path::Path, ve: &str) -> V1 {
        let mut hs = Vec::new();
        for c in ["memory", "cpu", "pids"] {
            let mount = root.join(c);
            let dir = mount.join("vectl").join(ve);
            fs::create_dir_all(dir.join(PAYLOAD)).unwrap();
            hs.push(Hierarchy {
                mount: mount.clone(),
                controllers: vec![c.to_string()],
                parent: mount.join("vectl"),
                own: Some(mount.clone()),
            });
        }
        fs::write(
            root.join("memory/vectl/web1/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        fs::write(root.join("cpu/vectl/web1/cpu.cfs_quota_us"), "-1\n").unwrap();
        fs::write(root.join("pids/vectl/web1/pids.max"), "max\n").unwrap();
        V1::new(hs)
    }

    #[test]
    fn limits_land_in_the_v1_knobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), "web1");
        let l = KernelLimits {
            memory_bytes: Some(256 << 20),
            cpu_quota_us: Some(50_000),
            pids: Some(200),
        };
        cg.create("web1", &l).unwrap();
        let r = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(r("memory/vectl/web1/memory.limit_in_bytes"), "268435456");
        assert_eq!(r("cpu/vectl/web1/cpu.cfs_quota_us"), "50000");
        assert_eq!(r("pids/vectl/web1/pids.max"), "200");
        assert_eq!(cg.read_limits("web1").unwrap(), l);
    }

    #[test]
    fn only_changed_knobs_are_written_and_unlimited_is_spelled_per_knob() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), "web1");
        let old = KernelLimits {
            memory_bytes: Some(1 << 30),
            cpu_quota_us: Some(10_000),
            pids: Some(10),
        };
        // The kernel holds other values than `old` claims: untouched knobs keep them.
        let new = KernelLimits {
            memory_bytes: None,
            ..old
        };
        cg.apply("web1", &old, &new).unwrap();
        let r = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(r("memory/vectl/web1/memory.limit_in_bytes"), "-1");
        assert_eq!(r("cpu/vectl/web1/cpu.cfs_quota_us"), "-1\n");
        assert_eq!(r("pids/vectl/web1/pids.max"), "max\n");
    }

    #[test]
    fn a_refused_knob_rolls_back_the_ones_written_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), "web1");
        // pids.max missing: the kernel would refuse (here: ENOENT).
        fs::remove_file(tmp.path().join("pids/vectl/web1/pids.max")).unwrap();
        let old = KernelLimits::default();
        let new = KernelLimits {
            memory_bytes: Some(64 << 20),
            cpu_quota_us: None,
            pids: Some(5),
        };
        let e = cg.apply("web1", &old, &new).unwrap_err().to_string();
        assert!(e.contains("pids.max = 5"), "{e}");
        let mem =
            fs::read_to_string(tmp.path().join("memory/vectl/web1/memory.limit_in_bytes")).unwrap();
        assert_eq!(mem, "-1", "memory limit restored");
    }

    #[test]
    fn placement_moves_the_thread_via_tasks_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path(), "web1");
        let Placement::Tasks { join, back } = cg.placement("web1").unwrap() else {
            panic!("v1 places by tasks files");
        };
        assert_eq!(join[0], tmp.path().join("memory/vectl/web1/ve/tasks"));
        assert_eq!(back[2], tmp.path().join("pids/tasks"));
    }
}
