//! vectl's benchmark: the hot paths of the VE lifecycle, timed as a user sees them
//! (whole `vectl` command runs), on a busybox template, as root.
//!
//!   cargo build --release --workspace --bins
//!   target/release/vectl-bench [--runs N] [--ves N] [--json]
//!
//! Figures (medians):
//! - cycle: create + start + exec true + stop --fast + destroy of one VE
//! - create→ready: create + start until the VE's own HTTP server answers
//!   (`exec -- wget` inside the VE)
//! - start: `vectl start` of an existing, stopped VE (returns once init runs)
//! - stop --fast + destroy
//! - exec: `vectl exec VE -- true` in a running VE
//! - set: a live change of each knob on a running VE (--ram, and every other)
//! - list, stats --json: with the N VEs of the memory run running
//! - memory: host memory per running idle VE = growth of memory in use (not
//!   page cache) over N VEs, minus what the VEs' own cgroups account (without
//!   page cache), divided by N; the drop of MemAvailable is shown beside it
//! - N VEs one after another: create + start of N VEs in sequence
//! - stop --all: a graceful stop of the N VEs (busybox init halts in about 3 s),
//!   several at once; then destroy of the N stopped VEs
//! - crun: N containers of crun (when installed) on the same busybox tree running
//!   the same init, in the same run: what each one's cgroup is charged, without
//!   page cache (exact counters, see `memcg_bytes`), beside a VE's with and
//!   without a user namespace; with the tree itself as the root, and with an
//!   overlay of it per container (podman's overlay storage; a VE's root is an
//!   overlay of its template version too)
//! - storage (btrfs pool): create of a VE on a 200 MB template, `set --disk` on a
//!   running VE, disk used by a fresh VE
//! - clone: `vectl clone` of a stopped VE with 10 MB of its own files
//! - upgrade / rollback of a running VE to another template version (restart
//!   included), with a `--fast` stop, and with a graceful one of an init that
//!   exits on SIGTERM (busybox init's own halt sleeps 3 s, whatever runs)
//! - template build: `template update bb --run true`, all of it overhead (build
//!   VE create, start, exec, kill, destroy; snapshot of the version, layer
//!   applied, new version published)
//! - sharing: page cache growth when 20 VEs on one template version read the same
//!   64 MiB template file (evicted first), against one copy of it
//! - network: `vectl start` of a VE on the default nat network against one with
//!   no network (`--net none`), alternating; TCP throughput VE -> host and host ->
//!   VE against a bare veth pair between two namespaces, in the same run (busybox
//!   nc on the far side both times)
//!
//! - portability (btrfs pool; also alone with `--only portability`): a VE with
//!   1 GiB of its own files (incompressible): full backup, incremental backup
//!   after a 5 MB change, how long the VE was frozen for one, restore of the
//!   chain as a new VE; migration to a second root of this host with 5 MB
//!   changed between the last pre-copy round and the switch: downtime (freeze
//!   to the VE's init running on the target) and the whole migration
//!
//! - oci (alone with `--only oci`): `podman run --rm IMAGE true` with vectl's OCI
//!   runtime (`vectl-oci`) against runc and crun driven by the same podman,
//!   interleaved, on a busybox image imported from a tarball; podman keeps its
//!   storage in a directory of the run and its network in the bench's
//!   namespace. A runtime that fails here (crun 1.8 refuses hybrid cgroup
//!   hosts) is reported as failed, not timed.
//!
//! - scale (alone with `--scale N`, default 1000; issue 23): the cost of one
//!   VE's create, start, `set --ram`, stop --fast and destroy while 10, 100 and
//!   N busybox web VEs (`--ram 32M`) run beside it; the N VEs created in one
//!   command and started with `start --all`, 50 of them sampled over HTTP, `list`,
//!   `stats` and `stats --json` over them, the drop of MemAvailable per VE, then
//!   `stop --all --fast` and one destroy of all of them.
//!
//! It runs on a loop-backed btrfs pool (as `vectl init` makes by default), or on
//! the `dir` pool when this machine cannot make one (then without the storage
//! figures).
//! It is a benchmark, not a test: it prints numbers and fails only if vectl fails.
// A binary target links all of the package's dependencies; it uses few.
#![allow(unused_crate_dependencies)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::time::{Duration, Instant};

use integration::{TestHost, cli_number, median};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    ms(t.elapsed())
}

