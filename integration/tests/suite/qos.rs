//! Resource QoS on the real kernel (issue 5): CPU caps and guarantees measured,
//! RAM limits that OOM-kill inside the VE only, pids caps, disk bandwidth and IOPS
//! caps measured, CPU sets, every knob changed live, refused changes that change
//! nothing, and bad QoS input. The knobs are read through `crate::common::qos_knobs`, the
//! same on cgroup v1 (this host) and v2 (the VM suite, integration/vm/run).
//!
//! Timing tests (CPU shares, I/O rates) take the file's lock exclusively, every
//! other test takes it shared: no test of this file burns CPU or disk while one
//! measures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::common::*;

/// For a test that measures CPU or disk time: nothing else of this file runs, nor
/// another measurement of the suite ([`MEASURING`]).
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(|e| e.into_inner())
}

/// For any other test: runs beside the others, never beside a measurement.
fn shared() -> RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(|e| e.into_inner())
}

const MIB: u64 = 1 << 20;

/// The CPU time VEs use over `window`, as (wall seconds, CPU seconds each).
fn cpu_over(h: &TestHost, ves: &[&str], window: Duration) -> (f64, Vec<f64>) {
    let (t0, a) = cpu_sample(h, ves);
    std::thread::sleep(window);
    let (t1, b) = cpu_sample(h, ves);
    let wall = (t1 - t0).as_secs_f64();
    let used = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (b - a) as f64 / 1e9)
        .collect();
    (wall, used)
}

#[test]
fn a_cpu_limit_caps_a_busy_ve_at_its_percentage() {
    let _measuring = exclusive();
    let test = "a_cpu_limit_caps_a_busy_ve_at_its_percentage";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("capped", &["--cpu-limit", "50%"]);
    assert_eq!(qos_knobs(&h, "capped").cpu_quota_us, Some(50_000));
    busy_loops(&h, "capped", 1);
    std::thread::sleep(Duration::from_millis(500));
    let (wall, used) = cpu_over(&h, &["capped"], Duration::from_secs(3));
    let pct = used[0] / wall * 100.0;
    eprintln!("one busy loop under --cpu-limit 50%: {pct:.1}% of a CPU over {wall:.2} s");
    // The cap holds (at most 55%); the loop runs (a busy machine may give
    // it less than its cap).
    assert!(
        (35.0..=55.0).contains(&pct),
        "a busy loop under --cpu-limit 50% got {pct:.1}% of a CPU over {wall:.2} s"
    );

    // The cap is the VE's, not a process's: a second loop shares the same 50%.
    busy_loops(&h, "capped", 1);
    std::thread::sleep(Duration::from_millis(300));
    let (wall, used) = cpu_over(&h, &["capped"], Duration::from_secs(3));
    let pct = used[0] / wall * 100.0;
    eprintln!("two busy loops under --cpu-limit 50%: {pct:.1}% over {wall:.2} s");
    assert!(
        (35.0..=55.0).contains(&pct),
        "two busy loops under --cpu-limit 50% got {pct:.1}% of a CPU together"
    );

    // Raised live, without a restart, the same loops get the new cap.
    let init = h.init_pid("capped");
    h.ok(&["set", "capped", "--cpu-limit", "100%"]);
    assert_eq!(qos_knobs(&h, "capped").cpu_quota_us, Some(100_000));
    std::thread::sleep(Duration::from_millis(300));
    let (wall, used) = cpu_over(&h, &["capped"], Duration::from_secs(3));
    let pct = used[0] / wall * 100.0;
    eprintln!("two busy loops after set --cpu-limit 100%: {pct:.1}% over {wall:.2} s");
    // Well above the old 50% (the raise took), at most the new cap; the
    // lower bound leaves room for a machine busy with other work.
    assert!(
        (75.0..=110.0).contains(&pct),
        "two busy loops after a live set --cpu-limit 100% got {pct:.1}% of a CPU"
    );
    assert_eq!(h.init_pid("capped"), init, "set restarted the VE");
}

