//! Crash safety of change control: vectl killed with SIGKILL at every failpoint
//! of upgrade, rollback, a fleet rollout, clone and template rm
//! (VECTL_FAILPOINT) leaves a state that the next command an operator runs
//! finishes or rolls back. A VE is never pinned to a version its own files do
//! not belong to, nor left with a snapshot nothing refers to; a clone's
//! destination is absent or complete and its source runs, unfrozen; a template
//! version is listed and intact, or gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use crate::common::*;

/// A btrfs host with bb@1 (busybox) and bb@2 (with /etc/app.conf `v2`).
fn publish(h: &TestHost, name: &str, app: &str) {
    publish_busybox(h, name, |t| fs::write(t.join("etc/app.conf"), app).unwrap());
}

fn host(test: &str) -> Option<TestHost> {
    let h = TestHost::with_btrfs(test, "1G")?;
    publish(&h, "bb", "v2\n");
    Some(h)
}

/// Writes `text` to the VE's own /root/marker (the VE runs).
#[track_caller]
fn write_marker(h: &TestHost, ve: &str, text: &str) {
    let r = h.exec(ve, &["sh", "-c", &format!("echo {text} > /root/marker")]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// The VE's /root/marker as its private layer holds it (running or not).
fn marker(h: &TestHost, ve: &str) -> Option<String> {
    fs::read_to_string(h.root().join(format!("pool/ves/{ve}/upper/root/marker"))).ok()
}

/// A running VE on bb@1 whose /root/marker says `before`.
#[track_caller]
fn running_ve(h: &TestHost, ve: &str, extra: &[&str]) {
    let mut args = vec!["create", ve, "--template", "bb@1"];
    args.extend_from_slice(extra);
    h.ok(&args);
    h.ok(&["start", ve]);
    write_marker(h, ve, "before");
}

/// [`running_ve`], upgraded to bb@2 (running), after which it wrote `after` to
/// /root/marker and made /root/later.
#[track_caller]
fn upgraded_ve(h: &TestHost, ve: &str, extra: &[&str]) {
    running_ve(h, ve, extra);
    h.ok(&upgrade(ve));
    write_marker(h, ve, "after");
    assert_eq!(h.exec(ve, &["touch", "/root/later"]).code, 0);
}

fn upgrade(ve: &str) -> [&str; 5] {
    ["upgrade", ve, "--template", "bb@2", "--fast"]
}

fn template(h: &TestHost, ve: &str) -> String {
    h.json(&["show", ve])["template"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `history --json`: (action, from, to, pending) of each move.
fn moves(h: &TestHost, ve: &str) -> Vec<(String, String, String, bool)> {
    h.json(&["history", ve])["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["action"].as_str().unwrap().to_string(),
                m["from"].as_str().unwrap().to_string(),
                m["to"].as_str().unwrap().to_string(),
                m.get("pending").is_some_and(|p| p == true),
            )
        })
        .collect()
}

fn mv(action: &str, from: &str, to: &str, pending: bool) -> (String, String, String, bool) {
    (action.into(), from.into(), to.into(), pending)
}

/// The snapshots the VE's history names (each once, sorted).
fn history_snapshots(h: &TestHost, ve: &str) -> Vec<String> {
    let mut v: Vec<String> = h.json(&["history", ve])["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["snapshot"].as_str().map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The VE's snapshots (sorted).
fn snapshots(h: &TestHost, ve: &str) -> Vec<String> {
    let mut v: Vec<String> = h.json(&["snapshot", "list", ve])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The VE runs on `version` with /root/marker `text` (its own files), and sees
/// that version's files.
#[track_caller]
fn assert_runs_as(h: &TestHost, ve: &str, version: &str, text: &str) {
    assert_eq!(status(h, ve), "running", "VE {ve}");
    assert_eq!(template(h, ve), version, "VE {ve}");
    let r = h.exec(ve, &["cat", "/root/marker"]);
    assert_eq!(r.stdout, format!("{text}\n"), "VE {ve}: {r:?}");
    let app = h.exec(ve, &["cat", "/etc/app.conf"]);
    match version {
        "bb@1" => assert_ne!(app.code, 0, "VE {ve} sees bb@2's files: {app:?}"),
        _ => assert_eq!(app.stdout, "v2\n", "VE {ve}: {app:?}"),
    }
}

/// The snapshots of the VE are exactly those its history names.
#[track_caller]
fn assert_snapshots_referenced(h: &TestHost, ve: &str) {
    assert_eq!(snapshots(h, ve), history_snapshots(h, ve), "VE {ve}");
}

/// `pool check --json` (with `--repair` if asked): its `interrupted-move`
/// entries as (VE, repaired).
fn interrupted_moves(h: &TestHost, repair: bool) -> Vec<(String, bool)> {
    let mut args = vec!["--json", "pool", "check"];
    if repair {
        args.push("--repair");
    }
    let r = h.run(&args);
    no_panic(&r);
    let problems: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    problems
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "interrupted-move")
        .map(|p| {
            (
                p["subject"].as_str().unwrap().to_string(),
                p["repaired"] == true,
            )
        })
        .collect()
}

// ---- upgrade ----

#[test]
fn crash_at_upgrade_after_stop() {
    let Some(h) = host("crash_at_upgrade_after_stop") else {
        return;
    };
    running_ve(&h, "u", &[]);
    crash_at(&h, "upgrade-after-stop", &upgrade("u"));
    // Stopped, nothing else changed.
    assert_eq!(status(&h, "u"), "stopped");
    assert_eq!(template(&h, "u"), "bb@1");
    assert!(moves(&h, "u").is_empty());
    assert!(snapshots(&h, "u").is_empty());
    assert_eq!(marker(&h, "u").as_deref(), Some("before\n"));
    // The next upgrade does it (the VE is stopped now, and stays so).
    let out = h.ok(&upgrade("u"));
    assert!(out.contains("upgraded from bb@1 to bb@2"), "{out}");
    assert!(!out.contains("restarted"), "{out}");
    assert_eq!(moves(&h, "u"), [mv("upgrade", "bb@1", "bb@2", false)]);
    assert_snapshots_referenced(&h, "u");
    h.ok(&["start", "u"]);
    assert_runs_as(&h, "u", "bb@2", "before");
    assert_no_leftovers(&h);
}

/// The upgrade's intent written (and its snapshot taken, if `snapshot`): a
/// pending upgrade the next start, upgrade, rollback or `pool check --repair`
/// undoes.
fn pending_upgrade(test: &str, failpoint: &str, snapshot: bool) {
    let Some(h) = host(test) else {
        return;
    };
    let ves = ["by-start", "by-upgrade", "by-rollback", "by-repair"];
    for ve in ves {
        running_ve(&h, ve, &[]);
        crash_at(&h, failpoint, &upgrade(ve));
        assert_eq!(status(&h, ve), "stopped");
        // The config never left bb@1; the history says what was killed.
        assert_eq!(template(&h, ve), "bb@1");
        assert_eq!(moves(&h, ve), [mv("upgrade", "bb@1", "bb@2", true)]);
        let named = history_snapshots(&h, ve);
        assert_eq!(named.len(), 1, "{named:?}");
        let want: &[String] = if snapshot { &named } else { &[] };
        assert_eq!(snapshots(&h, ve), want, "VE {ve}");
        assert_eq!(marker(&h, ve).as_deref(), Some("before\n"));
    }
    let table = h.ok(&["history", "by-start"]);
    assert!(table.contains("upgrade (interrupted)"), "{table}");
    let mut found = interrupted_moves(&h, false);
    found.sort();
    let mut want: Vec<(String, bool)> = ves.iter().map(|v| (v.to_string(), false)).collect();
    want.sort();
    assert_eq!(found, want);

    // start: undone, and it starts on bb@1 with its own files.
    h.ok(&["start", "by-start"]);
    assert!(moves(&h, "by-start").is_empty());
    assert!(snapshots(&h, "by-start").is_empty());
    assert_runs_as(&h, "by-start", "bb@1", "before");

    // upgrade: the killed one undone, this one done.
    let out = h.ok(&upgrade("by-upgrade"));
    assert!(out.contains("upgraded from bb@1 to bb@2"), "{out}");
    assert_eq!(
        moves(&h, "by-upgrade"),
        [mv("upgrade", "bb@1", "bb@2", false)]
    );
    assert_snapshots_referenced(&h, "by-upgrade");
    assert_eq!(snapshots(&h, "by-upgrade").len(), 1);
    h.ok(&["start", "by-upgrade"]);
    assert_runs_as(&h, "by-upgrade", "bb@2", "before");

    // rollback: undoing the killed upgrade is the whole rollback.
    let out = h.ok(&["rollback", "by-rollback", "--fast"]);
    assert!(out.contains("rolled back from bb@2 to bb@1"), "{out}");
    assert!(moves(&h, "by-rollback").is_empty());
    assert!(snapshots(&h, "by-rollback").is_empty());
    assert_eq!(template(&h, "by-rollback"), "bb@1");
    let e = h.fails(&["rollback", "by-rollback"]);
    assert!(e.contains("no upgrade to roll back"), "{e}");

    // pool check --repair undoes it too (and only it: the others are done).
    assert_eq!(
        interrupted_moves(&h, true),
        [("by-repair".to_string(), true)]
    );
    assert!(moves(&h, "by-repair").is_empty());
    assert!(snapshots(&h, "by-repair").is_empty());
    assert!(interrupted_moves(&h, false).is_empty());
    h.ok(&["start", "by-repair"]);
    assert_runs_as(&h, "by-repair", "bb@1", "before");
    assert_no_leftovers(&h);
}

#[test]
fn crash_at_upgrade_after_intent() {
    pending_upgrade(
        "crash_at_upgrade_after_intent",
        "upgrade-after-intent",
        false,
    );
}

#[test]
fn crash_at_upgrade_after_snapshot() {
    pending_upgrade(
        "crash_at_upgrade_after_snapshot",
        "upgrade-after-snapshot",
        true,
    );
}

#[test]
fn crash_at_upgrade_before_restart() {
    let Some(h) = host("crash_at_upgrade_before_restart") else {
        return;
    };
    for ve in ["by-start", "by-rollback"] {
        running_ve(&h, ve, &[]);
        crash_at(&h, "upgrade-before-restart", &upgrade(ve));
        // Upgraded, not started again.
        assert_eq!(status(&h, ve), "stopped");
        assert_eq!(template(&h, ve), "bb@2");
        assert_eq!(moves(&h, ve), [mv("upgrade", "bb@1", "bb@2", false)]);
        assert_snapshots_referenced(&h, ve);
        assert_eq!(snapshots(&h, ve).len(), 1);
    }
    h.ok(&["start", "by-start"]);
    assert_runs_as(&h, "by-start", "bb@2", "before");
    h.ok(&["rollback", "by-rollback"]);
    h.ok(&["start", "by-rollback"]);
    assert_runs_as(&h, "by-rollback", "bb@1", "before");
    assert!(interrupted_moves(&h, false).is_empty());
    assert_no_leftovers(&h);
}

// ---- rollback ----

#[test]
fn crash_at_rollback_after_stop() {
    let Some(h) = host("crash_at_rollback_after_stop") else {
        return;
    };
    upgraded_ve(&h, "u", &[]);
    crash_at(&h, "rollback-after-stop", &["rollback", "u", "--fast"]);
    assert_eq!(status(&h, "u"), "stopped");
    assert_eq!(template(&h, "u"), "bb@2");
    assert_eq!(moves(&h, "u"), [mv("upgrade", "bb@1", "bb@2", false)]);
    assert_eq!(marker(&h, "u").as_deref(), Some("after\n"));
    let out = h.ok(&["rollback", "u"]);
    assert!(out.contains("rolled back from bb@2 to bb@1"), "{out}");
    assert_eq!(
        moves(&h, "u"),
        [
            mv("upgrade", "bb@1", "bb@2", false),
            mv("rollback", "bb@2", "bb@1", false)
        ]
    );
    h.ok(&["start", "u"]);
    assert_runs_as(&h, "u", "bb@1", "before");
    assert_ne!(h.exec("u", &["test", "-e", "/root/later"]).code, 0);
    assert_no_leftovers(&h);
}

/// The rollback's intent written (and the snapshot restored, if `restored`): a
/// pending rollback that the next rollback, start, clone from the VE or `pool
/// check --repair` completes, and no command starts or copies half done.
fn pending_rollback(test: &str, failpoint: &str, restored: bool) {
    let Some(h) = host(test) else {
        return;
    };
    let ves = ["by-rollback", "by-start", "by-clone", "by-repair"];
    for ve in ves {
        upgraded_ve(&h, ve, &["--disk", "64M"]);
        crash_at(&h, failpoint, &["rollback", ve, "--fast"]);
        assert_eq!(status(&h, ve), "stopped");
        // Still pinned to bb@2 while its files may be bb@1's: pending.
        assert_eq!(template(&h, ve), "bb@2");
        assert_eq!(
            moves(&h, ve),
            [
                mv("upgrade", "bb@1", "bb@2", false),
                mv("rollback", "bb@2", "bb@1", true)
            ]
        );
        let want = if restored { "before\n" } else { "after\n" };
        assert_eq!(marker(&h, ve).as_deref(), Some(want), "VE {ve}");
        // The way back is kept.
        assert_snapshots_referenced(&h, ve);
        assert_eq!(snapshots(&h, ve).len(), 1);
    }
    let table = h.ok(&["history", "by-start"]);
    assert!(table.contains("rollback (interrupted)"), "{table}");
    // bb@1 is still what they go back to.
    let e = h.fails(&["template", "rm", "bb@1"]);
    assert!(e.contains("by-rollback (rollback)"), "{e}");
    let done = vec![
        mv("upgrade", "bb@1", "bb@2", false),
        mv("rollback", "bb@2", "bb@1", false),
    ];
    let rolled_back = |ve: &str| {
        assert_eq!(moves(&h, ve), done, "VE {ve}");
        assert_eq!(template(&h, ve), "bb@1");
        assert_eq!(marker(&h, ve).as_deref(), Some("before\n"), "VE {ve}");
        assert_eq!(h.json(&["show", ve])["disk_limit_bytes"], 64 << 20);
        assert_snapshots_referenced(&h, ve);
    };

    // rollback: completes the killed one, and rolls back nothing more.
    let out = h.ok(&["rollback", "by-rollback"]);
    assert!(out.contains("rolled back from bb@2 to bb@1"), "{out}");
    rolled_back("by-rollback");
    let e = h.fails(&["rollback", "by-rollback"]);
    assert!(e.contains("no upgrade to roll back"), "{e}");
    h.ok(&["start", "by-rollback"]);
    assert_runs_as(&h, "by-rollback", "bb@1", "before");
    assert_ne!(
        h.exec("by-rollback", &["test", "-e", "/root/later"]).code,
        0
    );

    // start: completes it first.
    h.ok(&["start", "by-start"]);
    rolled_back("by-start");
    assert_runs_as(&h, "by-start", "bb@1", "before");

    // clone: the source is completed first; the copy is of bb@1 and its files.
    h.ok(&["clone", "by-clone", "copy"]);
    rolled_back("by-clone");
    assert_eq!(template(&h, "copy"), "bb@1");
    h.ok(&["start", "copy"]);
    assert_runs_as(&h, "copy", "bb@1", "before");

    // pool check --repair.
    assert_eq!(
        interrupted_moves(&h, true),
        [("by-repair".to_string(), true)]
    );
    rolled_back("by-repair");
    h.ok(&["start", "by-repair"]);
    assert_runs_as(&h, "by-repair", "bb@1", "before");
    assert!(interrupted_moves(&h, false).is_empty());
    assert_no_leftovers(&h);
}

#[test]
fn crash_at_rollback_after_intent() {
    pending_rollback(
        "crash_at_rollback_after_intent",
        "rollback-after-intent",
        false,
    );
}

#[test]
fn crash_at_rollback_after_restore() {
    pending_rollback(
        "crash_at_rollback_after_restore",
        "rollback-after-restore",
        true,
    );
}

#[test]
fn crash_at_rollback_before_restart() {
    let Some(h) = host("crash_at_rollback_before_restart") else {
        return;
    };
    upgraded_ve(&h, "u", &[]);
    crash_at(&h, "rollback-before-restart", &["rollback", "u", "--fast"]);
    assert_eq!(status(&h, "u"), "stopped");
    assert_eq!(template(&h, "u"), "bb@1");
    assert_eq!(
        moves(&h, "u"),
        [
            mv("upgrade", "bb@1", "bb@2", false),
            mv("rollback", "bb@2", "bb@1", false)
        ]
    );
    assert_eq!(marker(&h, "u").as_deref(), Some("before\n"));
    h.ok(&["start", "u"]);
    assert_runs_as(&h, "u", "bb@1", "before");
    assert_no_leftovers(&h);
}

// ---- fleet rollouts ----

fn rollout<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "upgrade", "--all", "--from", "bb@1", "--to", "bb@2", "--batch", "1", "--fast",
    ];
    a.extend_from_slice(extra);
    a
}

/// (VE, outcome) of a rollout's `--json` rows.
fn outcomes(r: &integration::Run) -> Vec<(String, String)> {
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ve"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_rollout_killed_in_an_upgrade_is_finished_by_the_next_rollout() {
    let Some(h) = host("a_rollout_killed_in_an_upgrade_is_finished_by_the_next_rollout") else {
        return;
    };
    for ve in ["f1", "f2", "f3"] {
        running_ve(&h, ve, &[]);
    }
    crash_at(&h, "upgrade-after-snapshot", &rollout(&[]));
    assert_eq!(moves(&h, "f1"), [mv("upgrade", "bb@1", "bb@2", true)]);
    for ve in ["f2", "f3"] {
        assert!(moves(&h, ve).is_empty());
        assert_eq!(status(&h, ve), "running");
    }
    let mut args = vec!["--json"];
    args.extend(rollout(&[]));
    let r = h.run(&args);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        outcomes(&r),
        pairs(&[("f1", "upgraded"), ("f2", "upgraded"), ("f3", "upgraded")])
    );
    for ve in ["f1", "f2", "f3"] {
        assert_eq!(moves(&h, ve), [mv("upgrade", "bb@1", "bb@2", false)]);
        assert_snapshots_referenced(&h, ve);
        assert_eq!(snapshots(&h, ve).len(), 1, "VE {ve}");
    }
    // f1 was stopped by the killed run.
    assert_eq!(status(&h, "f1"), "stopped");
    h.ok(&["start", "f1"]);
    for ve in ["f1", "f2", "f3"] {
        assert_runs_as(&h, ve, "bb@2", "before");
    }
    assert_no_leftovers(&h);
}

#[test]
fn a_rollout_killed_in_a_rollback_is_finished_by_the_next_rollout() {
    let Some(h) = host("a_rollout_killed_in_a_rollback_is_finished_by_the_next_rollout") else {
        return;
    };
    for ve in ["f1", "f2", "f3"] {
        running_ve(&h, ve, &[]);
    }
    // f2 fails its health check: the rollout rolls it back, and is killed there.
    assert_eq!(h.exec("f2", &["touch", "/root/bad"]).code, 0);
    crash_at(
        &h,
        "rollback-after-restore",
        &rollout(&["--health", "test ! -e /root/bad"]),
    );
    assert_eq!(template(&h, "f1"), "bb@2");
    assert_eq!(
        moves(&h, "f2"),
        [
            mv("upgrade", "bb@1", "bb@2", false),
            mv("rollback", "bb@2", "bb@1", true)
        ]
    );
    assert!(moves(&h, "f3").is_empty());
    // The next rollout completes f2's rollback first: f2 is on bb@1 again, and
    // goes with f3.
    let mut args = vec!["--json"];
    args.extend(rollout(&[]));
    let r = h.run(&args);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        outcomes(&r),
        pairs(&[("f2", "upgraded"), ("f3", "upgraded")])
    );
    assert_eq!(
        moves(&h, "f2"),
        [
            mv("upgrade", "bb@1", "bb@2", false),
            mv("rollback", "bb@2", "bb@1", false),
            mv("upgrade", "bb@1", "bb@2", false)
        ]
    );
    for ve in ["f1", "f2", "f3"] {
        assert_snapshots_referenced(&h, ve);
    }
    h.ok(&["start", "f2"]);
    for ve in ["f1", "f2", "f3"] {
        assert_runs_as(&h, ve, "bb@2", "before");
    }
    assert_no_leftovers(&h);
}

