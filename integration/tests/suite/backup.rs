//! `vectl backup` and `vectl restore`: a running VE backed up (frozen only for
//! a snapshot on btrfs), incrementally, and restored on another root with the
//! same files, addresses and MACs, or beside itself with a new identity;
//! corrupt, truncated and incomplete backups refused with nothing made; the
//! template found by content or shipped in the backup; the dir backend's tar
//! backups with deletions, retention and `--all`; killed backups and restores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use integration::TestHost;
use serde_json::Value;

use crate::common::{assert_no_leftovers, crash_at, frozen, wait_http};

/// What a VE holds of its own, as `sha256sum` and `readlink` see it inside:
/// /root, /etc and /var/www (symlinks as their targets, never followed), but
/// for the files written at each start (vectl's hosts, resolv.conf and
/// hostname; the web page that names the host, which `wait_http` checks).
pub(crate) fn own_files(h: &TestHost, ve: &str) -> String {
    let r = h.exec(
        ve,
        &[
            "sh",
            "-c",
            "find /root /etc /var/www -xdev | grep -Ev '^/etc/(hosts|resolv.conf|hostname)$|^/var/www/index.html$' \
             | sort | while read -r f; do \
               if [ -L \"$f\" ]; then echo \"$f -> $(readlink \"$f\")\"; \
               elif [ -f \"$f\" ]; then sha256sum \"$f\"; \
               else echo \"$f\"; fi; done",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("/root/note"), "{}", r.stdout);
    r.stdout
}

/// Writes a VE's own files: random data, a note, a file to delete later, and
/// symlinks a host-side reader would follow to the host's files.
pub(crate) fn write_files(h: &TestHost, ve: &str) {
    let r = h.exec(
        ve,
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/urandom > /root/data && echo one > /root/note && \
             echo bye > /root/gone && ln -s /etc/shadow /root/evil && ln -s / /root/up && \
             mkdir -p /root/deep/er && echo x > /root/deep/er/f",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn change_files(h: &TestHost, ve: &str) {
    let r = h.exec(
        ve,
        &[
            "sh",
            "-c",
            "echo two > /root/note && rm /root/gone && rm -r /root/deep && echo new > /root/new",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn backup(h: &TestHost, args: &[&str]) -> Value {
    let mut a = vec!["backup"];
    a.extend_from_slice(args);
    h.json(&a)
}

fn file_of(b: &Value) -> String {
    b["file"].as_str().unwrap().to_string()
}

/// Copies backup `file` into `dir`, cut to `len` bytes (all of it: `None`)
/// or with one byte flipped at `flip`.
fn copy_backup(file: &str, dir: &Path, len: Option<usize>, flip: Option<usize>) -> String {
    let mut data = fs::read(file).unwrap();
    if let Some(n) = len {
        data.truncate(n);
    }
    if let Some(i) = flip {
        data[i] ^= 0x40;
    }
    let to = dir.join(Path::new(file).file_name().unwrap());
    fs::write(&to, data).unwrap();
    to.to_str().unwrap().to_string()
}

#[test]
fn a_running_ve_is_backed_up_incrementally_and_restored_on_another_root() {
    let test = "a_running_ve_is_backed_up_incrementally_and_restored_on_another_root";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    // Another host: its own network namespace and registry.
    let Some(h2) = h.elsewhere(test, &["--pool-size", "1G"]) else {
        return;
    };
    // The same tree under another name: a restore finds it by its content.
    let rootfs = integration::busybox_rootfs().unwrap();
    h2.ok(&[
        "template",
        "import",
        "other",
        "--from-dir",
        rootfs.to_str().unwrap(),
    ]);
    h.start_ve("web1", &["--ram", "64M"]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let b1 = backup(&h, &["web1", d]);
    assert_eq!(b1["kind"], "full", "{b1}");
    assert_eq!(b1["consistency"], "frozen", "{b1}");
    assert!(!frozen(&h, "web1"));
    wait_http(&h, "web1");
    change_files(&h, "web1");
    let b2 = backup(&h, &["web1", d]);
    assert_eq!(b2["kind"], "incremental", "{b2}");
    assert_eq!(b2["parent"], b1["id"], "{b2}");
    assert!(
        b2["layer_bytes"].as_u64().unwrap() < b1["layer_bytes"].as_u64().unwrap() / 2,
        "an incremental backup holds the change only: {b1} {b2}"
    );
    let listed = h.json(&["backup", "list", d]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let source = own_files(&h, "web1");
    let shown = h.json(&["show", "web1"]);
    let v = h.ok(&["backup", "verify", &file_of(&b2)]);
    assert!(v.contains("intact") && v.contains("2 backups"), "{v}");

    // On the other root: the same id, address and MAC, its files as they were.
    let r = h2.json(&["restore", &file_of(&b2), "--start"]);
    let c = &r["config"];
    assert_eq!(c["id"], shown["id"], "{r}");
    assert_eq!(
        c["nics"][0]["ip"],
        shown["nics"][0]["ip"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap(),
        "{r}"
    );
    assert_eq!(c["nics"][0]["mac"], shown["nics"][0]["mac"], "{r}");
    assert_eq!(c["template"], "other@1", "{r}");
    assert_eq!(r["chain"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    assert_eq!(
        h2.exec("web1", &["readlink", "/root/evil"]).stdout,
        "/etc/shadow\n"
    );
    assert_eq!(h2.exec("web1", &["cat", "/root/gone"]).code, 1);

    // Beside the original: a new name, id, address and MAC.
    let r = h.json(&["restore", &file_of(&b2), "--as", "web2"]);
    let c = &r["config"];
    assert_eq!(c["name"], "web2");
    assert_eq!(c["hostname"], "web2");
    assert_ne!(c["id"], shown["id"]);
    assert_ne!(c["nics"][0]["mac"], shown["nics"][0]["mac"]);
    let changes = r["changes"].to_string();
    assert!(changes.contains("is taken"), "{r}");
    h.ok(&["start", "web2"]);
    assert_eq!(wait_http(&h, "web2"), "hello from web2");
    assert_eq!(own_files(&h, "web2"), source);
    let out = h.fails(&["restore", &file_of(&b2)]);
    assert!(
        out.contains("VE web1: already exists") && out.contains("--as"),
        "{out}"
    );

    // Truncated, corrupt or without its parent: refused, nothing made.
    let bad = tempfile::tempdir().unwrap();
    let len = fs::metadata(file_of(&b2)).unwrap().len() as usize;
    copy_backup(&file_of(&b1), bad.path(), None, None);
    for (cut, flip, says) in [
        (Some(len - 7), None, "truncated"),
        (Some(len / 2), None, "truncated"),
        (None, Some(len / 2), "corrupt"),
        (None, Some(len - 3), "corrupt"),
    ] {
        let f = copy_backup(&file_of(&b2), bad.path(), cut, flip);
        let out = h.fails(&["backup", "verify", &f]);
        assert!(out.contains(says) && out.contains(&f), "{says}: {out}");
        let out = h.fails(&["restore", &f, "--as", "web3"]);
        assert!(out.contains(says) && out.contains(&f), "{says}: {out}");
        assert!(h.fails(&["show", "web3"]).contains("no such VE"));
        assert_no_leftovers(&h);
    }
    let lone = tempfile::tempdir().unwrap();
    let f = copy_backup(&file_of(&b2), lone.path(), None, None);
    let out = h.fails(&["restore", &f, "--as", "web3"]);
    assert!(
        out.contains(b1["id"].as_str().unwrap()) && out.contains("not in"),
        "{out}"
    );

    // A root without the template: refused until the backup carries it.
    h2.ok(&["destroy", "--force", "web1"]);
    h2.ok(&["template", "rm", "other"]);
    let out = h2.fails(&["restore", &file_of(&b2)]);
    assert!(
        out.contains("bb@1") && out.contains("--with-template"),
        "{out}"
    );
    assert_no_leftovers(&h2);
    let b3 = backup(&h, &["web1", d, "--with-template"]);
    assert_eq!(b3["kind"], "incremental", "{b3}");
    let r = h2.json(&["restore", &file_of(&b3), "--start"]);
    assert_eq!(r["template_imported"], true, "{r}");
    assert_eq!(r["config"]["template"], "bb@1", "{r}");
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    for (host, ve) in [(&h2, "web1"), (&h, "web1"), (&h, "web2")] {
        host.ok(&["stop", ve]);
    }
}

#[test]
fn on_the_dir_backend_backups_are_tar_archives_with_deletions_retention_and_all() {
    let test = "on_the_dir_backend_backups_are_tar_archives_with_deletions_retention_and_all";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let Some(h2) = h.elsewhere(test, &["--backend", "dir"]) else {
        return;
    };
    h2.import_busybox().unwrap();
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    h.ok(&["create", "idle", "--template", "bb"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let b1 = backup(&h, &["web1", d]);
    assert_eq!(b1["kind"], "full", "{b1}");
    assert_eq!(b1["consistency"], "frozen", "{b1}");
    assert!(!frozen(&h, "web1"));
    change_files(&h, "web1");
    let b2 = backup(&h, &["web1", d]);
    assert_eq!(b2["parent"], b1["id"], "{b2}");
    let source = own_files(&h, "web1");

    // The chain restores the deletions too.
    h2.json(&["restore", &file_of(&b2), "--start"]);
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    assert_eq!(h2.exec("web1", &["ls", "/root/deep"]).code, 1);
    h2.ok(&["stop", "web1"]);

    // Every VE in one job.
    let all = h.json(&["backup", "--all", d]);
    let rows = all.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{all}");
    assert!(rows.iter().all(|r| r["ok"] == true), "{all}");
    let idle = rows.iter().find(|r| r["ve"] == "idle").unwrap();
    assert_eq!(idle["backup"]["consistency"], "stopped", "{all}");
    assert_eq!(
        rows.iter().find(|r| r["ve"] == "web1").unwrap()["backup"]["parent"],
        b2["id"]
    );

    // Retention: a full backup and --keep 1 removes the older chain.
    let b4 = backup(&h, &["web1", d, "--full", "--keep", "1"]);
    assert_eq!(b4["kind"], "full", "{b4}");
    assert_eq!(b4["removed"].as_array().unwrap().len(), 3, "{b4}");
    let left: Vec<String> = h
        .json(&["backup", "list", d])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["ve"].as_str().unwrap(),
                b["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(left, ["idle full", "web1 full"]);
    // A btrfs stream cannot land on this pool, a tar archive can.
    h2.ok(&["destroy", "web1"]);
    h2.json(&["restore", &file_of(&b4)]);
    h2.ok(&["start", "web1"]);
    assert_eq!(own_files(&h2, "web1"), source);
    h2.ok(&["stop", "web1"]);
    h.ok(&["stop", "web1"]);
    // Bad usage: one line, exit 2.
    let r = h.run(&["backup", "--all", d, "web1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn killed_backups_and_restores_leave_nothing_half_made() {
    let test = "killed_backups_and_restores_leave_nothing_half_made";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let names = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    for fp in [
        "backup-while-frozen",
        "backup-after-snapshot",
        "backup-before-end",
    ] {
        crash_at(&h, fp, &["backup", "web1", d]);
        assert!(
            h.json(&["backup", "list", d])
                .as_array()
                .unwrap()
                .is_empty(),
            "{fp}: {:?}",
            names()
        );
        // Killed while the VE was frozen: the next command that takes the
        // VE's lock thaws it (here the next backup).
        assert_eq!(frozen(&h, "web1"), fp == "backup-while-frozen", "{fp}");
    }
    let b1 = backup(&h, &["web1", d]);
    assert_eq!(b1["kind"], "full", "{b1}");
    assert!(!frozen(&h, "web1"));
    wait_http(&h, "web1");
    assert_eq!(names().len(), 1, "partial files left: {:?}", names());

    // While a backup sends, the VE takes other commands.
    let sending = h
        .command()
        .args(["backup", "web1", d])
        .env("VECTL_FAILPOINT", "backup-sending")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stopped = || {
        fs::read_to_string(format!("/proc/{}/stat", sending.id())).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    assert!(crate::common::wait_until(
        std::time::Duration::from_secs(20),
        stopped
    ));
    let r = crate::common::run_limited(
        {
            let mut c = h.command();
            c.args(["set", "web1", "--ram", "96M"]);
            c
        },
        std::time::Duration::from_secs(20),
    );
    assert_eq!(
        r.code, 0,
        "set waited for the backup or failed: {}",
        r.stderr
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sending.id()).unwrap()),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(sending.wait_with_output().unwrap().status.success());
    crash_at(&h, "backup-after-rename", &["backup", "web1", d]);
    let listed = h.json(&["backup", "list", d]);
    let b2_id = listed.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b3 = backup(&h, &["web1", d]);
    assert_eq!(b3["parent"], b2_id.as_str(), "{b3}");
    let source = own_files(&h, "web1");

    for fp in ["restore-after-layer", "restore-before-config"] {
        crash_at(&h, fp, &["restore", &file_of(&b3), "--as", "copy"]);
        assert!(h.fails(&["show", "copy"]).contains("no such VE"), "{fp}");
    }
    let check = h.run(&["pool", "check", "--repair"]);
    assert!(
        check.stdout.contains("copy"),
        "{}{}",
        check.stdout,
        check.stderr
    );
    assert_no_leftovers(&h);
    assert!(
        !h.root().join("pool/ves/.copy.receive").exists(),
        "a killed restore's received snapshots left"
    );
    h.ok(&["restore", &file_of(&b3), "--as", "copy", "--start"]);
    assert_eq!(wait_http(&h, "copy"), "hello from copy");
    assert_eq!(own_files(&h, "copy"), source);
    // Destroying a VE takes its backup bases with it (its backups stay).
    h.ok(&["destroy", "--force", "web1", "copy"]);
    assert!(!h.root().join("pool/backup-bases/web1").exists());
    assert_eq!(h.json(&["backup", "list", d]).as_array().unwrap().len(), 4);
}
