//! cgroup v2 (the unified hierarchy every current distribution uses).
//!
//! Knobs: memory.max, memory.low (RAM guarantee), memory.swap.max, cpu.max
//! (`quota period`), cpu.weight (CPU guarantee), cpuset.cpus, pids.max, io.max and
//! io.bfq.weight. New processes are born in the payload cgroup with
//! clone3(CLONE_INTO_CGROUP); a whole VE is killed with cgroup.kill.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::{
    CgroupBackend, CgroupVersion, KnobState, KnobWrite, MemoryView, PAYLOAD, Placement, Usage,
    apply_plan, changes, device_line, first_device, mkdir, read_knob, read_limit, read_procs_tree,
    rmdir_tree, write_knob,
};
use crate::error::{Error, Result, io_err, sys_err};
use crate::limits::{CPU_PERIOD_US, IoLimits, KernelLimits};

/// Controllers vectl enables for VE cgroups.
const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

/// The cgroup below a VE's payload cgroup that `vectl exec` places commands in
/// once the VE has enabled controllers in its payload cgroup.
pub const EXEC_LEAF: &str = ".vectl-exec";

/// The v2 backend.
#[derive(Debug)]
pub struct V2 {
    mount: PathBuf,
    parent: PathBuf,
}

impl V2 {
    /// A backend for the hierarchy at `mount`, with VE cgroups below `parent`.
    pub fn new(mount: PathBuf, parent: PathBuf) -> V2 {
        V2 { mount, parent }
    }

    fn ve_dir(&self, ve: &str) -> PathBuf {
        self.parent.join(ve)
    }
}

/// The knob values that express `l` (`old`'s device for I/O when `l` has none).
pub(crate) fn state(
    ve: &str,
    dir: &Path,
    l: &KernelLimits,
    old: Option<&KernelLimits>,
) -> Result<KnobState> {
    let opt = |v: Option<u64>| v.map_or("max".to_string(), |b| b.to_string());
    let mut st = vec![KnobWrite::new(dir, "memory.max", opt(l.memory_bytes))];
    st.push(KnobWrite::new(
        dir,
        "memory.low",
        l.memory_low.unwrap_or(0).to_string(),
    ));
    if dir.join("memory.swap.max").exists() {
        st.push(KnobWrite::new(dir, "memory.swap.max", opt(l.swap_bytes)));
    } else if l.swap_bytes.is_some() {
        return Err(Error::Cgroups(format!(
            "VE {ve}: this host cannot limit swap (no memory.swap.max: swap accounting is off)"
        )));
    }
    let cpu_max = format!("{} {CPU_PERIOD_US}", opt(l.cpu_quota_us));
    st.push(KnobWrite::new(dir, "cpu.max", cpu_max.clone()));
    // LXCFS reads a VE's CPU limit from its init's own cgroup, the payload:
    // that gets a copy (v2 lets a child's exceed its parent's).
    let payload = dir.join(PAYLOAD);
    if payload.join("cpu.max").exists() {
        st.push(KnobWrite::new(&payload, "cpu.max", cpu_max));
    }
    st.push(KnobWrite::new(
        dir,
        "cpu.weight",
        l.cpu_weight.unwrap_or(100).to_string(),
    ));
    if dir.join("cpuset.cpus").exists() {
        // No CPU set = every CPU of the parent. Not "" (inherit): a populated
        // cpuset may not go back to empty (ENOSPC).
        let all = || parent_cpus(dir);
        st.push(KnobWrite::new(
            dir,
            "cpuset.cpus",
            match &l.cpuset {
                Some(c) => c.clone(),
                None => all()?,
            },
        ));
    } else if l.cpuset.is_some() {
        return Err(Error::Cgroups(format!(
            "VE {ve}: the cpuset controller is not available to VE cgroups on this host"
        )));
    }
    st.push(KnobWrite::new(dir, "pids.max", opt(l.pids)));
    if let Some(dev) = l.io.or(old.and_then(|o| o.io)) {
        let io = l.io.unwrap_or(IoLimits {
            bps: None,
            iops: None,
            ..dev
        });
        st.push(KnobWrite::new(
            dir,
            "io.max",
            format!(
                "{}:{} rbps={} wbps={} riops={} wiops={}",
                dev.major,
                dev.minor,
                opt(io.bps),
                opt(io.bps),
                opt(io.iops),
                opt(io.iops)
            ),
        ));
    }
    if l.io_weight.is_some() || dir.join("io.bfq.weight").exists() {
        st.push(KnobWrite::new(
            dir,
            "io.bfq.weight",
            l.io_weight.unwrap_or(100).to_string(),
        ));
    }
    Ok(st)
}

