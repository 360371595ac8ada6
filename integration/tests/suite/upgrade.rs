//! Change control: the conflict report, upgrade (snapshot first, restart),
//! rollback to the exact files and version before, and the history.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use crate::common::{crash_at, publish_busybox};
use integration::TestHost;

fn cat(h: &TestHost, ve: &str, path: &str) -> String {
    h.exec(ve, &["cat", path]).stdout
}

#[test]
fn upgrade_reports_conflicts_snapshots_and_rolls_back_exactly() {
    let Some(h) = TestHost::with_btrfs("upgrade_rollback", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v3\n").unwrap()
    }); // bb@3
    h.ok(&["create", "u", "--template", "bb@2", "--disk", "64M"]);
    h.ok(&["start", "u"]);
    let r = h.exec(
        "u",
        &[
            "sh",
            "-c",
            "echo mine > /etc/app.conf && echo data > /root/data",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The report: the VE's /etc/app.conf against a patch that changes it too.
    let r = h.run(&["upgrade", "u", "--template", "bb@3", "--check"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("/etc/app.conf"), "{}", r.stdout);
    let r = h.run(&["--json", "upgrade", "u", "--template", "bb@3", "--check"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["conflicts"][0]["path"], "/etc/app.conf");
    assert_eq!(report["conflicts"][0]["patch"], "changed");
    // Refused on conflicts; nothing moved.
    let e = h.fails(&["upgrade", "u", "--template", "bb@3", "--fast"]);
    assert!(e.contains("conflict with bb@3 (/etc/app.conf)"), "{e}");
    assert_eq!(h.json(&["show", "u"])["template"], "bb@2");

    // Forced: moved and restarted; the VE's own copy stays.
    let out = h.ok(&["upgrade", "u", "--template", "bb@3", "--force", "--fast"]);
    assert!(out.contains("upgraded from bb@2 to bb@3"), "{out}");
    let s = h.json(&["show", "u"]);
    assert_eq!(
        (s["template"].clone(), s["status"].clone()),
        ("bb@3".into(), "running".into())
    );
    assert_eq!(cat(&h, "u", "/etc/app.conf"), "mine\n");
    assert_eq!(cat(&h, "u", "/root/data"), "data\n");
    let e = h.fails(&["template", "rm", "bb@3"]);
    assert!(e.contains("in use by VE u"), "{e}");

    // What it does after the upgrade goes with the rollback.
    let r = h.exec(
        "u",
        &["sh", "-c", "echo later > /root/after && rm /root/data"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // bb@2 is what a rollback goes back to: kept by gc and rm meanwhile; the
    // snapshot that holds the way back cannot be removed either.
    h.ok(&["template", "gc"]);
    assert!(h.root().join("pool/templates/bb/2").is_dir());
    let e = h.fails(&["template", "rm", "bb@2"]);
    assert!(e.contains("u (rollback)"), "{e}");
    let snap = h.json(&["history", "u"])["history"][0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let e = h.fails(&["snapshot", "rm", "u", &snap]);
    assert!(e.contains("is the way back"), "{e}");
    let out = h.ok(&["rollback", "u", "--fast"]);
    assert!(out.contains("rolled back from bb@3 to bb@2"), "{out}");
    let s = h.json(&["show", "u"]);
    assert_eq!(
        (s["template"].clone(), s["status"].clone()),
        ("bb@2".into(), "running".into())
    );
    assert_eq!(cat(&h, "u", "/root/data"), "data\n");
    assert_ne!(h.exec("u", &["test", "-e", "/root/after"]).code, 0);
    assert_eq!(h.json(&["show", "u"])["disk_limit_bytes"], 64 << 20);

    let hist = h.json(&["history", "u"]);
    let moves = hist["history"].as_array().unwrap();
    assert_eq!(moves.len(), 2);
    assert_eq!(
        (moves[0]["action"].clone(), moves[0]["to"].clone()),
        ("upgrade".into(), "bb@3".into())
    );
    assert_eq!(
        (moves[1]["action"].clone(), moves[1]["to"].clone()),
        ("rollback".into(), "bb@2".into())
    );
    let e = h.fails(&["rollback", "u"]);
    assert!(e.contains("no upgrade to roll back"), "{e}");

    // A VE without changes: no conflicts, and a stopped one stays stopped.
    h.ok(&["create", "plain", "--template", "bb@2"]);
    let r = h.run(&["upgrade", "plain", "--template", "bb@3", "--check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("no conflicts"), "{}", r.stdout);
    let out = h.ok(&["upgrade", "plain", "--template", "bb@3"]);
    assert!(!out.contains("restarted"), "{out}");
    assert_eq!(h.json(&["show", "plain"])["status"], "stopped");

    for (args, want) in [
        (
            vec!["upgrade", "nosuch", "--template", "bb@3"],
            "no such VE",
        ),
        (vec!["upgrade", "u", "--template", "bb@9"], "no version 9"),
        (
            vec!["upgrade", "u", "--template", "bb@2"],
            "already on bb@2",
        ),
        (vec!["rollback", "nosuch"], "no such VE"),
    ] {
        let e = h.fails(&args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn a_fleet_rollout_halts_and_rolls_back_at_a_failed_health_check() {
    let Some(h) = TestHost::with_btrfs("upgrade_fleet", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v3\n").unwrap()
    }); // bb@3
    for i in 1..=5 {
        let ve = format!("f{i}");
        h.ok(&["create", &ve, "--template", "bb@2"]);
        h.ok(&["start", &ve]);
    }
    h.ok(&["create", "elsewhere", "--template", "bb@1"]);
    // f2 has a conflict (skipped); f3 will fail its health check.
    assert_eq!(
        h.exec("f2", &["sh", "-c", "echo mine > /etc/app.conf"])
            .code,
        0
    );
    assert_eq!(h.exec("f3", &["touch", "/root/bad"]).code, 0);
    let r = h.run(&[
        "--json",
        "upgrade",
        "--all",
        "--from",
        "bb@2",
        "--to",
        "bb@3",
        "--batch",
        "2",
        // Each VE's first try fails (a service still starting): the check
        // is tried again.
        "--health",
        "test ! -e /root/bad && test \"$(cat /etc/app.conf)\" = v3 \
         && { test -e /tmp/tried || { touch /tmp/tried; false; }; }",
        "--health-timeout",
        "2",
        "--fast",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let outcome = |i: usize| rows[i]["outcome"].as_str().unwrap().to_string();
    let got: Vec<(String, String)> = (0..5)
        .map(|i| (rows[i]["ve"].as_str().unwrap().to_string(), outcome(i)))
        .collect();
    // Batches of 2 upgraded VEs: f2's skip takes no place, so f1 and f3 are
    // the first batch, and f3's failed check halts the rollout before f4.
    let want: Vec<(String, String)> = [
        ("f1", "upgraded"),
        ("f2", "skipped"),
        ("f3", "rolled back"),
        ("f4", "not reached"),
        ("f5", "not reached"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{rows}");
    let detail = |i: usize| rows[i]["detail"].as_str().unwrap().to_string();
    assert!(detail(0).starts_with("batch 1,"), "{rows}");
    assert!(detail(0).ends_with("healthy"), "{rows}");
    assert!(detail(1).contains("conflict with bb@3"), "{rows}");
    assert!(detail(2).starts_with("batch 1: "), "{rows}");
    assert!(detail(2).contains("health check exited 1"), "{rows}");
    let on = |ve: &str| {
        h.json(&["show", ve])["template"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        ["f1", "f2", "f3", "f4", "f5", "elsewhere"].map(on),
        ["bb@3", "bb@2", "bb@2", "bb@2", "bb@2", "bb@1"]
    );
    assert_eq!(h.json(&["show", "f3"])["status"], "running");
    assert_eq!(cat(&h, "f1", "/etc/app.conf"), "v3\n");

    // Once f3 is mended the rollout goes on; without --json each VE's outcome
    // is on stderr as it happens, the table on stdout at the end.
    assert_eq!(h.exec("f3", &["rm", "/root/bad"]).code, 0);
    let r = h.run(&[
        "upgrade", "--all", "--from", "bb@2", "--to", "bb@3", "--batch", "2", "--health", "true",
        "--fast",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for (ve, outcome) in [
        ("f2", "skipped"),
        ("f3", "upgraded"),
        ("f4", "upgraded"),
        ("f5", "upgraded"),
    ] {
        assert!(
            r.stderr.contains(&format!("VE {ve}: {outcome} (")),
            "{ve}: {}",
            r.stderr
        );
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(ve) && l.contains(outcome)),
            "{ve}: {}",
            r.stdout
        );
    }
    assert!(
        r.stderr.contains("VE f5: upgraded (batch 2,"),
        "{}",
        r.stderr
    );
    assert_eq!(
        ["f1", "f2", "f3", "f4", "f5"].map(on),
        ["bb@3", "bb@2", "bb@3", "bb@3", "bb@3"]
    );

    let e = h.fails(&["upgrade", "--all", "--from", "bb@9", "--to", "bb@3"]);
    assert!(e.contains("no version 9"), "{e}");
    let e = h.fails(&["upgrade", "--all", "--from", "bb@3", "--to", "bb@3"]);
    assert!(e.contains("both bb@3"), "{e}");
    let r = h.run(&[
        "upgrade", "--all", "--from", "bb@2", "--to", "bb@3", "--batch", "0",
    ]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
}

#[test]
fn commit_keeps_upgrades_and_lets_the_old_version_go() {
    let Some(h) = TestHost::with_btrfs("upgrade_commit", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    let snapshots = |ve: &str| -> Vec<String> {
        h.json(&["snapshot", "list", ve])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    for ve in ["a", "b", "c"] {
        h.ok(&["create", ve, "--template", "bb@1"]);
    }
    h.ok(&["start", "a"]);
    assert_eq!(h.exec("a", &["sh", "-c", "echo mine > /root/data"]).code, 0);
    for ve in ["a", "b", "c"] {
        h.ok(&["upgrade", ve, "--template", "bb@2", "--fast"]);
    }
    // b went back and forth: two snapshots, one of them for an upgrade rolled back.
    h.ok(&["rollback", "b"]);
    h.ok(&["upgrade", "b", "--template", "bb@2"]);
    assert_eq!(snapshots("b").len(), 2);

    // bb@1 is kept while any VE can roll back to it, and the refusal says how
    // to let it go.
    let e = h.fails(&["template", "rm", "bb@1"]);
    assert!(
        e.contains("a (rollback)") && e.contains("vectl commit a b c"),
        "{e}"
    );

    let out = h.ok(&["commit", "a"]);
    assert!(
        out.contains(
            "VE a: committed bb@2 (bb@1 no longer kept for rollback; removed snapshot upgrade-"
        ),
        "{out}"
    );
    assert!(snapshots("a").is_empty());
    let e = h.fails(&["rollback", "a"]);
    assert!(e.contains("VE a: no upgrade to roll back"), "{e}");
    let hist = h.json(&["history", "a"]);
    let last = hist["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["action"].as_str(),
            last["from"].as_str(),
            last["to"].as_str()
        ),
        (Some("commit"), Some("bb@1"), Some("bb@2"))
    );
    // The VE runs on, its own files untouched.
    assert_eq!(h.json(&["show", "a"])["status"], "running");
    assert_eq!(cat(&h, "a", "/root/data"), "mine\n");
    assert_eq!(cat(&h, "a", "/etc/app.conf"), "v2\n");

    // A commit killed after it recorded itself: the snapshot is no way back
    // any more, and the next commit deletes it.
    crate::common::crash_at(&h, "commit-after-record", &["commit", "c"]);
    assert_eq!(snapshots("c").len(), 1);
    let e = h.fails(&["rollback", "c"]);
    assert!(e.contains("no upgrade to roll back"), "{e}");
    let out = h.ok(&["commit", "c"]);
    assert!(
        out.contains("VE c: committed bb@2 (removed snapshot upgrade-"),
        "{out}"
    );
    assert!(snapshots("c").is_empty());

    // Still kept for b; the fleet form commits it (both its snapshots go).
    assert!(
        h.ok(&["template", "gc"])
            .contains("no template version removed")
    );
    let done = h.json(&["commit", "--all", "--template", "bb@2"]);
    let done = done.as_array().unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["ve"], "b");
    assert_eq!(done[0]["released"], serde_json::json!(["bb@1"]));
    assert_eq!(done[0]["snapshots"].as_array().unwrap().len(), 2);
    assert!(snapshots("b").is_empty());
    assert_eq!(h.ok(&["commit", "--all"]).trim(), "nothing to commit");
    assert!(
        h.ok(&["commit", "a"])
            .contains("VE a: nothing to commit (on bb@2)")
    );

    assert!(h.ok(&["template", "gc"]).contains("removed bb@1"));
    assert_eq!(crate::common::template_versions(&h), ["bb@2"]);
    assert!(!h.ok(&["template", "usage"]).contains("rollback"));
    h.ok(&["restart", "a", "--fast"]);
    assert_eq!(cat(&h, "a", "/root/data"), "mine\n");

    // A VE whose rollback from bb@3 was killed is on bb@2 once the rollback is
    // finished: `commit --all --template bb@3` must not take its way back.
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v3\n").unwrap()
    }); // bb@3
    h.ok(&["create", "x", "--template", "bb@2"]);
    h.ok(&["upgrade", "x", "--template", "bb@3"]);
    h.ok(&["create", "y", "--template", "bb@2"]);
    h.ok(&["upgrade", "y", "--template", "bb@3"]);
    crate::common::crash_at(&h, "rollback-after-intent", &["rollback", "x"]);
    let done = h.json(&["commit", "--all", "--template", "bb@3"]);
    let names: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ve"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["y"], "{done}");
    assert_eq!(h.json(&["show", "x"])["template"], "bb@2");
    assert!(
        h.ok(&["history", "x"])
            .lines()
            .last()
            .unwrap()
            .contains("rollback")
    );

    // A rollback killed after it staged its copy of the snapshot: the commit
    // deletes the copy with the snapshot.
    h.ok(&["create", "z", "--template", "bb@2"]);
    h.ok(&["upgrade", "z", "--template", "bb@3"]);
    crate::common::crash_at(&h, "rollback-after-stop", &["rollback", "z"]);
    let staged = h.root().join("pool/ves/.z.restore");
    assert!(staged.exists());
    // `pool check` finds such a copy too, and --repair removes it.
    let r = h.run(&["pool", "check"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("restore-leftover"), "{}", r.stdout);
    h.ok(&["pool", "check", "--repair"]);
    assert!(!staged.exists());
    h.ok(&["pool", "check"]);
    crate::common::crash_at(&h, "rollback-after-stop", &["rollback", "z"]);
    assert!(staged.exists());
    assert!(h.ok(&["commit", "z"]).contains("VE z: committed bb@3"));
    assert!(!staged.exists());
    assert!(snapshots("z").is_empty());

    // Several VEs: each is committed on its own; one that fails does not stop
    // the others, is named on stderr, and makes the exit status 1.
    h.ok(&["upgrade", "x", "--template", "bb@3"]);
    let r = h.run(&["commit", "x", "nope", "a"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("VE x: committed bb@3"), "{}", r.stdout);
    assert!(r.stdout.contains("VE a: nothing to commit"), "{}", r.stdout);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);

    // Bad input: one line naming what is wrong.
    let e = h.fails(&["commit", "nope"]);
    assert!(e.contains("nope"), "{e}");
    let e = h.fails(&["commit", "--all", "--template", "bb@9"]);
    assert!(e.contains("no version 9"), "{e}");
    assert_eq!(h.run(&["commit"]).code, 2);
}

#[test]
fn a_conflict_written_while_the_ve_stops_refuses_the_upgrade_and_it_runs_again() {
    let Some(h) = TestHost::with_btrfs("upgrade_late_conflict", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v3\n").unwrap()
    }); // bb@3
    // Its init edits /etc/app.conf as it shuts down: after the first check.
    h.ok(&[
        "create",
        "late",
        "--template",
        "bb@2",
        "--stop-signal",
        "TERM",
        "--init",
        "/bin/sh -c 'trap \"echo late > /etc/app.conf; exit 0\" TERM; while :; do sleep 1 & wait; done'",
    ]);
    h.ok(&["start", "late"]);
    let r = h.run(&["upgrade", "late", "--template", "bb@3", "--check"]);
    assert_eq!(
        r.code, 0,
        "no conflict before the stop: {}{}",
        r.stdout, r.stderr
    );
    let pid = h.init_pid("late");
    let e = h.fails(&["upgrade", "late", "--template", "bb@3"]);
    assert!(e.contains("conflict with bb@3 (/etc/app.conf)"), "{e}");
    // Nothing moved, and it runs again (a new init) on its version.
    let s = h.json(&["show", "late"]);
    assert_eq!(
        (s["template"].clone(), s["status"].clone()),
        ("bb@2".into(), "running".into())
    );
    assert_ne!(h.init_pid("late"), pid);
    assert_eq!(cat(&h, "late", "/etc/app.conf"), "late\n");
    assert_eq!(
        h.json(&["history", "late"])["history"],
        serde_json::json!([])
    );
    assert_eq!(
        h.json(&["snapshot", "list", "late"])["snapshots"],
        serde_json::json!([]),
        "an upgrade snapshot was left"
    );
}

#[test]
fn a_rollback_that_does_not_fit_the_disk_limit_changes_nothing() {
    let test = "a_rollback_that_does_not_fit_the_disk_limit_changes_nothing";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    h.ok(&["create", "big", "--template", "bb@1", "--disk", "64M"]);
    h.ok(&["start", "big"]);
    let r = h.exec(
        "big",
        &[
            "sh",
            "-c",
            "head -c 31457280 /dev/urandom > /root/data && sync",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    h.ok(&["upgrade", "big", "--template", "bb@2", "--fast"]);
    // The upgrade's snapshot holds 30M; the VE now holds little and its limit
    // is lowered below the snapshot's size.
    assert_eq!(h.exec("big", &["rm", "/root/data"]).code, 0);
    let r = h.run(&["set", "big", "--disk", "16M"]);
    if r.code != 0 {
        // Simple quotas (this machine's kernel) charge data to the volume that
        // wrote it for as long as a snapshot holds it: the VE still uses the
        // 30M and `set` refuses a limit below that. The limit is lowered on the
        // VE's quota group directly, as an admin's `btrfs qgroup limit` would;
        // rollback reads the limit from there. (Full quota groups, as in the
        // VM, take the `set`.)
        assert!(r.stderr.contains("the VE already uses"), "{}", r.stderr);
        let vol = h.root().join("pool/ves/big");
        let out = std::process::Command::new("btrfs")
            .args(["qgroup", "limit", "16M"])
            .arg(&vol)
            .output()
            .expect("btrfs");
        assert!(out.status.success(), "btrfs qgroup limit: {out:?}");
    }
    let pid = h.init_pid("big");
    let e = h.fails(&["rollback", "big", "--fast"]);
    assert!(e.starts_with("vectl: VE big: "), "{e}");
    assert!(e.contains("does not fit the VE's disk limit 16M"), "{e}");
    // Untouched: still running (the same init), on bb@2, no pending move, and
    // later commands are not held up by an unfinished rollback.
    assert_eq!(h.init_pid("big"), pid);
    let s = h.json(&["show", "big"]);
    assert_eq!(
        (s["template"].clone(), s["status"].clone()),
        ("bb@2".into(), "running".into())
    );
    let hist = h.json(&["history", "big"])["history"].clone();
    assert_eq!(hist.as_array().unwrap().len(), 1, "{hist}");
    assert!(hist[0].get("pending").is_none(), "{hist}");
    // With room again, later commands are not held up and the rollback goes
    // through and brings the data back.
    h.ok(&["set", "big", "--disk", "64M"]);
    h.ok(&["restart", "big", "--fast"]);
    h.ok(&["rollback", "big", "--fast"]);
    assert_eq!(h.json(&["show", "big"])["template"], "bb@1");
    let r = h.exec("big", &["sh", "-c", "wc -c < /root/data"]);
    assert_eq!(r.stdout.trim(), "31457280");
}

#[test]
fn files_vectl_writes_are_no_conflict_and_the_new_versions_show_through() {
    let Some(h) = TestHost::with_btrfs("upgrade_vectl_files", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/hostname"), "template\n").unwrap()
    }); // bb@2
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/hostname"), "patched\n").unwrap();
        fs::write(
            t.join("etc/hosts"),
            "127.0.0.1\tlocalhost\n10.9.9.9\trepo # patched\n",
        )
        .unwrap();
    }); // bb@3
    // A networked VE: vectl wrote its /etc/hostname and /etc/hosts at start.
    h.ok(&[
        "create",
        "n",
        "--template",
        "bb@2",
        "--hostname",
        "n.example",
    ]);
    h.ok(&["start", "n"]);
    assert_eq!(cat(&h, "n", "/etc/hostname"), "n.example\n");
    assert!(cat(&h, "n", "/etc/hosts").contains("n.example n # vectl"));
    let r = h.run(&["upgrade", "n", "--template", "bb@3", "--check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    h.ok(&["upgrade", "n", "--template", "bb@3", "--fast"]);
    // Its own name, the patch's /etc/hosts with vectl's line added again.
    assert_eq!(cat(&h, "n", "/etc/hostname"), "n.example\n");
    let hosts = cat(&h, "n", "/etc/hosts");
    assert!(hosts.contains("10.9.9.9\trepo # patched"), "{hosts}");
    assert!(hosts.contains("n.example n # vectl"), "{hosts}");
    // A VE that edited /etc/hosts itself does conflict.
    h.ok(&["rollback", "n", "--fast"]);
    let r = h.exec("n", &["sh", "-c", "echo '10.1.1.1 db' >> /etc/hosts"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = h.run(&["upgrade", "n", "--template", "bb@3", "--check"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("/etc/hosts"), "{}", r.stdout);
    assert!(!r.stdout.contains("/etc/hostname"), "{}", r.stdout);
}

#[test]
fn a_copy_left_by_a_killed_rollback_or_restore_goes_at_the_next_start() {
    let Some(h) = TestHost::with_btrfs("upgrade_restore_leftover", "1G") else {
        return;
    };
    publish_busybox(&h, "bb", |t| {
        fs::write(t.join("etc/app.conf"), "v2\n").unwrap()
    }); // bb@2
    let staged = |ve: &str| h.root().join(format!("pool/ves/.{ve}.restore"));

    // A rollback killed after it staged the snapshot's copy, before its intent:
    // the next start removes the copy; the VE stays upgraded, with its files.
    h.ok(&["create", "rb", "--template", "bb@1"]);
    h.ok(&["start", "rb"]);
    h.ok(&["upgrade", "rb", "--template", "bb@2"]);
    assert_eq!(
        h.exec("rb", &["sh", "-c", "echo mine > /root/data"]).code,
        0
    );
    crash_at(&h, "rollback-after-stop", &["rollback", "rb"]);
    assert!(staged("rb").exists());
    h.ok(&["start", "rb"]);
    assert!(
        !staged("rb").exists(),
        "the next start left {}",
        staged("rb").display()
    );
    assert_eq!(h.json(&["show", "rb"])["template"], "bb@2");
    assert_eq!(cat(&h, "rb", "/root/data"), "mine\n");
    // The rollback, again, does it all.
    h.ok(&["rollback", "rb"]);
    assert_eq!(h.json(&["show", "rb"])["template"], "bb@1");
    assert!(!staged("rb").exists());

    // A snapshot restore killed between staging and putting the copy in place:
    // the next start removes the copy; the VE's own layer is untouched.
    h.start_ve("sr", &[]);
    assert_eq!(h.exec("sr", &["sh", "-c", "echo old > /root/data"]).code, 0);
    h.ok(&["snapshot", "create", "sr", "s1"]);
    assert_eq!(h.exec("sr", &["sh", "-c", "echo new > /root/data"]).code, 0);
    h.ok(&["stop", "--fast", "sr"]);
    crash_at(
        &h,
        "restore-after-stage",
        &["snapshot", "restore", "sr", "s1"],
    );
    assert!(staged("sr").exists());
    h.ok(&["start", "sr"]);
    assert!(
        !staged("sr").exists(),
        "the next start left {}",
        staged("sr").display()
    );
    assert_eq!(cat(&h, "sr", "/root/data"), "new\n");
    h.ok(&["pool", "check"]);
    // The restore, again, does it all.
    h.ok(&["stop", "--fast", "sr"]);
    h.ok(&["snapshot", "restore", "sr", "s1"]);
    assert!(!staged("sr").exists());
    h.ok(&["start", "sr"]);
    assert_eq!(cat(&h, "sr", "/root/data"), "old\n");
}