#[test]
fn cpu_guarantees_split_a_contended_host_in_their_ratio() {
    let _measuring = exclusive();
    let test = "cpu_guarantees_split_a_contended_host_in_their_ratio";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    // 75% + 25% is the whole host: only without a host reserve.
    let info = h.json(&["host", "set", "--reserve-cpu", "0%"]);
    assert_eq!(info["reserve"]["cpu_percent"], 0.0, "{info}");
    h.start_ve("gold", &["--cpu-guarantee", "75%"]);
    h.start_ve("silver", &["--cpu-guarantee", "25%"]);
    // A noisy neighbour without a guarantee: best effort, the smallest weight.
    h.start_ve("bulk", &[]);
    assert_eq!(qos_knobs(&h, "gold").cpu_weight, 7500);
    assert_eq!(qos_knobs(&h, "silver").cpu_weight, 2500);
    assert_eq!(qos_knobs(&h, "bulk").cpu_weight, BEST_EFFORT_WEIGHT);
    // Each VE wants the whole host: as many busy loops as CPUs.
    let cpus = h.json(&["host", "info"])["cpus"].as_u64().unwrap() as usize;
    // The best-effort VE first: once the guaranteed ones spin, anything started
    // in it (the exec too) waits behind them, as it should.
    for ve in ["bulk", "silver", "gold"] {
        busy_loops(&h, ve, cpus);
    }
    std::thread::sleep(Duration::from_millis(500));
    // This machine is shared: load from outside the test can skew one window.
    // The kernel's split has to show in one of three windows of 3 s.
    let mut windows = Vec::new();
    let (g, s, b) = loop {
        let (wall, used) = cpu_over(&h, &["gold", "silver", "bulk"], Duration::from_secs(3));
        let (g, s, b) = (used[0], used[1], used[2]);
        eprintln!(
            "over {wall:.2} s: gold {g:.2} s, silver {s:.2} s, bulk {b:.2} s of CPU ({:.2} : 1)",
            g / s
        );
        assert!(s > 0.0, "silver got no CPU at all");
        windows.push(format!(
            "{:.2} (gold {g:.2} s, silver {s:.2} s, bulk {b:.2} s over {wall:.2} s)",
            g / s
        ));
        // Both the split and the best-effort VE's small share, in one window.
        if ((2.4..=3.6).contains(&(g / s)) && b < 0.05 * (g + s + b)) || windows.len() == 3 {
            break (g, s, b);
        }
    };
    let ratio = g / s;
    assert!(
        (2.4..=3.6).contains(&ratio),
        "guarantees 75% and 25% split the CPU, in {} window(s), {}, not 3 : 1 ± 20%",
        windows.len(),
        windows.join(", ")
    );
    // The guaranteed VEs are not held back by the best-effort one.
    assert!(
        b < 0.05 * (g + s + b),
        "a VE without a guarantee took {b:.2} s of {:.2} s of CPU from guaranteed ones, in {} window(s), {}",
        g + s + b,
        windows.len(),
        windows.join(", ")
    );
}

#[test]
fn an_allocation_above_the_ram_limit_is_oom_killed_inside_the_ve_and_fits_after_a_live_raise() {
    let _shared = shared();
    let test =
        "an_allocation_above_the_ram_limit_is_oom_killed_inside_the_ve_and_fits_after_a_live_raise";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("small", &["--ram", "64M"]);
    h.start_ve("neighbour", &["--ram", "64M"]);
    assert_eq!(qos_knobs(&h, "small").memory_max, Some(64 * MIB));
    wait_http(&h, "small");
    wait_http(&h, "neighbour");
    let init = h.init_pid("small");
    // A host process beside the VEs, to see that the OOM killer stays inside.
    let mut canary = Command::new("sleep").arg("60").spawn().unwrap();
    let hog = "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo ${#x}";

    let r = h.exec("small", &["sh", "-c", hog]);
    assert_ne!(r.code, 0, "100 MB fit in a 64M VE: {r:?}");
    let st = ve_stats(&h, "small");
    assert!(
        st["oom_kills"].as_u64().unwrap() >= 1,
        "stats count no OOM kill: {st}"
    );
    assert_eq!(st["ram_limit_bytes"], 64 * MIB, "{st}");
    // The VE, its init, its neighbour and the host carry on.
    assert_eq!(h.init_pid("small"), init, "the VE's init was killed");
    assert_eq!(wait_http(&h, "small"), "hello from small");
    assert_eq!(wait_http(&h, "neighbour"), "hello from neighbour");
    assert_eq!(ve_stats(&h, "neighbour")["oom_kills"], 0);
    assert!(
        canary.try_wait().unwrap().is_none(),
        "a host process died beside the VE's OOM"
    );
    let _ = canary.kill();
    let _ = canary.wait();

    // Raised live: the same allocation fits, in the same VE.
    let out = h.json(&["set", "small", "--ram", "256M"]);
    assert_eq!(out["live"], true, "{out}");
    assert_eq!(qos_knobs(&h, "small").memory_max, Some(256 * MIB));
    let r = h.exec("small", &["sh", "-c", hog]);
    assert_eq!(r.code, 0, "100 MB after set --ram 256M: {r:?}");
    assert_eq!(r.stdout.trim(), "104857600");
    assert_eq!(h.init_pid("small"), init, "set restarted the VE");
    let st = ve_stats(&h, "small");
    assert_eq!(st["ram_limit_bytes"], 256 * MIB, "{st}");
    assert!(st["oom_kills"].as_u64().unwrap() >= 1, "{st}");
}

/// `vectl ARGS` with a 2 minute limit (forks are slow in the VM suite).
fn run_slow(h: &TestHost, args: &[&str]) -> Run {
    let mut c = h.command();
    c.args(args).stdin(Stdio::null());
    run_limited(c, Duration::from_secs(120))
}