/// Reads io.max's line for the device as vectl writes it back (`max` → `None`).
fn parse_io_max(text: &str) -> Option<IoLimits> {
    let (major, minor) = first_device(text)?;
    let line = device_line(text, major, minor)?;
    let get = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (bps, iops) = (get("rbps"), get("riops"));
    (bps.is_some() || iops.is_some()).then_some(IoLimits {
        major,
        minor,
        bps,
        iops,
    })
}

/// Enables vectl's controllers in `dir`'s subtree_control (those `dir` has).
pub(crate) fn enable_controllers(dir: &Path) -> Result<()> {
    let available = read_knob(dir, "cgroup.controllers")?;
    let enabled = read_knob(dir, "cgroup.subtree_control")?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing.join(" ");
    let path = dir.join("cgroup.subtree_control");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::EBUSY) {
                " (a cgroup with processes of its own cannot delegate controllers; choose another cgroup parent)"
            } else {
                ""
            };
            Error::Cgroups(format!("cannot enable {value} in {}: {e}{why}", path.display()))
        })
}

/// The CPUs the parent of a VE cgroup has: what "no CPU set" means.
fn parent_cpus(dir: &Path) -> Result<String> {
    read_knob(dir.parent().unwrap_or(dir), "cpuset.cpus.effective")
}

/// Before memory.max goes below what the VE uses: v2 would OOM-kill the VE's
/// processes (v1 refuses such a limit with EBUSY). Ask the kernel to reclaim the
/// difference first (memory.reclaim), and refuse, naming the usage, if the VE still
/// does not fit. The limit is not written in that case.
pub(crate) fn fits_or_reclaim(ve: &str, dir: &Path, limit: u64) -> Result<()> {
    let current =
        |d: &Path| -> Result<u64> { Ok(read_knob(d, "memory.current")?.parse().unwrap_or(0)) };
    let used = current(dir)?;
    if used <= limit {
        return Ok(());
    }
    if dir.join("memory.reclaim").exists() {
        // EAGAIN means it could not reclaim all of it: the check below decides.
        let _ = write_knob(ve, dir, "memory.reclaim", &(used - limit).to_string());
    }
    let used = current(dir)?;
    if used <= limit {
        return Ok(());
    }
    Err(Error::Kernel {
        ve: ve.to_string(),
        knob: "memory.max".into(),
        value: limit.to_string(),
        reason: format!(
            "the VE uses {} and the kernel could not reclaim enough",
            crate::units::human_bytes(used)
        ),
        path: dir.join("memory.max"),
    })
}

