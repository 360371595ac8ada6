//! Crash safety: vectl killed with SIGKILL at every failpoint of create, start,
//! stop and destroy (VECTL_FAILPOINT), and at random moments, leaves a state from
//! which the next start, stop or destroy of the VE succeeds and is consistent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::*;

/// The VE is listed with a status that matches the kernel: "running" only with a
/// live init that serves, "stopped" with no live init.
#[track_caller]
fn consistent(h: &TestHost, ve: &str) -> String {
    let mut v = listed(h, ve).unwrap_or_else(|| panic!("VE {ve} is not listed"));
    // A killed command may have sent its SIGKILL to init just before it died
    // itself: an init listed alive may end a moment later, and is then listed
    // stopped.
    for _ in 0..20 {
        let gone = v["status"] == "running" && !alive(v["pid"].as_i64().unwrap() as i32);
        if !gone {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        v = listed(h, ve).unwrap_or_else(|| panic!("VE {ve} is not listed"));
    }
    let st = v["status"].as_str().unwrap().to_string();
    match st.as_str() {
        "running" => {
            let pid = v["pid"].as_i64().unwrap() as i32;
            assert!(
                alive(pid),
                "VE {ve} is listed running with a dead init {pid}"
            );
            let r = run_guarded(h, &["exec", ve, "--", "true"]);
            assert_eq!(r.code, 0, "VE {ve} is listed running, but exec: {r:?}");
        }
        "stopped" => {
            assert!(v.get("pid").is_none(), "{v}");
            let r = run_guarded(h, &["exec", ve, "--", "true"]);
            assert!(
                r.code == 1 && r.stderr.contains("not running"),
                "VE {ve} is listed stopped, but exec: {r:?}"
            );
        }
        other => panic!("VE {ve}: status {other}"),
    }
    st
}

/// A full healthy cycle of an existing, stopped VE: start, serve, stop, destroy.
#[track_caller]
fn full_cycle(h: &TestHost, ve: &str) {
    h.ok(&["start", ve]);
    assert_eq!(wait_http(h, ve), format!("hello from {ve}"));
    h.ok(&["stop", "--fast", ve]);
    assert_stopped_clean(h, ve);
    h.ok(&["destroy", ve]);
    assert_gone(h, ve);
}

fn create_crash(test: &str, failpoint: &str) {
    let Some(h) = TestHost::new(test) else {
        return;
    };
    // Recovery by creating again.
    crash_at(&h, failpoint, &["create", "cr1", "--template", "bb"]);
    assert!(listed(&h, "cr1").is_none(), "a killed create left a VE");
    let cfg = h.json(&["create", "cr1", "--template", "bb", "--pids", "50"]);
    assert_eq!(cfg["id"], 100, "{cfg}");
    assert_eq!(consistent(&h, "cr1"), "stopped");
    h.ok(&["start", "cr1"]);
    assert_eq!(knob(&h, "pids", "cr1", "pids.max"), "50");
    h.ok(&["stop", "--fast", "cr1"]);
    assert_stopped_clean(&h, "cr1");
    h.ok(&["destroy", "cr1"]);
    assert_host_empty(&h);

    // Recovery by destroying what is left (or being told there is nothing).
    crash_at(&h, failpoint, &["create", "cr2", "--template", "bb"]);
    let r = h.run(&["destroy", "cr2"]);
    no_panic(&r);
    assert!(
        r.code == 0 || (r.code == 1 && r.stderr.contains("no such VE")),
        "{r:?}"
    );
    assert_host_empty(&h);
    // The name and the id are free.
    let cfg = h.json(&["create", "cr2", "--template", "bb"]);
    assert_eq!(cfg["id"], 100, "{cfg}");
    full_cycle(&h, "cr2");
    assert_host_empty(&h);
}

#[test]
fn crash_at_create_before_volume() {
    create_crash("crash_at_create_before_volume", "create-before-volume");
}

#[test]
fn crash_at_create_after_volume() {
    create_crash("crash_at_create_after_volume", "create-after-volume");
}

fn start_crash(test: &str, failpoint: &str) {
    let Some(h) = TestHost::new(test) else {
        return;
    };
    for ve in ["by-start", "by-stop", "by-destroy"] {
        h.ok(&["create", ve, "--template", "bb", "--ram", "128M"]);
        crash_at(&h, failpoint, &["start", ve]);
        // A half-started init exits when it sees vectl gone (its pipe closes).
        assert!(
            wait_until(Duration::from_secs(10), || status(&h, ve) == "stopped"),
            "{ve} still listed running after a start killed at {failpoint}"
        );
        assert_eq!(
            consistent(&h, ve),
            "stopped",
            "after a start killed at {failpoint}"
        );
    }
    // The next start works (and the limits are right).
    h.ok(&["start", "by-start"]);
    assert_eq!(consistent(&h, "by-start"), "running");
    assert_eq!(wait_http(&h, "by-start"), "hello from by-start");
    assert_eq!(kernel(&h, "by-start").0, "134217728");
    h.ok(&["stop", "--fast", "by-start"]);
    assert_stopped_clean(&h, "by-start");
    // The next stop cleans up.
    h.ok(&["stop", "by-stop"]);
    assert_stopped_clean(&h, "by-stop");
    full_cycle(&h, "by-stop");
    // The next destroy removes everything.
    h.ok(&["destroy", "by-destroy"]);
    assert_gone(&h, "by-destroy");
    h.ok(&["destroy", "by-start"]);
    assert_host_empty(&h);
}

#[test]
fn crash_at_start_after_cgroup() {
    start_crash("crash_at_start_after_cgroup", "start-after-cgroup");
}

#[test]
fn crash_at_start_after_clone() {
    start_crash("crash_at_start_after_clone", "start-after-clone");
}

#[test]
fn crash_at_start_before_go() {
    start_crash("crash_at_start_before_go", "start-before-go");
}

/// Stops `ves` in parallel with a failpoint (graceful stops take seconds).
fn crash_stops(h: &TestHost, failpoint: &str, args: &[&str], ves: &[&str]) {
    std::thread::scope(|s| {
        for ve in ves {
            s.spawn(move || {
                let mut a = args.to_vec();
                a.push(ve);
                crash_at(h, failpoint, &a);
            });
        }
    });
}

#[test]
fn crash_at_stop_before_signal() {
    let Some(h) = TestHost::new("crash_at_stop_before_signal") else {
        return;
    };
    let ves = ["by-stop", "by-destroy", "by-start"];
    for ve in ves {
        h.start_ve(ve, &[]);
    }
    wait_http(&h, "by-stop");
    let pids: Vec<i32> = ves.iter().map(|v| h.init_pid(v)).collect();
    crash_stops(&h, "stop-before-signal", &["stop"], &ves);
    for (ve, pid) in ves.iter().zip(&pids) {
        // Nothing was done yet: the VE runs on, unharmed.
        assert_eq!(consistent(&h, ve), "running");
        assert_eq!(h.init_pid(ve), *pid);
    }
    assert_eq!(wait_http(&h, "by-stop"), "hello from by-stop");
    // The next stop stops it (gracefully: init never got the signal).
    let out = h.ok(&["stop", "by-stop"]);
    assert_eq!(out.trim(), "stopped VE by-stop");
    assert_stopped_clean(&h, "by-stop");
    // The next destroy --force removes it.
    h.ok(&["destroy", "--force", "by-destroy"]);
    assert_gone(&h, "by-destroy");
    // The next start says it runs; it still does.
    let line = h.fails(&["start", "by-start"]);
    assert!(
        line.contains("by-start") && line.contains("running"),
        "{line}"
    );
    assert_eq!(h.exec("by-start", &["true"]).code, 0);
    h.ok(&["stop", "--fast", "by-start"]);
    full_cycle(&h, "by-start");
    full_cycle(&h, "by-stop");
    assert_host_empty(&h);
}

#[test]
fn crash_at_stop_before_kill() {
    let Some(h) = TestHost::new("crash_at_stop_before_kill") else {
        return;
    };
    // Graceful: init halts, then vectl dies before it cleans up.
    let ves = ["by-start", "by-stop", "by-destroy"];
    for ve in ves {
        h.start_ve(ve, &[]);
        wait_http(&h, ve);
    }
    let pids: Vec<i32> = ves.iter().map(|v| h.init_pid(v)).collect();
    crash_stops(&h, "stop-before-kill", &["stop"], &ves);
    for (ve, pid) in ves.iter().zip(&pids) {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(*pid)),
            "init of {ve} still runs"
        );
        assert_eq!(consistent(&h, ve), "stopped");
    }
    h.ok(&["start", "by-start"]);
    assert_eq!(wait_http(&h, "by-start"), "hello from by-start");
    h.ok(&["stop", "--fast", "by-start"]);
    assert_stopped_clean(&h, "by-start");
    let out = h.ok(&["stop", "by-stop"]);
    assert!(out.contains("was not running"), "{out}");
    assert_stopped_clean(&h, "by-stop");
    h.ok(&["destroy", "by-destroy"]);
    assert_gone(&h, "by-destroy");

    // Fast: vectl dies before it kills anything; the VE runs on.
    h.ok(&["start", "by-stop"]);
    let pid = h.init_pid("by-stop");
    crash_at(&h, "stop-before-kill", &["stop", "--fast", "by-stop"]);
    assert_eq!(consistent(&h, "by-stop"), "running");
    assert_eq!(h.init_pid("by-stop"), pid);
    h.ok(&["stop", "--fast", "by-stop"]);
    assert_stopped_clean(&h, "by-stop");
    full_cycle(&h, "by-start");
    full_cycle(&h, "by-stop");
    assert_host_empty(&h);
}