/// How often the kernel refused a fork in the VE's pids cgroups (pids.events
/// "max", added up over the subtree: v1 counts where the fork was tried).
fn pids_refusals(h: &TestHost, ve: &str) -> u64 {
    let mut total = 0;
    let mut dirs = vec![h.cgroup_dir("pids", ve)];
    while let Some(d) = dirs.pop() {
        if let Ok(ev) = std::fs::read_to_string(d.join("pids.events")) {
            total += ev
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .map_or(0, |n| n.trim().parse::<u64>().unwrap());
        }
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    total
}

/// The VE's processes running `comm`, seen from the host.
fn procs_named(h: &TestHost, ve: &str, comm: &str) -> Vec<i32> {
    procs_below(&h.cgroup_dir("pids", ve))
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The number of sleeps in the VE once every process beside the `base` ones is a
/// sleep (a forked child runs as "sh" until it has executed sleep).
fn settled_sleeps(h: &TestHost, ve: &str, base: u64) -> u64 {
    let dir = h.cgroup_dir("pids", ve);
    let mut n = 0;
    wait_until(Duration::from_secs(10), || {
        n = procs_named(h, ve, "sleep").len() as u64;
        n + base == procs_below(&dir).len() as u64
    });
    n
}

#[test]
fn a_pids_limit_stops_a_fork_flood_at_the_limit_and_the_ve_stays_usable() {
    let _shared = shared();
    let test = "a_pids_limit_stops_a_fork_flood_at_the_limit_and_the_ve_stays_usable";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("flood", &["--pids", "64"]);
    assert_eq!(qos_knobs(&h, "flood").pids_max, Some(64));
    wait_http(&h, "flood");
    let init = h.init_pid("flood");
    // (httpd's child for that request may still be on its way out.)
    std::thread::sleep(Duration::from_millis(300));
    let base = ve_stats(&h, "flood")["pids"].as_u64().unwrap();
    assert!(base >= 1, "no process counted in the VE");

    // 200 background processes; the shell gives up at the first refused fork.
    // (The sleeps must not hold the exec's output pipes.)
    let flood =
        "for i in $(seq 200); do sleep 1000 </dev/null >/dev/null 2>&1 & done; echo all started";
    let r = run_slow(&h, &["exec", "flood", "--", "sh", "-c", flood]);
    assert!(
        r.code != 0 && r.stderr.contains("can't fork") && !r.stdout.contains("all started"),
        "200 processes started under --pids 64: {r:?}"
    );
    assert!(pids_refusals(&h, "flood") > 0, "the kernel refused no fork");
    // The VE filled up to its limit and not beyond: what ran before, the shell
    // and its sleeps (give or take a short-lived helper such as an httpd child).
    let sleeps = settled_sleeps(&h, "flood", base);
    eprintln!("--pids 64: {base} processes, the shell and {sleeps} sleeps");
    assert!(
        (61..=64).contains(&(base + 1 + sleeps)),
        "{sleeps} sleeps beside {base} processes and the shell: the flood did not stop at 64"
    );
    let peak = h.cgroup_dir("pids", "flood").join("pids.peak");
    if peak.exists() {
        let peak: u64 = std::fs::read_to_string(&peak)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(peak, 64, "pids.peak");
    }
    let st = ve_stats(&h, "flood");
    assert_eq!(st["pids"], base + sleeps, "{st}");
    assert_eq!(st["pids_limit"], 64, "{st}");
    // Full up, an exec is refused cleanly (it needs processes in the VE). A
    // short-lived helper counted during the flood may have left a slot free:
    // the flood fills it again first.
    let current = h.cgroup_dir("pids", "flood").join("pids.current");
    for _ in 0..3 {
        let now: u64 = std::fs::read_to_string(&current)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if now >= 64 {
            break;
        }
        let _ = run_slow(&h, &["exec", "flood", "--", "sh", "-c", flood]);
    }
    let r = run_guarded(&h, &["exec", "flood", "--", "true"]);
    assert_ne!(r.code, 0, "exec in a VE at its pids limit: {r:?}");
    assert!(r.code != -2, "exec hung in a VE at its pids limit");
    no_panic(&r);

    // Once the flood is gone the VE works as before.
    for p in procs_named(&h, "flood", "sleep") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || procs_named(
            &h, "flood", "sleep"
        )
        .is_empty()),
        "the sleeps do not die"
    );
    assert_eq!(h.exec("flood", &["echo", "ok"]).stdout, "ok\n");
    assert_eq!(wait_http(&h, "flood"), "hello from flood");
    assert_eq!(h.init_pid("flood"), init);

    // Raised live, the same flood starts all 200.
    h.ok(&["set", "flood", "--pids", "300"]);
    assert_eq!(qos_knobs(&h, "flood").pids_max, Some(300));
    let r = run_slow(&h, &["exec", "flood", "--", "sh", "-c", flood]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "all started\n");
    assert_eq!(settled_sleeps(&h, "flood", base), 200);
    assert_eq!(h.init_pid("flood"), init);
}

