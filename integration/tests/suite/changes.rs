//! Changes after create: a hostname (live in a running VE), NICs of a stopped
//! VE (addresses and MACs kept where a NIC stays on its network), and rename
//! (crash-safe), each refused with one line where it cannot be done.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;

#[track_caller]
fn sh(h: &TestHost, ve: &str, script: &str) -> String {
    let r = h.exec(ve, &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{script}: {r:?}");
    r.stdout
}

fn nics(h: &TestHost, ve: &str) -> Vec<(String, String, String)> {
    h.json(&["show", ve])["nics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["net"].as_str().unwrap().to_string(),
                n["address"].as_str().unwrap().to_string(),
                n["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_running_ves_hostname_changes_at_once_and_in_its_files_at_next_start() {
    let Some(h) = TestHost::new("a_running_ves_hostname_changes_at_once") else {
        return;
    };
    h.start_ve("hn", &[]);
    let out = h.ok(&["set", "hn", "--hostname", "shop.example.com"]);
    assert!(out.contains("now"), "{out}");
    assert_eq!(sh(&h, "hn", "hostname").trim(), "shop.example.com");
    assert_eq!(h.json(&["show", "hn"])["hostname"], "shop.example.com");
    // The host's own hostname is untouched.
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        "shop.example.com"
    );
    h.ok(&["restart", "hn"]);
    assert_eq!(sh(&h, "hn", "hostname").trim(), "shop.example.com");
    // vectl's line in /etc/hosts names it (busybox has no /etc/hostname, and
    // vectl makes none where the template has none).
    let hosts = sh(&h, "hn", "cat /etc/hosts");
    assert!(
        hosts
            .lines()
            .any(|l| l.contains("shop.example.com shop") && l.contains("# vectl")),
        "{hosts}"
    );
    // A stopped VE: at its next start.
    h.ok(&["stop", "hn"]);
    let out = h.ok(&["set", "hn", "--hostname", "web9"]);
    assert!(out.contains("next start"), "{out}");
    h.ok(&["start", "hn"]);
    assert_eq!(sh(&h, "hn", "hostname").trim(), "web9");
    // Bad names change nothing.
    let err = h.fails(&["set", "hn", "--hostname", "bad_host!"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(sh(&h, "hn", "hostname").trim(), "web9");
    assert_eq!(h.json(&["show", "hn"])["hostname"], "web9");
}

#[test]
fn a_stopped_ves_nics_change_keeping_addresses_and_macs_where_they_stay() {
    let Some(h) = TestHost::new("a_stopped_ves_nics_change") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "back",
        "--mode",
        "host-only",
        "--subnet",
        "10.73.0.0/24",
    ]);
    h.start_ve("nc", &[]);
    let before = nics(&h, "nc");
    assert_eq!(before.len(), 1);
    // Running: refused, one line, nothing changes.
    let err = h.fails(&["set", "nc", "--net", "default", "--net", "back"]);
    assert!(err.contains("VE nc") && err.contains("stopped"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(nics(&h, "nc"), before);
    h.ok(&["stop", "nc"]);
    h.ok(&[
        "set",
        "nc",
        "--net",
        "default",
        "--net",
        "back",
        "--ip",
        "10.73.0.20",
    ]);
    let after = nics(&h, "nc");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0], "eth0 keeps its address and MAC");
    assert_eq!(after[1].0, "back");
    assert_eq!(after[1].1, "10.73.0.20/24");
    h.ok(&["start", "nc"]);
    let addrs = sh(&h, "nc", "ip -4 -o addr show");
    assert!(addrs.contains("10.73.0.20/24"), "{addrs}");
    assert!(addrs.contains(before[0].1.as_str()), "{addrs}");
    // The host reaches it on the new network (the firewall followed).
    let ping = std::process::Command::new("busybox")
        .args(["ping", "-c1", "-W5", "10.73.0.20"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    h.ok(&["stop", "nc"]);
    // An unknown network changes nothing.
    let err = h.fails(&["set", "nc", "--net", "nowhere"]);
    assert!(err.contains("nowhere"), "{err}");
    assert_eq!(nics(&h, "nc"), after);
    // No NICs at all.
    h.ok(&["set", "nc", "--net", "none"]);
    assert!(nics(&h, "nc").is_empty());
    h.ok(&["start", "nc"]);
    let links = sh(&h, "nc", "ls /sys/class/net");
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{links}"
    );
}

#[test]
fn a_stopped_ve_is_renamed_with_its_id_files_and_snapshots_and_a_killed_rename_is_finished() {
    let Some(h) = TestHost::with_btrfs("a_stopped_ve_is_renamed", "1G") else {
        return;
    };
    // On btrfs: its volume is a subvolume with a quota, and it has snapshots.
    h.start_ve("old1", &["--disk", "200M"]);
    sh(&h, "old1", "echo kept > /root/note");
    let id = h.json(&["show", "old1"])["id"].clone();
    let ip = nics(&h, "old1");
    // Running: refused.
    let err = h.fails(&["rename", "old1", "new1"]);
    assert!(err.contains("stopped"), "{err}");
    h.ok(&["stop", "old1"]);
    h.ok(&["snapshot", "create", "old1", "before-rename"]);
    h.ok(&["create", "other", "--template", "bb"]);
    let err = h.fails(&["rename", "old1", "other"]);
    assert!(err.contains("other"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = h.fails(&["rename", "old1", "Bad_Name"]);
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = h.ok(&["rename", "old1", "new1"]);
    assert!(out.contains("renamed VE old1 to new1"), "{out}");
    let show = h.json(&["show", "new1"]);
    assert_eq!(show["id"], id);
    assert_eq!(show["hostname"], "new1", "the default hostname follows");
    assert_eq!(nics(&h, "new1"), ip);
    let snaps = h.ok(&["snapshot", "list", "new1"]);
    assert!(snaps.contains("before-rename"), "{snaps}");
    assert!(
        show["disk_limit_bytes"].as_u64() == Some(200 << 20),
        "the disk limit stays: {show}"
    );
    h.ok(&["pool", "check"]);
    let err = h.fails(&["show", "old1"]);
    assert!(err.contains("old1"), "{err}");
    // By id too, and its files are there.
    h.ok(&["start", id.to_string().as_str()]);
    assert_eq!(sh(&h, "new1", "cat /root/note").trim(), "kept");
    h.ok(&["stop", "new1"]);

    // Killed half-way (after the volume moved): the next command finishes it.
    crash_at(&h, "rename-after-volume", &["rename", "new1", "new2"]);
    let list = h.ok(&["list"]);
    assert!(list.contains("new2") && !list.contains("new1"), "{list}");
    h.ok(&["start", "new2"]);
    assert_eq!(sh(&h, "new2", "cat /root/note").trim(), "kept");
    h.ok(&["stop", "new2"]);
    // Killed right after the marker: a command on the old name finishes it.
    crash_at(&h, "rename-after-marker", &["rename", "new2", "new3"]);
    // A create of the name the rename was taking finishes the rename first,
    // and is refused: the name is taken.
    let err = h.fails(&["create", "new3", "--template", "bb"]);
    assert!(err.contains("new3"), "{err}");
    let err = h.fails(&["show", "new2"]);
    assert!(err.contains("new2"), "{err}");
    assert_eq!(h.json(&["show", "new3"])["id"], id);
    h.ok(&["destroy", "new3"]);
    assert!(h.ok(&["list"]).lines().all(|l| !l.contains("new")));
}
