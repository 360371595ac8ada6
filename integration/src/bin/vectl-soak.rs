//! vectl's soak run: N lifecycle cycles of one VE on one host, then a check that
//! nothing was left behind and that the cycle did not get slower.
//!
//!   cargo build --release --workspace --bins
//!   target/release/vectl-soak [--cycles N] [--dir] [--json]
//!
//! One cycle: `create` (on the default nat network, a published port), `start`,
//! `set --ram`, `exec true`, `stop --fast`, `destroy`. Before the first
//! measured cycle (after one warm-up) and after the last, it records what the
//! host holds: mounts, loop devices, the host's cgroups below the root's parent,
//! links and nft ruleset lines (in the run's own network namespace), btrfs
//! subvolumes of the pool, and every file of the state directory (lock files
//! included). Any difference is a leak and fails the run. Drift: the median
//! cycle time of the last tenth of the cycles against the first tenth, and the
//! median of every 100 cycles on the way. It runs on a loop-backed btrfs pool
//! (`--dir`, or a machine without btrfs: the `dir` pool).
// A binary target links all of the package's dependencies; it uses few.
#![allow(unused_crate_dependencies)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Instant;

use integration::{TestHost, cli_number, median, sh};

/// The median of a slice, left as it is.
fn median_of(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// Every path below `dir`, relative to it.
fn files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.insert(format!("file {}", p.strip_prefix(base).unwrap().display()));
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files(&p, base, out);
        }
    }
}

/// What the host holds that a cycle could leak.
fn holdings(h: &TestHost) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        out.insert(format!("mount {}", l.split(' ').nth(4).unwrap_or("")));
    }
    for l in sh(&["losetup", "-n", "-O", "NAME,BACK-FILE"])
        .unwrap_or_default()
        .lines()
    {
        out.insert(format!("loop {l}"));
    }
    for l in sh(&["ip", "-o", "link", "show"]).unwrap().lines() {
        let name = l.split(": ").nth(1).unwrap_or("");
        out.insert(format!("link {}", name.split('@').next().unwrap_or(name)));
    }
    for l in sh(&["nft", "list", "ruleset"]).unwrap().lines() {
        out.insert(format!("nft {}", l.trim()));
    }
    for parent in h.cgroup_parents() {
        let mut dirs = BTreeSet::new();
        files(parent, parent, &mut dirs);
        out.extend(
            dirs.into_iter()
                .filter(|d| !d.contains('.'))
                .map(|d| format!("cgroup {}:{d}", parent.display())),
        );
    }
    let pool = h.root().join("pool");
    for l in sh(&["btrfs", "subvolume", "list", "-o", pool.to_str().unwrap()])
        .unwrap_or_default()
        .lines()
    {
        out.insert(format!(
            "subvolume {}",
            l.split(" path ").nth(1).unwrap_or(l)
        ));
    }
    let mut f = BTreeSet::new();
    files(h.root(), h.root(), &mut f);
    out.extend(f);
    out
}

fn main() {
    let cycles = cli_number("--cycles", 1000);
    let json = std::env::args().any(|a| a == "--json");
    let dir = std::env::args().any(|a| a == "--dir");
    let btrfs = !dir && integration::btrfs_missing().is_none();
    let Some(h) = integration::bench_host("vectl-soak", "2G", dir) else {
        eprintln!("vectl-soak: cannot run here (see SKIP above)");
        std::process::exit(1);
    };
    let cycle = || {
        let t = Instant::now();
        h.ok(&[
            "create",
            "soak",
            "--template",
            "bb",
            "--publish",
            "19000:80",
        ]);
        h.ok(&["start", "soak"]);
        h.ok(&["set", "soak", "--ram", "96M"]);
        h.ok(&["exec", "soak", "--", "true"]);
        h.ok(&["stop", "--fast", "soak"]);
        h.ok(&["destroy", "soak"]);
        t.elapsed().as_secs_f64() * 1000.0
    };
    cycle();
    // The kernel removes a stopped VE's port with its namespace a moment later.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = holdings(h);
    let started = Instant::now();
    let mut times = Vec::with_capacity(cycles);
    for i in 0..cycles {
        times.push(cycle());
        if !json && (i + 1) % 100 == 0 {
            eprintln!(
                "vectl-soak: {} cycles, median of the last 100: {:.1} ms",
                i + 1,
                median_of(&times[i + 1 - 100..])
            );
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = holdings(h);
    let tenth = (cycles / 10).max(1);
    let first = median_of(&times[..tenth]);
    let last = median_of(&times[cycles - tenth..]);
    let added: Vec<&String> = after.difference(&before).collect();
    let gone: Vec<&String> = before.difference(&after).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "cycles": cycles,
                "seconds": started.elapsed().as_secs_f64(),
                "cycle_ms_median": median_of(&times),
                "first_tenth_ms": first,
                "last_tenth_ms": last,
                "drift": last / first,
                "left": added,
                "gone": gone,
                "backend": if btrfs { "btrfs" } else { "dir" },
            })
        );
    } else {
        println!(
            "{cycles} cycles in {:.0} s on the {} pool: median cycle {:.0} ms; first tenth {first:.0} ms, last tenth {last:.0} ms (drift {:.2}x)",
            started.elapsed().as_secs_f64(),
            if btrfs { "btrfs" } else { "dir" },
            median_of(&times),
            last / first
        );
        println!(
            "left behind: {}",
            if added.is_empty() {
                "nothing (mounts, loop devices, cgroups, links, nft rules, subvolumes, files)"
                    .to_string()
            } else {
                format!("{added:?}")
            }
        );
        if !gone.is_empty() {
            println!("gone since the start: {gone:?}");
        }
    }
    h.release();
    h.remove_files();
    if !added.is_empty() {
        std::process::exit(1);
    }
}
