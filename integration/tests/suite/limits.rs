//! Limits: --ram, --cpu-limit and --pids in the cgroup files (v1 on this host, v2
//! in the VM suite: integration/vm/run), live `set`, persistence, removal, a change
//! the kernel refuses, and an allocation above the limit killed inside the VE only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;

/// How many OOM kills the kernel counted in the VE's cgroups. v2's memory.events
/// counts the whole subtree; v1 counts in the cgroup of the killed task (the VE's
/// payload cgroup, or deeper), so add them up.
fn oom_kills(h: &TestHost, ve: &str) -> u64 {
    let count = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    if is_v2(h) {
        return count(&knob(h, "memory", ve, "memory.events"));
    }
    let mut total = 0;
    let mut dirs = vec![h.cgroup_dir("memory", ve)];
    while let Some(d) = dirs.pop() {
        total += count(&std::fs::read_to_string(d.join("memory.oom_control")).unwrap());
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    total
}

#[test]
fn create_limits_land_in_the_cgroup_files() {
    let test = "create_limits_land_in_the_cgroup_files";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "lim",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    assert_eq!(
        kernel(&h, "lim"),
        ("268435456".into(), "50000".into(), "200".into())
    );
    // v1: the VE's processes live in its own memory cgroup, with no nested
    // one (a memory cgroup's own memory is charged to its parent: 12 KiB and
    // more per VE); v2 delegates a payload cgroup below it.
    let mem = h.cgroup_dir("memory", "lim");
    let init = h.init_pid("lim").to_string();
    let holder = if is_v2(&h) {
        mem.join("ve")
    } else {
        mem.clone()
    };
    assert!(
        std::fs::read_to_string(holder.join("cgroup.procs"))
            .unwrap()
            .lines()
            .any(|p| p == init),
        "init {init} not in {}",
        holder.display()
    );
    assert_eq!(mem.join("ve").exists(), is_v2(&h), "{}", mem.display());
    // Fractional and multi-CPU caps, and RAM as a percentage of the host.
    h.start_ve("frac", &["--cpu-limit", "150%", "--ram", "1%"]);
    assert_eq!(kernel(&h, "frac").1, "150000");
    let ram_host = h.json(&["host", "info"])["ram_bytes"].as_u64().unwrap();
    let want = (ram_host / 100) & !4095;
    let got: u64 = kernel(&h, "frac").0.parse().unwrap();
    assert!(
        got.abs_diff(want) <= 4096,
        "1% of {ram_host} is {want}, kernel has {got}"
    );
    // No limits given: the root's defaults (1G of RAM, 2048 processes, no CPU
    // cap); unlimited only when asked for.
    h.start_ve("dflt", &[]);
    assert_eq!(
        kernel(&h, "dflt"),
        ((1u64 << 30).to_string(), "max".into(), "2048".into())
    );
    h.start_ve("free", &["--ram", "unlimited", "--pids", "unlimited"]);
    assert_eq!(kernel(&h, "free"), unlimited());
    // The defaults are the root's to change; a guarantee beyond the default RAM
    // limit raises that limit to the guarantee.
    h.ok(&[
        "host",
        "set",
        "--default-ram",
        "300M",
        "--default-pids",
        "99",
    ]);
    let info = h.json(&["host", "info"]);
    assert_eq!(info["defaults"]["ram"], "300M", "{info}");
    assert_eq!(info["defaults"]["pids"], 99, "{info}");
    h.start_ve("dflt2", &[]);
    assert_eq!(kernel(&h, "dflt2").0, (300u64 << 20).to_string());
    assert_eq!(kernel(&h, "dflt2").2, "99");
    h.ok(&[
        "create",
        "promised",
        "--template",
        "bb",
        "--ram-guarantee",
        "400M",
    ]);
    assert_eq!(h.json(&["show", "promised"])["ram_limit_bytes"], 400 << 20);
    h.ok(&[
        "host",
        "set",
        "--default-ram",
        "unlimited",
        "--default-pids",
        "unlimited",
    ]);
    h.start_ve("free2", &[]);
    assert_eq!(kernel(&h, "free2"), unlimited());
    let line = h.fails(&["host", "set", "--default-pids", "0"]);
    assert!(line.contains("--default-pids"), "{line}");
    let line = h.fails(&["host", "set", "--default-ram", "1K"]);
    assert!(line.contains("--default-ram"), "{line}");
    // And the limits really hold: pids.max stops a fork bomb at the limit.
    h.start_ve("few", &["--pids", "5"]);
    let r = h.exec(
        "few",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
        ],
    );
    assert!(r.stderr.contains("can't fork"), "{r:?}");
    // The kernel counted the refused forks in the VE's pids subtree.
    let dir = h.cgroup_dir("pids", "few");
    let mut hits = 0u64;
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        if let Ok(ev) = std::fs::read_to_string(d.join("pids.events")) {
            hits += ev
                .trim()
                .strip_prefix("max ")
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    assert!(hits > 0, "pids.max was never hit");
}

#[test]
fn a_live_set_changes_the_kernel_without_restart_and_persists() {
    let test = "a_live_set_changes_the_kernel_without_restart_and_persists";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "live",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    let pid = h.init_pid("live");
    let out = h.json(&[
        "set",
        "live",
        "--ram",
        "128M",
        "--cpu-limit",
        "150%",
        "--pids",
        "100",
    ]);
    assert_eq!(out["live"], true, "{out}");
    assert_eq!(
        kernel(&h, "live"),
        ("134217728".into(), "150000".into(), "100".into())
    );
    assert_eq!(h.init_pid("live"), pid, "set restarted the VE");
    assert_eq!(wait_http(&h, "live"), "hello from live");
    let show = h.json(&["show", "live"]);
    assert_eq!(
        (
            &show["ram_limit_bytes"],
            &show["cpu_limit_percent"],
            &show["pids_limit"]
        ),
        (
            &serde_json::json!(128 << 20),
            &serde_json::json!(150.0),
            &serde_json::json!(100)
        )
    );
    assert_eq!(show["kernel_limits"]["memory_bytes"], 134217728);
    let cfg = config_text(&h, "live");
    assert!(cfg.contains("128M") && cfg.contains("150%"), "{cfg}");

    // One limit at a time leaves the others.
    h.ok(&["set", "live", "--pids", "64"]);
    assert_eq!(
        kernel(&h, "live"),
        ("134217728".into(), "150000".into(), "64".into())
    );

    // After stop/start the kernel gets the saved values.
    h.ok(&["stop", "--fast", "live"]);
    h.ok(&["start", "live"]);
    assert_ne!(h.init_pid("live"), pid);
    assert_eq!(
        kernel(&h, "live"),
        ("134217728".into(), "150000".into(), "64".into())
    );
}

#[test]
fn set_on_a_stopped_ve_only_persists() {
    let test = "set_on_a_stopped_ve_only_persists";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.ok(&["create", "cold", "--template", "bb", "--ram", "256M"]);
    let out = h.json(&["set", "cold", "--ram", "96M", "--pids", "50"]);
    assert_eq!(out["live"], false, "{out}");
    assert!(
        existing_cgroup_dirs(&h, "cold").is_empty(),
        "set made cgroups for a stopped VE"
    );
    assert_eq!(status(&h, "cold"), "stopped");
    let show = h.json(&["show", "cold"]);
    assert_eq!(show["ram_limit_bytes"], 96 << 20);
    assert_eq!(show["pids_limit"], 50);
    // Applied at the next start. Works by id as well.
    let id = show["id"].as_u64().unwrap().to_string();
    h.ok(&["set", &id, "--cpu-limit", "25%"]);
    h.ok(&["start", "cold"]);
    assert_eq!(
        kernel(&h, "cold"),
        ("100663296".into(), "25000".into(), "50".into())
    );
}

#[test]
fn unlimited_removes_a_limit() {
    let test = "unlimited_removes_a_limit";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "unl",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    h.ok(&["set", "unl", "--ram", "unlimited"]);
    assert_eq!(
        kernel(&h, "unl"),
        ("max".into(), "50000".into(), "200".into())
    );
    let show = h.json(&["show", "unl"]);
    assert!(show.get("ram_limit_bytes").is_none(), "{show}");
    assert!(!config_text(&h, "unl").contains("ram"));
    h.ok(&[
        "set",
        "unl",
        "--cpu-limit",
        "unlimited",
        "--pids",
        "unlimited",
    ]);
    assert_eq!(kernel(&h, "unl"), unlimited());
    let show = h.json(&["show", "unl"]);
    let limits: Vec<&String> = show
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.ends_with("_limit") || k.contains("_limit_") || k.contains("_guarantee"))
        .collect();
    assert!(limits.is_empty(), "{show}");
    // Still unlimited after a restart.
    h.ok(&["stop", "--fast", "unl"]);
    h.ok(&["start", "unl"]);
    assert_eq!(kernel(&h, "unl"), unlimited());
}