impl CgroupBackend for V2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn prepare_parent(&self) -> Result<()> {
        let rel = self
            .parent
            .strip_prefix(&self.mount)
            .map_err(|_| {
                Error::Cgroups(format!(
                    "{} is not below {}",
                    self.parent.display(),
                    self.mount.display()
                ))
            })?
            .to_path_buf();
        let mut dir = self.mount.clone();
        enable_controllers(&dir)?;
        for comp in rel.components() {
            dir.push(comp);
            mkdir(&dir)?;
            enable_controllers(&dir)?;
        }
        Ok(())
    }

    fn delegate(&self, ve: &str, owner: u32) -> Result<()> {
        // The controllers the VE's cgroup has are offered to its payload
        // cgroup, so systemd in it can use them for its services (below the
        // VE's limits, which hold for the whole subtree).
        let dir = self.ve_dir(ve);
        let offered = read_knob(&dir, "cgroup.controllers")?;
        let enable: Vec<String> = offered
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            write_knob(ve, &dir, "cgroup.subtree_control", &enable.join(" "))?;
        }
        let payload = dir.join(PAYLOAD);
        let id = Some(nix::unistd::Uid::from_raw(owner));
        let gid = Some(nix::unistd::Gid::from_raw(owner));
        for p in [
            payload.clone(),
            payload.join("cgroup.procs"),
            payload.join("cgroup.threads"),
            payload.join("cgroup.subtree_control"),
        ] {
            nix::unistd::chown(&p, id, gid)
                .map_err(|e| crate::error::io_err(&p)(std::io::Error::from(e)))?;
        }
        Ok(())
    }

    fn create(&self, ve: &str, limits: &KernelLimits) -> Result<()> {
        let dir = self.ve_dir(ve);
        mkdir(&dir)?;
        super::devices::attach(ve, &dir)?;
        // The payload gets the VE's controllers: LXCFS reads a VE's memory and
        // CPU use from its init's own cgroup, and its CPU limit from a copy
        // of the VE's cpu.max there (see `state`). NAME holds no process.
        let enable: Vec<String> = read_knob(&dir, "cgroup.controllers")?
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            write_knob(ve, &dir, "cgroup.subtree_control", &enable.join(" "))?;
        }
        mkdir(&dir.join(PAYLOAD))?;
        let old = self.read_limits(ve)?;
        self.apply(ve, &old, limits, false)
    }

    fn apply(&self, ve: &str, old: &KernelLimits, new: &KernelLimits, force: bool) -> Result<()> {
        let dir = self.ve_dir(ve);
        if let Some(limit) = new.memory_bytes
            && old.memory_bytes.is_none_or(|o| limit < o)
        {
            if force {
                // Room is made before the limit is written, so that the kernel
                // has nobody to OOM-kill for it (see `make_room`).
                let used = || {
                    read_knob(&dir, "memory.current")
                        .ok()
                        .and_then(|u| u.parse().ok())
                        .unwrap_or(0)
                };
                let mut fits = || match fits_or_reclaim(ve, &dir, limit) {
                    Ok(()) => Ok(true),
                    Err(Error::Kernel { .. }) => Ok(false),
                    Err(e) => Err(e),
                };
                let refused = |why: &str| Error::Kernel {
                    ve: ve.to_string(),
                    knob: "memory.max".into(),
                    value: limit.to_string(),
                    reason: format!(
                        "the VE uses {} and the kernel could not reclaim enough{why}",
                        crate::units::human_bytes(used())
                    ),
                    path: dir.join("memory.max"),
                };
                super::make_room(&dir, &used, &mut fits, &refused)?;
            } else {
                fits_or_reclaim(ve, &dir, limit)?;
            }
        }
        let before = state(ve, &dir, old, Some(old))?;
        let after = state(ve, &dir, new, Some(old))?;
        apply_plan(ve, &changes(&before, &after), &before)
    }

    fn read_limits(&self, ve: &str) -> Result<KernelLimits> {
        let dir = self.ve_dir(ve);
        let cpu = read_knob(&dir, "cpu.max")?;
        let quota = cpu.split_whitespace().next().unwrap_or("max");
        let weight: u64 = read_knob(&dir, "cpu.weight")?.parse().unwrap_or(100);
        let low: u64 = read_knob(&dir, "memory.low")?.parse().unwrap_or(0);
        let swap = if dir.join("memory.swap.max").exists() {
            read_limit(&dir, "memory.swap.max")?
        } else {
            None
        };
        let cpuset = if dir.join("cpuset.cpus").exists() {
            let mine = read_knob(&dir, "cpuset.cpus")?;
            (!mine.is_empty() && mine != parent_cpus(&dir)?).then_some(mine)
        } else {
            None
        };
        let io = if dir.join("io.max").exists() {
            parse_io_max(&read_knob(&dir, "io.max")?)
        } else {
            None
        };
        let io_weight = if dir.join("io.bfq.weight").exists() {
            let w: u64 = read_knob(&dir, "io.bfq.weight")?
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            (w != 100).then_some(w)
        } else {
            None
        };
        Ok(KernelLimits {
            memory_bytes: read_limit(&dir, "memory.max")?,
            memory_low: (low > 0).then_some(low),
            swap_bytes: swap,
            cpu_quota_us: if quota == "max" {
                None
            } else {
                quota.parse().ok()
            },
            cpu_weight: (weight != 100).then_some(weight),
            cpuset,
            pids: read_limit(&dir, "pids.max")?,
            io,
            io_weight,
        })
    }

    fn exists(&self, ve: &str) -> bool {
        self.ve_dir(ve).is_dir()
    }

    fn procs(&self, ve: &str) -> Result<Vec<i32>> {
        read_procs_tree(&self.ve_dir(ve))
    }

    fn thaw(&self, ve: &str) -> Result<bool> {
        let dir = self.ve_dir(ve);
        if !dir.join("cgroup.freeze").exists() || read_knob(&dir, "cgroup.freeze")? == "0" {
            return Ok(false);
        }
        write_knob(ve, &dir, "cgroup.freeze", "0")?;
        Ok(true)
    }

    fn freeze(&self, ve: &str) -> Result<bool> {
        let dir = self.ve_dir(ve);
        if !dir.join("cgroup.freeze").exists() {
            return Ok(false);
        }
        write_knob(ve, &dir, "cgroup.freeze", "1")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read_knob(&dir, "cgroup.events")?
            .lines()
            .any(|l| l == "frozen 1")
        {
            if Instant::now() > deadline {
                let _ = write_knob(ve, &dir, "cgroup.freeze", "0");
                return Err(Error::Cgroups(format!(
                    "VE {ve}: its processes did not freeze within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }

    fn kill_all(&self, ve: &str) -> Result<()> {
        let dir = self.ve_dir(ve);
        if !dir.is_dir() {
            return Ok(());
        }
        let has_kill = dir.join("cgroup.kill").exists();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut round = 0;
        loop {
            let pids = self.procs(ve)?;
            if pids.is_empty() {
                return Ok(());
            }
            if has_kill {
                write_knob(ve, &dir, "cgroup.kill", "1")?;
            } else {
                for pid in &pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
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
        rmdir_tree(&self.ve_dir(ve))
    }

    fn placement(&self, ve: &str) -> Result<Placement> {
        let payload = self.ve_dir(ve).join(PAYLOAD);
        // systemd in a VE enables controllers for the children of its
        // (delegated) cgroup, and a cgroup with enabled controllers may hold no
        // process (v2's no-internal-process rule): new processes then go to a
        // leaf of vectl's below it. The VE's root could remove or misuse the
        // leaf; that fails only its own `vectl exec`.
        let leaf = payload.join(EXEC_LEAF);
        let (dir, leaf) = if read_knob(&payload, "cgroup.subtree_control")?.is_empty() {
            (payload, Some(leaf))
        } else {
            mkdir(&leaf)?;
            (leaf, None)
        };
        let fd = open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys_err(format!("open {}", dir.display())))?;
        Ok(Placement::CloneInto { dir: fd, leaf })
    }

    fn usage(&self, ve: &str) -> Result<Usage> {
        let dir = self.ve_dir(ve);
        let text = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let field = |t: &str, key: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat =
            fs::read_to_string(dir.join("cpu.stat")).map_err(io_err(&dir.join("cpu.stat")))?;
        let mut u = Usage {
            memory_bytes: read_knob(&dir, "memory.current")?.parse().unwrap_or(0),
            swap_bytes: text("memory.swap.current").trim().parse().unwrap_or(0),
            pids: read_knob(&dir, "pids.current")?.parse().unwrap_or(0),
            cpu_usage_ns: field(&stat, "usage_usec") * 1000,
            oom_kills: field(&text("memory.events"), "oom_kill"),
            ..Usage::default()
        };
        for line in text("io.stat").lines() {
            for kv in line.split_whitespace().skip(1) {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => u.io_read_bytes += v,
                    "wbytes" => u.io_write_bytes += v,
                    "rios" => u.io_read_ops += v,
                    "wios" => u.io_write_ops += v,
                    _ => {}
                }
            }
        }
        Ok(u)
    }

    fn memory_view(&self, ve: &str) -> Result<MemoryView> {
        let dir = self.ve_dir(ve);
        let num = |f: &str| read_knob(&dir, f).map_or(0, |v| v.parse().unwrap_or(0));
        Ok(MemoryView {
            ram_limit: read_limit(&dir, "memory.max")?,
            // No swap accounting: no allowance to show.
            swap_limit: read_limit(&dir, "memory.swap.max").unwrap_or(Some(0)),
            ram_used: read_knob(&dir, "memory.current")?.parse().unwrap_or(0),
            swap_used: num("memory.swap.current"),
            tasks: num("pids.current"),
        })
    }

    fn paths(&self, ve: &str) -> Vec<PathBuf> {
        vec![self.ve_dir(ve)]
    }

    fn parents(&self) -> Vec<PathBuf> {
        vec![self.parent.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path) -> V2 {
        let dir = root.join("vectl/web1");
        fs::create_dir_all(dir.join(PAYLOAD)).unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("cpu.max"), "max 100000\n").unwrap();
        fs::write(dir.join("pids.max"), "max\n").unwrap();
        fs::write(dir.join("memory.current"), "0\n").unwrap();
        fs::write(dir.join("memory.low"), "0\n").unwrap();
        fs::write(dir.join("cpu.weight"), "100\n").unwrap();
        fs::write(dir.join("cpuset.cpus"), "\n").unwrap();
        fs::write(root.join("vectl/cpuset.cpus.effective"), "0-1\n").unwrap();
        fs::write(dir.join("io.max"), "").unwrap();
        V2::new(root.to_path_buf(), root.join("vectl"))
    }

    #[test]
    fn limits_land_in_the_v2_knobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path());
        let l = KernelLimits {
            memory_bytes: Some(256 << 20),
            memory_low: Some(64 << 20),
            cpu_quota_us: Some(150_000),
            cpu_weight: Some(2500),
            cpuset: Some("1".into()),
            pids: Some(64),
            io: Some(IoLimits {
                major: 254,
                minor: 0,
                bps: Some(10 << 20),
                iops: Some(500),
            }),
            ..Default::default()
        };
        // `create` also attaches the BPF device filter, which needs the real
        // kernel (the VM suite covers it); the knob writes are `apply`'s.
        let old = cg.read_limits("web1").unwrap();
        assert_eq!(old, KernelLimits::default());
        cg.apply("web1", &old, &l, false).unwrap();
        let r = |p: &str| fs::read_to_string(tmp.path().join("vectl/web1").join(p)).unwrap();
        assert_eq!(r("memory.max"), "268435456");
        assert_eq!(r("cpu.max"), "150000 100000");
        assert_eq!(r("pids.max"), "64");
        assert_eq!(r("memory.low"), "67108864");
        assert_eq!(r("cpu.weight"), "2500");
        assert_eq!(r("cpuset.cpus"), "1");
        assert_eq!(
            r("io.max"),
            "254:0 rbps=10485760 wbps=10485760 riops=500 wiops=500"
        );
        assert_eq!(cg.read_limits("web1").unwrap(), l);
        cg.apply("web1", &l, &KernelLimits::default(), false)
            .unwrap();
        assert_eq!(r("cpu.max"), "max 100000");
        assert_eq!(r("memory.max"), "max");
        assert_eq!(r("io.max"), "254:0 rbps=max wbps=max riops=max wiops=max");
        // No CPU set: every CPU of the parent (a populated cpuset may not be "").
        assert_eq!(r("cpuset.cpus"), "0-1");
        assert_eq!(cg.read_limits("web1").unwrap(), KernelLimits::default());
    }

    #[test]
    fn a_memory_limit_below_usage_is_refused_without_writing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path());
        let dir = tmp.path().join("vectl/web1");
        fs::write(dir.join("memory.current"), "104857600\n").unwrap();
        let new = KernelLimits {
            memory_bytes: Some(64 << 20),
            ..KernelLimits::default()
        };
        let e = cg
            .apply("web1", &KernelLimits::default(), &new, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the VE uses 100M"), "{e}");
        assert_eq!(fs::read_to_string(dir.join("memory.max")).unwrap(), "max\n");
        fs::write(dir.join("memory.current"), "1048576\n").unwrap();
        cg.apply("web1", &KernelLimits::default(), &new, false)
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
    }

    #[test]
    fn controllers_are_enabled_once() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "memory\n").unwrap();
        enable_controllers(tmp.path()).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +cpuset +pids +io"
        );
    }
}
