//! The host's kernel limits at hosting scale (`vectl host tune`, `host info`,
//! `vectl init`): raising, never lowering, dry runs, idempotence and the
//! persistence file, against a fake sysctl tree (`VECTL_SYSCTL_ROOT`,
//! `VECTL_SYSCTL_D`, vectl's testing hooks) — and, on the real kernel, from the
//! test's own network namespace, where vectl reads what it can see and leaves
//! the host's settings alone.
//!
//! No test changes the real host's settings: every setting of the table is
//! the host's on this kernel (the neighbour defaults are not even shown in a
//! network namespace of one's own), so the real-kernel test only reads them,
//! and checks that a real `host tune` there writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use integration::{Run, TestHost};
use serde_json::Value;

/// A fake `/proc/sys` and `/etc/sysctl.d` for vectl's testing hooks.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    /// A tree holding `values` (`key` → value; keys not given are absent).
    fn new(values: &[(&str, u64)]) -> Fake {
        let f = Fake {
            dir: tempfile::Builder::new()
                .prefix("vectl-sysctl-")
                .tempdir()
                .unwrap(),
        };
        fs::create_dir_all(f.d()).unwrap();
        for (k, v) in values {
            f.set(k, *v);
        }
        f
    }

    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn d(&self) -> PathBuf {
        self.dir.path().join("sysctl.d")
    }

    fn conf(&self) -> PathBuf {
        self.d().join("60-vectl.conf")
    }

    fn file(&self, key: &str) -> PathBuf {
        self.sys().join(key.replace('.', "/"))
    }

    fn set(&self, key: &str, v: u64) {
        let p = self.file(key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{v}\n")).unwrap();
    }

    fn get(&self, key: &str) -> u64 {
        read_num(&self.file(key)).unwrap()
    }

    /// Every file of the tree and its content.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn read_num(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// vectl on `h`'s root with the hooks pointing at `sys` and `d`.
fn run_with(h: &TestHost, sys: Option<&Path>, d: &Path, args: &[&str]) -> Run {
    let mut c = h.command();
    c.env_remove("VECTL_SYSCTL_ROOT");
    if let Some(sys) = sys {
        c.env("VECTL_SYSCTL_ROOT", sys);
    }
    c.env("VECTL_SYSCTL_D", d)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

#[track_caller]
fn ok_json(r: &Run) -> Value {
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// The report's entry for `key`.
fn entry<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

const T1: &str = "net.ipv4.neigh.default.gc_thresh1";
const T2: &str = "net.ipv4.neigh.default.gc_thresh2";
const T3: &str = "net.ipv4.neigh.default.gc_thresh3";
const T3V6: &str = "net.ipv6.neigh.default.gc_thresh3";
const INOTIFY: &str = "fs.inotify.max_user_instances";
const PID_MAX: &str = "kernel.pid_max";
const MAXKEYS: &str = "kernel.keys.maxkeys";
const CONNTRACK: &str = "net.netfilter.nf_conntrack_max";

#[test]
fn tune_raises_never_lowers_persists_and_is_idempotent() {
    let test = "host_limits::tune_raises_never_lowers_persists_and_is_idempotent";
    // A host of its own: its network namespace is the test's, so even a vectl
    // that ignored the hooks could not reach the host's neighbour settings.
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let fake = Fake::new(&[
        (T1, 128),
        (T2, 512),
        (T3, 1024),
        // Above what 1000 VEs need: must stay as it is.
        (T3V6, 50_000),
        (INOTIFY, 128),
        (PID_MAX, 4_194_304),
        (MAXKEYS, 200),
    ]);
    let sys = fake.sys();
    let tune = |args: &[&str]| {
        let mut all = vec!["--json", "host", "tune"];
        all.extend_from_slice(args);
        run_with(&h, Some(&sys), &fake.d(), &all)
    };

    // A dry run says what it would do and writes nothing.
    let before = fake.snapshot();
    let plan = ok_json(&tune(&["--ves", "1000", "--dry-run"]));
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["host_netns"], true, "{plan}");
    for (key, want) in [
        (T1, 2128),
        (T2, 4512),
        (T3, 9024),
        (INOTIFY, 16128),
        (MAXKEYS, 2000),
    ] {
        let e = entry(&plan, key);
        assert_eq!(e["action"], "would_raise", "{e}");
        assert_eq!(e["recommended"], want, "{e}");
        assert_eq!(e["command"], format!("sysctl -w {key}={want}"), "{e}");
    }
    assert_eq!(entry(&plan, T3V6)["action"], "ok");
    assert_eq!(entry(&plan, PID_MAX)["action"], "ok");
    assert_eq!(entry(&plan, CONNTRACK)["action"], "skipped");
    assert_eq!(fake.snapshot(), before, "a dry run changed files");

    // The real run raises the low ones, leaves the higher ones, and writes
    // one line per raised key, each under a comment, into the conf file.
    let done = ok_json(&tune(&["--ves", "1000"]));
    assert_eq!(done["persisted"], true, "{done}");
    assert_eq!(done["errors"], serde_json::json!([]));
    for (key, want) in [
        (T1, 2128),
        (T2, 4512),
        (T3, 9024),
        (INOTIFY, 16128),
        (MAXKEYS, 2000),
    ] {
        assert_eq!(fake.get(key), want, "{key}");
        assert_eq!(entry(&done, key)["action"], "raised");
    }
    assert_eq!(fake.get(T3V6), 50_000, "lowered");
    assert_eq!(fake.get(PID_MAX), 4_194_304, "lowered");
    assert!(!fake.file(CONNTRACK).exists(), "an absent key was made");
    let conf = fs::read_to_string(fake.conf()).unwrap();
    let lines: Vec<&str> = conf.lines().collect();
    let settings: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        settings,
        [
            "net.ipv4.neigh.default.gc_thresh1 = 2128",
            "net.ipv4.neigh.default.gc_thresh2 = 4512",
            "net.ipv4.neigh.default.gc_thresh3 = 9024",
            "fs.inotify.max_user_instances = 16128",
            "kernel.keys.maxkeys = 2000",
        ],
        "{conf}"
    );
    for s in &settings {
        let i = lines.iter().position(|l| l == s).unwrap();
        assert!(
            lines[i - 1].starts_with("# "),
            "no comment above {s}:\n{conf}"
        );
    }

    // Again: nothing to do, the file byte for byte the same.
    let after = fake.snapshot();
    let again = ok_json(&tune(&["--ves", "1000"]));
    assert_eq!(again["persisted"], false, "{again}");
    assert!(
        again["limits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["action"] == "ok" || l["action"] == "skipped"),
        "{again}"
    );
    assert_eq!(fake.snapshot(), after);

    // Fewer VEs never lower anything, live or in the file.
    let small = ok_json(&tune(&["--ves", "10"]));
    assert_eq!(entry(&small, T3)["recommended"], 1104);
    assert_eq!(entry(&small, T3)["action"], "ok");
    assert_eq!(fake.snapshot(), after);

    // A live value that fell back (a boot without the file, an operator's
    // sysctl) is raised to what the VE count asks; the file keeps its higher
    // value from before.
    fake.set(T3, 1024);
    let r = ok_json(&tune(&["--ves", "500"]));
    assert_eq!(entry(&r, T3)["after"], 5024, "{r}");
    assert_eq!(fake.get(T3), 5024);
    let conf = fs::read_to_string(fake.conf()).unwrap();
    assert!(
        conf.contains("\nnet.ipv4.neigh.default.gc_thresh3 = 9024\n"),
        "{conf}"
    );

    // The text form says what it did.
    fake.set(T1, 1);
    let r = run_with(
        &h,
        Some(&sys),
        &fake.d(),
        &["host", "tune", "--ves", "1000"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(T1) && l.contains(" 1 ") && l.ends_with("raised")),
        "{r:?}"
    );
    assert_eq!(fake.get(T1), 2128);

    // A persistence directory that cannot be made: the live values are
    // raised, the command fails in one line naming the path and why.
    fake.set(T1, 1);
    let blocker = fake.dir.path().join("not-a-dir");
    fs::write(&blocker, "").unwrap();
    let bad_d = blocker.join("sysctl.d");
    let r = run_with(&h, Some(&sys), &bad_d, &["host", "tune", "--ves", "1000"]);
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{r:?}");
    assert!(
        lines[0].starts_with("vectl: ") && lines[0].contains(&blocker.display().to_string()),
        "{r:?}"
    );
    assert_eq!(fake.get(T1), 2128);
}

#[test]
fn init_tunes_unless_told_not_to() {
    let test = "host_limits::init_tunes_unless_told_not_to";
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    let low = [(T3, 1024), (INOTIFY, 128), (PID_MAX, 4_194_304)];

    // --no-host-tuning: one line per low value with the command, nothing written.
    let fake = Fake::new(&low);
    let before = fake.snapshot();
    let r = run_with(
        &h,
        Some(&fake.sys()),
        &fake.d(),
        &["init", "--no-host-tuning"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let told: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("sysctl -w"))
        .collect();
    assert_eq!(told.len(), 2, "{r:?}");
    assert!(
        told.iter()
            .any(|l| l.contains("sysctl -w net.ipv4.neigh.default.gc_thresh3=9024")),
        "{r:?}"
    );
    assert!(
        told.iter()
            .any(|l| l.contains("sysctl -w fs.inotify.max_user_instances=16128")),
        "{r:?}"
    );
    assert_eq!(fake.snapshot(), before);

    // Plain init (again on the same root: init is idempotent) raises them.
    let r = run_with(&h, Some(&fake.sys()), &fake.d(), &["init"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fake.get(T3), 9024);
    assert_eq!(fake.get(INOTIFY), 16128);
    assert_eq!(fake.get(PID_MAX), 4_194_304);
    assert!(
        r.stderr
            .contains("raised host limit net.ipv4.neigh.default.gc_thresh3 from 1024 to 9024"),
        "{r:?}"
    );
    let conf = fs::read_to_string(fake.conf()).unwrap();
    assert!(
        conf.contains("\nfs.inotify.max_user_instances = 16128\n"),
        "{conf}"
    );
    assert!(!conf.contains(PID_MAX), "{conf}");

    // host info shows each against the recommendation.
    let r = run_with(&h, Some(&fake.sys()), &fake.d(), &["host", "info"]);
    assert_eq!(r.code, 0, "{r:?}");
    let row = |key: &str| -> Vec<String> {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} row: {}", r.stdout))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row(T3)[1..4], ["9024", "9024", "OK"]);
    assert_eq!(row(MAXKEYS)[1..3], ["-", "2000"]);
    assert_eq!(row(MAXKEYS)[3], "absent:");
}

#[test]
fn real_kernel_from_the_tests_own_network_namespace() {
    let test = "host_limits::real_kernel_from_the_tests_own_network_namespace";
    let Some(h) = TestHost::bare(test) else {
        return;
    };
    // This thread and the vectl it runs are in the test's own network
    // namespace (TestHost); the persistence hook points at a directory of the
    // test's, so that nothing could reach /etc even if vectl wrote.
    let d = tempfile::tempdir().unwrap();
    let real = |key: &str| read_num(&Path::new("/proc/sys").join(key.replace('.', "/")));

    // On this kernel the neighbour defaults are the host's alone: a network
    // namespace of one's own does not even show them. Then nothing of the
    // table is the test's own to write for real.
    let neigh_here = real(T3).is_some();
    if neigh_here {
        eprintln!("note: {T3} is visible in a network namespace of its own on this kernel");
    }

    let plan = ok_json(&run_with(
        &h,
        None,
        d.path(),
        &["--json", "host", "tune", "--dry-run"],
    ));
    assert_eq!(plan["host_netns"], false, "{plan}");
    assert_eq!(plan["sysctl_dir"], "/proc/sys");
    for l in plan["limits"].as_array().unwrap() {
        let key = l["key"].as_str().unwrap();
        let rec = l["recommended"].as_u64().unwrap();
        match real(key) {
            Some(v) => {
                assert_eq!(l["before"], v, "{l}");
                let want = if v >= rec { "ok" } else { "would_raise" };
                assert_eq!(l["action"], want, "{l}");
            }
            None => assert_eq!(l["action"], "skipped", "{l}"),
        }
        if key.contains(".neigh.") && !neigh_here {
            assert!(
                l["reason"]
                    .as_str()
                    .unwrap()
                    .contains("only in the host's network namespace"),
                "{l}"
            );
        }
    }

    // A real run here writes none of the host's settings: the low ones are
    // left to the operator with the command, the values are as before, no
    // file is written.
    let values: Vec<(String, Option<u64>)> = plan["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let k = l["key"].as_str().unwrap().to_string();
            let v = real(&k);
            (k, v)
        })
        .collect();
    let done = ok_json(&run_with(&h, None, d.path(), &["--json", "host", "tune"]));
    for l in done["limits"].as_array().unwrap() {
        assert_ne!(l["action"], "raised", "{l}");
        if l["action"] == "left_to_operator" {
            let cmd = l["command"].as_str().unwrap();
            assert!(cmd.starts_with(&format!("sysctl -w {}=", l["key"].as_str().unwrap())));
        }
    }
    assert_eq!(done["persisted"], false);
    for (k, v) in &values {
        assert_eq!(real(k), *v, "{k} changed");
    }
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);

    // host info shows the same values the test reads.
    let r = run_with(&h, None, d.path(), &["host", "info"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("host limits for 1000 VEs"), "{r:?}");
    for (k, v) in &values {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} row: {}", r.stdout));
        let cur = row.split_whitespace().nth(1).unwrap();
        assert_eq!(cur, v.map_or("-".into(), |v| v.to_string()), "{row}");
    }

    // vectl's write and read-back on the real procfs: a per-namespace knob of
    // the test's own network namespace (net.core.somaxconn) stands in for a
    // key of the table, through a symlink in a fake tree. The host is not
    // touched: the knob is this namespace's.
    let fake = Fake::new(&[]);
    let link = fake.file(CONNTRACK);
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/proc/sys/net/core/somaxconn", &link).unwrap();
    let before = real("net.core.somaxconn").unwrap();
    let r = ok_json(&run_with(
        &h,
        Some(&fake.sys()),
        &fake.d(),
        &["--json", "host", "tune", "--ves", "1000"],
    ));
    let e = entry(&r, CONNTRACK);
    if before >= 321_536 {
        assert_eq!(e["action"], "ok", "{e}");
    } else {
        assert_eq!(e["action"], "raised", "{e}");
        assert_eq!(e["before"], before, "{e}");
    }
    assert_eq!(real("net.core.somaxconn"), Some(321_536.max(before)));
}
