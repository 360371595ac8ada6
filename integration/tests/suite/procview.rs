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
        // The mount point, made beside the test's root by `start`.
        let _ = fs::remove_dir(&self.dir);
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

/// The total on the `Mem:` or `Swap:` line of busybox `free` (KiB), which
/// asks sysinfo(2).
#[track_caller]
fn free_total(out: &str, line: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in {out}"))
}

#[test]
fn sysinfo_in_a_ve_tells_its_own_memory_swap_uptime_and_tasks() {
    use crate::escape::{plant_probe, probe_in};
    let test = "sysinfo_in_a_ve_tells_its_own";
    let Some((h, dir)) = host_with_lxcfs_dir(test) else {
        return;
    };
    let Some(_lxcfs) = Lxcfs::start(test, &dir) else {
        return;
    };
    let host_kb = host_meminfo_kb("MemTotal");
    let host_swap_kb = host_meminfo_kb("SwapTotal");
    // No supervisor: the kernel answers (the host's values), never ENOSYS.
    h.start_ve("sn", &["--ram", "64M"]);
    plant_probe(&h, "sn");
    let f = probe_in(&h, "sn", &["sysinfo"]);
    assert_eq!(f["totalram"], (host_kb * 1024).to_string(), "{f:?}");
    assert_eq!(h.json(&["show", "sn"])["sysinfo"], false);
    assert!(h.ok(&["show", "sn"]).contains("sysinfo"));
    h.ok(&["stop", "--fast", "sn"]);

    let _sup = Supervisor::start(&h);
    for (ve, extra) in [("su", &[][..]), ("sp", &["--privileged"][..])] {
        let mut args = vec![
            "--ram",
            "64M",
            "--swap",
            "32M",
            "--init",
            "/bin/sh -c 'while :; do free > /tmp/f.new; mv /tmp/f.new /tmp/free.txt; sleep 1; done'",
        ];
        args.extend_from_slice(extra);
        h.start_ve(ve, &args);
        assert_eq!(h.json(&["show", ve])["sysinfo"], true, "{ve}");
        plant_probe(&h, ve);
        // A command of `vectl exec`; 2000 calls timed (a figure, no bound).
        let f = probe_in(&h, ve, &["sysinfo", "2000"]);
        eprintln!(
            "{ve}: sysinfo answered by the supervisor: {} ns a call",
            f["ns_per_call"]
        );
        let n = |k: &str| -> u64 { f[k].parse().unwrap_or_else(|_| panic!("{k}: {f:?}")) };
        assert_eq!(n("totalram"), 64 << 20, "{ve}: {f:?}");
        assert!(n("freeram") > 0 && n("freeram") < 64 << 20, "{ve}: {f:?}");
        let swap = (32u64 << 20).min(host_swap_kb * 1024);
        assert_eq!(n("totalswap"), swap, "{ve}: {f:?}");
        assert!(n("freeswap") <= swap, "{ve}: {f:?}");
        assert!(n("uptime") < 120, "{ve}: {f:?}");
        // Its init, the loop's sleep, the probe: a handful, not the host's.
        assert!(n("procs") >= 2 && n("procs") < 30, "{ve}: {f:?}");
        // A buffer the caller cannot write: EFAULT, as from the kernel.
        for k in ["null", "readonly", "unmapped"] {
            assert_eq!(f[k], "EFAULT", "{ve}: {k}: {f:?}");
        }
        // busybox free under init (the listener handed over at start).
        let mut out = String::new();
        wait_for("free under init", || {
            out = sh(&h, ve, "cat /tmp/free.txt 2>/dev/null || true");
            out.contains("Mem:")
        });
        assert_eq!(free_total(&out, "Mem:"), 64 * 1024, "{ve}: {out}");
        assert_eq!(free_total(&out, "Swap:"), swap / 1024, "{ve}: {out}");
        // A live change shows at once, in exec and under init.
        h.ok(&["set", ve, "--ram", "128M"]);
        let out = sh(&h, ve, "free");
        assert_eq!(free_total(&out, "Mem:"), 128 * 1024, "{ve}: {out}");
        wait_for("free under init after set", || {
            let out = sh(&h, ve, "cat /tmp/free.txt");
            free_total(&out, "Mem:") == 128 * 1024
        });
        assert!(host_kb > 128 * 1024);
        h.ok(&["stop", "--fast", ve]);
    }
}

