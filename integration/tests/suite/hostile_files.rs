//! Host-side vectl never follows what a VE controls (issue 16, point 2).
//!
//! A customer is root in its VE and owns every file of the VE's tree: its own
//! layer, a template version a build VE wrote, a running VE's root. Wherever
//! vectl reads such a tree from the host (the conflict report of `upgrade
//! --check`, upgrade, rollback, snapshots, clone, `template update --run`
//! publishing a build's layer, `template log` reading dpkg databases, an import
//! from a tree that changes), the VE plants a symlink to a host file, a FIFO and
//! a huge sparse file at the paths read, or swaps a directory for a symlink
//! while it is read. Each command must finish (a time limit turns a hang into
//! a failure), leave the host file as it was, copy nothing of it anywhere, and
//! either work or refuse with one line naming the VE or file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use integration::{Run, TestHost, unique};

/// Long enough for any of these commands on a loaded 2-core machine; far too
/// short to read or write the huge files in full.
const LIMIT: Duration = Duration::from_secs(60);

/// A file of the host's, outside every VE, that nothing may read, copy or
/// change.
struct HostFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    text: String,
}

impl HostFile {
    fn new() -> HostFile {
        HostFile::with_text(format!("{}\n", unique("host-secret")))
    }

    fn with_text(text: String) -> HostFile {
        let dir = tempfile::Builder::new()
            .prefix("vectl-host-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(unique("secret"));
        fs::write(&path, &text).unwrap();
        HostFile {
            _dir: dir,
            path,
            text,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Its name in its directory (which a VE's symlink may point at).
    fn name(&self) -> &str {
        self.path.file_name().unwrap().to_str().unwrap()
    }

    #[track_caller]
    fn assert_untouched(&self) {
        let md = fs::symlink_metadata(&self.path).unwrap();
        assert!(md.is_file(), "{}: {md:?}", self.path.display());
        assert_eq!(fs::read_to_string(&self.path).unwrap(), self.text);
    }

    /// Neither `r`'s output nor any small regular file below `dir` holds the
    /// host file's text.
    #[track_caller]
    fn assert_not_in(&self, r: Option<&Run>, dir: &Path) {
        let needle = self.text.trim();
        if let Some(r) = r {
            assert!(
                !r.stdout.contains(needle) && !r.stderr.contains(needle),
                "host file leaked: {}{}",
                r.stdout,
                r.stderr
            );
        }
        if let Some(p) = holding(dir, needle.as_bytes()) {
            panic!("{} holds the host file's text", p.display());
        }
    }
}

/// The first regular file below `dir` (not through symlinks; files over 1 MiB,
/// the huge sparse ones, left out) whose content contains `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    let rd = fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            if let Some(found) = holding(&p, needle) {
                return Some(found);
            }
        } else if md.is_file()
            && md.len() <= 1 << 20
            && fs::read(&p).is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle))
        {
            return Some(p);
        }
    }
    None
}

/// `vectl ARGS` with stdin null, killed after [`LIMIT`].
fn limited(h: &TestHost, args: &[&str]) -> Run {
    let mut c = h.command();
    c.args(args).stdin(Stdio::null());
    run_limited(c, LIMIT)
}

/// [`limited`] in a cgroup of its own whose memory is limited to 512 MiB: a
/// command that reads a huge file into memory is killed there instead of
/// taking the machine's memory. (An address-space limit would not do: a
/// reservation it refuses is an error the old code took for "no file".)
fn capped(h: &TestHost, args: &[&str]) -> Run {
    let parent = h
        .cgroup_parents()
        .iter()
        .find(|p| p.join("memory.limit_in_bytes").exists() || p.join("memory.max").exists())
        .unwrap_or_else(|| panic!("no memory cgroup in {:?}", h.cgroup_parents()));
    let dir = parent.join(unique("mem-probe"));
    fs::create_dir(&dir).unwrap();
    let knob = if dir.join("memory.max").exists() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    fs::write(dir.join(knob), (512u64 << 20).to_string()).unwrap();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&dir)
        .arg(integration::vectl_bin())
        .arg("--root")
        .arg(h.root())
        .args(args)
        .env_remove("VECTL_ROOT")
        .env_remove("VECTL_FAILPOINT")
        .env("VECTL_REGISTRY", h.registry())
        .stdin(Stdio::null());
    let r = run_limited(c, LIMIT);
    // Empty once the command is gone (TestHost's drop removes it otherwise).
    let _ = fs::remove_dir(&dir);
    r
}

