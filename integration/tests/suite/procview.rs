//! The /proc view: a VE's /proc/meminfo, cpuinfo, stat, uptime and the rest
//! show its own limits and use through LXCFS, a live `set --ram` shows at
//! once, a VE started while LXCFS is down starts with the host's values and a
//! warning, and `host rebind-proc` gives running VEs the view back after LXCFS
//! restarted, leaving what the VE mounted (or a symlink it planted) alone.
//!
//! Each test runs an LXCFS of its own on a directory in its root (`vectl host
//! set --lxcfs-dir`), so it can kill and restart it without touching the
//! host's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A private LXCFS, killed and unmounted on drop.
struct Lxcfs {
    dir: PathBuf,
    child: Option<Child>,
}

impl Lxcfs {
    /// Starts LXCFS on `dir` (made if missing) and waits until it answers;
    /// `None` after SKIP when lxcfs is not installed.
    fn start(test: &str, dir: &Path) -> Option<Lxcfs> {
        if Command::new("lxcfs").arg("--version").output().is_err() {
            integration::skip(test, "lxcfs is not installed (scripts/deps.sh installs it)");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let mut l = Lxcfs {
            dir: dir.to_path_buf(),
            child: None,
        };
        l.restart();
        Some(l)
    }

    /// Starts it again after [`Lxcfs::kill`] (a dead mount is detached first).
    fn restart(&mut self) {
        assert!(self.child.is_none(), "LXCFS runs already");
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let pidfile = self.dir.with_extension("pid");
        let child = Command::new("lxcfs")
            .args(["-f", "--enable-loadavg", "--enable-cfs", "-p"])
            .arg(&pidfile)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lxcfs");
        self.child = Some(child);
        let meminfo = self.dir.join("proc/meminfo");
        let deadline = Instant::now() + Duration::from_secs(20);
        while fs::read_to_string(&meminfo).is_err() {
            assert!(
                Instant::now() < deadline,
                "LXCFS did not answer at {meminfo:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it the hard way: its mount stays, dead (ENOTCONN), as after a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        self.kill();
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_file(self.dir.with_extension("pid"));
    }
}

/// A field of the VE's /proc/meminfo, in kB.
#[track_caller]
fn meminfo_kb(h: &TestHost, ve: &str, field: &str) -> u64 {
    let r = h.exec(ve, &["cat", "/proc/meminfo"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {}", r.stdout))
}

fn host_meminfo_kb(field: &str) -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[track_caller]
fn sh(h: &TestHost, ve: &str, script: &str) -> String {
    let r = h.exec(ve, &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{script}: {r:?}");
    r.stdout
}

fn shows(h: &TestHost, ve: &str) -> String {
    h.json(&["show", ve])["proc_view"]["shows"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// A test host whose LXCFS directory is `ROOT/../NAME.lxcfs`, not yet running.
fn host_with_lxcfs_dir(test: &str) -> Option<(TestHost, PathBuf)> {
    let h = TestHost::new(test)?;
    let dir = h.root().with_extension("lxcfs");
    h.ok(&["host", "set", "--lxcfs-dir", dir.to_str().unwrap()]);
    Some((h, dir))
}

#[test]
fn a_ves_proc_shows_its_own_limits_and_use_and_a_live_raise_at_once() {
    let test = "a_ves_proc_shows_its_own_limits_and_use";
    let Some((h, dir)) = host_with_lxcfs_dir(test) else {
        return;
    };
    let Some(_lxcfs) = Lxcfs::start(test, &dir) else {
        return;
    };
    let info = h.json(&["host", "info"]);
    assert_eq!(info["proc_view"]["lxcfs_running"], true, "{info}");
    let host_uptime: f64 = fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // One VE of each kind: in its own user namespace and privileged.
    for (ve, extra) in [("pv", &[][..]), ("pp", &["--privileged"][..])] {
        let mut args = vec!["--ram", "64M", "--swap", "32M", "--cpus", "1"];
        args.extend_from_slice(extra);
        h.start_ve(ve, &args);
        assert_eq!(shows(&h, ve), "own", "{ve}");
        assert_eq!(meminfo_kb(&h, ve, "MemTotal"), 64 * 1024, "{ve}");
        let free = meminfo_kb(&h, ve, "MemFree");
        assert!(free > 0 && free < 64 * 1024, "{ve}: MemFree {free}");
        // LXCFS shows the swap limit, but no more swap than the host has.
        assert_eq!(
            meminfo_kb(&h, ve, "SwapTotal"),
            (32 * 1024).min(host_meminfo_kb("SwapTotal")),
            "{ve}"
        );
        // top's memory line adds up to the limit (busybox `free` asks
        // sysinfo(2) instead, which LXCFS cannot answer; procps `free` reads
        // /proc/meminfo).
        let top = sh(&h, ve, "top -b -n1 | head -1");
        let kb: Vec<u64> = top
            .split_whitespace()
            .filter_map(|w| w.strip_suffix('K').and_then(|n| n.parse().ok()))
            .collect();
        assert_eq!(kb[0] + kb[1], 64 * 1024, "{ve}: top: {top}");
        // One CPU: cpuinfo, stat, sysfs and nproc agree.
        assert_eq!(
            sh(&h, ve, "grep -c ^processor /proc/cpuinfo").trim(),
            "1",
            "{ve}"
        );
        assert_eq!(
            sh(&h, ve, "grep -c '^cpu[0-9]' /proc/stat").trim(),
            "1",
            "{ve}"
        );
        assert_eq!(sh(&h, ve, "nproc").trim(), "1", "{ve}");
        let online = sh(&h, ve, "cat /sys/devices/system/cpu/online");
        assert!(
            !online.contains(',') && !online.contains('-'),
            "{ve}: {online}"
        );
        // Its uptime is its own: it started a moment ago.
        let up: f64 = sh(&h, ve, "cat /proc/uptime")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            up < 120.0 && up < host_uptime,
            "{ve}: uptime {up} (host {host_uptime})"
        );
        for f in ["loadavg", "swaps", "diskstats"] {
            sh(&h, ve, &format!("cat /proc/{f} >/dev/null"));
        }
        // The view is read-only, also for the VE's root.
        let w = h.exec(ve, &["sh", "-c", "echo x > /proc/meminfo"]);
        assert_ne!(w.code, 0, "{ve}: {w:?}");
        // A live change shows at once.
        h.ok(&["set", ve, "--ram", "128M"]);
        assert_eq!(meminfo_kb(&h, ve, "MemTotal"), 128 * 1024, "{ve}");
        h.ok(&["stop", "--fast", ve]);
    }
    // A CPU limit of one CPU's time on a bigger host: one CPU in cpuinfo and
    // stat (LXCFS's --enable-cfs).
    // vectl's part on both versions: the VE's init's own cgroup (where LXCFS
    // looks) carries a copy of the quota. LXCFS 5.0 shows it on v1 only: on
    // v2 (seen in the VM) its cpuinfo keeps the cpuset's CPUs.
    if num_cpus() > 1 {
        h.start_ve("pc", &["--cpu-limit", "100%"]);
        let cpu_dir = h.cgroup_dir("cpu", "pc").join("ve");
        let (file, want) = if cpu_dir.join("cpu.max").exists() {
            ("cpu.max", "100000 100000")
        } else {
            ("cpu.cfs_quota_us", "100000")
        };
        assert_eq!(
            fs::read_to_string(cpu_dir.join(file)).unwrap().trim(),
            want,
            "{cpu_dir:?}"
        );
        if file == "cpu.cfs_quota_us" {
            assert_eq!(sh(&h, "pc", "grep -c ^processor /proc/cpuinfo").trim(), "1");
            assert_eq!(sh(&h, "pc", "grep -c '^cpu[0-9]' /proc/stat").trim(), "1");
        }
        h.ok(&["stop", "--fast", "pc"]);
    }
    // Off: the kernel's own files, no warning at start.
    h.ok(&["host", "set", "--proc-view", "off"]);
    let r = h.run(&["start", "pv"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
    assert_eq!(shows(&h, "pv"), "host-values");
    assert_eq!(
        meminfo_kb(&h, "pv", "MemTotal"),
        host_meminfo_kb("MemTotal")
    );
}

#[test]
fn a_ve_started_without_lxcfs_warns_and_gets_its_view_back_after_lxcfs_restarts() {
    let test = "a_ve_started_without_lxcfs_warns_and_gets_its_view";
    let Some((h, dir)) = host_with_lxcfs_dir(test) else {
        return;
    };
    // LXCFS is down: the VE starts, with the host's values and a warning.
    h.ok(&["create", "pw", "--template", "bb", "--ram", "96M"]);
    let r = h.run(&["start", "pw"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("warning: VE pw: its /proc shows the host's values")
            && r.stderr.contains("LXCFS is not running"),
        "{r:?}"
    );
    assert_eq!(shows(&h, "pw"), "host-values");
    let show = h.run(&["show", "pw"]);
    assert!(show.stderr.contains("warning"), "{show:?}");
    assert_eq!(
        meminfo_kb(&h, "pw", "MemTotal"),
        host_meminfo_kb("MemTotal")
    );
    // Without LXCFS, rebind-proc says why and fails.
    let r = h.run(&["host", "rebind-proc", "--wait", "0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("LXCFS is not running"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");

    let Some(mut lxcfs) = Lxcfs::start(test, &dir) else {
        return;
    };
    let pid = h.init_pid("pw");
    let out = h.json(&["host", "rebind-proc"]);
    let row = &out.as_array().unwrap()[0];
    assert_eq!(row["ve"], "pw", "{out}");
    assert!(
        row["bound"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "proc/meminfo"),
        "{out}"
    );
    assert_eq!(meminfo_kb(&h, "pw", "MemTotal"), 96 * 1024);
    assert_eq!(shows(&h, "pw"), "own");
    // Nothing left to do: a second run binds nothing.
    assert_eq!(h.json(&["host", "rebind-proc"]), serde_json::json!([]));

    // LXCFS dies: the VE's binds are dead and show says so.
    lxcfs.kill();
    assert_eq!(shows(&h, "pw"), "broken");
    assert_ne!(h.exec("pw", &["cat", "/proc/meminfo"]).code, 0);
    // It comes back (a new mount): rebinding gives the running VE its view
    // again; the VE never stopped.
    lxcfs.restart();
    h.ok(&["host", "rebind-proc"]);
    assert_eq!(meminfo_kb(&h, "pw", "MemTotal"), 96 * 1024);
    assert_eq!(shows(&h, "pw"), "own");
    assert_eq!(h.init_pid("pw"), pid);
    // A VE started now gets the view at start, without a warning.
    h.ok(&["create", "px", "--template", "bb", "--ram", "80M"]);
    let r = h.run(&["start", "px"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
    assert_eq!(meminfo_kb(&h, "px", "MemTotal"), 80 * 1024);
}

#[test]
fn rebinding_leaves_the_ves_own_mounts_and_planted_symlinks_alone() {
    let test = "rebinding_leaves_the_ves_own_mounts_and_planted_symlinks";
    let Some((h, dir)) = host_with_lxcfs_dir(test) else {
        return;
    };
    let Some(mut lxcfs) = Lxcfs::start(test, &dir) else {
        return;
    };
    h.start_ve("ps", &["--ram", "64M"]);
    // VE root covers /proc/uptime with a file of its own, and replaces /sys by
    // a symlink to its /etc (with a devices/system/cpu/online of its own).
    sh(
        &h,
        "ps",
        "echo mine > /uptime.mine && mount --bind /uptime.mine /proc/uptime && \
         umount -l /sys && rmdir /sys && mkdir -p /etc/devices/system/cpu && \
         echo planted > /etc/devices/system/cpu/online && ln -s /etc /sys",
    );
    lxcfs.kill();
    lxcfs.restart();
    let out = h.json(&["host", "rebind-proc"]);
    let row = &out.as_array().unwrap()[0];
    let has = |k: &str, f: &str| row[k].as_array().unwrap().iter().any(|x| x == f);
    assert!(has("bound", "proc/meminfo"), "{out}");
    assert!(has("foreign", "proc/uptime"), "{out}");
    assert!(has("foreign", "sys/devices/system/cpu/online"), "{out}");
    assert_eq!(meminfo_kb(&h, "ps", "MemTotal"), 64 * 1024);
    assert_eq!(sh(&h, "ps", "cat /proc/uptime").trim(), "mine");
    // Nothing was mounted through the symlink: the planted file is the VE's.
    assert_eq!(
        sh(&h, "ps", "cat /etc/devices/system/cpu/online").trim(),
        "planted"
    );
    let mounts = fs::read_to_string(format!("/proc/{}/mountinfo", h.init_pid("ps"))).unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(" /etc/")),
        "a mount below the VE's /etc: {mounts}"
    );
}
