//! `vectl replicate` and `vectl failover`: a standby root keeps the newest
//! copy of a running VE, incrementally, through killed runs on either side;
//! failover refuses while the primary runs the VE or cannot be asked, starts
//! the replica once it is stopped there, and fences the name against the old
//! primary; the supervisor runs a schedule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use integration::TestHost;
use serde_json::Value;

use crate::backup::{own_files, write_files};
use crate::common::{Supervisor, crash_at, frozen, wait_http, wait_until};

fn replica_id(h: &TestHost, ve: &str) -> Option<String> {
    h.json(&["replica", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ve"] == ve)
        .and_then(|r| r["id"].as_str().map(String::from))
}

fn change(h: &TestHost, ve: &str, what: &str) {
    let r = h.exec(
        ve,
        &[
            "sh",
            "-c",
            &format!("echo {what} > /root/note && rm -f /root/gone"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_standby_keeps_a_replica_and_fails_over_only_when_the_primary_is_gone() {
    let test = "a_standby_keeps_a_replica_and_fails_over_only_when_the_primary_is_gone";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    // The standby, without the template: the first run sends it.
    let Some(h2) = h.beside_bare_with(test, &["--pool-size", "1G"]) else {
        return;
    };
    let dest = h2.root().to_str().unwrap().to_string();
    let primary = h.root().to_str().unwrap().to_string();
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let r1 = h.json(&["replicate", "web1", &dest]);
    assert_eq!(r1["template_sent"], true, "{r1}");
    assert!(r1.get("parent").is_none(), "{r1}");
    assert!(!frozen(&h, "web1"));
    change(&h, "web1", "two");
    let r2 = h.json(&["replicate", "web1", &dest]);
    assert_eq!(r2["parent"], r1["id"], "{r2}");
    assert_eq!(r2["template_sent"], false, "{r2}");
    assert_eq!(replica_id(&h2, "web1").as_deref(), r2["id"].as_str());

    // The standby killed before it records a run: it keeps the one before,
    // and the next run goes on from it.
    change(&h, "web1", "three");
    let r = h
        .command()
        .args(["replicate", "web1", &dest])
        .env("VECTL_FAILPOINT", "replica-before-record")
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert_eq!(replica_id(&h2, "web1").as_deref(), r2["id"].as_str());
    // The source killed after sending: the standby has it all.
    crash_at(&h, "replicate-after-send", &["replicate", "web1", &dest]);
    let after_kill = replica_id(&h2, "web1").unwrap();
    assert_ne!(after_kill, r2["id"].as_str().unwrap());
    change(&h, "web1", "four");
    let r3 = h.json(&["replicate", "web1", &dest]);
    assert_eq!(r3["parent"], after_kill.as_str(), "{r3}");
    let source = own_files(&h, "web1");

    // No failover while the primary runs it, or without asking it.
    let out = h2.fails(&["failover", "web1"]);
    assert!(
        out.contains("--primary") && out.contains("--force"),
        "{out}"
    );
    let out = h2.fails(&["failover", "web1", "--primary", &primary]);
    assert!(out.contains("running"), "{out}");
    assert!(h2.fails(&["show", "web1"]).contains("no such VE"));

    // The primary stops: the replica starts, fenced.
    h.ok(&["stop", "web1"]);
    let f: Value = h2.json(&["failover", "web1", "--primary", &primary]);
    assert!(f["fence"].as_str().unwrap().contains("stopped"), "{f}");
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    let listed = h2.json(&["replica", "list"]);
    assert!(listed[0]["fenced"].is_string(), "{listed}");
    // The old primary can no longer replicate over it.
    let out = h.fails(&["replicate", "web1", &dest]);
    assert!(out.contains("failed over"), "{out}");
    let out = h2.fails(&["failover", "web1", "--force"]);
    assert!(out.contains("failed over already"), "{out}");
    h2.ok(&["stop", "web1"]);
    let out = h.fails(&["replicate", "web1", "ftp://x"]);
    assert!(out.contains("ftp://x"), "{out}");
}

#[test]
fn the_supervisor_replicates_on_a_schedule() {
    let test = "the_supervisor_replicates_on_a_schedule";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    let Some(h2) = h.beside_bare_with(test, &["--pool-size", "1G"]) else {
        return;
    };
    let dest = h2.root().to_str().unwrap().to_string();
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    let r = h.run(&["replicate", "web1", &dest, "--every", "5s"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let _sup = Supervisor::start(&h);
    let first = h.json(&["replicate", "web1", &dest, "--every", "10s"]);
    let first = first["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(90), || replica_id(&h2, "web1")
            .is_some_and(|id| id != first)),
        "the supervisor did not replicate again"
    );
    let s = h.json(&["replica", "schedules"]);
    assert_eq!(s[0]["ve"], "web1", "{s}");
    assert_eq!(s[0]["last"]["ok"], true, "{s}");
    h.ok(&["replicate", "web1", "--stop"]);
    assert!(
        h.json(&["replica", "schedules"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    h.ok(&["stop", "web1"]);
}

#[test]
fn on_the_dir_backend_a_replica_is_a_tree_kept_up_to_date_with_deletions() {
    let test = "on_the_dir_backend_a_replica_is_a_tree_kept_up_to_date_with_deletions";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let Some(h2) = h.beside(test) else {
        return;
    };
    let dest = h2.root().to_str().unwrap().to_string();
    h.start_ve("web1", &[]);
    wait_http(&h, "web1");
    write_files(&h, "web1");
    let r1 = h.json(&["replicate", "web1", &dest]);
    assert_eq!(r1["template_sent"], false, "{r1}");
    change(&h, "web1", "two");
    let r2 = h.json(&["replicate", "web1", &dest]);
    assert_eq!(r2["parent"], r1["id"], "{r2}");
    assert!(!frozen(&h, "web1"));
    let source = own_files(&h, "web1");
    h.ok(&["stop", "web1"]);
    let f = h2.json(&["failover", "web1", "--force"]);
    assert!(f["fence"].as_str().unwrap().contains("--force"), "{f}");
    assert_eq!(wait_http(&h2, "web1"), "hello from web1");
    assert_eq!(own_files(&h2, "web1"), source);
    assert_eq!(h2.exec("web1", &["cat", "/root/gone"]).code, 1);
    h2.ok(&["stop", "web1"]);
}