// ---- clone ----

/// The MAC addresses in this host's firewall (its network namespace's nft
/// ruleset), and those of its VEs' NICs.
fn firewall_macs(h: &TestHost) -> (Vec<String>, Vec<String>) {
    let rules = integration::sh(&["nft", "list", "ruleset"]).unwrap();
    let mut in_rules: Vec<String> = rules
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .filter(|w| w.len() == 17 && w.bytes().filter(|b| *b == b':').count() == 5)
        .map(String::from)
        .collect();
    in_rules.sort();
    in_rules.dedup();
    let mut of_ves: Vec<String> = h
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["nics"].as_array().cloned().unwrap_or_default())
        .map(|n| n["mac"].as_str().unwrap().to_string())
        .collect();
    of_ves.sort();
    (in_rules, of_ves)
}

/// A clone killed while the source was frozen: not listed, the source thawed
/// by the next command on it; the next clone works.
fn clone_killed_while_frozen(h: &TestHost) {
    h.start_ve("src", &[]);
    wait_http(h, "src");
    write_marker(h, "src", "before");
    crash_at(h, "clone-while-frozen", &["clone", "src", "dst"]);
    assert!(listed(h, "dst").is_none());
    assert!(frozen(h, "src"), "the kill did not leave src frozen");
    // The next command on the source thaws it first.
    let r = run_guarded(h, &["exec", "src", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!frozen(h, "src"));
    assert_eq!(wait_http(h, "src"), "hello from src");
    // The next clone works.
    h.ok(&["clone", "src", "dst"]);
    assert_eq!(status(h, "dst"), "stopped");
    assert_eq!(marker(h, "dst").as_deref(), Some("before\n"));
    h.ok(&["start", "dst"]);
    assert_eq!(wait_http(h, "dst"), "hello from dst");
    assert!(!frozen(h, "src"));
    assert_no_leftovers(h);
}

#[test]
fn crash_at_clone_while_frozen() {
    let Some(h) = TestHost::with_btrfs("crash_at_clone_while_frozen", "1G") else {
        return;
    };
    clone_killed_while_frozen(&h);
}

#[test]
fn crash_at_clone_while_frozen_on_the_dir_pool() {
    let Some(h) = TestHost::new("crash_at_clone_while_frozen_on_the_dir_pool") else {
        return;
    };
    clone_killed_while_frozen(&h);
}

/// A clone killed after its copy was made: the destination is not listed; the
/// next clone of that name, or its destroy, removes what is left.
fn clone_killed_after_copy(test: &str, failpoint: &str) {
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    h.start_ve("src", &[]);
    write_marker(&h, "src", "before");
    let (rules, ves) = firewall_macs(&h);
    assert!(!ves.is_empty(), "src has no NIC");
    assert_eq!(rules, ves);
    for dst in ["again", "gone"] {
        crash_at(&h, failpoint, &["clone", "src", dst]);
        assert!(listed(&h, dst).is_none(), "{dst} listed");
        assert!(h.run(&["show", dst]).code != 0);
        // The copy is there, unlisted: a leftover.
        assert!(h.root().join("pool/ves").join(dst).is_dir());
        if failpoint == "clone-after-copy" {
            // And the read-only snapshot it was copied from.
            assert!(h.root().join("pool/ves/.src.clone").is_dir());
        }
        assert!(!frozen(&h, "src"));
    }
    assert_eq!(wait_http(&h, "src"), "hello from src");
    if failpoint == "clone-before-config" {
        // The killed clones' NICs were let through the firewall already.
        let (rules, ves) = firewall_macs(&h);
        assert_eq!(rules.len(), ves.len() + 2, "{rules:?} {ves:?}");
    }
    // The next clone of the name: complete, with the lowest free id.
    let cfg = h.json(&["clone", "src", "again"]);
    assert_eq!(cfg["config"]["id"], 101, "{cfg}");
    assert_eq!(marker(&h, "again").as_deref(), Some("before\n"));
    // The firewall was made again from the configs.
    let (rules, ves) = firewall_macs(&h);
    assert_eq!(rules, ves, "firewall entries of killed clones left");
    h.ok(&["start", "again"]);
    assert_eq!(wait_http(&h, "again"), "hello from again");
    // The next destroy of the name: nothing left.
    h.ok(&["destroy", "gone"]);
    assert_gone(&h, "gone");
    assert_no_leftovers(&h);
    let (rules, ves) = firewall_macs(&h);
    assert_eq!(rules, ves, "firewall entries of killed clones left");
    // And the name can be cloned to again.
    h.ok(&["clone", "src", "gone"]);
    h.ok(&["start", "gone"]);
    assert_eq!(wait_http(&h, "gone"), "hello from gone");
    assert_no_leftovers(&h);
}

#[test]
fn crash_at_clone_after_copy() {
    clone_killed_after_copy("crash_at_clone_after_copy", "clone-after-copy");
}

#[test]
fn crash_at_clone_before_config() {
    clone_killed_after_copy("crash_at_clone_before_config", "clone-before-config");
}

// ---- template rm ----

/// The versions of template `name` in `template list`.
fn versions(h: &TestHost, name: &str) -> Vec<u64> {
    h.json(&["template", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == name)
        .map(|t| t["version"].as_u64().unwrap())
        .collect()
}

fn template_rm_crash(test: &str, failpoint: &str) {
    let Some(h) = host(test) else {
        return;
    };
    publish(&h, "bb", "v3\n"); // bb@3
    // A version that is not the template's last: gone at once, and the next
    // rm of it finishes the removal (and finds no such version).
    crash_at(&h, failpoint, &["template", "rm", "bb@2"]);
    assert_eq!(versions(&h, "bb"), [1, 3]);
    let store = h.root().join("pool/templates");
    assert!(
        store.join("bb/.removing-2").is_dir(),
        "no removal was killed"
    );
    let e = h.fails(&["template", "show", "bb@2"]);
    assert!(e.contains("bb@2: no such version"), "{e}");
    let e = h.fails(&["create", "x", "--template", "bb@2"]);
    assert!(e.contains("no version 2"), "{e}");
    let e = h.fails(&["template", "rm", "bb@2"]);
    assert!(e.contains("no version 2"), "{e}");
    assert_no_leftovers(&h);
    // Finished by gc.
    crash_at(&h, failpoint, &["template", "rm", "bb@1"]);
    assert_eq!(versions(&h, "bb"), [3]);
    h.ok(&["template", "gc"]);
    assert_eq!(versions(&h, "bb"), [3]);
    assert_no_leftovers(&h);
    // Finished by an import, whose number is new (numbers are never reused).
    publish(&h, "bb", "v4\n");
    crash_at(&h, failpoint, &["template", "rm", "bb@3"]);
    assert_eq!(versions(&h, "bb"), [4]);
    publish(&h, "bb", "v5\n");
    assert_eq!(versions(&h, "bb"), [4, 5]);
    assert_no_leftovers(&h);

    // The last version takes the template with it, at once.
    publish(&h, "solo", "solo\n");
    crash_at(&h, failpoint, &["template", "rm", "solo"]);
    assert!(versions(&h, "solo").is_empty());
    assert!(
        store.join(".removing-solo").is_dir(),
        "no removal was killed"
    );
    let e = h.fails(&["template", "show", "solo"]);
    assert!(e.contains("no such template"), "{e}");
    // A new import of the name starts at 1; gc deletes what was left.
    publish(&h, "solo", "solo again\n");
    assert_eq!(versions(&h, "solo"), [1]);
    h.ok(&["template", "gc"]);
    assert_eq!(versions(&h, "solo"), [1]);
    assert_no_leftovers(&h);
    // The next rm of it finishes the removal (and finds no such template).
    crash_at(&h, failpoint, &["template", "rm", "solo"]);
    let e = h.fails(&["template", "rm", "solo"]);
    assert!(e.contains("no such template"), "{e}");
    assert_no_leftovers(&h);
    // What is left works.
    h.ok(&["create", "v", "--template", "bb"]);
    h.ok(&["start", "v"]);
    assert_eq!(h.exec("v", &["cat", "/etc/app.conf"]).stdout, "v5\n");
}

#[test]
fn crash_at_template_rm_after_rename() {
    template_rm_crash(
        "crash_at_template_rm_after_rename",
        "template-rm-after-rename",
    );
}

#[test]
fn crash_at_template_rm_after_metadata() {
    template_rm_crash(
        "crash_at_template_rm_after_metadata",
        "template-rm-after-metadata",
    );
}