#[test]
fn crash_at_destroy_after_tombstone() {
    let Some(h) = TestHost::new("crash_at_destroy_after_tombstone") else {
        return;
    };
    h.ok(&["create", "stopped1", "--template", "bb"]);
    h.start_ve("running1", &[]);
    h.ok(&["create", "recreated", "--template", "bb"]);
    crash_at(&h, "destroy-after-tombstone", &["destroy", "stopped1"]);
    crash_at(
        &h,
        "destroy-after-tombstone",
        &["destroy", "--force", "running1"],
    );
    crash_at(&h, "destroy-after-tombstone", &["destroy", "recreated"]);
    // Half-destroyed VEs are not listed, cannot be started, and hold no process.
    for ve in ["stopped1", "running1", "recreated"] {
        assert!(listed(&h, ve).is_none(), "{ve} is still listed");
        let line = h.fails(&["start", ve]);
        assert!(line.contains(ve), "{line}");
        assert!(leftover_procs(&h, ve).is_empty(), "{ve}");
    }
    // The next destroy finishes the job.
    h.ok(&["destroy", "stopped1"]);
    assert_gone(&h, "stopped1");
    h.ok(&["destroy", "running1"]);
    assert_gone(&h, "running1");
    // Or a create of the same name does, and the new VE works.
    let cfg = h.json(&["create", "recreated", "--template", "bb"]);
    assert_eq!(cfg["id"], 100, "{cfg}");
    full_cycle(&h, "recreated");
    assert_host_empty(&h);
}

