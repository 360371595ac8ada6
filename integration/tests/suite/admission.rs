//! Admission control: the CPU and RAM guarantees of running VEs plus the host
//! reserve may not exceed the host. `create`, `start` and `set` that would
//! over-commit are refused (exit 1, one line naming the VEs and the totals, nothing
//! changed); `--force` overrides; `vectl host info` shows capacity, reserve and
//! what is committed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;

const MIB: u64 = 1 << 20;

/// Runs a command admission control must refuse: exit 1, one line
/// `vectl: VE <ve>: refused: ... (use --force to override)` that names each of
/// `names`, and the state directory unchanged. Returns the line.
#[track_caller]
fn refused(h: &TestHost, ve: &str, args: &[&str], names: &[&str]) -> String {
    let before = state_snapshot(h);
    let line = h.fails(args);
    assert!(
        line.starts_with(&format!("vectl: VE {ve}: refused: ")),
        "vectl {args:?}: {line}"
    );
    assert!(line.ends_with("(use --force to override)"), "{line}");
    for n in names {
        assert!(line.contains(n), "vectl {args:?}: {n:?} not named: {line}");
    }
    assert_eq!(
        diff(&before, &state_snapshot(h)),
        "",
        "vectl {args:?} was refused but changed the state"
    );
    line
}

/// `host info --json`.
fn info(h: &TestHost) -> serde_json::Value {
    h.json(&["host", "info"])
}

/// Committed CPU guarantees of running VEs, in percent of the host.
fn committed_cpu(h: &TestHost) -> f64 {
    info(h)["committed"]["cpu_guarantee_percent"]
        .as_f64()
        .unwrap()
}

/// Asserts the committed CPU guarantees (a sum of fractions: give or take rounding).
#[track_caller]
fn assert_cpu(h: &TestHost, want: f64) {
    let got = committed_cpu(h);
    assert!(
        (got - want).abs() < 1e-6,
        "committed CPU guarantees {got}%, want {want}%"
    );
}

/// Committed RAM guarantees of running VEs, in bytes.
fn committed_ram(h: &TestHost) -> u64 {
    info(h)["committed"]["ram_guarantee_bytes"]
        .as_u64()
        .unwrap()
}

