//! `vectl migrate`: a running VE moved over SSH to another host (a root in a
//! network namespace of its own, with an sshd the test starts there) keeps
//! its address and MAC, serves every request after the switch and reports its
//! downtime; to another root of this host, and back with a clean stop; a
//! target that refuses, dies while making the VE, or a source killed
//! mid-way, leave the VE running at the source and nothing at the target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration::{TestHost, sh, skip};

use crate::backup::{own_files, write_files};
use crate::common::{assert_no_leftovers, crash_at, frozen, wait_http, wait_until};

/// A process killed and reaped on drop (sshd).
pub(crate) struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins the thread's network namespace to `other`'s with a veth pair:
/// 192.168.77.1 here, 192.168.77.2 there.
pub(crate) fn link_to(other: &TestHost) {
    sh(&[
        "ip", "link", "add", "mig0", "type", "veth", "peer", "name", "mig1",
    ])
    .unwrap();
    let mut holder = Command::new("sleep");
    holder.arg("600");
    other.in_netns(&mut holder);
    let holder = Killed(holder.spawn().unwrap());
    sh(&[
        "ip",
        "link",
        "set",
        "mig1",
        "netns",
        &holder.0.id().to_string(),
    ])
    .unwrap();
    drop(holder);
    for cmd in [
        &["ip", "addr", "add", "192.168.77.2/24", "dev", "mig1"][..],
        &["ip", "link", "set", "mig1", "up"],
        &["ip", "link", "set", "lo", "up"],
    ] {
        let mut c = Command::new(cmd[0]);
        c.args(&cmd[1..]);
        other.in_netns(&mut c);
        assert!(c.status().unwrap().success(), "{cmd:?}");
    }
    sh(&["ip", "addr", "add", "192.168.77.1/24", "dev", "mig0"]).unwrap();
    sh(&["ip", "link", "set", "mig0", "up"]).unwrap();
}

/// An sshd in `h`'s namespace on 192.168.77.2:22 that lets in the key
/// `dir/client` as root; returns it and the ssh command that uses the key.
pub(crate) fn sshd(h: &TestHost, dir: &Path) -> (Killed, String) {
    for key in ["host", "client"] {
        sh(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            dir.join(key).to_str().unwrap(),
        ])
        .unwrap();
    }
    std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys")).unwrap();
    let config = format!(
        "ListenAddress 192.168.77.2\nPort 22\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nPidFile none\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    // sshd's privilege separation directory (the package makes it at boot).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut c = Command::new("/usr/sbin/sshd");
    c.args(["-D", "-e", "-f", dir.join("sshd_config").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    h.in_netns(&mut c);
    let server = Killed(c.spawn().unwrap());
    let addr: SocketAddr = "192.168.77.2:22".parse().unwrap();
    // A wait, not a timing: sshd starts slowly in the VM on a loaded host.
    assert!(
        wait_until(Duration::from_secs(60), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }),
        "sshd does not listen"
    );
    let ssh = format!(
        "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        dir.join("client").display()
    );
    (server, ssh)
}

/// One HTTP request to `ip`:80; whether the VE's page came back.
fn http_ok(ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("hello from web1")
}

/// Requests `ip` every 20 ms from `netns` (the thread's if `None`) until
/// `stop`; returns when each was sent and whether it was answered.
fn load(
    ip: String,
    netns: Option<std::os::fd::OwnedFd>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, bool)>> {
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        }
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            out.push((t, http_ok(&ip)));
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    })
}

