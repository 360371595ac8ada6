//! Concurrency: many VEs started and stopped in parallel, commands on one VE
//! serialize, commands on different VEs do not wait for each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;

const N: usize = 20;

#[test]
fn twenty_ves_start_serve_and_stop_in_parallel() {
    let Some(h) = TestHost::new("twenty_ves_start_serve_and_stop_in_parallel") else {
        return;
    };
    let names: Vec<String> = (0..N).map(|i| format!("par{i:02}")).collect();
    // Created in parallel too: names and ids must not clash.
    let creates: Vec<_> = names
        .iter()
        .map(|n| {
            spawn(
                &h,
                &[
                    "create",
                    n,
                    "--template",
                    "bb",
                    "--ram",
                    "64M",
                    "--pids",
                    "64",
                ],
            )
        })
        .collect();
    for (n, c) in names.iter().zip(creates) {
        let r = finish(c);
        assert_eq!(r.code, 0, "create {n}: {r:?}");
        no_panic(&r);
    }
    let list = h.json(&["list"]);
    let ids: BTreeSet<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (100..100 + N as u64).collect(), "{list}");

    // 20 concurrent `vectl start` processes.
    let t = Instant::now();
    let starts: Vec<_> = names.iter().map(|n| spawn(&h, &["start", n])).collect();
    for (n, c) in names.iter().zip(starts) {
        let r = finish(c);
        assert_eq!(r.code, 0, "start {n}: {r:?}");
    }
    eprintln!("20 parallel starts took {:?}", t.elapsed());
    let list = h.json(&["list"]);
    let pids: BTreeSet<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["status"], "running", "{v}");
            v["pid"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(pids.len(), N, "inits are not distinct: {list}");
    for n in &names {
        assert_eq!(wait_http(&h, n), format!("hello from {n}"));
        assert_eq!(kernel(&h, n).0, "67108864");
    }

    // And 20 concurrent stops.
    let stops: Vec<_> = names
        .iter()
        .map(|n| spawn(&h, &["stop", "--fast", n]))
        .collect();
    for (n, c) in names.iter().zip(stops) {
        let r = finish(c);
        assert_eq!(r.code, 0, "stop {n}: {r:?}");
        assert!(r.stdout.contains(&format!("stopped VE {n}")), "{r:?}");
    }
    for n in &names {
        assert_stopped_clean(&h, n);
    }
    for p in &pids {
        assert!(!alive(*p as i32), "init {p} survived");
    }
    // Start again and destroy in parallel: list is empty, nothing is left.
    let starts: Vec<_> = names.iter().map(|n| spawn(&h, &["start", n])).collect();
    for c in starts {
        assert_eq!(finish(c).code, 0);
    }
    let destroys: Vec<_> = names
        .iter()
        .map(|n| spawn(&h, &["destroy", "--force", n]))
        .collect();
    for (n, c) in names.iter().zip(destroys) {
        let r = finish(c);
        assert_eq!(r.code, 0, "destroy {n}: {r:?}");
    }
    assert_host_empty(&h);
}

#[test]
fn concurrent_sets_on_one_ve_serialize() {
    let Some(h) = TestHost::new("concurrent_sets_on_one_ve_serialize") else {
        return;
    };
    h.start_ve("busy", &["--ram", "256M", "--pids", "500"]);
    let pid = h.init_pid("busy");
    let sets: Vec<_> = (0..12)
        .map(|i| {
            let ram = format!("{}M", 64 + i);
            let pids = format!("{}", 100 + i);
            let cpu = format!("{}%", 10 + i);
            spawn(
                &h,
                &[
                    "set",
                    "busy",
                    "--ram",
                    &ram,
                    "--pids",
                    &pids,
                    "--cpu-limit",
                    &cpu,
                ],
            )
        })
        .collect();
    for c in sets {
        let r = finish(c);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stderr.is_empty(), "{r:?}");
    }
    // One of the sets won, whole: config and kernel agree on the same i.
    let show = h.json(&["show", "busy"]);
    let ram = show["ram_limit_bytes"].as_u64().unwrap();
    let i: u64 = (ram >> 20) - 64;
    assert!(i < 12, "{show}");
    assert_eq!(show["pids_limit"], 100 + i, "{show}");
    assert_eq!(show["cpu_limit_percent"], (10 + i) as f64, "{show}");
    assert_eq!(
        kernel(&h, "busy"),
        (
            ((64 + i) << 20).to_string(),
            ((10 + i) * 1000).to_string(),
            (100 + i).to_string()
        )
    );
    assert_eq!(h.init_pid("busy"), pid);
    // The config file parses (no torn write) and list is right.
    let list = h.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "running");
    for f in ["ram_limit_bytes", "pids_limit", "cpu_limit_percent"] {
        assert_eq!(list[0][f], show[f], "{f}");
    }
}