/// The next message on a notification socket, with the descriptors it carries.
fn notify_msg(sock: &std::os::unix::net::UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("a message from the supervisor on NOTIFY_SOCKET");
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: descriptors the kernel gave us with the message.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let n = msg.bytes;
    (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
}

#[test]
fn a_supervisor_restarted_by_its_service_manager_answers_sysinfo_again() {
    let test = "a_supervisor_restarted_answers_sysinfo";
    let Some((h, dir)) = host_with_lxcfs_dir(test) else {
        return;
    };
    let Some(_lxcfs) = Lxcfs::start(test, &dir) else {
        return;
    };
    // The test plays systemd: a notification socket, and the fd store.
    let path = h.root().with_extension("notify");
    let _ = fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notify = [("NOTIFY_SOCKET", path.to_str().unwrap())];
    let sup = Supervisor::start_as_service(&h, &notify, Vec::new());
    assert_eq!(notify_msg(&sock).0, "READY=1");
    h.start_ve(
        "sr",
        &[
            "--ram",
            "64M",
            "--init",
            "/bin/sh -c 'while :; do free > /tmp/f.new; mv /tmp/f.new /tmp/free.txt; echo tick; sleep 1; done'",
        ],
    );
    let init = h.init_pid("sr");
    // Its console's master and its sysinfo listener, each stored by name.
    let mut stored = Vec::new();
    for _ in 0..2 {
        let (msg, mut fds) = notify_msg(&sock);
        let name = msg
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or_else(|| panic!("{msg}"))
            .to_string();
        assert!(msg.starts_with("FDSTORE=1\n"), "{msg}");
        assert!(name.ends_with(&format!(".sr.{init}")), "{msg}");
        assert_eq!(fds.len(), 1, "{msg}");
        // The console stays stored while no slave is open (FDPOLL=0).
        assert_eq!(name.starts_with("con."), msg.contains("FDPOLL=0"), "{msg}");
        stored.push((name, fds.remove(0)));
    }
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(stored[0].0.starts_with("con.") && stored[1].0.starts_with("si."));
    // The supervisor dies; what was stored keeps the VE's console and filter
    // served as soon as a new one takes them.
    drop(sup);
    sh(&h, "sr", "rm -f /tmp/free.txt");
    let _sup = Supervisor::start_as_service(&h, &notify, stored);
    assert_eq!(notify_msg(&sock).0, "READY=1");
    wait_for("free under init after the restart", || {
        let out = sh(&h, "sr", "cat /tmp/free.txt 2>/dev/null || true");
        out.contains("Mem:") && free_total(&out, "Mem:") == 64 * 1024
    });
    // The console goes on: what init writes after the restart is logged.
    let log = h.root().join("run/sr.console.log");
    wait_for("the console after the restart", || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.split("took VE sr's console back")
            .nth(1)
            .is_some_and(|after| after.contains("tick"))
    });
    // A stop drops the console from the store (the listener systemd drops by
    // itself when the VE's processes are gone).
    // (Each `vectl exec` meanwhile stored a listener of its own.)
    h.ok(&["stop", "--fast", "sr"]);
    let msg = std::iter::repeat_with(|| notify_msg(&sock).0)
        .find(|m| !m.contains("FDNAME=si."))
        .unwrap();
    assert!(msg.starts_with("FDSTOREREMOVE=1\nFDNAME=con."), "{msg}");
    assert!(msg.ends_with(&format!(".sr.{init}")), "{msg}");
    let _ = fs::remove_file(&path);
}