fn meminfo(field: &str) -> f64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// (MemAvailable, memory in use that is not page cache), KiB: medians of five
/// readings 200 ms apart, as this shared machine's background activity moves them.
/// MemAvailable counts reclaimable slab (dentries, inodes) as available, though
/// the VEs' cgroups are charged for it; "in use" counts all of it.
fn memory_sample() -> (f64, f64) {
    let mut avail = Vec::new();
    let mut used = Vec::new();
    for _ in 0..5 {
        avail.push(meminfo("MemAvailable"));
        used.push(
            meminfo("MemTotal") - meminfo("MemFree") - meminfo("Cached") - meminfo("Buffers"),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (median(&mut avail), median(&mut used))
}

fn main() {
    let runs = cli_number("--runs", 20);
    let nves = cli_number("--ves", 50);
    let json = std::env::args().any(|a| a == "--json");
    let btrfs = integration::btrfs_missing().is_none();
    let Some(h) = integration::bench_host("vectl-bench", "8G", false) else {
        eprintln!("vectl-bench: cannot run here (see SKIP above)");
        std::process::exit(1);
    };
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    if only.as_deref() == Some("metrics") {
        // `--ves` defaults to the 500 here.
        let n = cli_number("--ves", 500);
        let rows = metrics_figures(h, runs, n);
        h.release();
        h.remove_files();
        print_rows(
            json,
            runs,
            n,
            rows.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        );
        return;
    }
    let scale = std::env::args()
        .skip_while(|a| a != "--scale")
        .nth(1)
        .and_then(|v| v.parse::<usize>().ok());
    if only.as_deref() == Some("scale") || scale.is_some() {
        let rows = scale_figures(h, runs.min(5), scale.unwrap_or(1000));
        h.release();
        h.remove_files();
        print_rows(
            json,
            runs,
            scale.unwrap_or(1000),
            rows.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        );
        return;
    }
    if only.as_deref() == Some("oci") {
        let rows = oci_figures(runs);
        h.release();
        h.remove_files();
        print_rows(
            json,
            runs,
            nves,
            rows.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        );
        return;
    }
    if only.as_deref() == Some("portability") {
        let rows = if btrfs {
            portability_figures(h, runs)
        } else {
            Vec::new()
        };
        h.release();
        h.remove_files();
        print_rows(
            json,
            runs,
            nves,
            rows.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        );
        return;
    }
    let mut storage = if btrfs {
        storage_figures(h, runs)
    } else {
        Vec::new()
    };
    storage.extend(network_figures(h, runs));
    storage.extend(clone_figures(h, runs));
    if btrfs {
        storage.extend(upgrade_figures(h, runs));
        storage.extend(portability_figures(h, runs));
    }
    storage.extend(build_figures(h, runs));
    storage.extend(sharing_figures(h));
    storage.extend(tenant_figures(h, runs, nves));
    let limits = ["--ram", "64M", "--cpu-limit", "50%", "--pids", "200"];
    // Warm up caches (binary, template pages).
    h.start_ve("warm", &limits);
    h.ok(&["stop", "--fast", "warm"]);
    h.ok(&["destroy", "warm"]);

    let mut cycle = Vec::new();
    let mut ready = Vec::new();
    let mut teardown = Vec::new();
    for i in 0..runs {
        let ve = format!("c{i}");
        let t = Instant::now();
        let mut create = vec!["create", ve.as_str(), "--template", "bb"];
        create.extend_from_slice(&limits);
        h.ok(&create);
        h.ok(&["start", &ve]);
        h.ok(&["exec", &ve, "--", "true"]);
        h.ok(&["stop", "--fast", &ve]);
        h.ok(&["destroy", &ve]);
        cycle.push(ms(t.elapsed()));

        let t = Instant::now();
        h.ok(&create);
        h.ok(&["start", &ve]);
        // Ready = the VE's own HTTP server answers (its init starts httpd).
        loop {
            let r = h.exec(&ve, &["wget", "-qO-", "http://127.0.0.1/"]);
            if r.code == 0 && r.stdout.contains("hello") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "VE {ve} never served HTTP"
            );
        }
        ready.push(ms(t.elapsed()));
        teardown.push(timed(|| {
            h.ok(&["stop", "--fast", &ve]);
            h.ok(&["destroy", &ve]);
        }));
    }

    h.ok(&{
        let mut c = vec!["create", "s", "--template", "bb"];
        c.extend_from_slice(&limits);
        c
    });
    let mut start = Vec::new();
    for _ in 0..runs {
        start.push(timed(|| {
            h.ok(&["start", "s"]);
        }));
        h.ok(&["stop", "--fast", "s"]);
    }
    h.ok(&["start", "s"]);
    // The floor under every figure: starting the vectl process at all.
    let mut version = Vec::new();
    for _ in 0..runs.max(50) {
        version.push(timed(|| {
            h.ok(&["--version"]);
        }));
    }
    // Entering a running VE: `vectl exec s -- true` as a whole.
    let mut exec = Vec::new();
    for _ in 0..runs.max(50) {
        exec.push(timed(|| {
            h.ok(&["exec", "s", "--", "true"]);
        }));
    }
    let mut set = Vec::new();
    for i in 0..runs.max(50) {
        let size = if i % 2 == 0 { "96M" } else { "128M" };
        set.push(timed(|| {
            h.ok(&["set", "s", "--ram", size]);
        }));
    }
    // Every other knob, alternating between two values (medians).
    let knobs: [(&str, [&str; 2]); 9] = [
        ("--ram-guarantee", ["32M", "48M"]),
        ("--swap", ["32M", "64M"]),
        ("--cpu-limit", ["50%", "75%"]),
        ("--cpu-guarantee", ["5%", "10%"]),
        ("--cpus", ["1", "2"]),
        ("--pids", ["100", "200"]),
        ("--io-limit", ["50M", "60M"]),
        ("--iops-limit", ["1000", "2000"]),
        ("--io-weight", ["100", "200"]),
    ];
    let bfq = h.json(&["host", "info"])["io_device"]["scheduler"] == "bfq";
    let mut per_knob: Vec<(String, f64)> = Vec::new();
    for (flag, values) in knobs {
        if flag == "--io-weight" && !bfq {
            continue;
        }
        let mut t = Vec::new();
        for i in 0..runs {
            t.push(timed(|| {
                h.ok(&["set", "s", flag, values[i % 2]]);
            }));
        }
        per_knob.push((format!("set {flag} on a running VE (ms)"), median(&mut t)));
    }
    h.ok(&["stop", "--fast", "s"]);
    h.ok(&["destroy", "s"]);

    // The same start, privileged (no user namespace).
    h.ok(&{
        let mut c = vec!["create", "sp", "--template", "bb", "--privileged"];
        c.extend_from_slice(&limits);
        c
    });
    let mut start_privileged = Vec::new();
    for _ in 0..runs {
        start_privileged.push(timed(|| {
            h.ok(&["start", "sp"]);
        }));
        h.ok(&["stop", "--fast", "sp"]);
    }
    h.ok(&["destroy", "sp"]);

    // Memory per idle VE, privileged, then with user namespaces (the default;
    // those stay for list and stats below).
    let mut flagged = limits.to_vec();
    flagged.push("--privileged");
    let privileged = idle_memory(h, nves, "p", &flagged);
    let names: Vec<String> = (0..nves).map(|i| format!("p{i}")).collect();
    let mut args = vec!["destroy", "--force"];
    args.extend(names.iter().map(String::as_str));
    h.ok(&args);
    let idle = idle_memory(h, nves, "m", &limits);
    let crun = crun_memory(nves, false);
    let crun_overlay = crun_memory(nves, true);
    let mut list = Vec::new();
    let mut stats = Vec::new();
    let mut scrape = Vec::new();
    for _ in 0..runs {
        scrape.push(timed(|| {
            h.ok(&["stats", "--format", "prometheus"]);
        }));
        list.push(timed(|| {
            h.ok(&["list"]);
        }));
        stats.push(timed(|| {
            h.ok(&["--json", "stats"]);
        }));
    }
    // Busybox init takes about 3 s to halt: one after another that would be
    // N times as long.
    let stop_all = timed(|| {
        h.ok(&["stop", "--all"]);
    });
    let destroy_all = timed(|| {
        let names: Vec<String> = (0..nves).map(|i| format!("m{i}")).collect();
        let mut args = vec!["destroy"];
        args.extend(names.iter().map(String::as_str));
        h.ok(&args);
    });

    let rows = [
        (
            "cycle create+start+exec+stop+destroy (ms)",
            median(&mut cycle),
        ),
        ("create->ready, HTTP answers (ms)", median(&mut ready)),
        ("start of an existing VE (ms)", median(&mut start)),
        (
            "start of an existing privileged VE (ms)",
            median(&mut start_privileged),
        ),
        ("stop --fast + destroy (ms)", median(&mut teardown)),
        (
            "vectl --version, process start alone (ms)",
            median(&mut version),
        ),
        ("exec true in a running VE (ms)", median(&mut exec)),
        ("set --ram on a running VE (ms)", median(&mut set)),
        ("list with N VEs (ms)", median(&mut list)),
        ("stats --json with N VEs running (ms)", median(&mut stats)),
        (
            "stats --format prometheus with N VEs running (ms)",
            median(&mut scrape),
        ),
        (
            "N VEs created+started one after another (ms)",
            idle.sequential,
        ),
        (
            "stop --all of N running VEs, graceful, several at once (ms)",
            stop_all,
        ),
        ("destroy of N stopped VEs (ms)", destroy_all),
        (
            "MemAvailable drop per running idle VE (KiB)",
            idle.drop_per_ve,
        ),
        ("charged to each VE's cgroup, all (KiB)", idle.cgroup_per_ve),
        (
            "charged to each VE's cgroup, without page cache (KiB)",
            idle.nonfile_per_ve,
        ),
        (
            "non-cache memory in use per running idle VE (KiB)",
            idle.used_per_ve,
        ),
        (
            "host memory per VE outside its cgroup (KiB)",
            idle.used_per_ve - idle.nonfile_per_ve,
        ),
        (
            "privileged: N VEs created+started one after another (ms)",
            privileged.sequential,
        ),
        (
            "privileged: charged to each VE's cgroup, without page cache (KiB)",
            privileged.nonfile_per_ve,
        ),
        (
            "privileged: non-cache memory in use per running idle VE (KiB)",
            privileged.used_per_ve,
        ),
        (
            "crun (same tree as its root, same init): charged to each container's cgroup, without page cache (KiB)",
            crun.unwrap_or(f64::NAN),
        ),
        (
            "crun (an overlay of the same tree, as podman's, same init): charged to each container's cgroup, without page cache (KiB)",
            crun_overlay.unwrap_or(f64::NAN),
        ),
    ];
    h.release();
    h.remove_files();
    let knob_rows: Vec<(&str, f64)> = per_knob
        .iter()
        .chain(&storage)
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let rows: Vec<(&str, f64)> = rows.iter().copied().chain(knob_rows).collect();
    print_rows(json, runs, nves, rows);
}

fn print_rows(json: bool, runs: usize, nves: usize, rows: Vec<(&str, f64)>) {
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        println!(
            "{}",
            serde_json::json!({"runs": runs, "ves": nves, "figures": obj})
        );
    } else {
        println!("vectl-bench: {runs} runs, N = {nves} VEs, medians");
        for (k, v) in rows {
            println!("  {k:<52} {v:>9.2}");
        }
    }
}