/// The names in committed.ves.
fn committed_ves(h: &TestHost) -> Vec<String> {
    info(h)["committed"]["ves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ve"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_ves_with_60_percent_cpu_guarantees_cannot_both_run() {
    let test = "two_ves_with_60_percent_cpu_guarantees_cannot_both_run";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    // Each fits alone, so both can be created.
    h.ok(&[
        "create",
        "gold",
        "--template",
        "bb",
        "--cpu-guarantee",
        "60%",
    ]);
    h.ok(&[
        "create",
        "silver",
        "--template",
        "bb",
        "--cpu-guarantee",
        "60%",
    ]);
    h.ok(&["start", "gold"]);
    assert_cpu(&h, 60.0);

    let line = refused(
        &h,
        "silver",
        &["start", "silver"],
        &["CPU", "gold 60%", "this VE 60%", "reserve 5%", "125%"],
    );
    eprintln!("{line}");
    assert_stopped_clean(&h, "silver");
    assert_cpu(&h, 60.0);
    assert_eq!(committed_ves(&h), ["gold"]);

    // Forced, it runs; both are committed.
    h.ok(&["start", "--force", "silver"]);
    assert_eq!(status(&h, "silver"), "running");
    assert_cpu(&h, 120.0);
    let mut ves = committed_ves(&h);
    ves.sort();
    assert_eq!(ves, ["gold", "silver"]);

    // Only running VEs count: with gold stopped silver starts, and then gold is
    // the one refused, naming silver.
    h.ok(&["stop", "--fast", "gold", "silver"]);
    assert_cpu(&h, 0.0);
    h.ok(&["start", "silver"]);
    refused(
        &h,
        "gold",
        &["start", "gold"],
        &["silver 60%", "this VE 60%", "125%"],
    );
    // A restart of a running VE does not count it twice.
    h.ok(&["restart", "--fast", "silver"]);
    assert_cpu(&h, 60.0);
}

#[test]
fn two_ves_with_60_percent_ram_guarantees_cannot_both_run() {
    let test = "two_ves_with_60_percent_ram_guarantees_cannot_both_run";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let host_ram = info(&h)["ram_bytes"].as_u64().unwrap();
    let sixty = (host_ram as f64 * 0.6) as u64;
    // Each fits alone, so both can be created (create admits as if starting).
    h.ok(&[
        "create",
        "gold",
        "--template",
        "bb",
        "--ram-guarantee",
        "60%",
    ]);
    h.ok(&[
        "create",
        "silver",
        "--template",
        "bb",
        "--ram-guarantee",
        "60%",
    ]);
    h.ok(&["start", "gold"]);
    assert!(committed_ram(&h).abs_diff(sixty) <= 4096);
    let line = refused(
        &h,
        "silver",
        &["start", "silver"],
        &["RAM", "gold", "this VE", "reserve 256M"],
    );
    eprintln!("{line}");
    assert_stopped_clean(&h, "silver");
    h.ok(&["start", "--force", "silver"]);
    assert!(committed_ram(&h).abs_diff(2 * sixty) <= 8192);
    // The guarantee is in the kernel: memory.low (v2) / the soft limit (v1).
    let low = qos_knobs(&h, "silver").memory_low.unwrap();
    assert!(
        low.abs_diff(sixty) <= 4096,
        "memory_low {low}, want {sixty}"
    );
}

#[test]
fn create_refuses_a_guarantee_that_does_not_fit_beside_the_running_ves() {
    let test = "create_refuses_a_guarantee_that_does_not_fit_beside_the_running_ves";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    // Alone too big: 96% plus the 5% reserve.
    refused(
        &h,
        "huge",
        &[
            "create",
            "huge",
            "--template",
            "bb",
            "--cpu-guarantee",
            "96%",
        ],
        &["101%", "this VE 96%", "reserve 5%"],
    );
    refused(
        &h,
        "huge",
        &[
            "create",
            "huge",
            "--template",
            "bb",
            "--ram-guarantee",
            "99%",
        ],
        &["RAM", "this VE"],
    );
    assert!(listed(&h, "huge").is_none());
    // Beside a running 60%: 50% is too much, 30% fits.
    h.start_ve("gold", &["--cpu-guarantee", "60%"]);
    refused(
        &h,
        "bronze",
        &[
            "create",
            "bronze",
            "--template",
            "bb",
            "--cpu-guarantee",
            "50%",
        ],
        &["gold 60%", "this VE 50%", "115%"],
    );
    assert!(listed(&h, "bronze").is_none());
    h.ok(&[
        "create",
        "bronze",
        "--template",
        "bb",
        "--cpu-guarantee",
        "30%",
    ]);
    h.ok(&["start", "bronze"]);
    assert_cpu(&h, 90.0);
    // Forced creates are kept, and need --force to start as well.
    h.ok(&[
        "create",
        "--force",
        "huge",
        "--template",
        "bb",
        "--cpu-guarantee",
        "96%",
    ]);
    refused(
        &h,
        "huge",
        &["start", "huge"],
        &["gold 60%", "bronze 30%", "this VE 96%"],
    );
    h.ok(&["start", "--force", "huge"]);
    assert_cpu(&h, 186.0);
}

#[test]
fn a_set_raising_a_guarantee_past_the_host_is_refused_and_changes_nothing() {
    let test = "a_set_raising_a_guarantee_past_the_host_is_refused_and_changes_nothing";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "gold",
        &["--cpu-guarantee", "60%", "--ram-guarantee", "40%"],
    );
    // No RAM limit, so that a RAM guarantee meets admission control, not the
    // limit a VE gets by default.
    h.start_ve(
        "silver",
        &[
            "--cpu-guarantee",
            "30%",
            "--pids",
            "100",
            "--ram",
            "unlimited",
        ],
    );
    let init = h.init_pid("silver");
    let knobs = qos_knobs(&h, "silver");
    assert_eq!(knobs.cpu_weight, 3000);
    let config = config_text(&h, "silver");

    for (args, names) in [
        (
            vec!["set", "silver", "--cpu-guarantee", "40%"],
            vec!["gold 60%", "this VE 40%", "105%"],
        ),
        // With other changes: none of them happens either.
        (
            vec!["set", "silver", "--cpu-guarantee", "50%", "--pids", "10"],
            vec!["gold 60%", "this VE 50%"],
        ),
        (
            vec!["set", "silver", "--ram-guarantee", "60%"],
            vec!["RAM", "gold"],
        ),
    ] {
        refused(&h, "silver", &args, &names);
        assert_eq!(qos_knobs(&h, "silver"), knobs, "vectl {args:?}");
        assert_eq!(config_text(&h, "silver"), config, "vectl {args:?}");
    }
    assert_eq!(h.init_pid("silver"), init);
    assert_cpu(&h, 90.0);

    // Up to the host's edge is fine; so is any other change at full commitment.
    h.ok(&["set", "silver", "--cpu-guarantee", "35%"]);
    assert_eq!(qos_knobs(&h, "silver").cpu_weight, 3500);
    assert_cpu(&h, 95.0);
    h.ok(&["set", "silver", "--pids", "50"]);
    h.ok(&["set", "gold", "--cpu-limit", "150%"]);
    // Lowering always fits.
    h.ok(&["set", "gold", "--cpu-guarantee", "50%"]);
    assert_cpu(&h, 85.0);
    // Forced past the host.
    h.ok(&["set", "--force", "gold", "--cpu-guarantee", "70%"]);
    assert_eq!(qos_knobs(&h, "gold").cpu_weight, 7000);
    assert_cpu(&h, 105.0);
    assert_eq!(h.init_pid("silver"), init);
}

#[test]
fn host_info_shows_capacity_reserve_and_commitments() {
    let test = "host_info_shows_capacity_reserve_and_commitments";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let i = info(&h);
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u64;
    assert_eq!(i["cpus"], cpus, "{i}");
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(i["ram_bytes"], mem_kb * 1024, "{i}");
    assert!(
        i["cgroup_version"] == "v1" || i["cgroup_version"] == "v2",
        "{i}"
    );
    assert_eq!(i["reserve"]["cpu_percent"], 5.0, "{i}");
    assert_eq!(i["reserve"]["ram_bytes"], 256 * MIB, "{i}");
    assert_eq!(i["committed"]["cpu_guarantee_percent"], 0.0, "{i}");
    assert_eq!(i["committed"]["ram_guarantee_bytes"], 0, "{i}");
    assert_eq!(i["committed"]["ves"], serde_json::json!([]), "{i}");

    h.start_ve(
        "a",
        &[
            "--cpu-guarantee",
            "20%",
            "--ram-guarantee",
            "64M",
            "--ram",
            "256M",
            "--cpu-limit",
            "150%",
        ],
    );
    h.start_ve("b", &["--cpu-guarantee", "10%", "--ram", "128M"]);
    // Stopped VEs commit nothing.
    h.ok(&[
        "create",
        "c",
        "--template",
        "bb",
        "--cpu-guarantee",
        "30%",
        "--ram-guarantee",
        "1G",
    ]);
    let c = &info(&h)["committed"];
    let pct = c["cpu_guarantee_percent"].as_f64().unwrap();
    assert!((pct - 30.0).abs() < 1e-6, "{c}");
    assert_eq!(c["ram_guarantee_bytes"], 64 * MIB, "{c}");
    assert_eq!(c["cpu_limit_percent_sum"], 150.0, "{c}");
    assert_eq!(c["ram_limit_bytes_sum"], 384 * MIB, "{c}");
    let ves = c["ves"].as_array().unwrap();
    assert_eq!(ves.len(), 2, "{c}");
    let a = ves.iter().find(|v| v["ve"] == "a").unwrap();
    assert_eq!(a["cpu"], 0.2, "{a}");
    assert_eq!(a["ram_bytes"], 64 * MIB, "{a}");
    // The table says the same.
    let text = h.ok(&["host", "info"]);
    assert!(
        text.contains("reserve") && text.contains("guaranteed"),
        "{text}"
    );

    // The reserve is a setting: it shows, and admission uses it.
    let i = h.json(&["host", "set", "--reserve-cpu", "65%", "--reserve-ram", "1G"]);
    assert_eq!(i["reserve"]["cpu_percent"], 65.0, "{i}");
    assert_eq!(i["reserve"]["ram_bytes"], 1024 * MIB, "{i}");
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 65.0);
    refused(
        &h,
        "c",
        &["start", "c"],
        &["a 20%", "b 10%", "this VE 30%", "reserve 65%", "125%"],
    );
    h.ok(&["host", "set", "--reserve-cpu", "40%"]);
    h.ok(&["start", "c"]);
    assert_cpu(&h, 60.0);
    let i = info(&h);
    assert_eq!(
        i["reserve"]["ram_bytes"],
        1024 * MIB,
        "one setting kept the other"
    );
    // Bad reserves are refused and change nothing: out of range exits 1, a
    // malformed value or nothing to set is bad usage (exit 2).
    let mut wrong = Vec::new();
    for (args, names, code) in [
        (
            vec!["host", "set", "--reserve-cpu", "100%"],
            vec!["--reserve-cpu"],
            1,
        ),
        (
            vec!["host", "set", "--reserve-cpu", "150%"],
            vec!["--reserve-cpu"],
            1,
        ),
        (
            vec!["host", "set", "--reserve-cpu", "5"],
            vec!["--reserve-cpu"],
            2,
        ),
        (
            vec!["host", "set", "--reserve-ram", "100%"],
            vec!["--reserve-ram"],
            1,
        ),
        (
            vec!["host", "set", "--reserve-ram", "12Q"],
            vec!["--reserve-ram"],
            2,
        ),
        (
            vec!["host", "set"],
            vec!["--reserve-cpu", "--reserve-ram"],
            2,
        ),
    ] {
        wrong.extend(refusal_problem_exit(
            &h,
            &args,
            &names,
            &|| String::new(),
            code,
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 40.0);
}

#[test]
fn concurrent_starts_cannot_both_take_the_last_share() {
    let test = "concurrent_starts_cannot_both_take_the_last_share";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.ok(&[
        "create",
        "gold",
        "--template",
        "bb",
        "--cpu-guarantee",
        "60%",
    ]);
    h.ok(&[
        "create",
        "silver",
        "--template",
        "bb",
        "--cpu-guarantee",
        "60%",
    ]);
    for round in 0..3 {
        let a = spawn(&h, &["start", "gold"]);
        let b = spawn(&h, &["start", "silver"]);
        let (a, b) = (finish(a), finish(b));
        no_panic(&a);
        no_panic(&b);
        let won: Vec<&str> = [("gold", &a), ("silver", &b)]
            .iter()
            .filter(|(_, r)| r.code == 0)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: both or neither started: {a:?} {b:?}"
        );
        let lost = if won[0] == "gold" { &b } else { &a };
        assert_eq!(lost.code, 1, "{lost:?}");
        assert!(
            lost.stderr.contains("refused") && lost.stderr.contains(won[0]),
            "{lost:?}"
        );
        assert_cpu(&h, 60.0);
        h.ok(&["stop", "--fast", won[0]]);
    }
}

#[test]
fn raising_the_host_reserve_past_the_running_guarantees_is_refused() {
    let test = "raising_the_host_reserve_past_the_running_guarantees_is_refused";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "gold",
        &["--cpu-guarantee", "60%", "--ram-guarantee", "40%"],
    );
    h.start_ve("silver", &["--cpu-guarantee", "30%"]);
    // 90% promised plus the 5% reserve.
    assert_cpu(&h, 90.0);

    let mut wrong = Vec::new();
    for (args, names) in [
        (
            vec!["host", "set", "--reserve-cpu", "20%"],
            vec![
                "--reserve-cpu 20%",
                "110%",
                "gold 60%",
                "silver 30%",
                "reserve 20%",
                "--force",
            ],
        ),
        (
            vec!["host", "set", "--reserve-ram", "70%"],
            vec!["--reserve-ram 70%", "RAM", "gold", "--force"],
        ),
        // With another change: none of them happens.
        (
            vec![
                "host",
                "set",
                "--reserve-cpu",
                "15%",
                "--default-pids",
                "99",
            ],
            vec!["--reserve-cpu 15%", "105%", "gold 60%"],
        ),
    ] {
        // Exit 1, one line naming these, the state directory unchanged.
        wrong.extend(refusal_problem(&h, &args, &names));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let i = info(&h);
    assert_eq!(i["reserve"]["cpu_percent"], 5.0, "{i}");
    assert_eq!(i["reserve"]["ram_bytes"], 256 * MIB, "{i}");
    assert_eq!(i["defaults"]["pids"], 2048, "{i}");

    // Up to the host's edge fits; lowering always does; --force overrides.
    h.ok(&["host", "set", "--reserve-cpu", "10%"]);
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 10.0);
    h.ok(&["host", "set", "--force", "--reserve-cpu", "20%"]);
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 20.0);
    h.ok(&["host", "set", "--reserve-cpu", "15%"]);
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 15.0);
    // With gold stopped its guarantees are free for the reserve.
    h.ok(&["stop", "--fast", "gold"]);
    h.ok(&[
        "host",
        "set",
        "--reserve-cpu",
        "50%",
        "--reserve-ram",
        "50%",
    ]);
    assert_eq!(info(&h)["reserve"]["cpu_percent"], 50.0);
    // ...and gold's start is refused now, naming the reserve.
    refused(
        &h,
        "gold",
        &["start", "gold"],
        &["reserve 50%", "silver 30%"],
    );
}