#[test]
fn io_limits_cap_direct_io_bandwidth_and_operations() {
    let _measuring = exclusive();
    let test = "io_limits_cap_direct_io_bandwidth_and_operations";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let (major, minor, disk, _) = match io_device(&h) {
        Ok(d) => d,
        Err(why) => {
            integration::skip(test, &format!("no disk to throttle here: {why}"));
            return;
        }
    };
    h.start_ve("slow", &["--io-limit", "10M"]);
    let k = qos_knobs(&h, "slow");
    assert_eq!(
        k.io,
        IoKnobs {
            rbps: Some(10 * MIB),
            wbps: Some(10 * MIB),
            riops: None,
            wiops: None
        },
        "disk {disk} ({major}:{minor})"
    );
    let init = h.init_pid("slow");

    // 40 MiB of direct writes at 10 MiB/s: about 4 s.
    let secs = timed_dd(
        &h,
        "slow",
        &[
            "if=/dev/zero",
            "of=/root/f",
            "bs=1M",
            "count=40",
            "oflag=direct",
        ],
    );
    let rate = 40.0 / secs;
    eprintln!("--io-limit 10M: 40 MiB written in {secs:.2} s = {rate:.2} MiB/s");
    assert!(
        rate <= 11.0,
        "direct writes under --io-limit 10M ran at {rate:.2} MiB/s (40 MiB in {secs:.2} s)"
    );
    // Reads are capped as well.
    let secs = timed_dd(
        &h,
        "slow",
        &[
            "if=/root/f",
            "of=/dev/null",
            "bs=1M",
            "count=30",
            "iflag=direct",
        ],
    );
    let rate = 30.0 / secs;
    eprintln!("--io-limit 10M: 30 MiB read in {secs:.2} s = {rate:.2} MiB/s");
    assert!(
        rate <= 11.0,
        "direct reads under --io-limit 10M ran at {rate:.2} MiB/s"
    );

    // Operations: 250 direct 4K writes at 50 per second, about 5 s. Changed live.
    h.ok(&[
        "set",
        "slow",
        "--io-limit",
        "unlimited",
        "--iops-limit",
        "50",
    ]);
    assert_eq!(
        qos_knobs(&h, "slow").io,
        IoKnobs {
            rbps: None,
            wbps: None,
            riops: Some(50),
            wiops: Some(50)
        }
    );
    let secs = timed_dd(
        &h,
        "slow",
        &[
            "if=/dev/zero",
            "of=/root/g",
            "bs=4k",
            "count=250",
            "oflag=direct",
        ],
    );
    let ops = 250.0 / secs;
    eprintln!("--iops-limit 50: 250 writes in {secs:.2} s = {ops:.1}/s");
    assert!(
        ops <= 55.0,
        "direct writes under --iops-limit 50 ran at {ops:.1} per second"
    );
    assert_eq!(h.init_pid("slow"), init, "set restarted the VE");

    // Sanity: without a limit the same write is faster than the cap.
    h.start_ve("fast", &[]);
    assert_eq!(qos_knobs(&h, "fast").io, IoKnobs::default());
    let secs = timed_dd(
        &h,
        "fast",
        &[
            "if=/dev/zero",
            "of=/root/f",
            "bs=1M",
            "count=40",
            "oflag=direct",
        ],
    );
    let rate = 40.0 / secs;
    eprintln!("no limit: 40 MiB written in {secs:.2} s = {rate:.2} MiB/s");
    assert!(
        rate > 11.0,
        "without --io-limit direct writes ran at only {rate:.2} MiB/s: the limit test proves nothing here"
    );
}