#[test]
fn random_kills_of_create_start_stop_destroy_are_recovered() {
    let Some(h) = TestHost::new("random_kills_of_create_start_stop_destroy_are_recovered") else {
        return;
    };
    let mut rng = Rng::new();
    // Kills `vectl ARGS` after a random delay of 0..30 ms (it may have finished).
    let mut killed_run = |args: &[&str]| {
        let mut child = spawn(&h, args);
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        let _ = child.kill();
        let r = finish(child);
        no_panic(&r);
        // A half-started init exits when it sees vectl gone; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
    };
    for i in 0..10 {
        let ve = format!("rnd{i}");
        let ve = ve.as_str();

        killed_run(&["create", ve, "--template", "bb", "--pids", "40"]);
        if listed(&h, ve).is_none() {
            h.ok(&["create", ve, "--template", "bb", "--pids", "40"]);
        }
        assert_eq!(consistent(&h, ve), "stopped", "iteration {i}");

        killed_run(&["start", ve]);
        if consistent(&h, ve) == "stopped" {
            h.ok(&["start", ve]);
        }
        assert_eq!(consistent(&h, ve), "running", "iteration {i}");
        assert_eq!(knob(&h, "pids", ve, "pids.max"), "40");

        // Stops are short: three tries to land a kill inside one.
        for _ in 0..3 {
            killed_run(&["stop", "--fast", ve]);
            if consistent(&h, ve) == "stopped" {
                h.ok(&["stop", "--fast", ve]);
                assert_stopped_clean(&h, ve);
                h.ok(&["start", ve]);
            }
        }
        h.ok(&["stop", "--fast", ve]);
        assert_stopped_clean(&h, ve);

        h.ok(&["start", ve]);
        killed_run(&["destroy", "--force", ve]);
        if listed(&h, ve).is_some() {
            consistent(&h, ve);
        }
        let r = h.run(&["destroy", "--force", ve]);
        no_panic(&r);
        assert!(
            r.code == 0 || (r.code == 1 && r.stderr.contains("no such VE")),
            "iteration {i}: {r:?}"
        );
        assert_gone(&h, ve);
    }
    assert_host_empty(&h);
}

