//! Helpers shared by the end-to-end test modules of the suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub use integration::{Run, TestHost, procs_below};

/// Held for writing by a test that measures CPU or disk time (QoS shares, CPU %),
/// for reading by the QoS tests that only set knobs: measurements of one test
/// run (one process, all modules) never overlap.
pub static MEASURING: RwLock<()> = RwLock::new(());

/// The VE's cgroup directories, one per hierarchy (limits live in these).
pub fn cgroup_dirs(h: &TestHost, ve: &str) -> Vec<PathBuf> {
    h.cgroup_parents().iter().map(|p| p.join(ve)).collect()
}

/// Which of the VE's cgroup directories exist.
pub fn existing_cgroup_dirs(h: &TestHost, ve: &str) -> Vec<PathBuf> {
    cgroup_dirs(h, ve)
        .into_iter()
        .filter(|d| d.exists())
        .collect()
}

/// A process's state letter (`R`, `S`, `Z`...), `None` if it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
}

/// Live (non-zombie) processes anywhere on the host whose cgroup, in any hierarchy,
/// is this host's cgroup of `ve` or below it. Independent of what vectl recorded.
pub fn leftover_procs(h: &TestHost, ve: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cg) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let inside = cg.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("");
            // A v2 cgroup is removed only once no live process is in it: one
            // still named there is exiting (a PID namespace's init waits for
            // its last process to be reaped, by whoever is its parent).
            if path.ends_with(" (deleted)") {
                return false;
            }
            let parts: Vec<&str> = path.split('/').collect();
            parts.windows(2).any(|w| w[0] == h.name && w[1] == ve)
        });
        if inside && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Polls `f` until it is true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VE's entry in `list --json`, if listed.
pub fn listed(h: &TestHost, ve: &str) -> Option<serde_json::Value> {
    h.json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == ve)
        .cloned()
}

/// The VE's status in `list --json` ("running", "stopped"), panics if not listed.
#[track_caller]
pub fn status(h: &TestHost, ve: &str) -> String {
    listed(h, ve)
        .unwrap_or_else(|| panic!("VE {ve} is not listed"))
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap()
        .to_string()
}

/// Fetches the VE's web page from inside it, retrying while httpd comes up.
#[track_caller]
pub fn wait_http(h: &TestHost, ve: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.exec(ve, &["wget", "-qO-", "http://127.0.0.1/"]);
        if r.code == 0 && r.stdout.starts_with("hello from") {
            return r.stdout.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "VE {ve} does not serve HTTP: exit {}: {}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that no live process is in the VE's cgroups; names each one left.
#[track_caller]
fn assert_no_procs(h: &TestHost, ve: &str) {
    let procs = leftover_procs(h, ve);
    let what: Vec<String> = procs
        .iter()
        .map(|p| {
            let file = |f: &str| fs::read_to_string(format!("/proc/{p}/{f}")).unwrap_or_default();
            format!(
                "{p} {} {} in {}",
                file("comm").trim(),
                file("stat"),
                file("cgroup")
            )
        })
        .collect();
    assert!(procs.is_empty(), "VE {ve}: processes left: {what:#?}");
}

/// Asserts that a stopped VE left nothing running: listed as stopped, no cgroup
/// directory, no process in its cgroups, no runtime state file.
#[track_caller]
pub fn assert_stopped_clean(h: &TestHost, ve: &str) {
    assert_eq!(status(h, ve), "stopped", "VE {ve}");
    let dirs = existing_cgroup_dirs(h, ve);
    assert!(dirs.is_empty(), "VE {ve}: cgroup dirs left: {dirs:?}");
    assert_no_procs(h, ve);
    let run = h.root().join("run").join(format!("{ve}.json"));
    assert!(!run.exists(), "VE {ve}: {} left", run.display());
}

/// Asserts that nothing of a destroyed VE is left: not listed, no config or
/// tombstone, no private volume, mount dir, id link, state file, cgroup or process.
#[track_caller]
pub fn assert_gone(h: &TestHost, ve: &str) {
    assert!(listed(h, ve).is_none(), "VE {ve} still listed");
    let root = h.root();
    for p in [
        root.join("ves").join(format!("{ve}.toml")),
        root.join("ves").join(format!("{ve}.toml.destroying")),
        root.join("pool/ves").join(ve),
        root.join("mnt").join(ve),
        root.join("run").join(format!("{ve}.json")),
    ] {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "VE {ve}: {} left",
            p.display()
        );
    }
    for e in fs::read_dir(root.join("ids")).unwrap().flatten() {
        let target = fs::read_link(e.path()).unwrap_or_default();
        assert!(
            target.as_os_str() != ve,
            "VE {ve}: id link {} left",
            e.path().display()
        );
    }
    let dirs = existing_cgroup_dirs(h, ve);
    assert!(dirs.is_empty(), "VE {ve}: cgroup dirs left: {dirs:?}");
    assert_no_procs(h, ve);
}

/// Asserts that the host holds no VE at all any more: empty list, and nothing in
/// ROOT/ves, ROOT/pool/ves, ROOT/mnt, ROOT/ids, ROOT/run, below the cgroup parents.
#[track_caller]
pub fn assert_host_empty(h: &TestHost) {
    assert_eq!(h.json(&["list"]), serde_json::json!([]));
    for sub in ["ves", "pool/ves", "mnt", "ids", "run"] {
        let d = h.root().join(sub);
        let left: Vec<_> = fs::read_dir(&d)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} not empty: {left:?}", d.display());
    }
    for p in h.cgroup_parents() {
        let subdirs: Vec<_> = fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(subdirs.is_empty(), "{} has {subdirs:?}", p.display());
        let procs = procs_below(p);
        assert!(procs.is_empty(), "{}: processes {procs:?}", p.display());
    }
}