/// A Prometheus scrape (`stats --format prometheus`, and over HTTP with
/// `stats --http` as vectl-metrics.socket runs it) with `n` busybox VEs
/// running, 32 MiB each, started together with `start --all`.
/// An HTTP GET of `/` from `ip`:80 answering 200 within `limit`.
fn http_ok(ip: &str, limit: Duration) -> bool {
    use std::io::{Read, Write};
    let t = Instant::now();
    while t.elapsed() < limit {
        let addr = format!("{ip}:80").parse().unwrap();
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains(" 200 ") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Issue 23's scale figures (see the module documentation).
fn scale_figures(h: &TestHost, runs: usize, n: usize) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = Vec::new();
    let (avail0, _) = memory_sample();
    let mut made = 0usize;
    let mut levels: Vec<usize> = [10, 100, n].into_iter().filter(|l| *l <= n).collect();
    levels.dedup();
    for level in levels {
        // Grow the population to `level` running VEs.
        let names: Vec<String> = (made..level).map(|i| format!("s{i:04}")).collect();
        if !names.is_empty() {
            let mut create = vec!["create", "--template", "bb", "--ram", "32M", "--if-missing"];
            create.extend(names.iter().map(String::as_str));
            let c = timed(|| {
                h.ok(&create);
            });
            let s = timed(|| {
                h.ok(&["start", "--all"]);
            });
            if level == n {
                let k = names.len();
                rows.push((
                    format!("{k} more VEs created in one command, {made} there (ms)"),
                    c,
                ));
                rows.push((format!("start --all of those {k} (ms)"), s));
            }
            made = level;
        }
        // One VE's lifecycle beside them.
        let (mut create, mut start, mut set, mut stop, mut destroy) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            create.push(timed(|| {
                h.ok(&["create", "probe", "--template", "bb", "--ram", "32M"]);
            }));
            start.push(timed(|| {
                h.ok(&["start", "probe"]);
            }));
            set.push(timed(|| {
                h.ok(&["set", "probe", "--ram", "48M"]);
            }));
            stop.push(timed(|| {
                h.ok(&["stop", "--fast", "probe"]);
            }));
            destroy.push(timed(|| {
                h.ok(&["destroy", "probe"]);
            }));
        }
        for (what, v) in [
            ("create", &mut create),
            ("start", &mut start),
            ("set --ram", &mut set),
            ("stop --fast", &mut stop),
            ("destroy", &mut destroy),
        ] {
            rows.push((format!("{what} of one VE beside {level} (ms)"), median(v)));
        }
    }
    // The N: serving, listed, counted.
    let listed = h.json(&["list"]);
    let ips: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["ips"][0].as_str().map(str::to_string))
        .collect();
    let step = (ips.len() / 50).max(1);
    let sampled: Vec<&String> = ips.iter().step_by(step).take(50).collect();
    let answering = sampled
        .iter()
        .filter(|ip| http_ok(ip, Duration::from_secs(20)))
        .count();
    rows.push((
        format!("sampled VEs answering HTTP (of {})", sampled.len()),
        answering as f64,
    ));
    let (avail1, _) = memory_sample();
    rows.push((
        "MemAvailable drop per running VE (KiB)".into(),
        (avail0 - avail1) / n.max(1) as f64,
    ));
    for (what, args) in [
        ("list", vec!["list"]),
        ("stats", vec!["stats"]),
        ("stats --json", vec!["--json", "stats"]),
    ] {
        let mut t = Vec::new();
        for _ in 0..runs.max(5) {
            t.push(timed(|| {
                h.ok(&args);
            }));
        }
        rows.push((format!("{what} over {n} VEs (ms)"), median(&mut t)));
    }
    rows.push((
        format!("stop --all --fast of {n} VEs (ms)"),
        timed(|| {
            h.ok(&["stop", "--all", "--fast"]);
        }),
    ));
    let names: Vec<String> = (0..n).map(|i| format!("s{i:04}")).collect();
    let mut destroy = vec!["destroy"];
    destroy.extend(names.iter().map(String::as_str));
    rows.push((
        format!("destroy of {n} VEs in one command (ms)"),
        timed(|| {
            h.ok(&destroy);
        }),
    ));
    rows
}