#[test]
fn a_limit_the_kernel_refuses_changes_nothing() {
    let test = "a_limit_the_kernel_refuses_changes_nothing";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve(
        "full",
        &["--ram", "128M", "--cpu-limit", "50%", "--pids", "200"],
    );
    // 60 MB in the VE's tmpfs /dev/shm: charged to the VE, not reclaimable
    // without swap.
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
    assert_eq!(r.code, 0, "{}", r.stderr);
    let used = memory_used(&h, "full");
    assert!(used > 60 << 20, "the VE uses only {used} bytes");
    let kernel_before = kernel(&h, "full");
    let config_before = config_text(&h, "full");
    let snap_before = state_snapshot(&h);

    let line = h.fails(&["set", "full", "--ram", "16M"]);
    assert!(
        line.contains("full") && line.contains("memory"),
        "the error names neither VE nor knob: {line}"
    );
    assert_eq!(kernel(&h, "full"), kernel_before);
    assert_eq!(config_text(&h, "full"), config_before);

    // Together with changes the kernel would take: all or nothing.
    let line = h.fails(&[
        "set",
        "full",
        "--pids",
        "50",
        "--cpu-limit",
        "25%",
        "--ram",
        "16M",
    ]);
    assert!(line.contains("full"), "{line}");
    assert_eq!(
        kernel(&h, "full"),
        kernel_before,
        "a refused set left partial changes"
    );
    assert_eq!(config_text(&h, "full"), config_before);
    assert_eq!(diff(&snap_before, &state_snapshot(&h)), "");
    assert_eq!(h.json(&["show", "full"])["ram_limit_bytes"], 128 << 20);
    // The VE still runs and a change the kernel can take still works.
    h.ok(&["set", "full", "--ram", "100M"]);
    assert_eq!(kernel(&h, "full").0, "104857600");
}

#[test]
fn an_allocation_above_the_ram_limit_is_killed_inside_the_ve_only() {
    let test = "an_allocation_above_the_ram_limit_is_killed_inside_the_ve_only";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("small", &["--ram", "32M"]);
    h.start_ve("neighbour", &["--ram", "32M"]);
    wait_http(&h, "small");
    let init = h.init_pid("small");
    // A shell that grows to ~64 MB of its own (anonymous) memory.
    let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}";
    let r = h.exec("small", &["sh", "-c", hog]);
    assert_ne!(r.code, 0, "64 MB fit in a 32M VE: {r:?}");
    assert!(oom_kills(&h, "small") >= 1, "no OOM kill counted");
    // The VE, its init and its neighbour carry on.
    assert_eq!(h.init_pid("small"), init);
    assert_eq!(wait_http(&h, "small"), "hello from small");
    assert_eq!(wait_http(&h, "neighbour"), "hello from neighbour");
    assert_eq!(oom_kills(&h, "neighbour"), 0);
    // With room, the same allocation succeeds.
    h.ok(&["set", "small", "--ram", "256M"]);
    let r = h.exec("small", &["sh", "-c", hog]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "67108864");
}