#[test]
fn commands_on_one_ve_wait_and_on_others_do_not() {
    let Some(h) = TestHost::new("commands_on_one_ve_wait_and_on_others_do_not") else {
        return;
    };
    h.start_ve("slow", &[]);
    h.start_ve("fast", &[]);
    wait_http(&h, "slow");
    // Another VE is not held up: while slow's lock is held (here by the test,
    // as a command on slow holds it), commands on fast complete and one on slow
    // waits until the lock is let go.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(h.root().join("locks/ve-slow.lock"))
        .unwrap();
    lock.lock().unwrap();
    let mut held = spawn(&h, &["set", "slow", "--pids", "41"]);
    assert_eq!(h.exec("fast", &["true"]).code, 0);
    h.ok(&["set", "fast", "--pids", "99"]);
    assert!(
        held.try_wait().unwrap().is_none(),
        "a set on slow ran while slow's lock was held"
    );
    drop(lock);
    let r = finish(held);
    assert_eq!(r.code, 0, "{r:?}");
    // A graceful stop of busybox init holds the VE's lock for seconds.
    let stop = spawn(&h, &["stop", "slow"]);
    std::thread::sleep(Duration::from_millis(300));
    // A command on the same VE waits for the stop, then sees it stopped (a set
    // that did not wait would have changed the running VE: live).
    let set = h.json(&["set", "slow", "--pids", "42"]);
    let r = finish(stop);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "stopped VE slow");
    assert_eq!(
        set["live"], false,
        "set ran while the stop was under way: {set}"
    );
    assert_stopped_clean(&h, "slow");
    assert_eq!(h.json(&["show", "slow"])["pids_limit"], 42);
    assert_eq!(status(&h, "fast"), "running");
}

#[test]
fn racing_creates_of_one_name_and_imports_of_one_template() {
    let Some(h) = TestHost::new("racing_creates_of_one_name_and_imports_of_one_template") else {
        return;
    };
    // Eight creates of the same name: one wins, the others are told it exists.
    let creates: Vec<_> = (0..8)
        .map(|_| spawn(&h, &["create", "same", "--template", "bb"]))
        .collect();
    let runs: Vec<Run> = creates.into_iter().map(finish).collect();
    let won = runs.iter().filter(|r| r.code == 0).count();
    assert_eq!(won, 1, "{runs:?}");
    for r in runs.iter().filter(|r| r.code != 0) {
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("already exists"), "{r:?}");
    }
    assert_eq!(h.json(&["list"]).as_array().unwrap().len(), 1);
    let ids: Vec<_> = std::fs::read_dir(h.root().join("ids")).unwrap().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Four imports of one template at once: four distinct versions.
    let rootfs = integration::busybox_rootfs().unwrap().to_str().unwrap();
    let imports: Vec<_> = (0..4)
        .map(|_| spawn(&h, &["template", "import", "tpl", "--from-dir", rootfs]))
        .collect();
    for c in imports {
        let r = finish(c);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let versions: BTreeSet<u64> = h
        .json(&["template", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "tpl")
        .map(|t| t["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, BTreeSet::from([1, 2, 3, 4]));
    for v in 1..=4 {
        let d = h.root().join(format!("pool/templates/tpl/{v}"));
        assert!(d.join("bin/busybox").is_file(), "{}", d.display());
    }
}
