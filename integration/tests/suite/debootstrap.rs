//! `template import --debootstrap`: a real Debian tree from a mirror. The mirror
//! is the small signed one scripts/debian-mirror.sh builds (test.sh runs it),
//! served over HTTP on loopback inside the test's own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;

use crate::common::{Supervisor, wait_for};
use integration::{FileServer, TestHost, skip};

/// The local mirror, or `None` after a SKIP line saying how to make it.
fn mirror(test: &str) -> Option<PathBuf> {
    let dir = integration::repo_dir().join("target/debian-mirror");
    if !dir.join("keyring.gpg").is_file() {
        skip(
            test,
            "no local Debian mirror (scripts/debian-mirror.sh builds it; test.sh runs it)",
        );
        return None;
    }
    if integration::sh(&["sh", "-c", "command -v debootstrap"]).is_err() {
        skip(test, "debootstrap is not installed");
        return None;
    }
    Some(dir)
}

/// `template import NAME --debootstrap SUITE` of a minbase tree with `include`
/// from the mirror in `dir`, served at `url`, and `extra` arguments.
fn debootstrap_import(
    h: &TestHost,
    dir: &std::path::Path,
    url: &str,
    name: &str,
    include: &str,
    extra: &[&str],
) -> integration::Run {
    let suite = fs::read_to_string(dir.join("suite")).unwrap();
    let keyring = dir.join("keyring.gpg");
    let mut args = vec![
        "template",
        "import",
        name,
        "--debootstrap",
        suite.trim(),
        "--mirror",
        url,
        "--variant",
        "minbase",
        "--include",
        include,
        "--keyring",
        keyring.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    h.run(&args)
}

#[test]
fn debootstrap_imports_a_debian_tree_with_packages() {
    let test = "debootstrap_imports_a_debian_tree_with_packages";
    let Some(dir) = mirror(test) else {
        return;
    };
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let server = FileServer::new(&dir).unwrap();
    let include = fs::read_to_string(dir.join("include")).unwrap();
    let url = server.url("debian");
    let r = debootstrap_import(
        &h,
        &dir,
        &url,
        "deb",
        include.trim(),
        &["-m", "base system"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Progress, stage by stage, in a log (stderr is not a terminal here).
    for stage in ["retrieving", "unpacking", "configuring"] {
        assert!(
            r.stderr.contains(&format!("importing deb: {stage}")),
            "{}",
            r.stderr
        );
    }
    // minbase has no init: the operator is told.
    assert!(r.stderr.contains("no /sbin/init"), "{}", r.stderr);

    let show = h.json(&["template", "show", "deb@1"]);
    assert_eq!(show["message"], "base system");
    let source = show["source"].as_str().unwrap();
    assert!(source.starts_with("debootstrap:bookworm "), "{source}");
    assert!(
        source.contains(&format!("include={}", include.trim())),
        "{source}"
    );
    let tree = h.root().join("pool/templates/deb/1");
    assert!(
        fs::read_to_string(tree.join("etc/debian_version"))
            .unwrap()
            .starts_with("12"),
    );
    // Host-neutral: no downloaded packages, no host name, no host resolver.
    let debs = fs::read_dir(tree.join("var/cache/apt/archives"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "deb")
        })
        .count();
    assert_eq!(debs, 0);
    assert_eq!(
        fs::read_to_string(tree.join("etc/hostname")).unwrap(),
        "localhost\n"
    );
    // The mirror is what the tree's apt uses.
    let sources = fs::read_to_string(tree.join("etc/apt/sources.list")).unwrap();
    assert!(sources.contains(&url), "{sources}");
    // Nothing debootstrap mounted stayed behind.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(h.root().to_str().unwrap()), "{mounts}");

    // A build on the real tree: dpkg runs in the build VE, and the log shows
    // the package change between the versions (from their dpkg databases).
    let r = h.run(&[
        "template",
        "update",
        "deb",
        "--run",
        &format!("dpkg --purge {}", include.trim()),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let log = h.json(&["template", "log", "deb"]);
    assert_eq!(log.as_array().unwrap().len(), 2, "{log}");
    assert_eq!(log[1]["packages"][0]["package"], include.trim(), "{log}");
    assert_eq!(
        log[1]["packages"][0]["to"],
        serde_json::Value::Null,
        "{log}"
    );
    assert_eq!(log[1]["packages"].as_array().unwrap().len(), 1, "{log}");
    assert!(tree.join("etc/protocols").exists(), "deb@1 changed");
    assert!(!h.root().join("pool/templates/deb/2/etc/protocols").exists());

    // A VE on it runs Debian's own programs.
    h.ok(&[
        "create",
        "d",
        "--template",
        "deb@1",
        "--net",
        "none",
        "--init",
        "/bin/sleep infinity",
    ]);
    h.ok(&["start", "d"]);
    let r = h.exec(
        "d",
        &["dpkg-query", "-W", "-f", "${Status}", include.trim()],
    );
    assert_eq!(r.stdout, "install ok installed", "{}", r.stderr);
    assert_eq!(h.exec("d", &["cat", "/etc/hostname"]).stdout, "d\n");
    let r = h.exec("d", &["cat", "/etc/os-release"]);
    assert!(r.stdout.contains("Debian GNU/Linux 12"), "{}", r.stdout);
    h.ok(&["stop", "d", "--fast"]);
}

#[test]
fn a_failed_debootstrap_leaves_nothing() {
    let test = "a_failed_debootstrap_leaves_nothing";
    let Some(dir) = mirror(test) else {
        return;
    };
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let server = FileServer::new(&dir).unwrap();
    let keyring = dir.join("keyring.gpg");
    let url = server.url("debian");
    // A suite the mirror does not have.
    let e = h.fails(&[
        "template",
        "import",
        "deb",
        "--debootstrap",
        "nosuchsuite",
        "--mirror",
        &url,
        "--keyring",
        keyring.to_str().unwrap(),
    ]);
    assert!(e.contains("debootstrap nosuchsuite"), "{e}");
    assert!(e.contains("debootstrap failed"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // A package the mirror does not have: the progress lines of the log, then
    // the error, one line.
    let r = h.run(&[
        "template",
        "import",
        "deb",
        "--debootstrap",
        "bookworm",
        "--variant",
        "minbase",
        "--include",
        "no-such-package",
        "--mirror",
        &url,
        "--keyring",
        keyring.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.trim().lines().collect();
    let e = lines.last().unwrap();
    assert!(e.starts_with("vectl: debootstrap bookworm"), "{e}");
    assert!(e.contains("no-such-package"), "{e}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("importing deb: ")),
        "{}",
        r.stderr
    );
    assert!(
        h.json(&["template", "list"]).as_array().unwrap().is_empty(),
        "a failed import published a version"
    );
    assert!(!h.root().join("pool/templates/deb").exists());
    // Bad requests never start debootstrap.
    for (args, want) in [
        (vec!["--debootstrap", "../etc"], "invalid suite"),
        (
            vec!["--debootstrap", "bookworm", "--mirror", "ftp://x/"],
            "--mirror",
        ),
        (
            vec!["--debootstrap", "bookworm", "--keyring", "/nonexistent.gpg"],
            "/nonexistent.gpg",
        ),
    ] {
        let mut all = vec!["template", "import", "deb"];
        all.extend(args);
        let e = h.fails(&all);
        assert!(e.contains(want), "{e}");
    }
    // --mirror without --debootstrap is a usage error.
    let empty = tempfile::tempdir().unwrap();
    let r = h.run(&[
        "template",
        "import",
        "x",
        "--from-dir",
        empty.path().to_str().unwrap(),
        "--mirror",
        &url,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Units that fail in a VE for a reason of the VE, not of the distribution
/// (the README lists them): none now that a VE has a console of its own.
const FAILING_UNITS: &[&str] = &[];

#[test]
fn a_debian_template_with_systemd_boots_as_a_ve_in_its_user_namespace() {
    let test = "a_debian_template_with_systemd_boots_as_a_ve_in_its_user_namespace";
    let Some(dir) = mirror(test) else {
        return;
    };
    let Ok(systemd) = fs::read_to_string(dir.join("systemd-include")) else {
        skip(
            test,
            "the local mirror has no systemd packages (run scripts/debian-mirror.sh again)",
        );
        return;
    };
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let server = FileServer::new(&dir).unwrap();
    let include = format!(
        "{},{}",
        fs::read_to_string(dir.join("include")).unwrap().trim(),
        systemd.trim()
    );
    let url = server.url("debian");
    let r = debootstrap_import(&h, &dir, &url, "debian-12", &include, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("no /sbin/init"), "{}", r.stderr);
    boots_with_systemd(&h, "debian-12");
}

/// The same tree, made by scripts/debian-mirror.sh and imported as a tar, boots
/// on this host's cgroups: the VM suite runs this on cgroup v2 (debootstrap
/// itself would take many minutes there).
#[test]
fn a_systemd_tree_boots_as_a_ve_on_this_hosts_cgroups() {
    let test = "a_systemd_tree_boots_as_a_ve_on_this_hosts_cgroups";
    let tar = integration::repo_dir().join("target/debian-mirror/systemd-rootfs.tar");
    if !tar.is_file() {
        skip(
            test,
            "no systemd tree (scripts/debian-mirror.sh builds it; test.sh runs it)",
        );
        return;
    }
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    h.ok(&[
        "template",
        "import",
        "sd",
        "--from-tar",
        tar.to_str().unwrap(),
    ]);
    boots_with_systemd(&h, "sd");
}

/// Creates a VE from `template` on a NAT network, starts it and checks that
/// systemd boots it, runs sshd and cron, and halts it on `vectl stop`.
fn boots_with_systemd(h: &TestHost, template: &str) {
    use std::io::Read;
    use std::time::{Duration, Instant};

    h.ok(&[
        "net",
        "create",
        "sdnet",
        "--mode",
        "nat",
        "--subnet",
        "10.79.0.0/24",
    ]);
    h.ok(&["create", "web1", "--template", template, "--net", "sdnet"]);
    // The supervisor holds the VE's console: console-getty.service gets a
    // terminal on /dev/console.
    let _sup = Supervisor::start(h);
    let t0 = Instant::now();
    h.ok(&["start", "web1"]);
    assert!(
        h.in_own_userns("web1"),
        "a VE has its own user namespace by default"
    );
    // `--wait`: until the boot is over, whatever its result; before that, until
    // systemd listens at all.
    let r = loop {
        let r = h.exec("web1", &["systemctl", "is-system-running", "--wait"]);
        if !r.stderr.contains("Failed to connect to bus") || t0.elapsed() > Duration::from_secs(120)
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let booted = t0.elapsed();
    let state = r.stdout.trim().to_string();
    let failed = h
        .exec(
            "web1",
            &[
                "systemctl",
                "list-units",
                "--failed",
                "--plain",
                "--no-legend",
            ],
        )
        .stdout;
    let failed: Vec<&str> = failed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    println!("systemd VE: {state} after {booted:?}, failed units {failed:?}");
    assert!(
        state == "running" || (state == "degraded" && !failed.is_empty()),
        "is-system-running: {state} {}",
        r.stderr
    );
    for unit in &failed {
        assert!(
            FAILING_UNITS.contains(unit),
            "{unit} failed:\n{}",
            h.exec("web1", &["systemctl", "status", "--no-pager", unit])
                .stdout
        );
    }
    // The console: systemd's boot messages and a getty's login prompt.
    wait_for("a login prompt on web1's console", || {
        h.ok(&["logs", "web1"]).contains("login: ")
    });
    // systemd is init, and manages its services in cgroups of its own below the
    // VE's (delegated) one.
    assert_eq!(h.exec("web1", &["cat", "/proc/1/comm"]).stdout, "systemd\n");
    let cg = h.exec(
        "web1",
        &[
            "systemctl",
            "show",
            "--value",
            "-p",
            "ControlGroup",
            "ssh.service",
        ],
    );
    assert_eq!(
        cg.stdout.trim(),
        "/system.slice/ssh.service",
        "{}",
        cg.stderr
    );
    assert_eq!(
        h.exec("web1", &["systemctl", "is-active", "cron.service"])
            .stdout,
        "active\n"
    );

    // sshd answers on the VE's address.
    let listed = h.json(&["list", "--json"]);
    let ip = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web1")
        .and_then(|v| v["nics"][0]["ip"].as_str())
        .unwrap()
        .to_string();
    let addr: std::net::SocketAddr = format!("{ip}:22").parse().unwrap();
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut banner = [0u8; 64];
    let n = conn.read(&mut banner).unwrap();
    let banner = String::from_utf8_lossy(&banner[..n]).to_string();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner:?}");
    drop(conn);

    // `stop` halts it through systemd (SIGRTMIN+4), not by killing it.
    let t0 = Instant::now();
    let out = h.ok(&["stop", "web1"]);
    let stopped = t0.elapsed();
    println!("systemd VE: stop took {stopped:?}");
    // Not "(killed)": init ended by itself within the stop timeout.
    assert_eq!(out.trim(), "stopped VE web1", "{out}");
    // Nothing of it is left in the VE's cgroups (systemd's own included).
    for dir in h.cgroup_parents() {
        assert!(
            integration::procs_below(&dir.join("web1")).is_empty(),
            "{}",
            dir.display()
        );
    }
}