/// `podman run --rm IMAGE true` per runtime, interleaved: median ms each.
fn oci_figures(runs: usize) -> Vec<(String, f64)> {
    use std::process::Command;
    let dir = tempfile::Builder::new()
        .prefix("vectl-bench-podman-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let wrapper = integration::podman_dir_setup(d);
    let podman = |args: &[&str]| integration::podman_command(d).args(args).output();
    let rootfs = integration::busybox_rootfs().unwrap();
    let tar = d.join("bb.tar");
    integration::sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
        ".",
    ])
    .unwrap();
    let image = "localhost/vectl-bench:1";
    let imported = podman(&["import", tar.to_str().unwrap(), image]);
    if !imported.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("vectl-bench: podman import failed: {imported:?}");
        return Vec::new();
    }
    let parent = format!("--cgroup-parent=/vectl-bench-podman-{}", std::process::id());
    let mut runtimes: Vec<(String, String)> =
        vec![("vectl-oci".into(), wrapper.display().to_string())];
    for r in ["runc", "crun"] {
        if let Ok(p) = integration::sh(&["sh", "-c", &format!("command -v {r}")]) {
            runtimes.push((r.into(), p.trim().to_string()));
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runtimes.len()];
    let mut failed: Vec<Option<String>> = vec![None; runtimes.len()];
    for _ in 0..runs {
        for (i, (_, path)) in runtimes.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let t = Instant::now();
            let o = podman(&["--runtime", path, "run", "--rm", &parent, image, "true"]).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if o.status.success() {
                times[i].push(ms);
            } else {
                failed[i] = Some(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
        }
    }
    let _ = podman(&["rm", "--all", "--force"]);
    integration::unmount_below(d);
    integration::remove_cgroup_everywhere(parent.trim_start_matches("--cgroup-parent="));
    let mut rows = Vec::new();
    for (i, (name, _)) in runtimes.iter().enumerate() {
        match &failed[i] {
            Some(why) => eprintln!("vectl-bench: podman with {name} failed: {why}"),
            None => rows.push((
                format!("podman run --rm true, {name} (ms)"),
                integration::median(&mut times[i]),
            )),
        }
    }
    rows
}

fn metrics_figures(h: &TestHost, runs: usize, n: usize) -> Vec<(String, f64)> {
    let names: Vec<String> = (0..n).map(|i| format!("x{i:04}")).collect();
    let mut create = vec!["create", "--template", "bb", "--ram", "32M", "--if-missing"];
    create.extend(names.iter().map(String::as_str));
    let made = timed(|| {
        h.ok(&create);
    });
    let started = timed(|| {
        h.ok(&["start", "--all"]);
    });
    let mut scrape = Vec::new();
    let mut json = Vec::new();
    let mut http = Vec::new();
    let mut bytes = 0.0;
    for _ in 0..runs {
        scrape.push(timed(|| {
            bytes = h.ok(&["stats", "--format", "prometheus"]).len() as f64;
        }));
        json.push(timed(|| {
            h.ok(&["--json", "stats"]);
        }));
        http.push(timed(|| {
            let out = h
                .command()
                .args(["stats", "--http"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(out.stdout.starts_with(b"HTTP/1.1 200 OK"));
        }));
    }
    let stopped = timed(|| {
        h.ok(&["stop", "--all", "--fast"]);
    });
    let mut destroy = vec!["destroy"];
    destroy.extend(names.iter().map(String::as_str));
    h.ok(&destroy);
    vec![
        ("metrics: N VEs created in one command (ms)".into(), made),
        ("metrics: start --all of N VEs (ms)".into(), started),
        (
            "metrics: stats --format prometheus, N running (ms)".into(),
            median(&mut scrape),
        ),
        (
            "metrics: stats --http, one scrape over stdin/stdout (ms)".into(),
            median(&mut http),
        ),
        (
            "metrics: --json stats, N running (ms)".into(),
            median(&mut json),
        ),
        ("metrics: exposition size (KiB)".into(), bytes / 1024.0),
        ("metrics: stop --all --fast of N VEs (ms)".into(), stopped),
    ]
}

/// Backup, restore and migration of a VE with 1 GiB of its own files.
fn portability_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    let runs = runs.clamp(1, 3);
    let Some(h2) = h.beside_bare_with("vectl-bench", &["--pool-size", "4G"]) else {
        return Vec::new();
    };
    h2.import_busybox().unwrap();
    h.start_ve("pv", &[]);
    // 64 files of 16 MiB that do not compress.
    let r = h.exec(
        "pv",
        &[
            "sh",
            "-c",
            "mkdir -p /srv && for i in $(seq 64); do head -c 16777216 /dev/urandom > /srv/d$i || exit 1; done",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let change = |n: usize| {
        let r = h.exec(
            "pv",
            &[
                "sh",
                "-c",
                &format!("head -c 5242880 /dev/urandom > /srv/change{n}"),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut full, mut incr, mut frozen, mut restore) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = String::new();
    for i in 0..runs {
        let b = h.json(&["backup", "pv", d, "--full"]);
        full.push(b["seconds"].as_f64().unwrap() * 1000.0);
        change(i);
        let b = h.json(&["backup", "pv", d]);
        assert_eq!(b["kind"], "incremental", "{b}");
        incr.push(b["seconds"].as_f64().unwrap() * 1000.0);
        frozen.push(b["frozen_ms"].as_f64().unwrap());
        last = b["file"].as_str().unwrap().to_string();
    }
    for _ in 0..runs {
        restore.push(timed(|| {
            h.json(&["restore", &last, "--as", "pvcopy"]);
        }));
        h.ok(&["destroy", "pvcopy"]);
    }
    drop(dir);
    // Migration, back and forth, 5 MB changed just before each switch.
    let (mut down, mut whole) = (Vec::new(), Vec::new());
    let (mut from, mut to) = (h, &h2);
    for i in 0..runs {
        let mut c = from.command();
        c.args(["--json", "migrate", "pv", to.root().to_str().unwrap()])
            .env("VECTL_FAILPOINT", "migrate-before-switch")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        let child = c.spawn().unwrap();
        let pid = child.id();
        // Stopped at the switch: the VE changes 5 MB, then it goes on.
        loop {
            let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if st
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Written into its layer from here: `vectl exec` would wait for the
        // VE's lock, which the stopped migration holds.
        let mut data = vec![0u8; 5 << 20];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ i as u64;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        fs::write(
            from.root().join(format!("pool/ves/pv/upper/srv/move{i}")),
            &data,
        )
        .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "migrate failed");
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        down.push(m["downtime_ms"].as_f64().unwrap());
        whole.push(m["seconds"].as_f64().unwrap() * 1000.0);
        std::mem::swap(&mut from, &mut to);
    }
    from.ok(&["destroy", "--force", "pv"]);
    drop(h2);
    vec![
        (
            "backup: full, VE with 1 GiB of own files (ms)".into(),
            median(&mut full),
        ),
        (
            "backup: incremental after a 5 MB change (ms)".into(),
            median(&mut incr),
        ),
        ("backup: the VE frozen for (ms)".into(), median(&mut frozen)),
        (
            "restore: that chain as a new VE (ms)".into(),
            median(&mut restore),
        ),
        (
            "migrate: downtime, 1 GiB VE, 5 MB changed at the switch (ms)".into(),
            median(&mut down),
        ),
        (
            "migrate: the whole migration (ms)".into(),
            median(&mut whole),
        ),
    ]
}

/// A process's resident memory (VmRSS), KiB.
fn rss_kib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The pid of the LXCFS serving /var/lib/lxcfs, if one runs.
fn lxcfs_pid() -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("lxcfs\0") || cmd.starts_with("/usr/bin/lxcfs\0"))
            .then_some(pid)
            .filter(|_| cmd.contains("/var/lib/lxcfs"))
    })
}

/// What makes a VE a tenant: start with the /proc view on and off, LXCFS's
/// and the supervisor's memory with N VEs, a simulated boot of N onboot VEs,
/// and their graceful stop at shutdown.
fn tenant_figures(h: &TestHost, runs: usize, nves: usize) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let lxcfs = h.json(&["host", "info"])["proc_view"]["lxcfs_running"] == true;
    h.ok(&["create", "pv", "--template", "bb", "--ram", "64M"]);
    for (view, label) in [("on", "on (LXCFS)"), ("off", "off")] {
        if view == "on" && !lxcfs {
            out.push((format!("start with the /proc view {label} (ms)"), f64::NAN));
            continue;
        }
        h.ok(&["host", "set", "--proc-view", view]);
        let mut t = Vec::new();
        for _ in 0..runs {
            t.push(timed(|| {
                h.ok(&["start", "pv"]);
            }));
            h.ok(&["stop", "--fast", "pv"]);
        }
        out.push((
            format!("start with the /proc view {label} (ms)"),
            median(&mut t),
        ));
    }
    h.ok(&["host", "set", "--proc-view", "on"]);
    h.ok(&["destroy", "pv"]);
    // The supervisor first: the VEs started below get consoles it holds.
    let mut sup = h
        .command()
        .args(["supervise"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vectl supervise");
    std::thread::sleep(Duration::from_millis(500));
    let sup_idle = rss_kib(sup.id());
    let names: Vec<String> = (0..nves).map(|i| format!("b{i}")).collect();
    let mut create = vec![
        "create",
        "--template",
        "bb",
        "--ram",
        "64M",
        "--onboot",
        "yes",
    ];
    create.extend(names.iter().map(String::as_str));
    h.ok(&create);
    let lxcfs_before = lxcfs_pid().map_or(f64::NAN, rss_kib);
    // A simulated boot: `host boot` starts them all, as vectl.service does.
    let boot = timed(|| {
        h.ok(&["host", "boot"]);
    });
    // Each VE reads its view once, as `free` and `top` would.
    for ve in &names {
        h.ok(&[
            "exec",
            ve,
            "--",
            "sh",
            "-c",
            "cat /proc/meminfo /proc/cpuinfo /proc/stat /proc/uptime /proc/loadavg >/dev/null",
        ]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let lxcfs_after = lxcfs_pid().map_or(f64::NAN, rss_kib);
    let sup_busy = rss_kib(sup.id());
    let shutdown = timed(|| {
        h.ok(&["host", "shutdown"]);
    });
    let _ = sup.kill();
    let _ = sup.wait();
    let mut destroy = vec!["destroy"];
    destroy.extend(names.iter().map(String::as_str));
    h.ok(&destroy);
    let n = nves as f64;
    out.push(("host boot: N onboot VEs started (ms)".into(), boot));
    out.push((
        "host shutdown: N VEs stopped gracefully (ms)".into(),
        shutdown,
    ));
    out.push((
        "LXCFS memory per VE reading its /proc view (KiB)".into(),
        (lxcfs_after - lxcfs_before) / n,
    ));
    out.push(("supervisor memory, no VE (KiB)".into(), sup_idle));
    out.push((
        "supervisor memory per VE held, with its console (KiB)".into(),
        (sup_busy - sup_idle) / n,
    ));
    out
}

/// Storage figures on the btrfs pool: create on a 200 MB template (no copy),
/// `set --disk` live (growing, and shrinking above use, which commits first),
/// disk used by a fresh VE.
fn storage_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("rootfs");
    integration::copy_busybox_rootfs(&big).unwrap();
    let data = big.join("srv/data");
    fs::create_dir_all(&data).unwrap();
    // 200 files of 1 MiB that do not compress or deduplicate.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..200 {
        let mut buf = vec![0u8; 1 << 20];
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        fs::write(data.join(format!("f{i}")), &buf).unwrap();
    }
    h.ok(&[
        "template",
        "import",
        "big",
        "--from-dir",
        big.to_str().unwrap(),
    ]);
    drop(dir);
    let mut create = Vec::new();
    for i in 0..runs {
        let ve = format!("b{i}");
        create.push(timed(|| {
            h.ok(&["create", &ve, "--template", "big"]);
        }));
    }
    let _ = std::process::Command::new("sync").status();
    let fresh = h.json(&["show", "b0"])["disk_bytes"].as_f64().unwrap() / 1024.0;
    for i in 0..runs {
        h.ok(&["destroy", &format!("b{i}")]);
    }
    h.start_ve("d", &["--disk", "100M"]);
    let (mut grow, mut shrink) = (Vec::new(), Vec::new());
    for i in 0..runs {
        grow.push(timed(|| {
            h.ok(&["set", "d", "--disk", &format!("{}M", 200 + i)]);
        }));
        shrink.push(timed(|| {
            h.ok(&["set", "d", "--disk", &format!("{}M", 100 + i)]);
        }));
    }
    h.ok(&["destroy", "--force", "d"]);
    vec![
        (
            "create on a 200 MB template (ms)".into(),
            median(&mut create),
        ),
        (
            "set --disk growing, running VE (ms)".into(),
            median(&mut grow),
        ),
        (
            "set --disk shrinking, running VE (ms)".into(),
            median(&mut shrink),
        ),
        ("disk used by a fresh VE (KiB)".into(), fresh),
    ]
}

/// Network figures: what wiring a NIC adds to `vectl start`, and VE <-> host TCP
/// throughput against a bare veth pair.
fn network_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    h.ok(&["create", "nnone", "--template", "bb", "--net", "none"]);
    h.ok(&["create", "nnat", "--template", "bb"]);
    let mut none = Vec::new();
    let mut nat = Vec::new();
    for _ in 0..runs.max(20) {
        for (ve, v) in [("nnone", &mut none), ("nnat", &mut nat)] {
            v.push(timed(|| {
                h.ok(&["start", ve]);
            }));
            h.ok(&["stop", "--fast", ve]);
        }
    }
    let (none, nat) = (median(&mut none), median(&mut nat));
    h.ok(&["destroy", "nnone"]);

    // Throughput: the VE on the nat network, and a bare veth pair to a namespace.
    // The receiver listens on the gateway: a host service, closed to VEs unless
    // opened.
    h.ok(&["net", "set", "default", "--allow-host", "tcp:1024-65535"]);
    h.ok(&["start", "nnat"]);
    let ip = h.json(&["show", "nnat"])["nics"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let gw = h.json(&["net", "show", "default"])["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let lan = integration::Lan::new("bench0", Some("192.0.2.2/24"), "192.0.2.1/24").unwrap();
    let mib = 256;
    let mut ve_up = Vec::new();
    let mut bare_up = Vec::new();
    let mut ve_down = Vec::new();
    let mut bare_down = Vec::new();
    for _ in 0..3 {
        ve_up.push(integration::receive_rate(&gw, |port| {
            h.ok(&[
                "exec",
                "nnat",
                "--",
                "sh",
                "-c",
                &integration::nc_send(&gw, port, mib),
            ]);
        }));
        bare_up.push(integration::receive_rate("192.0.2.2", |port| {
            lan.ok(&["sh", "-c", &integration::nc_send("192.0.2.2", port, mib)])
                .unwrap();
        }));
        ve_down.push(integration::send_rate(&format!("{ip}:5001"), mib, || {
            h.ok(&[
                "exec",
                "nnat",
                "--",
                "sh",
                "-c",
                "busybox nc -l -p 5001 > /dev/null",
            ]);
        }));
        bare_down.push(integration::send_rate("192.0.2.1:5001", mib, || {
            lan.ok(&["sh", "-c", "busybox nc -l -p 5001 > /dev/null"])
                .unwrap();
        }));
    }
    drop(lan);
    h.ok(&["stop", "--fast", "nnat"]);
    h.ok(&["destroy", "nnat"]);
    let (vu, bu, vd, bd) = (
        median(&mut ve_up),
        median(&mut bare_up),
        median(&mut ve_down),
        median(&mut bare_down),
    );
    vec![
        ("start, VE with no network (ms)".into(), none),
        ("start, VE on the nat network (ms)".into(), nat),
        ("network setup added to start (ms)".into(), nat - none),
        ("TCP VE -> host (Mbit/s)".into(), vu),
        ("TCP bare veth pair, same direction (Mbit/s)".into(), bu),
        ("TCP host -> VE (Mbit/s)".into(), vd),
        ("TCP bare veth pair, same direction (Mbit/s) ".into(), bd),
        ("VE -> host / bare veth (%)".into(), vu / bu * 100.0),
        ("host -> VE / bare veth (%)".into(), vd / bd * 100.0),
    ]
}

/// `vectl clone` of a stopped VE with 10 MB of its own files.
fn clone_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    h.start_ve("orig", &[]);
    h.ok(&[
        "exec",
        "orig",
        "--",
        "sh",
        "-c",
        "head -c 10485760 /dev/urandom > /root/data",
    ]);
    h.ok(&["stop", "--fast", "orig"]);
    let mut t = Vec::new();
    for i in 0..runs {
        let name = format!("copy{i}");
        t.push(timed(|| {
            h.ok(&["clone", "orig", &name]);
        }));
        h.ok(&["destroy", &name]);
    }
    h.ok(&["destroy", "orig"]);
    vec![(
        "clone of a VE with 10 MB of its own files (ms)".into(),
        median(&mut t),
    )]
}

/// `vectl upgrade` and `rollback` of a running VE between two versions.
fn upgrade_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    let tree = integration::busybox_rootfs().unwrap();
    h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        tree.to_str().unwrap(),
    ]);
    let latest = h.json(&["template", "show", "bb"])["version"]
        .as_u64()
        .unwrap();
    let (to, back) = (format!("bb@{latest}"), format!("bb@{}", latest - 1));
    h.ok(&["create", "up", "--template", &back]);
    h.ok(&["start", "up"]);
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..runs {
        up.push(timed(|| {
            h.ok(&["upgrade", "up", "--template", &to, "--fast"]);
        }));
        down.push(timed(|| {
            h.ok(&["rollback", "up", "--fast"]);
        }));
    }
    h.ok(&["destroy", "--force", "up"]);
    // The same with a graceful stop: vectl signals init and waits for it to
    // exit. busybox init sleeps 3 s in its halt whatever runs, so this VE's
    // init is a shell that serves HTTP and exits at once on SIGTERM.
    h.ok(&[
        "create",
        "upg",
        "--template",
        &back,
        "--stop-signal",
        "TERM",
        "--init",
        "/bin/sh -c 'trap \"exit 0\" TERM; /usr/sbin/httpd -p 80 -h /var/www; while :; do sleep 1 & wait; done'",
    ]);
    h.ok(&["start", "upg"]);
    let mut graceful = Vec::new();
    for _ in 0..runs {
        graceful.push(timed(|| {
            h.ok(&["upgrade", "upg", "--template", &to]);
        }));
        h.ok(&["rollback", "upg", "--fast"]);
    }
    h.ok(&["destroy", "--force", "upg"]);
    vec![
        (
            "upgrade of a running VE, --fast stop (ms)".into(),
            median(&mut up),
        ),
        (
            "upgrade of a running VE, graceful stop (ms)".into(),
            median(&mut graceful),
        ),
        (
            "rollback of a running VE, --fast stop (ms)".into(),
            median(&mut down),
        ),
    ]
}

