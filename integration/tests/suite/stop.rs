//! Stopping VEs: graceful halt through the init's signal, --fast, timeouts, inits
//! that do not listen, and VEs whose init died on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::*;

/// Runs `vectl ARGS` with `VECTL_FAILPOINT=POINT` (vectl dies by SIGKILL if it
/// reaches that point of the stop path), stdin null, killed after a generous 120 s
/// (a hang guard, not a timing); returns what it printed and whether it died there.
fn run_with_failpoint(h: &TestHost, point: &str, args: &[&str]) -> (Run, bool) {
    let mut child = h
        .command()
        .args(args)
        .env("VECTL_FAILPOINT", point)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_until(Duration::from_secs(120), || {
        child.try_wait().unwrap().is_some()
    }) {
        let _ = child.kill();
        panic!("vectl {args:?} (VECTL_FAILPOINT={point}) still runs after 120 s");
    }
    let out = child.wait_with_output().unwrap();
    let died = killed_by_sigkill(out.status);
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, died)
}

#[test]
fn a_graceful_stop_halts_busybox_init() {
    let Some(h) = TestHost::new("a_graceful_stop_halts_busybox_init") else {
        return;
    };
    h.start_ve("calm", &[]);
    wait_http(&h, "calm");
    let pid = h.init_pid("calm");
    assert_eq!(h.json(&["show", "calm"])["stop_signal"], "SIGUSR1");
    let out = h.ok(&["stop", "calm"]);
    assert_eq!(out.trim(), "stopped VE calm", "not a graceful halt: {out}");
    assert!(!out.contains("killed"));
    assert!(!alive(pid), "init {pid} still runs");
    assert_stopped_clean(&h, "calm");
    // A second stop is a no-op that says so.
    let again = h.ok(&["stop", "calm"]);
    assert!(again.contains("was not running"), "{again}");
    // And the JSON outcome of a graceful stop.
    h.ok(&["start", "calm"]);
    wait_http(&h, "calm");
    let j = h.json(&["stop", "calm"]);
    assert_eq!(j["outcome"], "halted", "{j}");
    assert_stopped_clean(&h, "calm");
}

#[test]
fn a_fast_stop_kills_at_once() {
    let Some(h) = TestHost::new("a_fast_stop_kills_at_once") else {
        return;
    };
    h.start_ve("quick", &[]);
    wait_http(&h, "quick");
    // Some extra processes in the VE, detached from the init.
    let r = h.exec(
        "quick",
        &["sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"],
    );
    assert_eq!(r.code, 0);
    assert!(leftover_procs(&h, "quick").len() >= 3);
    // At once: vectl never reaches the point where it signals the init (and
    // would then wait for it), it kills.
    let (r, died) = run_with_failpoint(&h, "stop-before-signal", &["stop", "--fast", "quick"]);
    assert!(!died, "a fast stop went to signal the init and wait: {r:?}");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "stopped VE quick (killed)");
    assert_stopped_clean(&h, "quick");
}

#[test]
fn an_init_that_does_not_listen_is_killed_at_once() {
    let Some(h) = TestHost::new("an_init_that_does_not_listen_is_killed_at_once") else {
        return;
    };
    h.start_ve("deaf", &["--init", "/usr/sbin/httpd -f -p 80 -h /etc"]);
    // Its init is httpd, as PID 1.
    let ps = h.exec("deaf", &["ps", "-o", "pid,args"]).stdout;
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("httpd")),
        "{ps}"
    );
    let page = h.exec("deaf", &["wget", "-qO-", "http://127.0.0.1/hosts"]);
    assert!(page.stdout.contains("localhost"), "{page:?}");
    // Killed at once: vectl neither sends the init a signal it cannot hear nor
    // waits for it (it never reaches the point before the signal, after which
    // it would wait), so even a timeout of an hour ends at once, "killed".
    let (r, died) = run_with_failpoint(
        &h,
        "stop-before-signal",
        &["stop", "--timeout", "3600", "deaf"],
    );
    assert!(
        !died,
        "vectl went to signal (and wait for) an init that cannot hear it: {r:?}"
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "stopped VE deaf (killed)");
    assert_stopped_clean(&h, "deaf");
}

#[test]
fn an_init_that_ignores_the_stop_signal_is_killed_after_the_timeout() {
    let Some(h) = TestHost::new("an_init_that_ignores_the_stop_signal_is_killed_after_the_timeout")
    else {
        return;
    };
    // Busybox init listens for SIGHUP (it re-reads inittab) but does not halt.
    h.start_ve("stubborn", &["--stop-signal", "SIGHUP"]);
    wait_http(&h, "stubborn");
    assert_eq!(h.json(&["show", "stubborn"])["stop_signal"], "SIGHUP");
    let pid = h.init_pid("stubborn");
    // vectl signals this init (it listens): it reaches the point before the
    // signal.
    let (r, died) = run_with_failpoint(
        &h,
        "stop-before-signal",
        &["stop", "--timeout", "1", "stubborn"],
    );
    assert!(
        died,
        "vectl did not go to signal an init that listens: {r:?}"
    );
    assert!(alive(pid), "init {pid} died without a signal");
    // After the timeout, before the kill, the init still runs: the signal did not
    // halt it, and vectl waited for the timeout rather than for its exit.
    let (r, died) = run_with_failpoint(
        &h,
        "stop-before-kill",
        &["stop", "--timeout", "1", "stubborn"],
    );
    assert!(
        died,
        "vectl did not reach the kill after the timeout: {r:?}"
    );
    assert!(alive(pid), "init {pid} halted on SIGHUP");
    // And the stop kills it, saying so.
    let out = h.ok(&["stop", "--timeout", "1", "stubborn"]);
    assert_eq!(out.trim(), "stopped VE stubborn (killed)");
    assert!(!alive(pid));
    assert_stopped_clean(&h, "stubborn");
}