/// The CPUs a process of the VE may run on (Cpus_allowed_list of /proc/PID/status
/// inside it).
#[track_caller]
fn cpus_allowed(h: &TestHost, ve: &str, pid: &str) -> String {
    let r = h.exec(ve, &["cat", &format!("/proc/{pid}/status")]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {}", r.stdout))
        .trim()
        .to_string()
}

#[test]
fn cpu_sets_confine_a_ves_processes_and_change_live() {
    let _shared = shared();
    let test = "cpu_sets_confine_a_ves_processes_and_change_live";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let cpus = h.json(&["host", "info"])["cpus"].as_u64().unwrap();
    if cpus < 2 {
        integration::skip(test, "needs at least 2 CPUs");
        return;
    }
    // A count: vectl picks one CPU.
    h.start_ve("one", &["--cpus", "1"]);
    let picked = h.json(&["show", "one"])["kernel_limits"]["cpuset"]
        .as_str()
        .unwrap()
        .to_string();
    let n: u64 = picked.parse().unwrap_or_else(|_| panic!("{picked:?}"));
    assert!(n < cpus, "--cpus 1 picked CPU {n}");
    assert_eq!(qos_knobs(&h, "one").cpus, picked);
    assert_eq!(cpus_allowed(&h, "one", "self"), picked);
    assert_eq!(cpus_allowed(&h, "one", "1"), picked, "the VE's init");

    // A list.
    h.start_ve("both", &["--cpus", "0-1"]);
    assert_eq!(qos_knobs(&h, "both").cpus, "0-1");
    assert_eq!(cpus_allowed(&h, "both", "self"), "0-1");
    assert_eq!(cpus_allowed(&h, "both", "1"), "0-1");

    // Live: the running init moves to the other CPU, new processes start there.
    // (A bare number is a count; one given CPU is the list N-N.)
    let init = h.init_pid("one");
    let other = if n == 0 { "1" } else { "0" };
    let out = h.json(&["set", "one", "--cpus", &format!("{other}-{other}")]);
    assert_eq!(out["live"], true, "{out}");
    assert_eq!(qos_knobs(&h, "one").cpus, other);
    assert_eq!(cpus_allowed(&h, "one", "1"), other, "the running init");
    assert_eq!(cpus_allowed(&h, "one", "self"), other);
    // Removed: every CPU again.
    h.ok(&["set", "one", "--cpus", "unlimited"]);
    assert_eq!(qos_knobs(&h, "one").cpus, all_cpus());
    assert_eq!(cpus_allowed(&h, "one", "1"), all_cpus());
    assert_eq!(h.init_pid("one"), init, "set restarted the VE");

    // A single given CPU is still that CPU after the config is read back: on
    // the next start, for `show`, for the next `set`.
    for cpu in ["0", "1"] {
        let ve = format!("pin{cpu}");
        h.start_ve(&ve, &["--cpus", &format!("{cpu}-{cpu}")]);
        assert_eq!(qos_knobs(&h, &ve).cpus, cpu, "VE {ve}");
        h.ok(&["stop", "--fast", &ve]);
        let show = h.json(&["show", &ve]);
        assert_eq!(show["kernel_limits"]["cpuset"], cpu, "VE {ve}: {show}");
        h.ok(&["set", &ve, "--pids", "50"]);
        h.ok(&["start", &ve]);
        assert_eq!(qos_knobs(&h, &ve).cpus, cpu, "VE {ve} after a restart");
        assert_eq!(cpus_allowed(&h, &ve, "1"), cpu, "VE {ve} after a restart");
    }
}

#[test]
fn every_knob_changes_live_without_restart_and_lands_in_the_kernel() {
    let _shared = shared();
    let test = "every_knob_changes_live_without_restart_and_lands_in_the_kernel";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let dev = io_device(&h);
    h.start_ve(
        "knobs",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "unlimited"],
    );
    let init = h.init_pid("knobs");
    let start = qos_knobs(&h, "knobs");
    assert_eq!(
        start,
        QosKnobs {
            memory_max: Some(256 * MIB),
            memory_low: None,
            swap_max: None,
            cpu_quota_us: Some(50_000),
            cpu_weight: BEST_EFFORT_WEIGHT,
            cpus: all_cpus(),
            pids_max: None,
            io: IoKnobs::default(),
            io_weight: None,
        }
    );
    // `--cpus 1` is a count: vectl picks the CPU (by the VE's id).
    let one_cpu = {
        let id = h.json(&["show", "knobs"])["id"].as_u64().unwrap();
        let cpus = h.json(&["host", "info"])["cpus"].as_u64().unwrap();
        (id % cpus).to_string()
    };
    let mut want = start.clone();
    let mut set = |args: &[&str], change: &dyn Fn(&mut QosKnobs)| {
        let mut all = vec!["set", "knobs"];
        all.extend_from_slice(args);
        let out = h.json(&all);
        assert_eq!(out["live"], true, "set {args:?}: {out}");
        change(&mut want);
        assert_eq!(qos_knobs(&h, "knobs"), want, "after set {args:?}");
    };
    set(&["--ram", "200M"], &|k| k.memory_max = Some(200 * MIB));
    set(&["--ram-guarantee", "64M"], &|k| {
        k.memory_low = Some(64 * MIB)
    });
    set(&["--swap", "32M"], &|k| k.swap_max = Some(32 * MIB));
    set(&["--cpu-limit", "70%"], &|k| k.cpu_quota_us = Some(70_000));
    set(&["--cpu-guarantee", "10%"], &|k| k.cpu_weight = 1000);
    set(&["--cpus", "1"], &|k| k.cpus = one_cpu.clone());
    assert_eq!(
        h.json(&["show", "knobs"])["kernel_limits"]["cpuset"],
        one_cpu.as_str()
    );
    set(&["--pids", "77"], &|k| k.pids_max = Some(77));
    if dev.is_ok() {
        set(&["--io-limit", "20M"], &|k| {
            k.io.rbps = Some(20 * MIB);
            k.io.wbps = Some(20 * MIB);
        });
        set(&["--iops-limit", "300"], &|k| {
            k.io.riops = Some(300);
            k.io.wiops = Some(300);
        });
    }
    match &dev {
        Ok((_, _, _, sched)) if sched == "bfq" => {
            set(&["--io-weight", "200"], &|k| k.io_weight = Some(200));
            set(&["--io-guarantee", "30%"], &|k| k.io_weight = Some(300));
            set(&["--io-guarantee", "unlimited"], &|k| k.io_weight = None);
        }
        _ => eprintln!("(no bfq disk here: --io-weight is covered by the bad input test)"),
    }
    // Several at once, and back to no limits.
    set(
        &[
            "--ram",
            "300M",
            "--ram-guarantee",
            "100M",
            "--swap",
            "0",
            "--cpu-limit",
            "150%",
            "--pids",
            "500",
        ],
        &|k| {
            k.memory_max = Some(300 * MIB);
            k.memory_low = Some(100 * MIB);
            k.swap_max = Some(0);
            k.cpu_quota_us = Some(150_000);
            k.pids_max = Some(500);
        },
    );
    let mut unset = vec![
        "--ram",
        "unlimited",
        "--ram-guarantee",
        "unlimited",
        "--swap",
        "unlimited",
        "--cpu-limit",
        "unlimited",
        "--cpu-guarantee",
        "unlimited",
        "--cpus",
        "unlimited",
        "--pids",
        "unlimited",
    ];
    if dev.is_ok() {
        unset.extend(["--io-limit", "unlimited", "--iops-limit", "unlimited"]);
    }
    set(&unset, &|k| {
        *k = QosKnobs {
            memory_max: None,
            memory_low: None,
            swap_max: None,
            cpu_quota_us: None,
            cpu_weight: BEST_EFFORT_WEIGHT,
            cpus: all_cpus(),
            pids_max: None,
            io: IoKnobs::default(),
            io_weight: None,
        }
    });
    assert_eq!(h.init_pid("knobs"), init, "a set restarted the VE");
    assert_eq!(wait_http(&h, "knobs"), "hello from knobs");
    let show = h.json(&["show", "knobs"]);
    let limits: Vec<&String> = show
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            k.ends_with("_limit")
                || k.contains("_limit_")
                || k.contains("_guarantee")
                || k.starts_with("cpus_")
                || *k == "io_weight"
        })
        .collect();
    assert!(limits.is_empty(), "{show}");
}

