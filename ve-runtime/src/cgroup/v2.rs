//! cgroup v2 (the unified hierarchy every current distribution uses).
//!
//! Knobs: memory.max, cpu.max (`quota period`), pids.max. New processes are born in
//! the payload cgroup with clone3(CLONE_INTO_CGROUP); a whole VE is killed with
//! cgroup.kill.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::{
    CgroupBackend, CgroupVersion, Knob, PAYLOAD, Placement, Usage, apply_knobs, mkdir, read_knob,
    read_limit, read_procs_tree, rmdir_tree, write_knob,
};
use crate::error::{Error, Result, io_err, sys_err};
use crate::limits::{CPU_PERIOD_US, KernelLimits};

/// Controllers vectl enables for VE cgroups.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

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

/// The v2 knobs for `l`, in the order they are written.
pub(crate) fn knobs(l: &KernelLimits) -> Vec<Knob> {
    vec![
        Knob {
            controller: "memory",
            file: "memory.max",
            value: l.memory_bytes.map_or("max".into(), |b| b.to_string()),
        },
        Knob {
            controller: "cpu",
            file: "cpu.max",
            value: format!(
                "{} {CPU_PERIOD_US}",
                l.cpu_quota_us.map_or("max".into(), |q| q.to_string())
            ),
        },
        Knob {
            controller: "pids",
            file: "pids.max",
            value: l.pids.map_or("max".into(), |n| n.to_string()),
        },
    ]
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
            crate::limits::human_bytes(used)
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

    fn create(&self, ve: &str, limits: &KernelLimits) -> Result<()> {
        let dir = self.ve_dir(ve);
        mkdir(&dir)?;
        super::devices::attach(ve, &dir)?;
        mkdir(&dir.join(PAYLOAD))?;
        let old = self.read_limits(ve)?;
        self.apply(ve, &old, limits)
    }

    fn apply(&self, ve: &str, old: &KernelLimits, new: &KernelLimits) -> Result<()> {
        let dir = self.ve_dir(ve);
        if let Some(limit) = new.memory_bytes
            && old.memory_bytes.is_none_or(|o| limit < o)
        {
            fits_or_reclaim(ve, &dir, limit)?;
        }
        apply_knobs(ve, &|_| Some(dir.clone()), &knobs(old), &knobs(new))
    }

    fn read_limits(&self, ve: &str) -> Result<KernelLimits> {
        let dir = self.ve_dir(ve);
        let cpu = read_knob(&dir, "cpu.max")?;
        let quota = cpu.split_whitespace().next().unwrap_or("max");
        Ok(KernelLimits {
            memory_bytes: read_limit(&dir, "memory.max")?,
            cpu_quota_us: if quota == "max" {
                None
            } else {
                quota.parse().ok()
            },
            pids: read_limit(&dir, "pids.max")?,
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

    fn kill_all(&self, ve: &str) -> Result<()> {
        let dir = self.ve_dir(ve);
        if !dir.is_dir() {
            return Ok(());
        }
        let has_kill = dir.join("cgroup.kill").exists();
        let deadline = Instant::now() + Duration::from_secs(10);
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
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn remove(&self, ve: &str) -> Result<()> {
        rmdir_tree(&self.ve_dir(ve))
    }

    fn placement(&self, ve: &str) -> Result<Placement> {
        let dir = self.ve_dir(ve).join(PAYLOAD);
        let fd = open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys_err(format!("open {}", dir.display())))?;
        Ok(Placement::CloneInto(fd))
    }

    fn usage(&self, ve: &str) -> Result<Usage> {
        let dir = self.ve_dir(ve);
        let stat =
            fs::read_to_string(dir.join("cpu.stat")).map_err(io_err(&dir.join("cpu.stat")))?;
        let usage_usec = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Usage {
            memory_bytes: read_knob(&dir, "memory.current")?.parse().unwrap_or(0),
            pids: read_knob(&dir, "pids.current")?.parse().unwrap_or(0),
            cpu_usage_ns: usage_usec * 1000,
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
        V2::new(root.to_path_buf(), root.join("vectl"))
    }

    #[test]
    fn limits_land_in_the_v2_knobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake(tmp.path());
        let l = KernelLimits {
            memory_bytes: Some(256 << 20),
            cpu_quota_us: Some(150_000),
            pids: Some(64),
        };
        // `create` also attaches the BPF device filter, which needs the real
        // kernel (the VM suite covers it); the knob writes are `apply`'s.
        let old = cg.read_limits("web1").unwrap();
        assert_eq!(old, KernelLimits::default());
        cg.apply("web1", &old, &l).unwrap();
        let r = |p: &str| fs::read_to_string(tmp.path().join("vectl/web1").join(p)).unwrap();
        assert_eq!(r("memory.max"), "268435456");
        assert_eq!(r("cpu.max"), "150000 100000");
        assert_eq!(r("pids.max"), "64");
        assert_eq!(cg.read_limits("web1").unwrap(), l);
        cg.apply("web1", &l, &KernelLimits::default()).unwrap();
        assert_eq!(r("cpu.max"), "max 100000");
        assert_eq!(r("memory.max"), "max");
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
            .apply("web1", &KernelLimits::default(), &new)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the VE uses 100M"), "{e}");
        assert_eq!(fs::read_to_string(dir.join("memory.max")).unwrap(), "max\n");
        fs::write(dir.join("memory.current"), "1048576\n").unwrap();
        cg.apply("web1", &KernelLimits::default(), &new).unwrap();
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
            "+cpu +pids +io"
        );
    }
}