/// One entry of a directory snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: PathBuf },
    Other { mode: u32 },
}

/// A directory tree: relative path → entry (and mtime in ns if asked for).
pub type Snapshot = BTreeMap<PathBuf, (Entry, Option<i128>)>;

/// Records every path below `dir` with type, mode and content; with `mtimes`
/// also each entry's modification time. Paths for which `skip` is true (relative
/// to `dir`) are left out, with everything below them.
pub fn snapshot(dir: &Path, mtimes: bool, skip: &dyn Fn(&Path) -> bool) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(dir, dir, mtimes, skip, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, mtimes: bool, skip: &dyn Fn(&Path) -> bool, out: &mut Snapshot) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        if skip(&rel) {
            continue;
        }
        let md = fs::symlink_metadata(&path).unwrap();
        let mode = md.permissions().mode();
        let ft = md.file_type();
        let entry = if ft.is_symlink() {
            Entry::Symlink {
                target: fs::read_link(&path).unwrap(),
            }
        } else if ft.is_dir() {
            Entry::Dir { mode }
        } else if ft.is_file() {
            Entry::File {
                mode,
                data: fs::read(&path).unwrap_or_default(),
            }
        } else {
            Entry::Other { mode }
        };
        let mtime =
            mtimes.then(|| i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()));
        out.insert(rel, (entry, mtime));
        if ft.is_dir() {
            walk(base, &path, mtimes, skip, out);
        }
    }
}

/// A snapshot of a host's state directory for "nothing changed" checks: every
/// path and content, except the lock files (created on demand, content-free) and
/// what is inside the VEs' private layers (running VEs write there themselves).
pub fn state_snapshot(h: &TestHost) -> Snapshot {
    snapshot(h.root(), false, &|p| {
        let parts: Vec<_> = p.components().collect();
        p.starts_with("locks")
            // A btrfs pool's image: what is in it is seen through ROOT/pool.
            || p == Path::new("pool.img")
            || (p.starts_with("pool/ves")
                && parts.len() > 4
                && matches!(parts[3].as_os_str().to_str(), Some("upper" | "work")))
    })
}

/// Describes how two snapshots differ ("" if they are equal).
pub fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let mut out = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => out.push(format!("removed {}", p.display())),
            Some(a) if a != e => out.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            out.push(format!("added {}", p.display()));
        }
    }
    out.join(", ")
}