#[test]
fn set_on_a_stopped_ve_persists_the_qos_knobs_for_the_next_start() {
    let _shared = shared();
    let test = "set_on_a_stopped_ve_persists_the_qos_knobs_for_the_next_start";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let dev = io_device(&h);
    h.ok(&["create", "cold", "--template", "bb", "--cpu-limit", "50%"]);
    let mut args = vec![
        "set",
        "cold",
        "--ram",
        "128M",
        "--ram-guarantee",
        "32M",
        "--swap",
        "16M",
        "--cpu-guarantee",
        "10%",
        "--cpus",
        "1",
        "--pids",
        "40",
    ];
    if dev.is_ok() {
        args.extend(["--io-limit", "5M", "--iops-limit", "100"]);
    }
    let out = h.json(&args);
    assert_eq!(out["live"], false, "{out}");
    assert!(
        existing_cgroup_dirs(&h, "cold").is_empty(),
        "set made cgroups for a stopped VE"
    );
    assert_eq!(status(&h, "cold"), "stopped");
    let cfg = config_text(&h, "cold");
    for v in ["128M", "32M", "16M", "10%", "50%"] {
        assert!(cfg.contains(v), "{v} not saved: {cfg}");
    }
    h.ok(&["start", "cold"]);
    let io = if dev.is_ok() {
        IoKnobs {
            rbps: Some(5 * MIB),
            wbps: Some(5 * MIB),
            riops: Some(100),
            wiops: Some(100),
        }
    } else {
        IoKnobs::default()
    };
    assert_eq!(
        qos_knobs(&h, "cold"),
        QosKnobs {
            memory_max: Some(128 * MIB),
            memory_low: Some(32 * MIB),
            swap_max: Some(16 * MIB),
            cpu_quota_us: Some(50_000),
            cpu_weight: 1000,
            cpus: qos_knobs(&h, "cold").cpus.clone(),
            pids_max: Some(40),
            io,
            io_weight: None,
        }
    );
    let cpus = qos_knobs(&h, "cold").cpus;
    assert!(
        cpus == "0" || cpus == "1",
        "--cpus 1 gave the VE CPUs {cpus:?}"
    );
    assert_eq!(
        h.json(&["show", "cold"])["kernel_limits"]["cpuset"],
        cpus.as_str()
    );
}

#[test]
fn a_set_the_kernel_refuses_leaves_every_knob_and_the_config_as_they_were() {
    let _shared = shared();
    let test = "a_set_the_kernel_refuses_leaves_every_knob_and_the_config_as_they_were";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let dev = io_device(&h);
    h.start_ve(
        "full",
        &[
            "--ram",
            "128M",
            "--cpu-limit",
            "50%",
            "--pids",
            "200",
            "--cpus",
            "0-1",
        ],
    );
    let init = h.init_pid("full");
    // 60 MB in the VE's tmpfs /dev/shm: charged to it, not reclaimable (no swap).
    let r = h.exec(
        "full",
        &[
            "dd",
            "if=/dev/zero",
            "of=/dev/shm/fill",
            "bs=1M",
            "count=60",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let knobs_before = qos_knobs(&h, "full");
    let snap_before = state_snapshot(&h);

    // Every knob at once, with a RAM limit below what the VE uses.
    let mut args = vec![
        "set",
        "full",
        "--ram",
        "16M",
        "--ram-guarantee",
        "8M",
        "--swap",
        "8M",
        "--cpu-limit",
        "20%",
        "--cpu-guarantee",
        "10%",
        "--cpus",
        "1",
        "--pids",
        "10",
    ];
    if dev.is_ok() {
        args.extend(["--io-limit", "5M", "--iops-limit", "50"]);
    }
    let line = h.fails(&args);
    eprintln!("{line}");
    assert!(
        line.starts_with("vectl: VE full: ") && line.contains("memory"),
        "{line}"
    );
    assert_eq!(
        qos_knobs(&h, "full"),
        knobs_before,
        "a refused set left changes in the kernel"
    );
    assert_eq!(diff(&snap_before, &state_snapshot(&h)), "");

    // A refusal late in the write order (v1: a cpuset may not lose CPUs a child
    // cgroup uses): what was written before it is rolled back.
    if !is_v2(&h) {
        let blocker = h.cgroup_dir("cpuset", "full").join("ve").join("blocker");
        std::fs::create_dir(&blocker).unwrap();
        let parent = blocker.parent().unwrap();
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read_to_string(parent.join(f)).unwrap();
            std::fs::write(blocker.join(f), v.trim()).unwrap();
        }
        let r = run_guarded(
            &h,
            &[
                "set",
                "full",
                "--ram",
                "100M",
                "--cpu-limit",
                "20%",
                "--cpu-guarantee",
                "10%",
                "--cpus",
                "1",
                "--pids",
                "10",
            ],
        );
        let _ = std::fs::remove_dir(&blocker);
        assert_eq!(r.code, 1, "a cpuset the kernel refuses: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(r.stderr.starts_with("vectl: VE full: "), "{r:?}");
        assert_eq!(
            qos_knobs(&h, "full"),
            knobs_before,
            "the knobs written before the refused one were not rolled back"
        );
        assert_eq!(diff(&snap_before, &state_snapshot(&h)), "");
    }

    // Refused by vectl before the kernel: nothing changes either.
    for bad in [
        vec!["--cpus", "7", "--pids", "10"],
        vec!["--ram-guarantee", "512M", "--cpu-limit", "20%"],
    ] {
        let mut args = vec!["set", "full"];
        args.extend_from_slice(&bad);
        let line = h.fails(&args);
        assert!(line.starts_with("vectl: VE full: "), "{line}");
        assert_eq!(qos_knobs(&h, "full"), knobs_before, "set {bad:?}");
        assert_eq!(diff(&snap_before, &state_snapshot(&h)), "", "set {bad:?}");
    }
    assert_eq!(h.init_pid("full"), init);
    // A change the kernel takes still works.
    h.ok(&["set", "full", "--ram", "100M", "--cpus", "1"]);
    let k = qos_knobs(&h, "full");
    let picked = h.json(&["show", "full"])["kernel_limits"]["cpuset"].clone();
    assert_eq!(
        (k.memory_max, serde_json::json!(k.cpus)),
        (Some(100 * MIB), picked)
    );
}

/// Starts a background process in the VE that holds about `mib` MiB of anonymous
/// memory until it is killed (dd reads it from /dev/zero into one buffer, then
/// blocks writing it into a pipe nobody reads), and waits until the VE's memory
/// use has grown by most of it.
#[track_caller]
fn hold_memory(h: &TestHost, ve: &str, mib: u64) {
    let before = memory_used(h, ve);
    // `exec` redirections first: nothing in the background keeps the exec's pipes.
    // (`head | tr | sort` of the same size took over 20 s under the VM's TCG.)
    let cmd = format!(
        "exec </dev/null >/dev/null 2>&1; \
         dd if=/dev/zero bs={mib}M count=1 | sleep 1000 &"
    );
    let r = exec_limited(h, ve, &["sh", "-c", &cmd], Duration::from_secs(60));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(60), || memory_used(h, ve)
            >= before + mib * MIB * 3 / 4),
        "the VE's memory use did not grow by {mib} MiB: {before} -> {}",
        memory_used(h, ve)
    );
}

