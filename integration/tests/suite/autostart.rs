//! Autostart and restart: `host boot` starts the `--onboot` VEs by boot order
//! and `host shutdown` stops them all; the supervisor (`vectl supervise`)
//! records how an init ended (`crashed`, `exited`, with its signal or status)
//! and restarts VEs as their `--restart` policy says, with back-off, while
//! `vectl stop` is never taken for a crash.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use crate::common::*;

fn status(h: &TestHost, ve: &str) -> String {
    h.json(&["show", ve])["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Its init's pid if it runs now (one `show`: status and pid agree).
fn running_pid(h: &TestHost, ve: &str) -> Option<i64> {
    let j = h.json(&["show", ve]);
    (j["status"] == "running")
        .then(|| j["pid"].as_i64())
        .flatten()
}

fn kill_init(h: &TestHost, ve: &str) -> i32 {
    let pid = h.init_pid(ve);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    pid
}

/// The start time of a process, in clock ticks after boot.
fn start_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn the_supervisor_records_how_inits_end_and_restarts_as_the_policy_says() {
    let Some(h) = TestHost::new("the_supervisor_records_how_inits_end") else {
        return;
    };
    h.start_ve("cn", &["--restart", "no"]);
    h.start_ve("cf", &["--restart", "on-failure"]);
    h.start_ve("cr", &["--restart", "on-failure"]);
    let _sup = Supervisor::start(&h);

    // No restart: crashed, with the signal, until stopped by hand.
    kill_init(&h, "cn");
    wait_for("cn crashed", || status(&h, "cn") == "crashed");
    let show = h.json(&["show", "cn"]);
    assert_eq!(show["last_exit"]["signal"], "SIGKILL", "{show}");
    assert_eq!(show["last_exit"]["restarts"], 0, "{show}");
    let text = h.ok(&["show", "cn"]);
    assert!(text.contains("killed by SIGKILL"), "{text}");
    assert!(h.ok(&["list", "--status", "crashed"]).contains("cn"));
    assert!(h.ok(&["list", "--status", "stopped"]).contains("cn"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&h, "cn"), "crashed", "policy no: not restarted");
    h.ok(&["stop", "cn"]);
    assert_eq!(status(&h, "cn"), "stopped");
    assert!(h.json(&["show", "cn"]).get("last_exit").is_none());
    // And stays so: the supervisor does not record that end again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&h, "cn"), "stopped");
    assert!(h.json(&["show", "cn"]).get("last_exit").is_none());

    // On failure: started again, and says why.
    let old = kill_init(&h, "cf");
    wait_for("cf restarted", || {
        running_pid(&h, "cf").is_some_and(|p| p != i64::from(old))
    });
    let show = h.json(&["show", "cf"]);
    assert_eq!(show["last_exit"]["signal"], "SIGKILL", "{show}");
    assert_eq!(show["last_exit"]["restarts"], 1, "{show}");

    // A graceful stop is no crash, whatever the policy.
    let out = h.ok(&["stop", "cf"]);
    assert!(out.contains("stopped VE cf"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&h, "cf"), "stopped");

    // A reboot from inside ends init with SIGKILL (the kernel's way for a
    // PID namespace): on-failure brings the VE back.
    let old = h.init_pid("cr");
    let _ = h.exec("cr", &["reboot", "-f"]);
    wait_for("cr back after its reboot", || {
        running_pid(&h, "cr").is_some_and(|p| p != i64::from(old))
    });
    assert_eq!(h.json(&["show", "cr"])["last_exit"]["signal"], "SIGKILL");

    // A start that fails after recording its init (here: vectl killed before
    // it lets init run, which then leaves) is no crash: not recorded, not
    // restarted, whatever the policy.
    h.ok(&["create", "cz", "--template", "bb", "--restart", "always"]);
    crash_at(&h, "start-before-go", &["start", "cz"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&h, "cz"), "stopped");
    assert!(h.json(&["show", "cz"]).get("last_exit").is_none());
    h.ok(&["start", "cz"]);
    h.ok(&["stop", "--fast", "cz"]);
}

#[test]
fn an_init_that_exits_is_told_from_one_that_fails_and_restarts_back_off() {
    let Some(h) = TestHost::new("an_init_that_exits_is_told_from_one_that_fails") else {
        return;
    };
    let _sup = Supervisor::start(&h);
    // Exit status 0 with on-failure: exited, not restarted.
    h.start_ve(
        "ce",
        &[
            "--restart",
            "on-failure",
            "--init",
            "/bin/sh -c 'sleep 1; exit 0'",
        ],
    );
    wait_for("ce exited", || status(&h, "ce") == "exited");
    assert_eq!(h.json(&["show", "ce"])["last_exit"]["code"], 0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&h, "ce"), "exited");
    assert!(h.ok(&["list", "--status", "exited"]).contains("ce"));
    // Status 3 with always: restarted with back-off (1 s, 2 s, ...), counting.
    h.start_ve(
        "cx",
        &[
            "--restart",
            "always",
            "--init",
            "/bin/sh -c 'sleep 1; exit 3'",
        ],
    );
    let t0 = Instant::now();
    wait_for("cx restarted twice", || {
        h.json(&["show", "cx"])["last_exit"]["restarts"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    });
    // Two runs of 1 s and back-offs of 1 s and 2 s (the second not over yet).
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(h.json(&["show", "cx"])["last_exit"]["code"], 3);
    // A stop by hand ends it: no restart is pending any more.
    h.ok(&["stop", "cx"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(status(&h, "cx"), "stopped");
    // The supervisor's restart that lost the race for the VE's lock to that
    // stop (its `vectl start` already spawned) leaves it stopped.
    let late = h.run(&["start", "--pending-restart", "cx"]);
    assert_eq!(late.code, 0, "{late:?}");
    assert!(late.stderr.contains("not restarted"), "{late:?}");
    assert_eq!(status(&h, "cx"), "stopped");

    // An init that ends before the supervisor holds it (here: while the
    // supervisor is stopped) is seen all the same, with its status. (`start`
    // waits 5 s for the stopped supervisor to take the console, so the init
    // outlives that.)
    h.ok(&[
        "create",
        "cq",
        "--template",
        "bb",
        "--restart",
        "no",
        "--init",
        "/bin/sh -c 'sleep 7; exit 4'",
    ]);
    let sup = nix::unistd::Pid::from_raw(_sup.0.id().cast_signed());
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = h.run(&["start", "cq"]);
    assert_eq!(started.code, 0, "{started:?}");
    let show = h.json(&["show", "cq"]);
    let pid = show["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("cq has no init after start: {show}"));
    wait_for("cq's init to end", || !alive(pid as i32));
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for("cq crashed", || status(&h, "cq") == "crashed");
    assert_eq!(h.json(&["show", "cq"])["last_exit"]["code"], 4);
}

#[test]
fn onboot_ves_start_by_boot_order_at_boot_and_all_stop_gracefully_at_shutdown() {
    let Some(h) = TestHost::new("onboot_ves_start_by_boot_order") else {
        return;
    };
    h.ok(&[
        "create",
        "b1",
        "--template",
        "bb",
        "--onboot",
        "yes",
        "--boot-order",
        "2",
    ]);
    for ve in ["b2", "b3"] {
        h.ok(&[
            "create",
            ve,
            "--template",
            "bb",
            "--onboot",
            "yes",
            "--boot-order",
            "1",
        ]);
    }
    h.ok(&["create", "b4", "--template", "bb"]);
    h.ok(&["create", "b5", "--template", "bb"]);
    h.ok(&["set", "b5", "--onboot", "yes"]);
    assert_eq!(
        h.json(&["show", "b5"])["autostart"],
        serde_json::json!({"onboot": true, "boot_order": 0, "restart": "no"})
    );
    // A simulated boot: nothing of the root's is on the host.
    h.ok(&["host", "teardown", "--fast"]);
    let r = h.run(&["host", "boot"]);
    assert_eq!(r.code, 0, "{r:?}");
    for ve in ["b1", "b2", "b3", "b5"] {
        assert_eq!(status(&h, ve), "running", "{ve}");
    }
    assert_eq!(status(&h, "b4"), "stopped");
    // Order 0, then 1, then 2: each order started before the next began.
    let t = |ve: &str| start_ticks(h.init_pid(ve));
    assert!(t("b5") <= t("b2").min(t("b3")), "{r:?}");
    assert!(t("b2").max(t("b3")) <= t("b1"), "{r:?}");
    let notes: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("boot order"))
        .collect();
    assert_eq!(notes.len(), 3, "{r:?}");
    assert!(notes[1].contains("b2") && notes[1].contains("b3"), "{r:?}");
    // Again: nothing to do.
    let again = h.run(&["host", "boot"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stdout.contains("started"), "{again:?}");
    // Shutdown: every running VE, gracefully.
    h.ok(&["start", "b4"]);
    let r = h.run(&["host", "shutdown"]);
    assert_eq!(r.code, 0, "{r:?}");
    for ve in ["b1", "b2", "b3", "b4", "b5"] {
        assert_eq!(status(&h, ve), "stopped", "{ve}");
        assert!(r.stdout.contains(&format!("stopped VE {ve}\n")), "{r:?}");
    }
    assert!(!r.stdout.contains("killed"), "{r:?}");
    // Bad values are refused with one line.
    let err = h.fails_usage(&["set", "b1", "--restart", "sometimes"]);
    assert!(err.contains("sometimes"), "{err}");
    let err = h.fails_usage(&["set", "b1", "--onboot", "perhaps"]);
    assert!(err.contains("perhaps"), "{err}");
}
