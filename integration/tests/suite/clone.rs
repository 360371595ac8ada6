//! `vectl clone`: a copy of a VE's own files as a new VE with a new identity,
//! on its template version or another, from a stopped or a running source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use integration::TestHost;

fn clone_keeps_files_and_takes_a_new_identity(h: &TestHost) {
    h.start_ve("src", &["--ram", "64M"]);
    crate::common::wait_http(h, "src");
    let r = h.exec(
        "src",
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/urandom > /root/data && echo mine > /root/note",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    h.ok(&["set", "src", "--publish", "8080:80"]);
    // From the running source (frozen for the copy).
    let out = h.ok(&["clone", "src", "dst"]);
    assert!(out.contains("cloned VE src as dst"), "{out}");
    let (s, d) = (h.json(&["show", "src"]), h.json(&["show", "dst"]));
    assert_eq!(d["status"], "stopped");
    assert_eq!(d["template"], s["template"]);
    assert_eq!(d["hostname"], "dst");
    assert_eq!(d["ram_limit_bytes"], 64 << 20);
    assert_ne!(d["id"], s["id"]);
    assert_ne!(d["nics"][0]["ip"], s["nics"][0]["ip"]);
    assert_ne!(d["nics"][0]["mac"], s["nics"][0]["mac"]);
    assert!(d.get("publish").is_none(), "{d}");
    h.ok(&["start", "dst"]);
    assert_eq!(crate::common::wait_http(h, "dst"), "hello from dst");
    assert_eq!(h.exec("dst", &["cat", "/root/note"]).stdout, "mine\n");
    let sum = |ve: &str| h.exec(ve, &["md5sum", "/root/data"]).stdout;
    assert_eq!(sum("src"), sum("dst"));
    // They are separate from now on.
    let r = h.exec("dst", &["sh", "-c", "echo theirs > /root/note"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(h.exec("src", &["cat", "/root/note"]).stdout, "mine\n");
    assert_eq!(h.exec("src", &["hostname"]).stdout, "src\n");

    // Onto another version: the template's files change, the VE's stay.
    let work = tempfile::tempdir().unwrap();
    let v2 = work.path().join("rootfs");
    integration::copy_busybox_rootfs(&v2).unwrap();
    fs::write(v2.join("etc/release"), "two\n").unwrap();
    h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        v2.to_str().unwrap(),
    ]);
    h.ok(&["stop", "--fast", "src"]);
    h.ok(&["clone", "src", "next", "--template", "bb@2"]);
    assert_eq!(h.json(&["show", "next"])["template"], "bb@2");
    h.ok(&["start", "next"]);
    assert_eq!(h.exec("next", &["cat", "/etc/release"]).stdout, "two\n");
    assert_eq!(h.exec("next", &["cat", "/root/note"]).stdout, "mine\n");
    assert_eq!(h.json(&["show", "src"])["template"], "bb@1");

    // Bad input: one line, nothing left behind.
    for (args, want) in [
        (vec!["clone", "nosuch", "x"], "no such VE"),
        (vec!["clone", "src", "dst"], "already exists"),
        (vec!["clone", "src", "src"], "already exists"),
        (
            vec!["clone", "src", "x", "--template", "bb@9"],
            "no version 9",
        ),
        (vec!["clone", "src", "Bad_Name"], "invalid VE name"),
    ] {
        let e = h.fails(&args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(h.run(&["show", "x"]).code != 0);
    assert!(!h.root().join("pool/ves/x").exists());
}

#[test]
fn clone_on_the_btrfs_pool() {
    let Some(h) = TestHost::with_btrfs("clone_btrfs", "1G") else {
        return;
    };
    clone_keeps_files_and_takes_a_new_identity(&h);
    // The copy's files count against its own disk limit.
    h.ok(&["set", "dst", "--disk", "64M"]);
    let used = h.json(&["show", "dst"])["disk_bytes"].as_u64().unwrap();
    assert!(
        used >= 1 << 20,
        "the clone's 1 MiB is not charged to it: {used}"
    );
}

#[test]
fn clone_on_the_dir_pool() {
    let Some(h) = TestHost::new("clone_dir") else {
        return;
    };
    clone_keeps_files_and_takes_a_new_identity(&h);
}