#[test]
fn lowering_ram_below_usage_is_refused_naming_the_usage() {
    let _shared = shared();
    let test = "lowering_ram_below_usage_is_refused_naming_the_usage";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("fat", &["--ram", "256M"]);
    hold_memory(&h, "fat", 80);
    let knobs_before = qos_knobs(&h, "fat");
    let snap_before = state_snapshot(&h);
    let line = h.fails(&["set", "fat", "--ram", "32M"]);
    eprintln!("{line}");
    assert!(line.starts_with("vectl: VE fat: "), "{line}");
    assert_eq!(qos_knobs(&h, "fat"), knobs_before);
    assert_eq!(diff(&snap_before, &state_snapshot(&h)), "");
    // "the VE uses 61M": how much it uses, so the operator knows what fits.
    let usage = line
        .split("uses ")
        .nth(1)
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit());
    assert!(
        usage,
        "the refusal does not name the VE's memory use: {line}"
    );
}

#[test]
fn lowering_ram_below_usage_with_force_makes_the_ve_fit() {
    let _shared = shared();
    let test = "lowering_ram_below_usage_with_force_makes_the_ve_fit";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("fat", &["--ram", "256M"]);
    wait_http(&h, "fat");
    let init = h.init_pid("fat");
    hold_memory(&h, "fat", 80);
    let r = run_guarded(&h, &["set", "--force", "fat", "--ram", "32M"]);
    assert_eq!(
        r.code, 0,
        "set --force --ram below the VE's use was refused: {r:?}"
    );
    assert_eq!(qos_knobs(&h, "fat").memory_max, Some(32 * MIB));
    assert!(memory_used(&h, "fat") <= 32 * MIB);
    assert_eq!(h.json(&["show", "fat"])["ram_limit_bytes"], 32 * MIB);
    // Room was made by killing the hog, not the VE: vectl kills the process the
    // OOM killer would pick (never the VE's init) before it writes the limit,
    // on both versions (v2's kernel, left to it, went on to kill the init on the
    // slow VM while the hog's memory was still being freed).
    assert_eq!(ve_stats(&h, "fat")["status"], "running");
    // The hog (`dd` holding its buffer) is gone, once the kernel has reaped it.
    assert!(
        wait_until(Duration::from_secs(30), || procs_named(&h, "fat", "dd")
            .is_empty()),
        "the hog survived"
    );
    assert_eq!(h.init_pid("fat"), init);
    assert_eq!(wait_http(&h, "fat"), "hello from fat");
}