#[track_caller]
fn succeeded(r: &Run, what: &str) {
    assert_eq!(r.code, 0, "{what}: {}{}", r.stderr, r.stdout);
    no_panic(r);
}

#[track_caller]
fn sh(h: &TestHost, ve: &str, script: &str) {
    let r = h.exec(ve, &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{script}: {}{}", r.stderr, r.stdout);
}

/// The hostile files a VE plants in its /root: a symlink to the host file, one
/// to /etc/shadow (the host's, if vectl followed it), a FIFO and a 20 GiB
/// sparse file.
fn plant(h: &TestHost, ve: &str, host: &HostFile) {
    sh(
        h,
        ve,
        &format!(
            "set -e; ln -s {} /root/link; ln -s /etc/shadow /root/shadow; \
             mkfifo /root/fifo; truncate -s 20G /root/huge; echo mine > /root/note",
            host.path()
        ),
    );
}

/// They are still what the VE made, seen from inside VE `ve` (running).
#[track_caller]
fn planted_as_made(h: &TestHost, ve: &str, host: &HostFile) {
    let r = h.exec(
        ve,
        &[
            "sh",
            "-c",
            "readlink /root/link; readlink /root/shadow; test -p /root/fifo && echo fifo; \
             stat -c %s /root/huge; cat /root/note",
        ],
    );
    assert_eq!(
        r.stdout,
        format!("{}\n/etc/shadow\nfifo\n21474836480\nmine\n", host.path()),
        "{}",
        r.stderr
    );
}

/// The same seen in a VE's layer (or a copy of it) from the host: symlinks
/// still symlinks with their targets, the FIFO a FIFO, the huge file sparse.
#[track_caller]
fn layer_as_made(root: &Path, host: &HostFile) {
    assert_eq!(fs::read_link(root.join("link")).unwrap(), host.path);
    assert_eq!(
        fs::read_link(root.join("shadow")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(
        fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    sparse(&root.join("huge"), 20 << 30);
}

/// `path` is a regular file of `len` bytes that takes (almost) no space.
#[track_caller]
fn sparse(path: &Path, len: u64) {
    let md = fs::symlink_metadata(path).unwrap();
    assert!(md.is_file(), "{}: {md:?}", path.display());
    assert_eq!(md.len(), len, "{}", path.display());
    assert!(
        md.blocks() * 512 < 64 << 20,
        "{}: {} bytes allocated (written out in full)",
        path.display(),
        md.blocks() * 512
    );
}

fn conflict_paths(r: &Run) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", r.stdout, r.stderr));
    v["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect()
}

/// A one-line refusal naming `names` (see `TestHost::fails`).
#[track_caller]
fn one_line_naming(r: &Run, names: &[&str]) {
    assert_eq!(r.code, 1, "{}{}", r.stderr, r.stdout);
    no_panic(r);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].starts_with("vectl: "), "{}", lines[0]);
    for n in names {
        assert!(lines[0].contains(n), "{} does not name {n}", lines[0]);
    }
}

/// Gives `path` (in a published version on the dir pool, which the host can
/// still write) a 1 TiB sparse file whose last byte is `last`: what a build
/// VE can leave in a version.
fn huge_in_version(path: &Path, last: u8) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    let len = 1u64 << 40;
    f.set_len(len).unwrap();
    f.write_all_at(&[last], len - 1).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// The conflict report of a running VE whose layer holds a symlink to a host
/// file, a FIFO and a huge file, against versions with a FIFO, symlinks to the
/// host file and 1 TiB sparse files at the paths it changed: it finishes,
/// reports exactly the paths both changed, and reads nothing of the host.
///
/// On the old code the report read both 1 TiB files in full to compare them
/// (the `code == 3` assertion fails: killed at the time limit).
#[test]
fn upgrade_check_of_hostile_files_finishes_and_reads_nothing_of_the_host() {
    let Some(h) = TestHost::new("hostile_upgrade_check") else {
        return;
    };
    let host = HostFile::new();
    let other = HostFile::new();
    for (v, link2) in [("v2", host.path()), ("v3", other.path())] {
        publish_busybox(&h, "bb", |t| {
            fs::write(t.join("etc/app.conf"), format!("{v}\n")).unwrap();
            fs::create_dir_all(t.join("opt")).unwrap();
            nix::unistd::mkfifo(&t.join("opt/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
            std::os::unix::fs::symlink(host.path(), t.join("opt/link")).unwrap();
            std::os::unix::fs::symlink(link2, t.join("opt/link2")).unwrap();
        });
    }
    let versions = h.root().join("pool/templates/bb");
    huge_in_version(&versions.join("2/opt/big"), b'2');
    huge_in_version(&versions.join("3/opt/big"), b'3');
    huge_in_version(&versions.join("2/opt/same"), b'x');
    huge_in_version(&versions.join("3/opt/same"), b'x');

    h.ok(&["create", "u", "--template", "bb@2"]);
    h.ok(&["start", "u"]);
    sh(
        &h,
        "u",
        &format!(
            "set -e; rm /etc/app.conf; ln -s {host} /etc/app.conf; mkfifo /etc/fifo; \
             truncate -s 20G /etc/huge; \
             cd /opt; for f in big same fifo link link2; do echo mine > $f.new; mv $f.new $f; done",
            host = host.path()
        ),
    );
    let r = limited(
        &h,
        &["--json", "upgrade", "u", "--template", "bb@3", "--check"],
    );
    assert_eq!(r.code, 3, "{}{}", r.stderr, r.stdout);
    assert_eq!(
        conflict_paths(&r),
        ["/etc/app.conf", "/opt/big", "/opt/link2"],
        "{}",
        r.stdout
    );
    host.assert_untouched();
    other.assert_untouched();
    host.assert_not_in(Some(&r), &h.root().join("pool/ves/u/upper"));

    // Positive control: a VE that changed nothing the patch touched.
    h.ok(&["create", "plain", "--template", "bb@2"]);
    let r = limited(&h, &["upgrade", "plain", "--template", "bb@3", "--check"]);
    succeeded(&r, "upgrade --check plain");
    assert!(r.stdout.contains("no conflicts"), "{}", r.stdout);
}

/// While `upgrade --check` walks a running VE's layer, the VE keeps swapping
/// its directory /d for a symlink to a host directory (rename exchange). The
/// report must never list what is in the host directory as the VE's: a
/// conflict below /d without /d itself (the VE's /d a symlink) can only come
/// from a walk that went through the symlink.
///
/// On the old code (read_dir of a path it had lstat'ed) the assertion "listed
/// the host directory" fails within a few runs.
#[test]
fn upgrade_check_never_walks_into_a_directory_swapped_for_a_symlink() {
    let Some(h) = TestHost::new("hostile_upgrade_check_race") else {
        return;
    };
    let hostdir = tempfile::Builder::new()
        .prefix("vectl-host-")
        .tempdir()
        .unwrap();
    let leak = unique("leak");
    fs::write(hostdir.path().join(&leak), "host\n").unwrap();
    publish_busybox(&h, "bb", |_| {}); // bb@2: no /d
    publish_busybox(&h, "bb", |t| {
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d").join(&leak), "v3\n").unwrap();
    }); // bb@3: /d/LEAK
    h.ok(&["create", "u", "--template", "bb@2"]);
    h.ok(&["start", "u"]);
    sh(
        &h,
        "u",
        &format!(
            "set -e; mkdir /d; ln -s {} /dlink",
            hostdir.path().display()
        ),
    );
    // The VE's swaps, made through its root as the VE would make them.
    let root = fs::File::open(format!("/proc/{}/root", h.init_pid("u"))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    &root,
                    "d",
                    &root,
                    "dlink",
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let want = format!("/d/{leak}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut runs, mut reports) = (0, 0);
    let mut leaked = None;
    while runs < 60 && Instant::now() < deadline {
        runs += 1;
        let r = limited(
            &h,
            &["--json", "upgrade", "u", "--template", "bb@3", "--check"],
        );
        if r.stderr.contains(&format!("/d/{leak}")) || r.stderr.contains(&format!("/dlink/{leak}"))
        {
            leaked = Some(vec![r.stderr]);
            break;
        }
        if r.code == 1 {
            // A file that changed while it was read: one line naming the VE.
            one_line_naming(&r, &["VE u"]);
            continue;
        }
        assert!(r.code == 0 || r.code == 3, "{}{}", r.stderr, r.stdout);
        reports += 1;
        let paths = conflict_paths(&r);
        if paths.contains(&want) && !paths.iter().any(|p| p == "/d") {
            leaked = Some(paths);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0);
    assert!(
        leaked.is_none(),
        "run {runs}: listed the host directory as the VE's /d: {leaked:?}"
    );
    assert!(reports > 0, "no report in {runs} runs");
    assert_eq!(
        fs::read_to_string(hostdir.path().join(&leak)).unwrap(),
        "host\n"
    );
}

/// Upgrade, rollback, snapshot and restore of a VE whose layer holds a symlink
/// to a host file, one to /etc/shadow, a FIFO and a 20 GiB sparse file: each
/// works, in time, keeps them as the VE made them, and the host file is
/// untouched. (Positive control: the old code passes it too; it guards the
/// btrfs paths of upgrade and rollback.)
#[test]
fn upgrade_rollback_and_snapshots_keep_hostile_files_as_they_are() {
    let Some(h) = TestHost::with_btrfs("hostile_upgrade", "1G") else {
        return;
    };
    let host = HostFile::new();
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    });
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v3\n").unwrap()
    });
    h.ok(&["create", "u", "--template", "bb@2"]);
    h.ok(&["start", "u"]);
    plant(&h, "u", &host);
    let upper = h.root().join("pool/ves/u/upper/root");

    let r = limited(&h, &["upgrade", "u", "--template", "bb@3", "--fast"]);
    succeeded(&r, "upgrade");
    assert_eq!(h.json(&["show", "u"])["template"], "bb@3");
    planted_as_made(&h, "u", &host);
    layer_as_made(&upper, &host);

    sh(&h, "u", "echo after > /root/note");
    let r = limited(&h, &["rollback", "u", "--fast"]);
    succeeded(&r, "rollback");
    assert_eq!(h.json(&["show", "u"])["template"], "bb@2");
    planted_as_made(&h, "u", &host);

    let r = limited(&h, &["snapshot", "create", "u", "s1"]);
    succeeded(&r, "snapshot create");
    sh(&h, "u", "rm /root/link /root/fifo /root/huge");
    h.ok(&["stop", "u", "--fast"]);
    let r = limited(&h, &["snapshot", "restore", "u", "s1"]);
    succeeded(&r, "snapshot restore");
    layer_as_made(&upper, &host);
    h.ok(&["start", "u"]);
    planted_as_made(&h, "u", &host);

    // A clone (a snapshot on btrfs) has them too.
    let r = limited(&h, &["clone", "u", "c"]);
    succeeded(&r, "clone");
    layer_as_made(&h.root().join("pool/ves/c/upper/root"), &host);

    host.assert_untouched();
    host.assert_not_in(None, &h.root().join("pool"));
}

/// A clone on the dir pool copies the running source's files (frozen): the
/// symlinks as symlinks, the FIFO as a FIFO (never opened), the huge file
/// sparse, in time. (Positive control on `cp -a`: the old code passes too.)
#[test]
fn clone_on_the_dir_pool_copies_hostile_files_as_they_are() {
    let Some(h) = TestHost::new("hostile_clone") else {
        return;
    };
    let host = HostFile::new();
    h.start_ve("src", &[]);
    plant(&h, "src", &host);
    let r = limited(&h, &["clone", "src", "dst"]);
    succeeded(&r, "clone");
    layer_as_made(&h.root().join("pool/ves/dst/upper/root"), &host);
    h.ok(&["start", "dst"]);
    planted_as_made(&h, "dst", &host);
    host.assert_untouched();
    host.assert_not_in(Some(&r), &h.root().join("pool"));
}

/// `template update --run`: a build that leaves a symlink to a host file, one
/// to /etc/shadow, a FIFO and huge sparse files (its dpkg database among
/// them) publishes them as they are, in time, sparse; `template log` then
/// reads no dpkg database whole: a huge one, a FIFO, a symlink to a host file
/// with package stanzas give no package list, and never the host's packages.
///
/// On the old code the build's layer was copied byte for byte (20 GiB of
/// zeros written twice over: killed at the time limit, or `sparse` fails), and
/// `template log` read the 20 GiB status file into memory (in a cgroup of
/// 512 MiB, it is killed: the `template log` assertion fails).
#[test]
fn template_builds_publish_hostile_files_as_they_are_and_log_reads_none_whole() {
    let Some(h) = TestHost::new("hostile_template_build") else {
        return;
    };
    let host = HostFile::new();
    let leaked_pkg = unique("leaked");
    let host_status = HostFile::with_text(format!(
        "Package: {leaked_pkg}\nStatus: install ok installed\nVersion: 6.6.6\n"
    ));
    let status =
        |v: &str| format!("Package: openssl\nStatus: install ok installed\nVersion: {v}\n");
    publish_busybox(&h, "bb", |t| {
        fs::create_dir_all(t.join("var/lib/dpkg")).unwrap();
        fs::write(t.join("var/lib/dpkg/status"), status("1")).unwrap();
    }); // bb@2
    h.ok(&["template", "rm", "bb@1"]);

    // bb@3: a normal package change, with hostile files beside it.
    let build = format!(
        "set -e; printf '{}' > /var/lib/dpkg/status; \
         ln -s {} /etc/leak; ln -s /etc/shadow /etc/shadow-link; mkfifo /etc/fifo; \
         mkdir -p /opt; truncate -s 20G /opt/huge",
        status("2").replace('\n', "\\n"),
        host.path()
    );
    let r = limited(&h, &["template", "update", "bb", "--run", &build]);
    succeeded(&r, "build 3");
    let v3 = h.root().join("pool/templates/bb/3");
    assert_eq!(fs::read_link(v3.join("etc/leak")).unwrap(), host.path);
    assert_eq!(
        fs::read_link(v3.join("etc/shadow-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(
        fs::symlink_metadata(v3.join("etc/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    sparse(&v3.join("opt/huge"), 20 << 30);

    let run = |what: &str, script: &str| {
        let r = limited(&h, &["template", "update", "bb", "--run", script]);
        succeeded(&r, what);
    };
    let restore = |v: &str| {
        format!(
            "set -e; rm -f /var/lib/dpkg/status; printf '{}' > /var/lib/dpkg/status",
            status(v).replace('\n', "\\n")
        )
    };
    // Each hostile database comes after a readable one, so that it is read.
    // bb@4: a symlink to the host's file of package stanzas.
    run(
        "build 4",
        &format!(
            "set -e; rm /var/lib/dpkg/status; ln -s {} /var/lib/dpkg/status",
            host_status.path()
        ),
    );
    run("build 5", &restore("3"));
    // bb@6: a FIFO.
    run(
        "build 6",
        "set -e; rm /var/lib/dpkg/status; mkfifo /var/lib/dpkg/status",
    );
    run("build 7", &restore("4"));
    // bb@8: a 20 GiB one (and another huge file).
    run(
        "build 8",
        "set -e; truncate -s 20G /var/lib/dpkg/status; truncate -s 20G /opt/huge2",
    );
    let v8 = h.root().join("pool/templates/bb/8");
    sparse(&v8.join("var/lib/dpkg/status"), 20 << 30);
    sparse(&v8.join("opt/huge"), 20 << 30);
    sparse(&v8.join("opt/huge2"), 20 << 30);

    let r = capped(&h, &["--json", "template", "log", "bb"]);
    succeeded(&r, "template log");
    let log: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let versions = log.as_array().unwrap();
    assert_eq!(versions.len(), 7, "{log}");
    // Positive control: the readable databases' change.
    assert_eq!(
        versions[1]["packages"],
        serde_json::json!([{"package": "openssl", "from": "1", "to": "2"}]),
        "{log}"
    );
    for v in &versions[2..] {
        assert!(v.get("packages").is_none(), "{v}");
    }
    assert!(!r.stdout.contains(&leaked_pkg), "{}", r.stdout);
    let r = capped(&h, &["template", "log", "bb"]);
    succeeded(&r, "template log (text)");
    assert!(r.stdout.contains("openssl 1 -> 2"), "{}", r.stdout);
    assert!(!r.stdout.contains(&leaked_pkg), "{}", r.stdout);

    host.assert_untouched();
    host_status.assert_untouched();
    host.assert_not_in(None, &h.root().join("pool"));
    host_status.assert_not_in(None, &h.root().join("pool/templates"));
    // New VEs start on the last version, hostile files and all.
    h.start_ve("new", &[]);
    let r = h.exec(
        "new",
        &[
            "sh",
            "-c",
            "readlink /etc/leak; test -p /etc/fifo && echo fifo",
        ],
    );
    assert_eq!(r.stdout, format!("{}\nfifo\n", host.path()), "{}", r.stderr);
}

/// An operator importing a running VE's layer (`--from-dir`) while the VE
/// swaps its directories /dN for symlinks to a host directory: the import copies
/// the directory it looked at, or refuses in one line naming the path; never
/// the host directory's files.
///
/// On the old code (read_dir of a path it had lstat'ed) the assertion "copied
/// the host's file" fails within a few imports.
#[test]
fn an_import_of_a_changing_tree_never_copies_what_a_swapped_symlink_points_at() {
    let Some(h) = TestHost::new("hostile_import_race") else {
        return;
    };
    let host = HostFile::new();
    h.start_ve("u", &[]);
    // Eight pairs, for eight chances in each import.
    sh(
        &h,
        "u",
        &format!(
            "set -e; for i in 0 1 2 3 4 5 6 7; do \
             mkdir /d$i; echo mine > /d$i/own; ln -s {} /l$i; done",
            host.path.parent().unwrap().display()
        ),
    );
    let upper = h.root().join("pool/ves/u/upper");
    let root = fs::File::open(format!("/proc/{}/root", h.init_pid("u"))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for i in 0..8 {
                    nix::fcntl::renameat2(
                        &root,
                        format!("d{i}").as_str(),
                        &root,
                        format!("l{i}").as_str(),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .unwrap();
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut runs, mut imported) = (0, 0);
    let mut leaked = None;
    while runs < 60 && Instant::now() < deadline {
        runs += 1;
        let r = limited(
            &h,
            &[
                "template",
                "import",
                "img",
                "--from-dir",
                upper.to_str().unwrap(),
            ],
        );
        // Even a refusal must not name what is in the host directory.
        if r.stdout.contains(host.name()) || r.stderr.contains(host.name()) {
            leaked = Some(format!("listed it: {}{}", r.stdout, r.stderr));
            break;
        }
        if r.code == 1 {
            one_line_naming(&r, &[upper.to_str().unwrap()]);
            continue;
        }
        succeeded(&r, "import");
        imported += 1;
        let tdir = h.root().join("pool/templates/img");
        if let Some(p) = holding(&tdir, host.text.trim().as_bytes()) {
            leaked = Some(format!("copied it to {}", p.display()));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        leaked.is_none(),
        "run {runs} ({imported} imported): the host's file: {}",
        leaked.unwrap_or_default()
    );
    host.assert_untouched();
    // Positive control: once the tree keeps still, the import works and has
    // the VE's own files.
    let r = limited(
        &h,
        &[
            "template",
            "import",
            "img",
            "--from-dir",
            upper.to_str().unwrap(),
        ],
    );
    succeeded(&r, "import of a still tree");
    let tdir = h.root().join("pool/templates/img");
    let last = template_versions(&h).pop().unwrap();
    let v = tdir.join(last.rsplit('@').next().unwrap());
    let own = (0..8)
        .filter(|i| {
            [format!("d{i}"), format!("l{i}")]
                .iter()
                .any(|d| fs::read_to_string(v.join(d).join("own")).is_ok_and(|t| t == "mine\n"))
        })
        .count();
    assert_eq!(own, 8, "{}", v.display());
    host.assert_not_in(Some(&r), &tdir);
}

/// The VE's /etc/hosts, /etc/hostname and /etc/resolv.conf are read by
/// ve-runtime/src/net.rs (`forget_vectl_files` for `upgrade --check`,
/// `upgrade` and builds; `write_net_files` at start): never whole, never
/// through a symlink or a blocking open. A 20 GiB sparse /etc/hosts must not be
/// read into memory.
#[test]
fn upgrade_check_of_a_ve_with_a_huge_etc_hosts_finishes() {
    let Some(h) = TestHost::new("hostile_etc_hosts") else {
        return;
    };
    publish_busybox(&h, "bb", |_| {});
    h.ok(&["create", "u", "--template", "bb@1"]);
    h.ok(&["start", "u"]);
    sh(&h, "u", "truncate -s 20G /etc/hosts");
    let r = capped(&h, &["upgrade", "u", "--template", "bb@2", "--check"]);
    assert!(r.code == 0 || r.code == 1, "{}{}", r.stderr, r.stdout);
    no_panic(&r);
}