#[test]
fn a_ve_left_frozen_by_a_killed_stop_is_recovered() {
    let Some(h) = TestHost::new("a_ve_left_frozen_by_a_killed_stop_is_recovered") else {
        return;
    };
    // `stop` freezes the VE's cgroup, kills everything in it and thaws it. A
    // vectl killed in between leaves the VE frozen, as this test does by hand.
    let freezer = h.cgroup_dir("freezer", "cold");
    h.start_ve("cold", &[]);
    h.start_ve("cold2", &[]);
    wait_http(&h, "cold");
    if !freezer.join("freezer.state").exists() {
        integration::skip(
            "a_ve_left_frozen_by_a_killed_stop_is_recovered",
            "no v1 freezer",
        );
        return;
    }
    for ve in ["cold", "cold2"] {
        std::fs::write(h.cgroup_dir("freezer", ve).join("freezer.state"), "FROZEN").unwrap();
    }
    // The next command sees a consistent VE (and does not hang on it).
    consistent(&h, "cold");
    // The next stop finishes the job; the next start works.
    let r = run_guarded(&h, &["stop", "--fast", "cold"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_stopped_clean(&h, "cold");
    full_cycle(&h, "cold");
    // The next destroy, too.
    let r = run_guarded(&h, &["destroy", "--force", "cold2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_gone(&h, "cold2");
    assert_host_empty(&h);
}

#[test]
fn a_damaged_runtime_state_file_does_not_wedge_the_ve() {
    let Some(h) = TestHost::new("a_damaged_runtime_state_file_does_not_wedge_the_ve") else {
        return;
    };
    // run/NAME.json is written without fsync ("it means nothing after a reboot"),
    // so a power cut can leave it empty; it is a hint, the kernel is the truth.
    h.ok(&["create", "after-reboot", "--template", "bb"]);
    std::fs::write(h.root().join("run/after-reboot.json"), "").unwrap();
    let r = run_guarded(&h, &["start", "after-reboot"]);
    assert_eq!(r.code, 0, "an empty state file blocks start: {r:?}");
    assert_eq!(consistent(&h, "after-reboot"), "running");

    // A running VE whose state file is damaged can still be stopped and destroyed.
    h.start_ve("damaged", &[]);
    h.start_ve("damaged2", &[]);
    for ve in ["damaged", "damaged2"] {
        std::fs::write(h.root().join(format!("run/{ve}.json")), "{garbage").unwrap();
    }
    let r = run_guarded(&h, &["stop", "--fast", "damaged"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_stopped_clean(&h, "damaged");
    full_cycle(&h, "damaged");
    let r = run_guarded(&h, &["destroy", "--force", "damaged2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_gone(&h, "damaged2");
}

/// The limits a VE's config holds, as (memory bytes, pids) the way [`kernel`]
/// reads them back.
fn config_limits(h: &TestHost, ve: &str) -> (String, String) {
    let text = config_text(h, ve);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in the config of {ve}:\n{text}"))
            .trim_matches('"')
            .to_string()
    };
    let ram = field("ram");
    let mib: u64 = ram.strip_suffix('M').unwrap().parse().unwrap();
    ((mib << 20).to_string(), field("pids"))
}

/// A `set` killed between writing the config and the kernel (in either order)
/// leaves them disagreeing only until the next command on the VE: after it,
/// the kernel's knobs are the config's, and they are the new ones.
fn set_crash(test: &str, failpoint: &str) {
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let nexts: [(&str, &[&str]); 4] = [
        ("by-show", &["show"]),
        ("by-start", &["start"]),
        ("by-set", &["set", "--cpu-limit", "50%"]),
        ("by-exec", &["exec", "--", "true"]),
    ];
    for (ve, next) in nexts {
        h.start_ve(ve, &["--ram", "128M", "--pids", "50"]);
        let before = kernel(&h, ve);
        assert_eq!((before.0.as_str(), before.2.as_str()), ("134217728", "50"));
        crash_at(&h, failpoint, &["set", ve, "--ram", "256M", "--pids", "60"]);
        // The next command, whatever it is (a start of a running VE is refused).
        let mut args = next.to_vec();
        args.insert(1, ve);
        let r = run_guarded(&h, &args);
        no_panic(&r);
        let (ram, _, pids) = kernel(&h, ve);
        assert_eq!(
            (ram, pids),
            config_limits(&h, ve),
            "VE {ve}: kernel and config disagree after `{}` following a set killed at {failpoint}",
            next.join(" ")
        );
        assert_eq!(
            config_limits(&h, ve),
            ("268435456".to_string(), "60".to_string()),
            "VE {ve}: the killed set was not finished"
        );
        let show = h.json(&["show", ve]);
        assert_eq!(show["ram_limit_bytes"], 256 << 20, "{show}");
        assert_eq!(consistent(&h, ve), "running");
        // And the VE goes on as usual.
        h.ok(&["set", ve, "--pids", "70"]);
        assert_eq!(knob(&h, "pids", ve, "pids.max"), "70");
        h.ok(&["stop", "--fast", ve]);
        assert_stopped_clean(&h, ve);
        h.ok(&["destroy", ve]);
        assert_gone(&h, ve);
    }
    // A stopped VE: the next start starts it with the config's limits.
    h.ok(&["create", "stopped", "--template", "bb", "--pids", "50"]);
    crash_at(&h, failpoint, &["set", "stopped", "--pids", "60"]);
    h.ok(&["start", "stopped"]);
    assert_eq!(knob(&h, "pids", "stopped", "pids.max"), "60");
    assert!(config_text(&h, "stopped").contains("pids = 60"));
    h.ok(&["stop", "--fast", "stopped"]);
    h.ok(&["destroy", "stopped"]);
    assert_host_empty(&h);
}

#[test]
fn crash_at_set_after_config() {
    set_crash("crash_at_set_after_config", "set-after-config");
}

#[test]
fn crash_at_set_after_kernel() {
    set_crash("crash_at_set_after_kernel", "set-after-kernel");
}

/// The VE's elements in the firewall (its address and MAC in vectl's sets).
fn firewall_text() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nft list ruleset: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_create_killed_after_its_firewall_elements_leaves_none_after_the_next_command() {
    let test = "a_create_killed_after_its_firewall_elements_leaves_none_after_the_next_command";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let before = firewall_text();
    crash_at(
        &h,
        "create-after-firewall",
        &["create", "half", "--template", "bb", "--ip", "10.200.0.77"],
    );
    // The killed create allowed its address in the firewall; no config says so.
    assert!(
        firewall_text().contains("10.200.0.77"),
        "{}",
        firewall_text()
    );
    // The next command, whatever it is, makes the ruleset again from the configs.
    h.ok(&["list"]);
    let after = firewall_text();
    assert!(!after.contains("10.200.0.77"), "{after}");
    assert_eq!(after, before);
    // A destroy killed after its tombstone: the next command removes its elements.
    h.ok(&["create", "gone", "--template", "bb", "--ip", "10.200.0.78"]);
    assert!(firewall_text().contains("10.200.0.78"));
    crash_at(&h, "destroy-after-tombstone", &["destroy", "gone"]);
    h.ok(&["list"]);
    assert!(
        !firewall_text().contains("10.200.0.78"),
        "{}",
        firewall_text()
    );
    assert_eq!(firewall_text(), before);
    assert!(!h.root().join("run/firewall.pending").exists());
}
