//! Limits: --ram, --cpu-limit and --pids in the cgroup files (v1 here; v2 through
//! the same backend trait in the VM harness), live `set`, persistence, removal,
//! and a change the kernel refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// The kernel's files for the three limits: (memory bytes, cfs quota, pids.max).
fn kernel(h: &TestHost, ve: &str) -> (String, String, String) {
    (
        knob(h, "memory", ve, "memory.limit_in_bytes"),
        knob(h, "cpu", ve, "cpu.cfs_quota_us"),
        knob(h, "pids", ve, "pids.max"),
    )
}

fn v1_only(h: &TestHost, test: &str) -> bool {
    let v = h.json(&["host", "info"])["cgroup_version"].clone();
    if v != "v1" {
        integration::skip(test, "the knob checks here are for cgroup v1");
        return false;
    }
    true
}

/// What the memory controller writes for "no limit" on this kernel.
fn unlimited_memory(h: &TestHost) -> String {
    let parent = h
        .cgroup_parents()
        .iter()
        .find(|p| p.to_string_lossy().contains("/memory"))
        .unwrap();
    // The test's parent has no limit of its own.
    std::fs::read_to_string(parent.join("memory.limit_in_bytes"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn create_limits_land_in_the_cgroup_files() {
    let test = "create_limits_land_in_the_cgroup_files";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    if !v1_only(&h, test) {
        return;
    }
    h.start_ve(
        "lim",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    assert_eq!(
        kernel(&h, "lim"),
        ("268435456".into(), "50000".into(), "200".into())
    );
    assert_eq!(knob(&h, "cpu", "lim", "cpu.cfs_period_us"), "100000");
    // Fractional and multi-CPU caps, and RAM as a percentage of the host.
    h.start_ve("frac", &["--cpu-limit", "150%", "--ram", "1%"]);
    assert_eq!(knob(&h, "cpu", "frac", "cpu.cfs_quota_us"), "150000");
    let ram_host = h.json(&["host", "info"])["ram_bytes"].as_u64().unwrap();
    let want = (ram_host / 100) & !4095;
    let got: u64 = knob(&h, "memory", "frac", "memory.limit_in_bytes")
        .parse()
        .unwrap();
    assert!(
        got.abs_diff(want) <= 4096,
        "1% of {ram_host} is {want}, kernel has {got}"
    );
    // No limits given: none in the kernel.
    h.start_ve("free", &[]);
    assert_eq!(
        kernel(&h, "free"),
        (unlimited_memory(&h), "-1".into(), "max".into())
    );
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
    if !v1_only(&h, test) {
        return;
    }
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
        show["limits"],
        serde_json::json!({"ram": "128M", "cpu_limit": "150%", "pids": 100})
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
    if !v1_only(&h, test) {
        return;
    }
    h.ok(&["create", "cold", "--template", "bb", "--ram", "256M"]);
    let out = h.json(&["set", "cold", "--ram", "96M", "--pids", "50"]);
    assert_eq!(out["live"], false, "{out}");
    assert!(
        existing_cgroup_dirs(&h, "cold").is_empty(),
        "set made cgroups for a stopped VE"
    );
    assert_eq!(status(&h, "cold"), "stopped");
    let show = h.json(&["show", "cold"]);
    assert_eq!(show["limits"]["ram"], "96M");
    assert_eq!(show["limits"]["pids"], 50);
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
    if !v1_only(&h, test) {
        return;
    }
    h.start_ve(
        "unl",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    h.ok(&["set", "unl", "--ram", "unlimited"]);
    assert_eq!(
        kernel(&h, "unl"),
        (unlimited_memory(&h), "50000".into(), "200".into())
    );
    let show = h.json(&["show", "unl"]);
    assert!(show["limits"].get("ram").is_none(), "{show}");
    assert!(!config_text(&h, "unl").contains("ram"));
    h.ok(&[
        "set",
        "unl",
        "--cpu-limit",
        "unlimited",
        "--pids",
        "unlimited",
    ]);
    assert_eq!(
        kernel(&h, "unl"),
        (unlimited_memory(&h), "-1".into(), "max".into())
    );
    assert_eq!(h.json(&["show", "unl"])["limits"], serde_json::json!({}));
    // Still unlimited after a restart.
    h.ok(&["stop", "--fast", "unl"]);
    h.ok(&["start", "unl"]);
    assert_eq!(
        kernel(&h, "unl"),
        (unlimited_memory(&h), "-1".into(), "max".into())
    );
}

#[test]
fn a_limit_the_kernel_refuses_changes_nothing() {
    let test = "a_limit_the_kernel_refuses_changes_nothing";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    if !v1_only(&h, test) {
        return;
    }
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
    let used: u64 = knob(&h, "memory", "full", "memory.usage_in_bytes")
        .parse()
        .unwrap();
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
    assert_eq!(h.json(&["show", "full"])["limits"]["ram"], "128M");
    // The VE still runs and a change the kernel can take still works.
    h.ok(&["set", "full", "--ram", "100M"]);
    assert_eq!(
        knob(&h, "memory", "full", "memory.limit_in_bytes"),
        "104857600"
    );
}
