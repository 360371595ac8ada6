//! vectl's OCI runtime (`vectl-oci`, `vectl oci`) driven by a real podman:
//! `run --rm`, a detached busybox httpd answering on its podman network
//! address, `exec`, a terminal, resource flags in the container's cgroup,
//! `update` live, `stop` and `rm` leaving nothing; the container shown by
//! `vectl list` as OCI-managed and refused by vectl's own verbs; an image with
//! planted symlinks (/etc/hosts and /dev pointing out of the rootfs) that
//! leads nothing onto the host; bad input refused in one line.
//!
//! podman runs with its own storage, run and network directories in the test's
//! directory, its containers' cgroups below this test's own cgroup, in the
//! test host's network namespace. Its runtime is a small script that calls
//! vectl as `vectl-oci --root DIR`: podman 4.3 passes `--runtime-flag`s to
//! `create` but not to `delete`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Host paths podman and netavark use whatever their options say (the
/// IPAM database, the image blob cache, the netns mount point): removed after a
/// test that made them.
const PODMAN_HOST_PATHS: &[&str] = &[
    "/run/containers",
    "/var/lib/containers",
    "/run/libpod",
    "/run/netns",
];

/// One podman test at a time: they share those paths.
static PODMAN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cgroup (below each hierarchy's root) for an engine's containers:
/// `name` below the test's own cgroup, or, where a cgroup with processes
/// cannot delegate (cgroup v2: the VM suite's runner), below the base the
/// fixture uses for VEs (`$VECTL_TEST_CGROUP_BASE`).
fn engine_cgroup(name: &str) -> String {
    let base = std::env::var("VECTL_TEST_CGROUP_BASE").unwrap_or_else(|_| {
        fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                (ctrl.split(',').any(|c| c == "memory") || l.starts_with("0::"))
                    .then(|| path.to_string())
            })
            .unwrap()
    });
    format!("{}/{name}", base.trim_end_matches('/'))
}