#[test]
fn bad_qos_input_is_refused_with_one_line_and_changes_nothing() {
    let _shared = shared();
    let test = "bad_qos_input_is_refused_with_one_line_and_changes_nothing";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let cpus = h.json(&["host", "info"])["cpus"].as_u64().unwrap();
    let dev = io_device(&h);
    h.start_ve(
        "ok",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "100"],
    );
    let knobs_before = qos_knobs(&h, "ok");
    let too_many_cpus = (cpus + 5).to_string();
    let too_much_cpu = format!("{}%", (cpus + 3) * 100);
    let host_cpus = format!("{cpus} CPUs");
    let io_weight_names: Vec<String> = match &dev {
        Ok((_, _, name, sched)) if sched != "bfq" => vec![name.clone(), sched.clone()],
        Ok(_) => Vec::new(),
        Err(_) => vec!["block device".into()],
    };
    // (limit arguments, what the message must name besides the VE)
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--cpu-limit", "0%"], vec!["--cpu-limit"]),
        (
            vec!["--cpu-limit", &too_much_cpu],
            vec!["--cpu-limit", &host_cpus],
        ),
        (vec!["--ram", "1K"], vec!["--ram", "minimum"]),
        (vec!["--cpus", &too_many_cpus], vec!["--cpus", &host_cpus]),
        (vec!["--cpus", "0-9"], vec!["--cpus", "does not exist"]),
        (vec!["--cpu-guarantee", "0%"], vec!["--cpu-guarantee"]),
        (vec!["--cpu-guarantee", "101%"], vec!["--cpu-guarantee"]),
        (vec!["--iops-limit", "0"], vec!["--iops-limit"]),
        (vec!["--io-limit", "1K"], vec!["--io-limit"]),
        (
            vec!["--io-weight", "100", "--io-guarantee", "10%"],
            vec!["not both"],
        ),
    ];
    if !io_weight_names.is_empty() {
        let names: Vec<&str> = io_weight_names.iter().map(String::as_str).collect();
        let mut w = vec!["--io-weight"];
        w.extend(&names);
        cases.push((vec!["--io-weight", "100"], w));
        let mut g = vec!["--io-guarantee"];
        g.extend(&names);
        cases.push((vec!["--io-guarantee", "20%"], g));
    } else {
        eprintln!("(the VE disk uses bfq here: --io-weight is accepted)");
    }
    let mut wrong = Vec::new();
    for (limits, names) in &cases {
        let mut create = vec!["create", "bad", "--template", "bb"];
        create.extend(limits);
        let mut must = vec!["VE bad: "];
        must.extend(names);
        wrong.extend(refusal_problem(&h, &create, &must));
        let mut set = vec!["set", "ok"];
        set.extend(limits);
        let mut must = vec!["VE ok: "];
        must.extend(names);
        wrong.extend(refusal_problem(&h, &set, &must));
    }
    // Swap needs a RAM limit, and a RAM guarantee may not exceed it.
    for (args, names) in [
        (
            vec![
                "create",
                "bad",
                "--template",
                "bb",
                "--ram",
                "unlimited",
                "--swap",
                "64M",
            ],
            vec!["VE bad: ", "--swap", "--ram"],
        ),
        (
            vec!["set", "ok", "--ram", "unlimited", "--swap", "64M"],
            vec!["VE ok: ", "--swap", "--ram"],
        ),
        (
            vec![
                "create",
                "bad",
                "--template",
                "bb",
                "--ram",
                "64M",
                "--ram-guarantee",
                "128M",
            ],
            vec!["VE bad: ", "--ram-guarantee", "--ram"],
        ),
        (
            vec!["set", "ok", "--ram-guarantee", "512M"],
            vec!["VE ok: ", "--ram-guarantee", "--ram"],
        ),
    ] {
        wrong.extend(refusal_problem(&h, &args, &names));
    }
    assert!(
        wrong.is_empty(),
        "{} bad inputs were not refused properly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(listed(&h, "bad").is_none(), "a refused create left a VE");
    assert_eq!(
        qos_knobs(&h, "ok"),
        knobs_before,
        "a refused set changed the kernel"
    );

    // I/O limits where the VE files are on tmpfs: no disk to throttle.
    let refused_on_tmpfs = |run: &dyn Fn(&[&str]) -> Run, snap: &dyn Fn() -> Snapshot| {
        for args in [
            vec!["create", "io", "--template", "bb", "--io-limit", "10M"],
            vec!["create", "io", "--template", "bb", "--iops-limit", "100"],
            vec!["set", "plain", "--io-limit", "10M"],
            vec!["set", "plain", "--iops-limit", "100", "--pids", "10"],
        ] {
            let before = snap();
            let r = run(&args);
            let ve = if args[0] == "create" { "io" } else { "plain" };
            assert_eq!(r.code, 1, "{args:?} on tmpfs: {r:?}");
            let lines: Vec<&str> = r.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?}: {r:?}");
            assert!(
                lines[0].starts_with(&format!("vectl: VE {ve}: "))
                    && lines[0].contains("block device")
                    && lines[0].contains("tmpfs"),
                "{args:?}: the message does not say the VE files are on tmpfs: {}",
                lines[0]
            );
            assert_eq!(diff(&before, &snap()), "", "{args:?} changed the state");
        }
    };
    if dev.is_err() {
        // The VM suite: the VE files are on tmpfs already.
        h.ok(&["create", "plain", "--template", "bb"]);
        refused_on_tmpfs(&|a| run_guarded(&h, a), &|| state_snapshot(&h));
        return;
    }
    let Some(t) = TmpfsRoot::new(test) else {
        return;
    };
    let rootfs = integration::busybox_rootfs().unwrap();
    let r = t.run(&[
        "template",
        "import",
        "bb",
        "--from-dir",
        rootfs.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = t.run(&["create", "plain", "--template", "bb"]);
    assert_eq!(r.code, 0, "{r:?}");
    let info: serde_json::Value =
        serde_json::from_str(&t.run(&["--json", "host", "info"]).stdout).unwrap();
    assert!(info["io_device"].is_null(), "{info}");
    let view = t.view();
    refused_on_tmpfs(&|a| t.run(a), &|| {
        snapshot(&view, false, &|p| p.starts_with("locks"))
    });
}