/// `template update --run true`: what a build costs beyond its command.
fn build_figures(h: &TestHost, runs: usize) -> Vec<(String, f64)> {
    let mut t = Vec::new();
    for _ in 0..runs.min(10) {
        t.push(timed(|| {
            h.ok(&["template", "update", "bb", "--run", "true"]);
        }));
    }
    h.ok(&["template", "gc"]);
    vec![(
        "template update --run true, all overhead (ms)".into(),
        median(&mut t),
    )]
}

/// What N idle VEs cost (see the rows that print it).
struct IdleMemory {
    sequential: f64,
    drop_per_ve: f64,
    cgroup_per_ve: f64,
    nonfile_per_ve: f64,
    used_per_ve: f64,
}

/// Starts `nves` VEs `PREFIX0..` with `create_args`, one after another, and
/// measures what they cost the host once idle. They keep running.
fn idle_memory(h: &TestHost, nves: usize, prefix: &str, create_args: &[&str]) -> IdleMemory {
    std::thread::sleep(Duration::from_millis(500));
    let (avail_before, used_before) = memory_sample();
    let t = Instant::now();
    for i in 0..nves {
        h.start_ve(&format!("{prefix}{i}"), create_args);
    }
    let sequential = ms(t.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let (avail_after, used_after) = memory_sample();
    // What the VEs' cgroups account: everything (usage), and the file pages in it
    // (page cache such as the shared busybox binary, charged to whichever VE read
    // it first and counted as available by MemAvailable anyway).
    let mut cgroup_kib = 0u64;
    let mut cgroup_file_kib = 0u64;
    for i in 0..nves {
        let (usage, file) = memcg_bytes(&h.cgroup_dir("memory", &format!("{prefix}{i}")));
        cgroup_kib += usage / 1024;
        cgroup_file_kib += file / 1024;
    }
    let n = nves as f64;
    IdleMemory {
        sequential,
        drop_per_ve: (avail_before - avail_after) / n,
        cgroup_per_ve: cgroup_kib as f64 / n,
        nonfile_per_ve: (cgroup_kib - cgroup_file_kib.min(cgroup_kib)) as f64 / n,
        used_per_ve: (used_after - used_before) / n,
    }
}

/// What a memory cgroup (v1 or v2) is charged, and the page cache in it, in
/// bytes, from its exact counters. Not `memory.usage_in_bytes` or
/// `memory.current`: those also hold what the kernel charged ahead to each CPU's
/// charge cache (64 pages per cgroup, and since 6.16 up to 7 cgroups per CPU),
/// which a cgroup keeps while it is idle; seen here, 468 KiB of real use read as
/// up to 1152 KiB.
fn memcg_bytes(dir: &std::path::Path) -> (u64, u64) {
    let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Ok(kmem) = fs::read_to_string(dir.join("memory.kmem.usage_in_bytes")) {
        // v1: anonymous memory and page cache (hierarchical totals), and kernel
        // memory, which its own counter charges page by page.
        let kmem = kmem.trim().parse::<u64>().unwrap_or(0);
        let file = field("total_cache").unwrap_or(0);
        return (field("total_rss").unwrap_or(0) + kmem + file, file);
    }
    // v2: anonymous, file, kernel (slab, stacks, page tables, per-cpu) and
    // socket memory.
    let file = field("file").unwrap_or(0);
    let kernel = field("kernel").unwrap_or_else(|| {
        ["slab", "kernel_stack", "pagetables", "percpu"]
            .iter()
            .filter_map(|f| field(f))
            .sum()
    });
    (
        field("anon").unwrap_or(0) + kernel + field("sock").unwrap_or(0) + file,
        file,
    )
}

/// Unmounts a crun container's overlay root when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// N containers of crun on the busybox tree, running its init (busybox init,
/// which starts httpd, as in a VE), idle for 2 s: what each one's memory cgroup
/// is charged, without page cache, in KiB. With `overlay`, each container's
/// root is an overlay of the one tree and a directory of its own, as podman's
/// overlay storage gives it and as a VE's root is; otherwise the tree itself.
/// `None` (said on stderr) without crun.
fn crun_memory(n: usize, overlay: bool) -> Option<f64> {
    use std::process::{Command, Stdio};
    let crun = |args: &[&str], state: &std::path::Path| {
        Command::new("crun")
            .arg("--root")
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    if Command::new("crun").arg("--version").output().is_err() {
        eprintln!("vectl-bench: crun is not installed (apt-get install crun): no crun figure");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    integration::copy_busybox_rootfs(&rootfs).unwrap();
    let state = work.path().join("state");
    let spec = Command::new("crun")
        .args(["spec"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(spec.status.success(), "crun spec: {spec:?}");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(work.path().join("config.json")).unwrap()).unwrap();
    let tag = format!("vectl-bench-crun-{}", std::process::id());
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/sbin/init"]);
    config["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    let v2 = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    // crun refuses hybrid hosts whose cgroup2 hierarchy offers any controller
    // (hugetlb here), even without a cgroup manager, so the bench makes each
    // container's memory cgroup itself and starts crun in it, without a
    // cgroup manager: what the container's processes and namespaces are
    // charged lands there, as a VE's lands in its cgroup.
    let mem_base = std::path::PathBuf::from(if v2 {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    })
    .join(&tag);
    fs::create_dir(&mem_base).unwrap();
    if v2 {
        fs::write(mem_base.join("cgroup.subtree_control"), "+memory").unwrap();
    }
    let mem_dir = |i: usize| mem_base.join(format!("c{i}"));
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let mut started = Vec::new();
    let mut mounts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let bundle = work.path().join(format!("b{i}"));
        fs::create_dir(&bundle).unwrap();
        config["hostname"] = name.clone().into();
        if overlay {
            // Mounted here, outside the container's cgroup, as vectl mounts a
            // VE's root outside the VE's.
            let merged = bundle.join("rootfs");
            for d in ["upper", "work", "rootfs"] {
                fs::create_dir(bundle.join(d)).unwrap();
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                rootfs.display(),
                bundle.join("upper").display(),
                bundle.join("work").display()
            );
            nix::mount::mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .unwrap();
            mounts.push(Unmount(merged.clone()));
            config["root"] = serde_json::json!({"path": merged, "readonly": false});
        }
        fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        fs::create_dir(mem_dir(i)).unwrap();
        let err = work.path().join(format!("crun-{i}.err"));
        // In a mount namespace of its own without the hybrid host's cgroup2
        // mount, which crun (1.8) refuses to run beside at all.
        let r = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "umount /sys/fs/cgroup/unified 2>/dev/null; \
                 echo $$ > \"$1\"/cgroup.procs && shift && exec crun \"$@\"",
            )
            .arg("sh")
            .arg(mem_dir(i))
            .arg("--root")
            .arg(&state)
            .args(["--cgroup-manager=disabled", "run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(name)
            // Files, not pipes: the detached container keeps its stdio, and a
            // pipe would never end.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap())
            .status();
        match r {
            Ok(st) if st.success() => started.push(name.clone()),
            other => {
                let msg = fs::read_to_string(&err).unwrap_or_default();
                eprintln!("vectl-bench: crun run {name}: {other:?} {}", msg.trim());
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut total = 0u64;
    for i in 0..started.len() {
        let (usage, file) = memcg_bytes(&mem_dir(i));
        total += usage.saturating_sub(file) / 1024;
    }
    for name in &started {
        let _ = crun(&["delete", "--force", name], &state);
    }
    drop(mounts);
    for i in 0..n {
        // Its processes are gone once `delete --force` returns; rmdir may
        // still see them leaving for a moment.
        for _ in 0..100 {
            match fs::remove_dir(mem_dir(i)) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break,
            }
        }
    }
    let _ = fs::remove_dir(&mem_base);
    (started.len() == n).then(|| total as f64 / n as f64)
}

/// Template files are shared in the page cache: 20 VEs read one 64 MiB file of
/// their template version; the page cache grows by about one copy.
fn sharing_figures(h: &TestHost) -> Vec<(String, f64)> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("rootfs");
    integration::copy_busybox_rootfs(&tree).unwrap();
    let mib = 64usize;
    let mut blob = fs::File::create(tree.join("srv-blob")).unwrap();
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..mib {
        blob.write_all(&chunk).unwrap();
    }
    drop(blob);
    h.ok(&[
        "template",
        "import",
        "shared",
        "--from-dir",
        tree.to_str().unwrap(),
    ]);
    let file = h.root().join("pool/templates/shared/1/srv-blob");
    // Out of the page cache (it was just written), so the VEs' reads load it.
    let f = fs::File::open(&file).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise on an open descriptor; it only drops clean cache.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    for i in 0..20 {
        h.ok(&[
            "create",
            &format!("sh{i}"),
            "--template",
            "shared",
            "--net",
            "none",
        ]);
        h.ok(&["start", &format!("sh{i}")]);
    }
    let cached = || meminfo("Cached");
    let before = cached();
    for i in 0..20 {
        h.ok(&[
            "exec",
            &format!("sh{i}"),
            "--",
            "sh",
            "-c",
            "cat /srv-blob > /dev/null",
        ]);
    }
    let grown = (cached() - before) / 1024.0;
    for i in 0..20 {
        h.ok(&["destroy", "--force", &format!("sh{i}")]);
    }
    h.ok(&["template", "rm", "shared"]);
    vec![
        (
            "page cache growth, 20 VEs reading one 64 MiB template file (MiB)".into(),
            grown,
        ),
        (
            "  the same in copies of the file".into(),
            grown / mib as f64,
        ),
    ]
}