struct Podman {
    dir: tempfile::TempDir,
    /// The cgroup parent of its containers (below each hierarchy's root).
    cgroup_parent: String,
    /// Which of [`PODMAN_HOST_PATHS`] were not there before.
    absent: Vec<&'static str>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Podman {
    fn new(test: &str) -> Option<Podman> {
        if Command::new("podman").arg("--version").output().is_err() {
            integration::skip(
                test,
                "podman is not installed (scripts/deps.sh installs it)",
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("vectl-podman-")
            .tempdir()
            .unwrap();
        integration::podman_dir_setup(dir.path());
        let cgroup_parent = engine_cgroup(&integration::unique("podman"));
        let serial = PODMAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let absent = PODMAN_HOST_PATHS
            .iter()
            .copied()
            .filter(|p| !Path::new(p).exists())
            .collect();
        Some(Podman {
            dir,
            cgroup_parent,
            absent,
            _serial: serial,
        })
    }

    fn oci_root(&self) -> PathBuf {
        self.dir.path().join("oci")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = integration::podman_command(self.dir.path());
        c.arg("--runtime")
            .arg(self.dir.path().join("vectl-oci"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        run_limited(self.command(args), Duration::from_secs(120))
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "podman {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// The cgroup directory of container `id` for `file`'s controller.
    fn cgroup_file(&self, v2: bool, id: &str, controller: &str, file: &str) -> PathBuf {
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(controller)
        };
        base.join(self.cgroup_parent.trim_start_matches('/'))
            .join(format!("libpod-{id}"))
            .join(file)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        // What podman's storage mounted below the test's directory.
        integration::unmount_below(self.dir.path());
        for p in &self.absent {
            if *p == "/run/netns" {
                // podman makes it a mount point of its own (in the suite's
                // mount namespace) to share the netns files it binds there.
                let _ = nix::mount::umount2(*p, nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_dir(p);
            } else {
                let _ = fs::remove_dir_all(p);
            }
        }
        // The cgroup parent the containers were put below, in every hierarchy.
        integration::remove_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// An HTTP GET of `path` from `ip`:80: the body, once it answers 200.
fn http_get(ip: &str, path: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..100 {
        let addr = format!("{ip}:80").parse().unwrap();
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.") && out.contains(" 200 ") {
                    return Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string());
                }
                last = out;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

#[test]
fn podman_runs_containers_through_vectl_oci() {
    let t = "oci_runtime::podman_runs_containers_through_vectl_oci";
    let Some(h) = TestHost::new(t) else { return };
    let Some(p) = Podman::new(t) else { return };
    // Loopback and podman's bridge live in the test host's namespace.
    integration::sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    let v2 = is_v2(&h);

    // An image from a local tarball: busybox, a page, and two symlinks that
    // point out of the rootfs where podman mounts things.
    let marker = integration::unique("/tmp/vectl-oci-escape");
    let img = p.dir.path().join("img");
    integration::copy_busybox_rootfs(&img).unwrap();
    fs::create_dir_all(img.join("www")).unwrap();
    fs::write(img.join("www/index.html"), "hello from vectl-oci\n").unwrap();
    let _ = fs::remove_file(img.join("etc/hosts"));
    let up = "../../../../../../../../..";
    std::os::unix::fs::symlink(format!("{up}{marker}-hosts"), img.join("etc/hosts")).unwrap();
    let _ = fs::remove_dir_all(img.join("dev"));
    std::os::unix::fs::symlink(format!("{up}{marker}-dev"), img.join("dev")).unwrap();
    let tar = p.dir.path().join("img.tar");
    integration::sh(&[
        "tar",
        "-C",
        img.to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
        ".",
    ])
    .unwrap();
    let image = "localhost/vectl-oci-test:1";
    p.ok(&["import", tar.to_str().unwrap(), image]);
    let cg = format!("--cgroup-parent={}", p.cgroup_parent);

    // run --rm: the process's output and status come back.
    let out = p.ok(&["run", "--rm", &cg, image, "echo", "ok"]);
    assert_eq!(out.trim(), "ok");
    let r = p.run(&["run", "--rm", &cg, image, "sh", "-c", "exit 7"]);
    assert_eq!(r.code, 7, "{}", r.stderr);

    // A user namespace from the engine's mappings (podman chowns its copy of
    // the image): root inside is host uid 100000; /dev/null is the host's,
    // bound, as no device node can be made there.
    let out = p.ok(&[
        "run",
        "--rm",
        &cg,
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        image,
        "sh",
        "-c",
        "cat /proc/self/uid_map; echo x > /dev/null && echo null-ok",
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "100000", "65536", "null-ok"], "{out}");

    // A terminal: the pty's master went to conmon over the console socket.
    // (The image's /dev is a link to /tmp/...-dev, which resolves inside it.)
    let out = p.ok(&["run", "--rm", "-t", &cg, image, "tty"]);
    assert!(
        out.trim().starts_with(&format!("{marker}-dev/pts/")),
        "{out:?}"
    );

    // A detached web server with limits.
    let id = p
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            &cg,
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "--oom-score-adj",
            "123",
            image,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .trim()
        .to_string();
    let ip = p.ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.IPAddress}}",
    ]);
    let ip = ip.trim();
    assert!(!ip.is_empty(), "no address for the container");
    let body = http_get(ip, "/index.html").unwrap_or_else(|e| panic!("no HTTP from {ip}: {e}"));
    assert_eq!(body, "hello from vectl-oci\n");

    // The runtime's own view.
    let state: serde_json::Value = serde_json::from_slice(
        &Command::new(integration::vectl_bin())
            .args([
                "oci",
                "--root",
                p.oci_root().to_str().unwrap(),
                "state",
                &id,
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["id"], id.as_str());
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 1);

    // exec: in the container's namespaces, with its status.
    assert_eq!(
        p.ok(&["exec", "web", "cat", "/www/index.html"]),
        "hello from vectl-oci\n"
    );
    assert_eq!(p.run(&["exec", "web", "sh", "-c", "exit 3"]).code, 3);
    // The container's OOM score adjustment, for its init and for exec's
    // processes (written before the helper joins the container).
    assert_eq!(
        p.ok(&[
            "exec",
            "web",
            "cat",
            "/proc/1/oom_score_adj",
            "/proc/self/oom_score_adj"
        ]),
        "123\n123\n"
    );
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let inside = p.ok(&["exec", "web", "hostname"]);
    assert_ne!(inside.trim(), host_name.trim());
    let ps = p.ok(&["exec", "web", "ps"]);
    assert!(ps.contains("httpd"), "{ps}");
    let status = p.ok(&["exec", "web", "cat", "/proc/self/status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "an exec'd process runs under the container's seccomp filter: {status}"
    );
    let field = |text: &str, name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    // The container's bounding set, as its init has it: podman's default
    // capabilities, far from the host's full set.
    let init_status = p.ok(&["exec", "web", "cat", "/proc/1/status"]);
    let bounding = field(&init_status, "CapBnd:");
    let full = field(&fs::read_to_string("/proc/self/status").unwrap(), "CapBnd:");
    assert_ne!(
        bounding, full,
        "the container keeps the host's bounding set"
    );
    assert_eq!(field(&status, "CapBnd:"), bounding, "{status}");
    assert_eq!(field(&status, "CapEff:"), bounding, "{status}");
    // Another user: the same bounding set (dropped before the uid change),
    // nothing effective.
    let status = p.ok(&[
        "exec",
        "--user",
        "1000:1000",
        "web",
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(
        field(&status, "Uid:").split_whitespace().next(),
        Some("1000"),
        "{status}"
    );
    assert_eq!(field(&status, "CapBnd:"), bounding, "{status}");
    assert_eq!(field(&status, "CapEff:"), "0000000000000000", "{status}");
    let status = p.ok(&[
        "run",
        "--rm",
        &cg,
        "--user",
        "1000:1000",
        image,
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(
        field(&status, "CapBnd:"),
        bounding,
        "a container's init of another user: {status}"
    );

    // Resource flags in the cgroup, and a live update.
    let read = |ctrl: &str, file: &str| {
        let f = p.cgroup_file(v2, &id, ctrl, file);
        fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    };
    if v2 {
        assert_eq!(read("memory", "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    }
    assert_eq!(read("pids", "pids.max"), "50");
    p.ok(&["update", "--memory", "32m", "web"]);
    let mem = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(read("memory", mem), (32u64 << 20).to_string());
    assert_eq!(
        read("pids", "pids.max"),
        "50",
        "update changes only what it names"
    );

    // vectl's own commands see it as OCI-managed and leave it alone.
    let mut list = h.command();
    list.env("VECTL_OCI_ROOT", p.oci_root())
        .args(["--json", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.output().unwrap().stdout).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == id.as_str())
        .unwrap_or_else(|| panic!("vectl list does not show {id}: {listed}"));
    assert_eq!(entry["managed_by"], "oci", "{entry}");
    assert_eq!(entry["status"], "running", "{entry}");
    for verb in ["stop", "start", "destroy"] {
        let mut c = h.command();
        c.env("VECTL_OCI_ROOT", p.oci_root()).args([verb, &id]);
        let r: Run = c.output().unwrap().into();
        assert_eq!(r.code, 1, "vectl {verb} {id}: {r:?}");
        assert!(
            r.stderr.contains("OCI container"),
            "vectl {verb}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }

    // Nothing of the image's symlinks reached the host.
    for suffix in ["-hosts", "-dev"] {
        let leaked = format!("{marker}{suffix}");
        assert!(
            !Path::new(&leaked).exists(),
            "{leaked} was made on the host"
        );
    }
    // ... the mounts went inside the rootfs, where the links resolve there.
    let hosts = p.ok(&["exec", "web", "cat", "/etc/hosts"]);
    assert!(hosts.contains("localhost"), "podman's /etc/hosts: {hosts}");

    // stop and rm leave no state and no cgroup.
    p.ok(&["stop", "--time", "1", "web"]);
    let state = Command::new(integration::vectl_bin())
        .args([
            "oci",
            "--root",
            p.oci_root().to_str().unwrap(),
            "state",
            &id,
        ])
        .output()
        .unwrap();
    // Stopped, or already deleted by podman's cleanup of the stopped container.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&state.stdout),
        String::from_utf8_lossy(&state.stderr)
    );
    assert!(
        said.contains("\"stopped\"") || said.contains("does not exist"),
        "{said}"
    );
    p.ok(&["rm", "web"]);
    assert!(
        !p.oci_root().join(&id).exists(),
        "state of {id} left behind"
    );
    let dir = p.cgroup_file(v2, &id, "memory", "");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!alive(pid as i32), "the container's init {pid} survives");
}

#[test]
fn bad_bundles_and_ids_are_refused_in_one_line() {
    let t = "oci_runtime::bad_bundles_and_ids_are_refused_in_one_line";
    if !integration::is_root(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("oci");
    let log = dir.path().join("log.json");
    let oci = |args: &[&str]| -> Run {
        let mut c = Command::new(integration::vectl_bin());
        c.arg("oci")
            .arg("--root")
            .arg(&root)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        run_limited(c, Duration::from_secs(30))
    };
    let one_line = |r: &Run, must: &[&str]| {
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        for m in must {
            assert!(r.stderr.contains(m), "{m} not in {}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    };
    one_line(&oci(&["state", "nope"]), &["nope", "does not exist"]);
    one_line(&oci(&["start", "../x"]), &["invalid container id"]);
    let missing = dir.path().join("no-bundle");
    one_line(
        &oci(&["create", "--bundle", missing.to_str().unwrap(), "c1"]),
        &["c1", "no-bundle"],
    );
    // A bundle whose config.json is not JSON, and one without a process.
    let bundle = dir.path().join("bundle");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    fs::write(bundle.join("config.json"), "{ not json").unwrap();
    one_line(
        &oci(&["create", "--bundle", bundle.to_str().unwrap(), "c2"]),
        &["c2", "config.json"],
    );
    fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#,
    )
    .unwrap();
    one_line(
        &oci(&["create", "--bundle", bundle.to_str().unwrap(), "c3"]),
        &["c3", "no process"],
    );
    // A cgroups path that climbs out (`..` would name the hierarchy's root,
    // which a failed create would kill and remove).
    for (id, path) in [("c4", "/vectl-oci-bad/.."), ("c5", "/vectl-oci-bad/../x")] {
        fs::write(
            bundle.join("config.json"),
            format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"linux":{{"namespaces":[{{"type":"mount"}}],"cgroupsPath":"{path}"}}}}"#
            ),
        )
        .unwrap();
        one_line(
            &oci(&["create", "--bundle", bundle.to_str().unwrap(), id]),
            &[id, "not a cgroup path"],
        );
    }
    // Nothing of the failed creates is left.
    let left: Vec<_> = fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the runtime root: {left:?}");
    // The engine's log has each error as a JSON line.
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"] == "error" && l["msg"].is_string())
    );
    // features is the runtime-spec document.
    let f = oci(&["features"]);
    assert_eq!(f.code, 0);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(v["ociVersionMax"], "1.0.2");
    assert_eq!(v["linux"]["seccomp"]["enabled"], true);
}

/// A private containerd (its own config, state, root and socket in the
/// test's directory), killed on drop, with what it left in /run removed.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    namespace: String,
    /// /run/containerd did not exist before: remove what is left of it.
    run_was_absent: bool,
}

impl Containerd {
    fn start(test: &str) -> Option<Containerd> {
        for tool in ["containerd", "ctr"] {
            if Command::new(tool).arg("--version").output().is_err() {
                integration::skip(
                    test,
                    &format!("{tool} is not installed (scripts/deps.sh installs it)"),
                );
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("vectl-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/t.sock\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                d.display()
            ),
        )
        .unwrap();
        let run_was_absent = !Path::new("/run/containerd").exists();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            daemon,
            namespace: integration::unique("vt"),
            run_was_absent,
        };
        let sock = c.dir.path().join("c.sock");
        assert!(
            wait_until(Duration::from_secs(30), || sock.exists()),
            "containerd did not start: {}",
            fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        Some(c)
    }

    fn ctr(&self, args: &[&str]) -> Run {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null());
        run_limited(c, Duration::from_secs(120))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id().cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
        integration::unmount_below(self.dir.path());
        // The runc shim's runtime root for our namespace (vectl-oci's state).
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        if self.run_was_absent {
            let _ = Command::new("find")
                .args([
                    "/run/containerd",
                    "-depth",
                    "-type",
                    "d",
                    "-empty",
                    "-delete",
                ])
                .status();
        }
    }
}

#[test]
fn containerd_runs_containers_through_vectl_oci() {
    let t = "oci_runtime::containerd_runs_containers_through_vectl_oci";
    let Some(h) = TestHost::new(t) else { return };
    let Some(p) = Podman::new(t) else { return };
    let Some(c) = Containerd::start(t) else {
        return;
    };
    let v2 = is_v2(&h);
    // The image: busybox, through podman into an OCI archive.
    let tar = p.dir.path().join("bb.tar");
    integration::sh(&[
        "tar",
        "-C",
        integration::busybox_rootfs().unwrap().to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
        ".",
    ])
    .unwrap();
    let image = "localhost/vectl-ctr-test:1";
    p.ok(&["import", tar.to_str().unwrap(), image]);
    let archive = p.dir.path().join("bb-oci.tar");
    p.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        image,
    ]);
    let r = c.ctr(&[
        "images",
        "import",
        "--base-name",
        "localhost/vectl-ctr-test",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // containerd's runc shim runs the binary it is given with runc's
    // arguments: vectl as vectl-oci (a link of that name).
    let bin = c.dir.path().join("vectl-oci");
    std::os::unix::fs::symlink(integration::vectl_bin(), &bin).unwrap();
    let bin = bin.to_str().unwrap();
    let cgroup = |name: &str| format!("{}/{name}", p.cgroup_parent);

    let cg = cgroup("c1");
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        "--cgroup",
        &cg,
        image,
        "c1",
        "echo",
        "ok-from-ctr",
    ]);
    assert_eq!((r.code, r.stdout.trim()), (0, "ok-from-ctr"), "{r:?}");
    let cg = cgroup("c2");
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        "--cgroup",
        &cg,
        image,
        "c2",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(r.code, 5, "{r:?}");

    // A detached task with a memory limit, exec in it, kill, delete.
    let cg = cgroup("c3");
    let r = c.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        bin,
        "--cgroup",
        &cg,
        "--memory-limit",
        "67108864",
        image,
        "c3",
        "sleep",
        "300",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let mem = if v2 {
        PathBuf::from("/sys/fs/cgroup")
            .join(cg.trim_start_matches('/'))
            .join("memory.max")
    } else {
        Path::new("/sys/fs/cgroup/memory")
            .join(cg.trim_start_matches('/'))
            .join("memory.limit_in_bytes")
    };
    assert_eq!(
        fs::read_to_string(&mem).unwrap().trim(),
        "67108864",
        "{}",
        mem.display()
    );
    let r = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c3",
        "cat",
        "/proc/1/cmdline",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("sleep"), "{r:?}");
    let state = Path::new("/run/containerd/runc")
        .join(&c.namespace)
        .join("c3/state.json");
    assert!(
        state.is_file(),
        "vectl-oci's state is in the shim's runtime root"
    );
    assert_eq!(
        c.ctr(&["task", "kill", "--signal", "SIGKILL", "c3"]).code,
        0
    );
    assert!(wait_until(Duration::from_secs(30), || {
        c.ctr(&["task", "ls"])
            .stdout
            .lines()
            .all(|l| !l.contains("RUNNING"))
    }));
    assert_eq!(c.ctr(&["task", "delete", "c3"]).code, 0);
    assert_eq!(c.ctr(&["containers", "delete", "c3"]).code, 0);
    assert!(!state.exists(), "state left after delete");
    assert!(!mem.exists(), "cgroup left after delete");
}

#[test]
fn a_bundle_runs_directly_with_its_hooks_limits_and_paths() {
    let t = "oci_runtime::a_bundle_runs_directly_with_its_hooks_limits_and_paths";
    if !integration::is_root(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    integration::copy_busybox_rootfs(&bundle.join("rootfs")).unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let cgroup = engine_cgroup(&integration::unique("oci-direct"));
    let hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())],
        })
    };
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["sh", "-c", "echo $FOO > /out/env; hostname > /out/hostname; \
                      grep -E '^(NoNewPrivs|CapEff)' /proc/self/status > /out/status; \
                      cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null > /out/pids; \
                      wc -c < /proc/cpuinfo > /out/cpuinfo; ls /proc/tty | wc -l > /out/tty; \
                      echo 1 > /proc/sys/kernel/hostname 2>/out/rosys || echo refused >> /out/rosys"],
            "env": ["PATH=/bin:/sbin", "FOO=bar"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512}]
        },
        "root": {"path": "rootfs"},
        "hostname": "oci-direct",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "nodev", "noexec"]},
            {"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]}
        ],
        "hooks": {
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")]
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}],
            "cgroupsPath": cgroup,
            "resources": {"pids": {"limit": 20}},
            "maskedPaths": ["/proc/cpuinfo", "/proc/tty", "/proc/no-such-file"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let root = dir.path().join("state");
    let mut c = Command::new(integration::vectl_bin());
    c.arg("oci").arg("--root").arg(&root).args([
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "direct1",
    ]);
    // Generous: the VM suite runs this under software emulation.
    let r = run_limited(c, Duration::from_secs(180));
    integration::remove_cgroup_everywhere(&cgroup);
    assert_eq!(r.code, 0, "{r:?}");
    let read =
        |f: &str| fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e} ({r:?})"));
    assert_eq!(read("env").trim(), "bar");
    assert_eq!(read("hostname").trim(), "oci-direct");
    let status = read("status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // CAP_CHOWN (0) and CAP_KILL (5) only.
    assert!(status.contains("CapEff:\t0000000000000021"), "{status}");
    assert_eq!(
        read("pids").trim(),
        "20",
        "the pids limit, in its own cgroup mount"
    );
    assert_eq!(
        read("cpuinfo").trim(),
        "0",
        "/proc/cpuinfo is masked (a file)"
    );
    assert_eq!(read("tty").trim(), "0", "/proc/tty is masked (a directory)");
    assert!(read("rosys").contains("refused"), "/proc/sys is read-only");
    // The hooks saw the state at each step.
    let state = |f: &str| -> serde_json::Value { serde_json::from_str(&read(f)).unwrap() };
    let created = state("createRuntime.json");
    assert_eq!(
        (created["id"].as_str(), created["status"].as_str()),
        (Some("direct1"), Some("created"))
    );
    assert!(created["pid"].as_i64().unwrap() > 0);
    assert_eq!(state("poststart.json")["status"], "running");
    assert_eq!(state("poststop.json")["status"], "stopped");
    // `run` deleted it: no state, no cgroup.
    assert!(!root.join("direct1").exists());
    let pids_dir = if Path::new("/sys/fs/cgroup/pids").is_dir() {
        Path::new("/sys/fs/cgroup/pids").join(cgroup.trim_start_matches('/'))
    } else {
        Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'))
    };
    assert!(!pids_dir.exists(), "{} left", pids_dir.display());
}