#[test]
fn a_ve_whose_init_died_shows_stopped_and_starts_again() {
    let Some(h) = TestHost::new("a_ve_whose_init_died_shows_stopped_and_starts_again") else {
        return;
    };
    h.start_ve("crashy", &[]);
    wait_http(&h, "crashy");
    let pid = h.init_pid("crashy");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    assert_eq!(status(&h, "crashy"), "stopped");
    let show = h.json(&["show", "crashy"]);
    assert_eq!(show["status"], "stopped");
    assert!(show.get("pid").is_none(), "{show}");
    let line = h.fails(&["exec", "crashy", "--", "true"]);
    assert!(
        line.contains("crashy") && line.contains("not running"),
        "{line}"
    );
    // The next start cleans up what is left and runs it again.
    let out = h.ok(&["start", "crashy"]);
    assert!(out.contains("started VE crashy"), "{out}");
    let pid2 = h.init_pid("crashy");
    assert_ne!(pid, pid2);
    assert_eq!(status(&h, "crashy"), "running");
    assert_eq!(wait_http(&h, "crashy"), "hello from crashy");
    // Only the new VE's processes are in its cgroups.
    for p in leftover_procs(&h, "crashy") {
        let ns = std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
        assert_eq!(
            ns,
            std::fs::read_link(format!("/proc/{pid2}/ns/pid")).unwrap(),
            "process {p} is not of the new VE"
        );
    }
}

#[test]
fn a_ve_whose_init_died_is_cleaned_up_by_stop_and_destroy() {
    let Some(h) = TestHost::new("a_ve_whose_init_died_is_cleaned_up_by_stop_and_destroy") else {
        return;
    };
    for ve in ["dead1", "dead2"] {
        h.start_ve(ve, &[]);
        let pid = h.init_pid(ve);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
        assert_eq!(status(&h, ve), "stopped");
    }
    let out = h.ok(&["stop", "dead1"]);
    assert!(out.contains("was not running"), "{out}");
    assert_stopped_clean(&h, "dead1");
    // destroy without --force: the VE is not running any more.
    h.ok(&["destroy", "dead2"]);
    assert_gone(&h, "dead2");
}

#[test]
fn restart_gives_a_new_init() {
    let Some(h) = TestHost::new("restart_gives_a_new_init") else {
        return;
    };
    h.start_ve("again", &[]);
    let pid = h.init_pid("again");
    let out = h.ok(&["restart", "--fast", "again"]);
    assert!(out.contains("started VE again"), "{out}");
    assert_ne!(h.init_pid("again"), pid);
    assert!(!alive(pid));
    assert_eq!(wait_http(&h, "again"), "hello from again");
}

/// The vectl processes that are children of `pid`.
fn vectl_children(pid: u32) -> usize {
    let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return 0;
    };
    list.split_whitespace()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm == "vectl\n")
        })
        .count()
}

#[test]
fn several_ves_start_and_stop_at_once_and_all_takes_those_in_that_state() {
    let Some(h) = TestHost::new("several_ves_start_and_stop_at_once") else {
        return;
    };
    let names = ["m1", "m2", "m3", "m4", "m5"];
    for ve in names {
        h.ok(&["create", ve, "--template", "bb"]);
    }
    // `--all` and names are one or the other; neither is a usage error too.
    assert_eq!(h.run(&["start", "--all", "m1"]).code, 2);
    assert_eq!(h.run(&["stop"]).code, 2);
    assert_eq!(h.run(&["stop", "-j", "0", "m1"]).code, 2);

    // Every stopped VE, each by a vectl process of its own: one line each.
    let out = h.ok(&["start", "--all"]);
    for ve in names {
        assert!(out.contains(&format!("started VE {ve} ")), "{out}");
        wait_http(&h, ve);
    }
    assert_eq!(out.lines().count(), names.len(), "{out}");
    let again = h.run(&["start", "--all"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("no VE is stopped"), "{again:?}");

    // A graceful stop of all of them at once: busybox init takes about 3 s to
    // halt, and while it does several vectl processes stop VEs side by side.
    let mut child = h
        .command()
        .args(["--json", "stop", "--all"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    while child.try_wait().unwrap().is_none() {
        most = most.max(vectl_children(child.id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(most >= 2, "at most {most} VE stopped at a time");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One JSON object per VE, whole.
    let mut stopped: Vec<String> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<serde_json::Value>()
        .map(|j| {
            let j = j.unwrap();
            assert_eq!(j["outcome"], "halted", "{j}");
            j["ve"].as_str().unwrap().to_string()
        })
        .collect();
    stopped.sort();
    assert_eq!(stopped, names);
    for ve in names {
        assert_stopped_clean(&h, ve);
    }

    // A failure among several is reported by name; the others still start.
    let r = h.run(&["start", "m1", "nosuch", "m2"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nosuch"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stdout.contains("started VE m1 ") && r.stdout.contains("started VE m2 "));
    // `restart --all` takes the running ones only; `-j 1`, one after another.
    let out = h.ok(&["restart", "--all", "--fast", "-j", "1"]);
    assert_eq!(out.matches("started VE").count(), 2, "{out}");
    h.ok(&["stop", "--fast", "m1", "m2"]);
}