#[test]
fn a_running_ve_migrates_over_ssh_keeping_its_address_and_serves_every_request_after_the_switch() {
    let test = "a_running_ve_migrates_over_ssh_keeping_its_address_and_serves_every_request_after_the_switch";
    if !Path::new("/usr/sbin/sshd").exists() {
        skip(test, "no sshd (scripts/deps.sh installs openssh-server)");
        return;
    }
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    // The other host: no template (the migration sends it along).
    let Some(h2) = h.elsewhere(test, &["--pool-size", "1G"]) else {
        return;
    };
    link_to(&h2);
    let keys = tempfile::tempdir().unwrap();
    let (_sshd, ssh) = sshd(&h2, keys.path());
    h.start_ve("web1", &["--ram", "64M"]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let source = own_files(&h, "web1");
    let shown = h.json(&["show", "web1"]);
    let ip = shown["nics"][0]["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // Clients on both sides of the move, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let here = load(ip.clone(), None, stop.clone());
    let there_ns = h2.netns().unwrap().try_clone_to_owned().unwrap();
    let there = load(ip.clone(), Some(there_ns), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let remote = format!(
        "env VECTL_REGISTRY={} {}",
        h2.registry().display(),
        integration::vectl_bin().display()
    );
    let dest = format!("ssh://root@192.168.77.2{}", h2.root().display());
    let m = h.json(&[
        "migrate",
        "web1",
        &dest,
        "--ssh",
        &ssh,
        "--remote-vectl",
        &remote,
    ]);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (here, there) = (here.join().unwrap(), there.join().unwrap());
    println!("migration: {m}");

    assert_eq!(m["template_sent"], true, "{m}");
    assert!(m["rounds"].as_array().unwrap().len() >= 2, "{m}");
    let c = &m["config"];
    assert_eq!(c["id"], shown["id"], "{m}");
    assert_eq!(c["nics"][0]["ip"], ip.as_str(), "{m}");
    assert_eq!(c["nics"][0]["mac"], shown["nics"][0]["mac"], "{m}");
    assert!(h.fails(&["show", "web1"]).contains("no such VE"));
    assert_no_leftovers(&h);
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);

    // Served here until the switch, there from its first answer on, with
    // no request lost after that.
    let last_here = here.iter().rev().find(|(_, ok)| *ok).map(|(t, _)| *t);
    let first_there = there.iter().position(|(_, ok)| *ok);
    let (Some(last_here), Some(first)) = (last_here, first_there) else {
        panic!("no answer on one side: here {here:?}, there {there:?}");
    };
    let lost: Vec<_> = there[first..].iter().filter(|(_, ok)| !ok).collect();
    assert!(lost.is_empty(), "requests lost after the switch: {lost:?}");
    let gap = there[first].0.saturating_duration_since(last_here);
    println!(
        "migration: vectl's downtime {} ms; the clients saw no answer for {} ms",
        m["downtime_ms"],
        gap.as_millis()
    );
    h2.ok(&["stop", "web1"]);
}

#[test]
fn migrations_that_fail_or_are_killed_leave_the_ve_running_at_the_source() {
    let test = "migrations_that_fail_or_are_killed_leave_the_ve_running_at_the_source";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    let Some(h2) = h.beside_bare_with(test, &["--pool-size", "1G"]) else {
        return;
    };
    h2.import_busybox().unwrap();
    let there = h2.root().to_str().unwrap().to_string();
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let source = own_files(&h, "web1");
    let running_here = |what: &str| {
        assert!(!frozen(&h, "web1"), "{what}");
        assert_eq!(wait_http(&h, "web1"), "hello from web1", "{what}");
        assert!(h2.fails(&["show", "web1"]).contains("no such VE"), "{what}");
        assert_no_leftovers(&h2);
    };

    // A target that has a VE of that name refuses at once.
    h2.ok(&["create", "web1", "--template", "bb"]);
    let out = h.fails(&["migrate", "web1", &there]);
    assert!(
        out.contains("web1") && out.contains("already exists"),
        "{out}"
    );
    h2.ok(&["destroy", "web1"]);
    running_here("refused");
    let out = h.fails(&["migrate", "web1", "ftp://elsewhere"]);
    assert!(out.contains("ftp://elsewhere"), "{out}");
    let out = h.fails(&["migrate", "web1", h.root().to_str().unwrap()]);
    assert!(out.contains("this root"), "{out}");

    // The target dies while it makes the VE (the source is frozen then).
    let r: integration::Run = h
        .command()
        .args(["migrate", "web1", &there])
        .env("VECTL_FAILPOINT", "migrate-before-config")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("web1"), "{}", r.stderr);
    h2.ok(&["pool", "check", "--repair"]);
    running_here("target killed");

    // The source dies after a round: the target, left without it, removes
    // what it received.
    crash_at(&h, "migrate-after-round", &["migrate", "web1", &there]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            !h2.root().join("pool/ves/.web1.receive").exists()
        }),
        "the target kept what it received"
    );
    running_here("source killed");

    // Then it moves, and back with a clean stop.
    let m = h.json(&["migrate", "web1", &there]);
    assert!(m["downtime_ms"].as_f64().unwrap() > 0.0, "{m}");
    assert!(h.fails(&["show", "web1"]).contains("no such VE"));
    assert_no_leftovers(&h);
    assert!(!h.root().join("pool/backup-bases/web1").exists());
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    let back = h2.json(&[
        "migrate",
        "web1",
        h.root().to_str().unwrap(),
        "--clean-stop",
    ]);
    assert!(back["downtime_ms"].as_f64().unwrap() > 0.0, "{back}");
    assert_eq!(wait_http(&h, "web1"), "hello from web1");
    assert_eq!(own_files(&h, "web1"), source);
    assert_no_leftovers(&h2);
    h.ok(&["stop", "web1"]);
}

/// Whether CRIU works on this kernel (`criu check`); why not, if it does not.
fn criu_usable(h: &TestHost) -> Result<(), String> {
    let mut c = Command::new("criu");
    c.arg("check");
    h.in_netns(&mut c);
    match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => Err(format!("criu: {e}")),
    }
}

