//! `vectl import-host`: a server's system (a Debian tree with systemd, plus
//! what a running machine has: a kernel, modules, /proc and /dev entries, an
//! fstab of real disks, gettys on ttys) becomes a VE that boots its own
//! systemd with every unit up, the machine's parts left out and its symlinks
//! copied as symlinks; over SSH from another host too, and as a template only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use integration::{TestHost, skip};

use crate::common::Supervisor;

/// A server's root at `root`: the systemd tree of scripts/debian-mirror.sh,
/// with a kernel, modules, entries in /proc, /sys, /dev, /run and /tmp, an
/// fstab of real disks, a getty on tty1, and a symlink to /etc/shadow.
fn fake_server(tar: &Path, root: &Path) {
    fs::create_dir_all(root).unwrap();
    integration::sh(&[
        "tar",
        "-xf",
        tar.to_str().unwrap(),
        "-C",
        root.to_str().unwrap(),
    ])
    .unwrap();
    let put = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    put("boot/vmlinuz-6.1.0-13-amd64", "kernel");
    put("lib/modules/6.1.0-13-amd64/kernel/fs/ext4.ko", "module");
    put("proc/1/status", "Name: init");
    put("sys/kernel/hostname", "old");
    put("dev/sda1", "disk");
    put("run/sshd.pid", "1234");
    put("tmp/session", "x");
    put("swapfile", "swap");
    put(
        "etc/fstab",
        "UUID=0a1b / ext4 errors=remount-ro 0 1\n/dev/sdb1 /srv ext4 defaults 0 2\n/swapfile none swap sw 0 0\n",
    );
    put("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    let wants = root.join("etc/systemd/system/getty.target.wants");
    fs::create_dir_all(&wants).unwrap();
    let _ = fs::remove_file(wants.join("getty@tty1.service"));
    symlink(
        "/lib/systemd/system/getty@.service",
        wants.join("getty@tty1.service"),
    )
    .unwrap();
    symlink("/etc/shadow", root.join("etc/shadow-link")).unwrap();
}

fn systemd_tree(test: &str) -> Option<std::path::PathBuf> {
    let tar = integration::repo_dir().join("target/debian-mirror/systemd-rootfs.tar");
    if !tar.is_file() {
        skip(
            test,
            "no systemd tree (scripts/debian-mirror.sh builds it; test.sh runs it)",
        );
        return None;
    }
    Some(tar)
}

/// What the copy left out and what the adaptation changed, in the tree of
/// template version `tdir`.
fn assert_imported_tree(tdir: &Path) {
    for gone in [
        "boot/vmlinuz-6.1.0-13-amd64",
        "lib/modules/6.1.0-13-amd64",
        "proc/1",
        "sys/kernel",
        "dev/sda1",
        "run/sshd.pid",
        "tmp/session",
        "swapfile",
    ] {
        assert!(!tdir.join(gone).exists(), "{gone} was copied");
    }
    for kept in ["boot", "proc", "sys", "dev", "run", "tmp", "lib/modules"] {
        assert!(tdir.join(kept).is_dir(), "{kept} is missing");
    }
    let fstab = fs::read_to_string(tdir.join("etc/fstab")).unwrap();
    assert!(
        !fstab.contains("/dev/sdb1") && fstab.contains("vectl"),
        "{fstab}"
    );
    for masked in [
        "getty@.service",
        "systemd-udevd.service",
        "systemd-timesyncd.service",
    ] {
        assert_eq!(
            fs::read_link(tdir.join("etc/systemd/system").join(masked)).unwrap(),
            Path::new("/dev/null"),
            "{masked}"
        );
    }
    assert_eq!(
        fs::read_link(tdir.join("etc/shadow-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(fs::read_to_string(tdir.join("etc/machine-id")).unwrap(), "");
}

#[test]
fn a_servers_system_becomes_a_ve_that_boots_its_own_systemd() {
    let test = "a_servers_system_becomes_a_ve_that_boots_its_own_systemd";
    let Some(tar) = systemd_tree(test) else {
        return;
    };
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("server");
    fake_server(&tar, &root);
    h.ok(&[
        "net",
        "create",
        "srvnet",
        "--mode",
        "nat",
        "--subnet",
        "10.78.0.0/24",
    ]);
    let _sup = Supervisor::start(&h);
    let r = h.json(&[
        "import-host",
        "srv1",
        "--from-dir",
        root.to_str().unwrap(),
        "--net",
        "srvnet",
        "--ip",
        "10.78.0.20",
        "--ram",
        "256M",
    ]);
    assert_eq!(r["template"]["name"], "srv1", "{r}");
    assert_eq!(r["ve"]["nics"][0]["ip"], "10.78.0.20", "{r}");
    let versions = crate::common::template_versions(&h);
    assert_eq!(versions, [format!("srv1@{}", r["template"]["version"])]);
    assert_imported_tree(
        &h.root()
            .join("pool/templates/srv1")
            .join(r["template"]["version"].to_string()),
    );
    // The server's files stay as they were.
    assert!(root.join("boot/vmlinuz-6.1.0-13-amd64").is_file());
    assert!(
        fs::read_to_string(root.join("etc/fstab"))
            .unwrap()
            .contains("/dev/sdb1")
    );

    h.ok(&["start", "srv1"]);
    let t0 = Instant::now();
    let state = loop {
        let r = h.exec("srv1", &["systemctl", "is-system-running", "--wait"]);
        if !r.stderr.contains("Failed to connect to bus") || t0.elapsed() > Duration::from_secs(180)
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let failed = h
        .exec(
            "srv1",
            &[
                "systemctl",
                "list-units",
                "--failed",
                "--plain",
                "--no-legend",
            ],
        )
        .stdout;
    println!(
        "imported server: {} after {:?}; failed: {failed:?}",
        state.stdout.trim(),
        t0.elapsed()
    );
    assert_eq!(state.stdout.trim(), "running", "{}{failed}", state.stderr);
    assert_eq!(
        h.exec("srv1", &["systemctl", "is-enabled", "getty@tty1.service"])
            .stdout
            .trim(),
        "masked"
    );
    assert_eq!(h.exec("srv1", &["cat", "/proc/1/comm"]).stdout, "systemd\n");
    let id = h.exec("srv1", &["cat", "/etc/machine-id"]).stdout;
    assert!(
        id.trim().len() == 32 && !id.starts_with("0123456789abcdef"),
        "{id}"
    );
    let addr = h.exec("srv1", &["cat", "/proc/net/fib_trie"]).stdout;
    assert!(addr.contains("10.78.0.20"), "{addr}");
    assert_eq!(h.ok(&["stop", "srv1"]).trim(), "stopped VE srv1");

    // Refused: an existing VE, no source, a bad URL; nothing made.
    let out = h.fails(&["import-host", "srv1", "--from-dir", root.to_str().unwrap()]);
    assert!(
        out.contains("srv1") && out.contains("already exists"),
        "{out}"
    );
    let r = h.run(&["import-host", "srv3"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let out = h.fails(&["import-host", "srv3", "--from", "ssh://-oProxyCommand=x"]);
    assert!(out.contains("not a host name"), "{out}");
    let out = h.fails(&["import-host", "srv3", "--from-dir", "/nonexistent-server"]);
    assert!(out.contains("/nonexistent-server"), "{out}");
    assert_eq!(crate::common::template_versions(&h).len(), 1);

    // From a tar archive, as a template only.
    let r = h.json(&[
        "import-host",
        "srv2",
        "--from-tar",
        tar.to_str().unwrap(),
        "--as-template",
    ]);
    assert!(r.get("ve").is_none(), "{r}");
    assert!(h.fails(&["show", "srv2"]).contains("no such VE"));
    assert!(
        fs::read_link(
            h.root()
                .join("pool/templates/srv2")
                .join(r["template"]["version"].to_string())
                .join("etc/systemd/system/getty@.service")
        )
        .is_ok()
    );
}

#[test]
fn a_server_is_imported_over_ssh() {
    let test = "a_server_is_imported_over_ssh";
    if !Path::new("/usr/sbin/sshd").exists() {
        skip(test, "no sshd (scripts/deps.sh installs openssh-server)");
        return;
    }
    let Some(tar) = systemd_tree(test) else {
        return;
    };
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    // The server: another host with an sshd, whose files are the fake root.
    let Some(server) = h.elsewhere(test, &["--backend", "dir"]) else {
        return;
    };
    crate::migrate::link_to(&server);
    let keys = tempfile::tempdir().unwrap();
    let (_sshd, ssh) = crate::migrate::sshd(&server, keys.path());
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("server");
    fake_server(&tar, &root);
    let r = h.json(&[
        "import-host",
        "srv1",
        "--from",
        &format!("ssh://root@192.168.77.2{}", root.display()),
        "--ssh",
        &ssh,
        "--as-template",
    ]);
    assert_imported_tree(
        &h.root()
            .join("pool/templates/srv1")
            .join(r["template"]["version"].to_string()),
    );
    // A server that does not answer: one line, nothing made.
    let out = h.fails(&[
        "import-host",
        "srv2",
        "--from",
        "ssh://root@192.168.77.2:2/",
        "--ssh",
        &ssh,
    ]);
    assert!(out.contains("rsync") && out.contains("srv2"), "{out}");
    assert_eq!(crate::common::template_versions(&h).len(), 1);
}