/// A small xorshift generator (the suite needs no cryptographic randomness).
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed so a failure can be replayed
    /// with `VECTL_TEST_SEED`.
    pub fn new() -> Rng {
        let seed = std::env::var("VECTL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("random seed: VECTL_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether a process was killed by SIGKILL.
pub fn killed_by_sigkill(st: ExitStatus) -> bool {
    st.signal() == Some(libc::SIGKILL)
}

/// Runs vectl with a failpoint set and asserts it died by SIGKILL there.
#[track_caller]
pub fn crash_at(h: &TestHost, failpoint: &str, args: &[&str]) {
    let out = h
        .command()
        .args(args)
        .env("VECTL_FAILPOINT", failpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        killed_by_sigkill(out.status),
        "vectl {args:?} with VECTL_FAILPOINT={failpoint} did not die by SIGKILL: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Spawns vectl in the background (stdin null, output captured).
pub fn spawn(h: &TestHost, args: &[&str]) -> Child {
    h.command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a spawned vectl and returns what it printed.
pub fn finish(c: Child) -> Run {
    c.wait_with_output().unwrap().into()
}

/// The contents of a cgroup control file, trimmed.
#[track_caller]
pub fn knob(h: &TestHost, controller: &str, ve: &str, file: &str) -> String {
    let p = h.cgroup_dir(controller, ve).join(file);
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The VE's config file, as text.
pub fn config_text(h: &TestHost, ve: &str) -> String {
    fs::read_to_string(h.root().join("ves").join(format!("{ve}.toml"))).unwrap()
}

/// Asserts no "panicked" in a run's stderr.
#[track_caller]
pub fn no_panic(r: &Run) {
    assert!(
        !r.stderr.contains("panicked"),
        "vectl panicked: {}",
        r.stderr
    );
}

/// A plain `vectl` command without `--root` (for tests of the root option).
pub fn bare_vectl() -> Command {
    let mut c = Command::new(integration::vectl_bin());
    c.env_remove("VECTL_ROOT").env_remove("VECTL_FAILPOINT");
    c
}

/// Runs a prepared command with a time limit; a command that does not finish in
/// time is killed and reported with code -2 and "timed out" on stderr.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A grandchild may hold the pipes; do not wait for it after a timeout.
    let (stdout, stderr) = if timed_out {
        (Vec::new(), b"timed out".to_vec())
    } else {
        (t_out.join().unwrap(), t_err.join().unwrap())
    };
    Run {
        code: if timed_out {
            -2
        } else {
            status.code().unwrap_or(-1)
        },
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `vectl ARGS` with stdin null and a 10 s limit (see [`run_limited`]).
pub fn run_guarded(h: &TestHost, args: &[&str]) -> Run {
    let mut c = h.command();
    c.args(args).stdin(Stdio::null());
    run_limited(c, Duration::from_secs(10))
}

/// Whether VE cgroups here are v2 (the VM suite) or v1 (this development host).
pub fn is_v2(h: &TestHost) -> bool {
    h.json(&["host", "info"])["cgroup_version"] == "v2"
}

/// The three limits as the kernel holds them, the same on v1 and v2: (memory
/// bytes, CPU quota in µs per 100 ms, pids), each `max` when unlimited.
/// v1: memory.limit_in_bytes, cpu.cfs_quota_us, pids.max; v2: memory.max,
/// cpu.max, pids.max.
pub fn kernel(h: &TestHost, ve: &str) -> (String, String, String) {
    if is_v2(h) {
        let cpu = knob(h, "cpu", ve, "cpu.max");
        let (quota, period) = cpu.split_once(' ').unwrap();
        assert_eq!(period, "100000", "cpu.max period");
        (
            knob(h, "memory", ve, "memory.max"),
            quota.to_string(),
            knob(h, "pids", ve, "pids.max"),
        )
    } else {
        assert_eq!(knob(h, "cpu", ve, "cpu.cfs_period_us"), "100000");
        let mem = knob(h, "memory", ve, "memory.limit_in_bytes");
        // v1 spells "no limit" as the largest page-aligned value.
        let mem = if mem.parse::<u64>().unwrap() >= (i64::MAX as u64) & !0xfff {
            "max".to_string()
        } else {
            mem
        };
        let quota = knob(h, "cpu", ve, "cpu.cfs_quota_us");
        let quota = if quota == "-1" {
            "max".to_string()
        } else {
            quota
        };
        (mem, quota, knob(h, "pids", ve, "pids.max"))
    }
}

pub fn unlimited() -> (String, String, String) {
    ("max".into(), "max".into(), "max".into())
}

/// Memory the kernel counts for the VE now.
pub fn memory_used(h: &TestHost, ve: &str) -> u64 {
    let file = if is_v2(h) {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    knob(h, "memory", ve, file).parse().unwrap()
}

// ---- QoS: the VE's limits cgroup read the same way on v1 and v2 ----

/// "No limit" as v1 spells it in byte-valued files (the largest page-aligned value).
fn v1_unlimited_bytes(v: u64) -> bool {
    v >= (i64::MAX as u64) & !0xfff
}

/// A byte or count limit file: `None` for "max" / "-1" / v1's huge value.
fn limit_value(text: &str) -> Option<u64> {
    match text.trim() {
        "max" | "-1" | "" => None,
        t => {
            let v: u64 = t
                .parse()
                .unwrap_or_else(|_| panic!("not a limit value: {t:?}"));
            (!v1_unlimited_bytes(v)).then_some(v)
        }
    }
}

/// The disk limits of the VE on one device, each `None` when unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoKnobs {
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

/// Every QoS knob of a running VE as the kernel holds it, in one vocabulary on v1
/// and v2 (`None` = unlimited / not set):
///
/// | field        | v2                          | v1                                        |
/// |--------------|-----------------------------|-------------------------------------------|
/// | memory_max   | memory.max                  | memory.limit_in_bytes                     |
/// | memory_low   | memory.low (0 = none)       | memory.soft_limit_in_bytes                |
/// | swap_max     | memory.swap.max             | memory.memsw.limit_in_bytes − RAM limit   |
/// | cpu_quota_us | cpu.max (period 100 ms)     | cpu.cfs_quota_us (period 100 ms)          |
/// | cpu_weight   | cpu.weight                  | cpu.shares = weight × 1024 / 100          |
/// | cpus         | cpuset.cpus.effective       | cpuset.effective_cpus                     |
/// | pids_max     | pids.max                    | pids.max                                  |
/// | io           | io.max line of the device   | blkio.throttle.{read,write}_{bps,iops}_device |
/// | io_weight    | io.bfq.weight (default)     | blkio.bfq.weight                          |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosKnobs {
    pub memory_max: Option<u64>,
    pub memory_low: Option<u64>,
    pub swap_max: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_weight: u64,
    pub cpus: String,
    pub pids_max: Option<u64>,
    pub io: IoKnobs,
    pub io_weight: Option<u64>,
}

/// The disk vectl throttles for this host's VEs, from `host info`: (major, minor,
/// name, scheduler), or `Err(why there is none)` (e.g. the VE files are on tmpfs,
/// as in the VM suite).
pub fn io_device(h: &TestHost) -> Result<(u32, u32, String, String), String> {
    let info = h.json(&["host", "info"]);
    let d = &info["io_device"];
    if d.is_null() {
        return Err(info["io_device_problem"]
            .as_str()
            .unwrap_or("no io_device in host info")
            .to_string());
    }
    Ok((
        d["major"].as_u64().unwrap() as u32,
        d["minor"].as_u64().unwrap() as u32,
        d["name"].as_str().unwrap().to_string(),
        d["scheduler"].as_str().unwrap().to_string(),
    ))
}

/// v1 cpu.shares back to the cpu.weight vectl wrote (shares = weight × 1024 / 100,
/// at least 2); panics on a value no weight maps to.
fn shares_to_weight(shares: u64) -> u64 {
    let w = (shares * 100).div_ceil(1024).max(1);
    assert_eq!(
        (w * 1024 / 100).clamp(2, 262_144),
        shares,
        "cpu.shares {shares} is not weight*1024/100 of any cpu.weight"
    );
    w
}

/// Reads a file of the VE's limits cgroup in the hierarchy of `controller`.
fn knob_opt(h: &TestHost, controller: &str, ve: &str, file: &str) -> Option<String> {
    fs::read_to_string(h.cgroup_dir(controller, ve).join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// All QoS knobs of a running VE (see [`QosKnobs`]). The device for I/O limits is
/// the host's VE disk (none: `io` is all `None`).
#[track_caller]
pub fn qos_knobs(h: &TestHost, ve: &str) -> QosKnobs {
    let dev = io_device(h).ok().map(|(ma, mi, _, _)| format!("{ma}:{mi}"));
    let dev_line = |text: &str| -> Option<String> {
        let d = dev.as_deref()?;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(d))
            .map(|l| l.to_string())
    };
    if is_v2(h) {
        let cpu = knob(h, "cpu", ve, "cpu.max");
        let (quota, period) = cpu.split_once(' ').unwrap();
        assert_eq!(period, "100000", "cpu.max period");
        let io_max = knob_opt(h, "io", ve, "io.max").unwrap_or_default();
        let io = dev_line(&io_max).map_or(IoKnobs::default(), |line| {
            let get = |key: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(limit_value)
            };
            IoKnobs {
                rbps: get("rbps"),
                wbps: get("wbps"),
                riops: get("riops"),
                wiops: get("wiops"),
            }
        });
        let io_weight = knob_opt(h, "io", ve, "io.bfq.weight").and_then(|t| {
            let w: u64 = dev_line(&t)
                .or_else(|| {
                    t.lines()
                        .find(|l| l.starts_with("default"))
                        .map(String::from)
                })?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            (w != 100).then_some(w)
        });
        let low: u64 = knob(h, "memory", ve, "memory.low").parse().unwrap();
        QosKnobs {
            memory_max: limit_value(&knob(h, "memory", ve, "memory.max")),
            memory_low: (low > 0).then_some(low),
            swap_max: knob_opt(h, "memory", ve, "memory.swap.max")
                .as_deref()
                .and_then(limit_value),
            cpu_quota_us: limit_value(quota),
            cpu_weight: knob(h, "cpu", ve, "cpu.weight").parse().unwrap(),
            cpus: knob(h, "cpuset", ve, "cpuset.cpus.effective"),
            pids_max: limit_value(&knob(h, "pids", ve, "pids.max")),
            io,
            io_weight,
        }
    } else {
        assert_eq!(knob(h, "cpu", ve, "cpu.cfs_period_us"), "100000");
        let memory_max = limit_value(&knob(h, "memory", ve, "memory.limit_in_bytes"));
        let memsw = knob_opt(h, "memory", ve, "memory.memsw.limit_in_bytes")
            .as_deref()
            .and_then(limit_value);
        let throttle = |file: &str| {
            let text = knob(h, "blkio", ve, file);
            dev_line(&text)
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
                .and_then(|v| limit_value(&v))
                .filter(|v| *v > 0)
        };
        let io_weight = knob_opt(h, "blkio", ve, "blkio.bfq.weight").and_then(|t| {
            let w: u64 = t.split_whitespace().last()?.parse().ok()?;
            (w != 100).then_some(w)
        });
        QosKnobs {
            memory_max,
            memory_low: limit_value(&knob(h, "memory", ve, "memory.soft_limit_in_bytes")),
            swap_max: match (memory_max, memsw) {
                (Some(m), Some(s)) => Some(s - m),
                _ => None,
            },
            cpu_quota_us: limit_value(&knob(h, "cpu", ve, "cpu.cfs_quota_us")),
            cpu_weight: shares_to_weight(knob(h, "cpu", ve, "cpu.shares").parse().unwrap()),
            cpus: knob(h, "cpuset", ve, "cpuset.effective_cpus"),
            pids_max: limit_value(&knob(h, "pids", ve, "pids.max")),
            io: IoKnobs {
                rbps: throttle("blkio.throttle.read_bps_device"),
                wbps: throttle("blkio.throttle.write_bps_device"),
                riops: throttle("blkio.throttle.read_iops_device"),
                wiops: throttle("blkio.throttle.write_iops_device"),
            },
            io_weight,
        }
    }
}

/// The cpu.weight of a VE without a CPU guarantee (the smallest: best effort).
pub const BEST_EFFORT_WEIGHT: u64 = 1;

/// The CPUs of the host, as a kernel CPU list ("0-1").
pub fn all_cpus() -> String {
    fs::read_to_string("/sys/devices/system/cpu/online")
        .unwrap()
        .trim()
        .to_string()
}

/// `vectl --json stats VE`: the VE's entry.
#[track_caller]
pub fn ve_stats(h: &TestHost, ve: &str) -> serde_json::Value {
    let all = h.json(&["stats", ve]);
    let list = all.as_array().expect("stats --json is an array");
    assert_eq!(list.len(), 1, "stats {ve}: {all}");
    assert_eq!(list[0]["name"], ve, "{all}");
    list[0].clone()
}

/// One sample of the cumulative CPU time of VEs (`stats --json` cpu_usage_ns, one
/// vectl call for all of them), and the moment it was taken (the middle of the call).
pub fn cpu_sample(h: &TestHost, ves: &[&str]) -> (Instant, Vec<u64>) {
    let mut args = vec!["stats"];
    args.extend_from_slice(ves);
    let t0 = Instant::now();
    let all = h.json(&args);
    let t1 = Instant::now();
    let at = t0 + (t1 - t0) / 2;
    let ns = ves
        .iter()
        .map(|ve| {
            all.as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == *ve)
                .unwrap_or_else(|| panic!("{ve} not in stats: {all}"))["cpu_usage_ns"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (at, ns)
}

/// `vectl exec VE -- CMD` with a time limit (see [`run_limited`]): a command that
/// leaves something behind holding its output pipes shows as a timeout (code -2)
/// instead of hanging the test.
pub fn exec_limited(h: &TestHost, ve: &str, cmd: &[&str], limit: Duration) -> Run {
    let mut c = h.command();
    c.args(["exec", ve, "--"]).args(cmd).stdin(Stdio::null());
    run_limited(c, limit)
}

/// Starts `n` shell busy loops in the background inside a VE (they run until the
/// VE stops or they are killed).
#[track_caller]
pub fn busy_loops(h: &TestHost, ve: &str, n: usize) {
    for _ in 0..n {
        let r = exec_limited(
            h,
            ve,
            &[
                "sh",
                "-c",
                "while :; do :; done </dev/null >/dev/null 2>&1 &",
            ],
            Duration::from_secs(60),
        );
        assert_eq!(r.code, 0, "busy loop in {ve}: {r:?}");
    }
}

/// What is wrong with a refusal (`None`: refused properly): exit 1, exactly one
/// line `vectl: ...` naming each of `must_name`, no panic, and the state directory
/// unchanged.
pub fn refusal_problem(h: &TestHost, args: &[&str], must_name: &[&str]) -> Option<String> {
    refusal_problem_with(h, args, must_name, &|| String::new())
}

/// [`refusal_problem`], and `kernel()` (a description of kernel state the refusal
/// must not change either, such as quota limits) the same before and after.
pub fn refusal_problem_with(
    h: &TestHost,
    args: &[&str],
    must_name: &[&str],
    kernel: &dyn Fn() -> String,
) -> Option<String> {
    refusal_problem_exit(h, args, must_name, kernel, 1)
}

/// [`refusal_problem`] for bad usage: exit 2 (a malformed option value,
/// nothing to do), the same one line naming the VE or option.
pub fn usage_problem(h: &TestHost, args: &[&str], must_name: &[&str]) -> Option<String> {
    refusal_problem_exit(h, args, must_name, &|| String::new(), 2)
}

/// [`refusal_problem_with`] with the exit status wanted.
pub fn refusal_problem_exit(
    h: &TestHost,
    args: &[&str],
    must_name: &[&str],
    kernel: &dyn Fn() -> String,
    code: i32,
) -> Option<String> {
    let before = state_snapshot(h);
    let kernel_before = kernel();
    let r = run_guarded(h, args);
    let changed = diff(&before, &state_snapshot(h));
    let mut wrong = Vec::new();
    let kernel_after = kernel();
    if kernel_after != kernel_before {
        wrong.push(format!(
            "the kernel's state changed: {kernel_before} -> {kernel_after}"
        ));
    }
    if r.code != code {
        wrong.push(format!("exit {} (want {code})", r.code));
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    if lines.len() != 1 {
        wrong.push(format!("{} lines on stderr (want 1)", lines.len()));
    }
    if !lines.first().is_some_and(|l| l.starts_with("vectl: ")) {
        wrong.push("stderr does not start with \"vectl: \"".into());
    }
    for n in must_name {
        if !r.stderr.contains(n) {
            wrong.push(format!("the message does not name {n:?}"));
        }
    }
    if r.stderr.contains("panicked") {
        wrong.push("vectl panicked".into());
    }
    if !changed.is_empty() {
        wrong.push(format!("the state changed: {changed}"));
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "vectl {args:?}: {}; stderr: {:?}",
            wrong.join(", "),
            r.stderr
        )
    })
}

/// Runs `dd ARGS` in a VE and returns the wall time of the exec, asserting success.
#[track_caller]
pub fn timed_dd(h: &TestHost, ve: &str, args: &[&str]) -> f64 {
    let mut cmd = vec!["dd"];
    cmd.extend_from_slice(args);
    let t = Instant::now();
    let r = h.exec(ve, &cmd);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        r.code, 0,
        "dd {args:?} in VE {ve} failed (O_DIRECT refused on the VE's overlayfs?): {r:?}"
    );
    secs
}

// ---- Leftovers of killed commands (crash tests) ----

/// Whether the VE's cgroup is frozen (v1 freezer.state, v2 cgroup.freeze).
pub fn frozen(h: &TestHost, ve: &str) -> bool {
    let d = h.cgroup_dir("freezer", ve);
    if let Ok(s) = fs::read_to_string(d.join("freezer.state")) {
        return s.trim() != "THAWED";
    }
    fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
}

/// Asserts that the state directory holds nothing a killed command left: the
/// pool's `ves/` and `snapshots/`, `mnt/` and `ids/` hold only listed VEs (no
/// hidden `.VE.clone`/`.restore`/`.old` volumes), `run/` no `.frozen` marker, and
/// the template store only published versions (no `.removing-*`, `.staging-*`,
/// metadata without a tree).
#[track_caller]
pub fn assert_no_leftovers(h: &TestHost) {
    let ves: Vec<(String, u64)> = h
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["id"].as_u64().unwrap(),
            )
        })
        .collect();
    let known = |n: &str| ves.iter().any(|(v, _)| v == n);
    let names = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = h.root();
    for sub in ["pool/ves", "pool/snapshots", "pool/backup-bases", "mnt"] {
        for n in names(&root.join(sub)) {
            assert!(known(&n), "{sub}/{n} left (listed VEs: {ves:?})");
        }
    }
    for n in names(&root.join("ids")) {
        let target = fs::read_link(root.join("ids").join(&n)).unwrap();
        let target = target.to_string_lossy();
        assert!(
            ves.iter()
                .any(|(v, id)| *v == target && id.to_string() == n),
            "ids/{n} -> {target} left (listed VEs: {ves:?})"
        );
    }
    for n in names(&root.join("run")) {
        assert!(!n.ends_with(".frozen"), "run/{n} left");
    }
    let store = root.join("pool/templates");
    for t in names(&store) {
        assert!(!t.starts_with('.'), "pool/templates/{t} left");
        let tdir = store.join(&t);
        for n in names(&tdir) {
            let ok = n == ".highest"
                || n.parse::<u32>().is_ok()
                || n.strip_suffix(".toml")
                    .is_some_and(|v| v.parse::<u32>().is_ok() && tdir.join(v).is_dir());
            assert!(ok, "pool/templates/{t}/{n} left");
        }
    }
}

/// Publishes the busybox tree, changed by `edit`, as the next version of
/// template `name` (`template import`, which also adds versions).
pub fn publish_busybox(h: &TestHost, name: &str, edit: impl FnOnce(&Path)) {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("rootfs");
    integration::copy_busybox_rootfs(&tree).unwrap();
    edit(&tree);
    h.ok(&[
        "template",
        "import",
        name,
        "--from-dir",
        tree.to_str().unwrap(),
    ]);
}

/// The versions `template list --json` shows, as `name@version`.
pub fn template_versions(h: &TestHost) -> Vec<String> {
    h.json(&["template", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}@{}", t["name"].as_str().unwrap(), t["version"]))
        .collect()
}

/// A vectl state directory on a tmpfs that only a private mount namespace of its
/// own sees, in a network namespace of its own (the default network's links and
/// firewall go with it): a holder process keeps the namespaces (and the mount)
/// alive; vectl runs in them through nsenter. Dropping it ends the holder (the
/// tmpfs and the links go with their namespaces) and removes the cgroup parents
/// `init` made.
pub struct TmpfsRoot {
    dir: tempfile::TempDir,
    /// Its own registry of roots (`VECTL_REGISTRY`).
    registry: tempfile::TempDir,
    holder: Child,
    cgroups: Vec<PathBuf>,
}

impl TmpfsRoot {
    pub fn new(test: &str) -> Option<TmpfsRoot> {
        let dir = tempfile::Builder::new()
            .prefix("vectl-nsroot-")
            .tempdir()
            .unwrap();
        let script = "mount -t tmpfs -o size=64m,mode=0755 vectl-test \"$1\" || exit 1; \
                      echo ready; read _";
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut holder = match holder {
            Ok(c) => c,
            Err(e) => {
                integration::skip(test, &format!("cannot run unshare: {e}"));
                return None;
            }
        };
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().unwrap();
            integration::skip(
                test,
                &format!(
                    "cannot mount a tmpfs in a private mount namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            return None;
        }
        let mut t = TmpfsRoot {
            dir,
            registry: tempfile::Builder::new()
                .prefix("vectl-registry-")
                .tempdir()
                .unwrap(),
            holder,
            cgroups: Vec::new(),
        };
        let name = integration::unique("vt-tmpfs");
        let parent = match std::env::var("VECTL_TEST_CGROUP_BASE") {
            Ok(base) => format!("{}/{name}", base.trim_end_matches('/')),
            Err(_) => format!("./{name}"),
        };
        let r = t.run(&["init", "--backend", "dir", "--cgroup-parent", &parent]);
        assert_eq!(r.code, 0, "init on tmpfs: {r:?}");
        let r = t.run(&["--json", "host", "info"]);
        let info: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        t.cgroups = info["cgroup_paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PathBuf::from(p.as_str().unwrap()))
            .collect();
        Some(t)
    }

    /// The state directory, as vectl (inside the namespace) names it.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The state directory seen from the test (through the holder's /proc root).
    pub fn view(&self) -> PathBuf {
        let inner = self.root();
        Path::new(&format!("/proc/{}/root", self.holder.id()))
            .join(inner.strip_prefix("/").unwrap())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(integration::vectl_bin())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("VECTL_ROOT")
            .env_remove("VECTL_FAILPOINT")
            .env("VECTL_REGISTRY", self.registry.path())
            .stdin(Stdio::null());
        run_limited(c, Duration::from_secs(30))
    }
}

impl Drop for TmpfsRoot {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for d in &self.cgroups {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A running `vectl supervise` for a test root, killed on drop. It runs in
/// the test's network namespace; the process connector (exit statuses)
/// answers in the host's only, which `VECTL_HOST_NETNS` names.
pub struct Supervisor(pub Child);

impl Supervisor {
    /// Starts it and waits until it listens for the root's consoles.
    pub fn start(h: &TestHost) -> Supervisor {
        Supervisor::start_as_service(h, &[], Vec::new())
    }

    /// Starts it as systemd would: with `env` (NOTIFY_SOCKET) and, when
    /// `passed` is not empty, those descriptors from fd 3 on (LISTEN_FDS,
    /// LISTEN_PID, LISTEN_FDNAMES from the names). Waits until it listens.
    pub fn start_as_service(
        h: &TestHost,
        env: &[(&str, &str)],
        passed: Vec<(String, std::os::fd::OwnedFd)>,
    ) -> Supervisor {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let base = h.command();
        // LISTEN_PID must be the supervisor's own pid: a shell that execs it.
        let mut cmd = if passed.is_empty() {
            Command::new(base.get_program())
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
                .arg(base.get_program());
            let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
            c.env("LISTEN_FDS", passed.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let raw: Vec<i32> = passed.iter().map(|(_, f)| f.as_raw_fd()).collect();
            // SAFETY: the closure only duplicates descriptors (async-signal-safe).
            unsafe {
                c.pre_exec(move || place_fds(&raw));
            }
            c
        };
        cmd.args(base.get_args());
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(ns) = h.host_netns() {
            cmd.env("VECTL_HOST_NETNS", ns);
        }
        let child = cmd
            .arg("supervise")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vectl supervise");
        drop(passed);
        let sock = h.root().join("run/console.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "the supervisor did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Supervisor(child)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts the descriptors `raw` at 3, 4, ... (between fork and exec): all
/// are copied above them first, so none is overwritten before it is moved.
fn place_fds(raw: &[i32]) -> std::io::Result<()> {
    let mut high = Vec::with_capacity(raw.len());
    for &f in raw {
        // SAFETY: fcntl on a descriptor number; a failure is returned.
        let h = unsafe { libc::fcntl(f, libc::F_DUPFD_CLOEXEC, 1000) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(h);
    }
    for (to, h) in (3..).zip(high) {
        // SAFETY: dup2 onto a number of this process (it clears close-on-exec).
        if unsafe { libc::dup2(h, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits up to a minute for `ok`.
#[track_caller]
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