#[test]
fn live_migration_with_criu_carries_the_running_processes() {
    let test = "live_migration_with_criu_carries_the_running_processes";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    // CRIU's own checks bind sockets on loopback, in vectl's namespace.
    let mut up = Command::new("ip");
    up.args(["link", "set", "lo", "up"]);
    h.in_netns(&mut up);
    assert!(up.status().unwrap().success(), "ip link set lo up");
    h.start_ve("web1", &["--privileged"]);
    wait_http(&h, "web1");
    // A process whose only state is in its memory: a counter.
    let r = h.exec(
        "web1",
        &[
            "sh",
            "-c",
            "setsid sh -c 'echo $$ > /run/loop.pid; i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let count = |h: &TestHost| -> u64 {
        let r = h.exec("web1", &["cat", "/run/count"]);
        r.stdout.trim().parse().unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(10), || count(&h) > 3));
    if let Err(why) = criu_usable(&h) {
        // This kernel: refused in one line saying why, and nothing changes.
        let Some(h2) = h.beside_bare_with(test, &["--pool-size", "1G"]) else {
            return;
        };
        let out = h.fails(&["migrate", "web1", h2.root().to_str().unwrap(), "--live"]);
        assert!(
            out.contains("--live") && out.contains("criu check"),
            "{out}"
        );
        assert_eq!(wait_http(&h, "web1"), "hello from web1");
        assert!(h2.fails(&["show", "web1"]).contains("no such VE"));
        assert_no_leftovers(&h2);
        assert!(
            std::env::var_os("VECTL_IN_VM").is_none(),
            "CRIU must work in the VM: {why}"
        );
        println!("{test}: CRIU does not work on this kernel; vectl said: {out}");
        return;
    }
    let Some(h2) = h.elsewhere(test, &["--pool-size", "1G"]) else {
        return;
    };
    link_to(&h2);
    let keys = tempfile::tempdir().unwrap();
    let (_sshd, ssh) = sshd(&h2, keys.path());
    let remote = format!(
        "env VECTL_REGISTRY={} {}",
        h2.registry().display(),
        integration::vectl_bin().display()
    );
    let dest = format!("ssh://root@192.168.77.2{}", h2.root().display());
    // The loop's pid in the VE, if that process still runs the loop.
    let pid_of_loop = |h: &TestHost| {
        h.exec(
            "web1",
            &[
                "sh",
                "-c",
                "p=$(cat /run/loop.pid) && grep -q while /proc/$p/cmdline && echo $p",
            ],
        )
        .stdout
    };
    let loop_pid = pid_of_loop(&h);
    assert!(!loop_pid.trim().is_empty(), "no counting loop in web1");

    // The target dies after the checkpoint was taken (the VE's processes
    // are stopped at the source then): they go on at the source, and
    // nothing is left at the target.
    let dying = format!(
        "env VECTL_FAILPOINT=migrate-before-config VECTL_REGISTRY={} {}",
        h2.registry().display(),
        integration::vectl_bin().display()
    );
    let r = h.run(&[
        "migrate",
        "web1",
        &dest,
        "--ssh",
        &ssh,
        "--remote-vectl",
        &dying,
        "--live",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("web1"), "{r:?}");
    assert_eq!(
        pid_of_loop(&h),
        loop_pid,
        "the loop at the source after a failed move"
    );
    let resumed = count(&h);
    assert!(
        wait_until(Duration::from_secs(10), || count(&h) > resumed + 3),
        "the counter does not go on at the source"
    );
    assert_eq!(wait_http(&h, "web1"), "hello from web1");
    h2.ok(&["pool", "check", "--repair"]);
    assert!(h2.fails(&["show", "web1"]).contains("no such VE"));
    assert_no_leftovers(&h2);

    let before = count(&h);
    let m = h.json(&[
        "migrate",
        "web1",
        &dest,
        "--ssh",
        &ssh,
        "--remote-vectl",
        &remote,
        "--live",
    ]);
    println!("live migration: {m}");
    assert!(h.fails(&["show", "web1"]).contains("no such VE"));
    assert_no_leftovers(&h);
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    // The same process, counting on from where it was.
    assert_eq!(pid_of_loop(&h2), loop_pid);
    assert!(wait_until(Duration::from_secs(10), || count(&h2) > before + 3));
    // A VE in a user namespace is refused, and stays where it is.
    h2.start_ve("web2", &[]);
    let out = h2.fails(&["migrate", "web2", h.root().to_str().unwrap(), "--live"]);
    assert!(out.contains("user namespace"), "{out}");
    assert_eq!(wait_http(&h2, "web2"), "hello from web2");
    h2.ok(&["stop", "--fast", "web1", "web2"]);
}
