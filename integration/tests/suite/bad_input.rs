//! Bad input: every refused command exits 1 with exactly one line on stderr that
//! starts with `vectl: ` and names the VE or file, and changes nothing on disk.
//! Usage errors (clap's, a malformed option value, nothing to do) exit 2, a
//! malformed value with the same one line. Nothing panics.
//!
//! Each test checks a list of cases and reports every case that is wrong at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use crate::common::*;

/// Runs `vectl ARGS` expecting a refused operation; returns what is wrong, if anything.
fn refused(h: &TestHost, args: &[&str], must_name: &[&str]) -> Option<String> {
    refusal_problem(h, args, must_name)
}

/// Asserts that every case was refused properly.
#[track_caller]
fn all_refused(h: &TestHost, cases: &[(Vec<&str>, Vec<&str>)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(args, names)| refused(h, args, names))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} bad inputs were not refused properly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

fn case<'a>(args: &[&'a str], names: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    (args.to_vec(), names.to_vec())
}

#[test]
fn invalid_names_are_refused() {
    let Some(h) = TestHost::new("invalid_names_are_refused") else {
        return;
    };
    let long = "a".repeat(64);
    let cases = [
        case(&["create", "Web", "--template", "bb"], &["Web"]),
        case(&["create", "--template", "bb", "--", "-x"], &["-x"]),
        case(&["create", "a_b", "--template", "bb"], &["a_b"]),
        case(&["create", "123", "--template", "bb"], &["123"]),
        case(&["create", &long, "--template", "bb"], &[&long]),
        case(&["create", "web.1", "--template", "bb"], &["web.1"]),
        case(&["create", "../evil", "--template", "bb"], &["../evil"]),
        case(&["create", "wëb", "--template", "bb"], &["wëb"]),
        case(&["create", "", "--template", "bb"], &["\"\""]),
        case(&["start", "Web"], &["Web"]),
        case(&["show", "a_b"], &["a_b"]),
        case(&["destroy", "../evil"], &["../evil"]),
    ];
    all_refused(&h, &cases);
    // 63 characters are fine.
    h.ok(&["create", &"a".repeat(63), "--template", "bb"]);
}

#[test]
fn duplicate_names_are_refused() {
    let Some(h) = TestHost::new("duplicate_names_are_refused") else {
        return;
    };
    h.ok(&["create", "dup", "--template", "bb"]);
    h.start_ve("duprun", &[]);
    all_refused(
        &h,
        &[
            case(&["create", "dup", "--template", "bb"], &["dup"]),
            case(
                &["create", "duprun", "--template", "bb", "--ram", "64M"],
                &["duprun"],
            ),
            case(
                &["create", "other", "--template", "bb", "--id", "100"],
                &["100"],
            ),
        ],
    );
    assert_eq!(status(&h, "duprun"), "running");
}

#[test]
fn unknown_templates_and_versions_are_refused() {
    let Some(h) = TestHost::new("unknown_templates_and_versions_are_refused") else {
        return;
    };
    all_refused(
        &h,
        &[
            case(&["create", "w", "--template", "nope"], &["nope"]),
            case(&["create", "w", "--template", "bb@9"], &["bb", "9"]),
            case(&["create", "w", "--template", "bb@0"], &["bb"]),
            case(&["create", "w", "--template", "bb@x"], &["bb@x"]),
            case(&["create", "w", "--template", "../bb"], &["../bb"]),
            case(&["create", "w", "--template", ""], &["\"\""]),
        ],
    );
}

#[test]
fn imports_from_bad_sources_are_refused() {
    let Some(h) = TestHost::new("imports_from_bad_sources_are_refused") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    let missing = p("missing");
    let file = p("file");
    fs::write(&file, "not a directory\n").unwrap();
    let garbage = p("garbage.tar");
    fs::write(&garbage, vec![0x5a_u8; 10_000]).unwrap();
    let empty = p("empty.tar");
    fs::write(&empty, b"").unwrap();
    let fake_gz = p("fake.tar.gz");
    fs::write(&fake_gz, b"\x1f\x8b\x08\x00garbage after a gzip magic").unwrap();
    let fake_zst = p("fake.tar.zst");
    fs::write(&fake_zst, b"\x28\xb5\x2f\xfdgarbage after a zstd magic").unwrap();
    // A real archive cut short.
    let rootfs = integration::busybox_rootfs().unwrap();
    let cut = p("cut.tar.gz");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -czf - . | head -c 300000 > {cut}",
            rootfs.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = work.path().to_str().unwrap().to_string();
    let cases = [
        case(
            &["template", "import", "t", "--from-dir", &missing],
            &[&missing],
        ),
        case(&["template", "import", "t", "--from-dir", &file], &[&file]),
        case(
            &["template", "import", "t", "--from-tar", &missing],
            &[&missing],
        ),
        case(
            &["template", "import", "t", "--from-tar", &garbage],
            &[&garbage],
        ),
        case(
            &["template", "import", "t", "--from-tar", &empty],
            &[&empty],
        ),
        case(
            &["template", "import", "t", "--from-tar", &fake_gz],
            &[&fake_gz],
        ),
        case(
            &["template", "import", "t", "--from-tar", &fake_zst],
            &[&fake_zst],
        ),
        case(&["template", "import", "t", "--from-tar", &cut], &[&cut]),
        case(&["template", "import", "t", "--from-tar", &dir], &[&dir]),
        // Into an existing template: no half version either.
        case(
            &["template", "import", "bb", "--from-tar", &garbage],
            &[&garbage],
        ),
        case(
            &[
                "template",
                "import",
                "Bad",
                "--from-dir",
                rootfs.to_str().unwrap(),
            ],
            &["Bad"],
        ),
    ];
    all_refused(&h, &cases);
    // No version number was used up.
    let out = h.ok(&[
        "template",
        "import",
        "bb",
        "--from-dir",
        rootfs.to_str().unwrap(),
    ]);
    assert!(out.contains("bb@2"), "{out}");
}

#[test]
fn operations_that_need_another_state_are_refused() {
    let Some(h) = TestHost::new("operations_that_need_another_state_are_refused") else {
        return;
    };
    h.start_ve("up", &[]);
    h.ok(&["create", "down", "--template", "bb"]);
    let pid = h.init_pid("up");
    all_refused(
        &h,
        &[
            case(&["start", "up"], &["up"]),
            case(&["start", "100"], &["up"]),
            case(&["exec", "down", "--", "true"], &["down"]),
            case(&["exec", "101", "--", "true"], &["down"]),
            case(&["enter", "down"], &["down"]),
            case(&["destroy", "up"], &["up"]),
            case(&["destroy", "100"], &["up"]),
        ],
    );
    // Nothing happened to either VE.
    assert_eq!(h.init_pid("up"), pid);
    assert_eq!(status(&h, "down"), "stopped");
    assert!(existing_cgroup_dirs(&h, "down").is_empty());
}

#[test]
fn a_corrupted_config_is_named_and_list_still_works() {
    let Some(h) = TestHost::new("a_corrupted_config_is_named_and_list_still_works") else {
        return;
    };
    h.ok(&["create", "good", "--template", "bb"]);
    h.ok(&["create", "bad", "--template", "bb"]);
    let cfg = h.root().join("ves/bad.toml");
    fs::write(&cfg, "id = 101\nname = [garbage\n\u{0}\u{1}").unwrap();
    let file = cfg.to_str().unwrap().to_string();
    all_refused(
        &h,
        &[
            case(&["start", "bad"], &[&file]),
            case(&["show", "bad"], &[&file]),
            case(&["show", "101"], &[&file]),
            case(&["stop", "bad"], &[&file]),
            case(&["set", "bad", "--ram", "64M"], &[&file]),
            case(&["exec", "bad", "--", "true"], &[&file]),
            case(&["create", "bad", "--template", "bb"], &[&file]),
        ],
    );
    // list works, warns once naming the file, and shows the others.
    for json in [false, true] {
        let args: &[&str] = if json { &["--json", "list"] } else { &["list"] };
        let r = h.run(args);
        assert_eq!(r.code, 0, "{r:?}");
        let warnings: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(warnings.len(), 1, "{r:?}");
        assert!(
            warnings[0].starts_with("vectl: ") && warnings[0].contains(&file),
            "{r:?}"
        );
        assert!(r.stdout.contains("good"), "{r:?}");
        if json {
            let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
        }
    }
    // Other VEs are unaffected.
    h.ok(&["start", "good"]);
    h.ok(&["stop", "--fast", "good"]);
    fs::remove_file(&cfg).unwrap();
}

#[test]
fn corrupted_host_settings_are_named() {
    let Some(h) = TestHost::new("corrupted_host_settings_are_named") else {
        return;
    };
    let settings = h.root().join("vectl.toml");
    let good = fs::read(&settings).unwrap();
    fs::write(&settings, "version = [[[").unwrap();
    let file = settings.to_str().unwrap().to_string();
    let cases = [
        case(&["list"], &[&file]),
        case(&["create", "x", "--template", "bb"], &[&file]),
        case(&["template", "list"], &[&file]),
        case(&["host", "info"], &[&file]),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(a, n)| refused(&h, a, n))
        .collect();
    fs::write(&settings, good).unwrap();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn out_of_range_limits_are_refused() {
    let Some(h) = TestHost::new("out_of_range_limits_are_refused") else {
        return;
    };
    h.start_ve(
        "lim",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    let kernel = |h: &TestHost| kernel(h, "lim");
    let before = kernel(&h);
    let mut cases = Vec::new();
    for bad in [
        ["--ram", "1K"],
        ["--ram", "0"],
        ["--ram", "101%"],
        ["--ram", "0%"],
        ["--ram", "1000T"],
        ["--cpu-limit", "0%"],
        ["--cpu-limit", "500%"],
        ["--cpu-limit", "0.5%"],
        ["--pids", "0"],
        ["--pids", "99999999"],
    ] {
        cases.push(case(
            &["create", "new", "--template", "bb", bad[0], bad[1]],
            &["new"],
        ));
        cases.push(case(&["set", "lim", bad[0], bad[1]], &["lim"]));
    }
    all_refused(&h, &cases);
    assert_eq!(kernel(&h), before, "a refused set changed the kernel");
    assert!(listed(&h, "new").is_none());
}

/// Issue 18, defect 11: a malformed value is bad usage (exit 2), with the one
/// line naming the VE and the value (this test asserted exit 1 before).
#[test]
fn malformed_sizes_are_usage_errors_naming_the_ve() {
    let Some(h) = TestHost::new("malformed_sizes_are_usage_errors_naming_the_ve") else {
        return;
    };
    h.ok(&["create", "sz", "--template", "bb", "--ram", "256M"]);
    let mut cases = Vec::new();
    for bad in [
        ["--ram", "12Q"],
        ["--ram", "-5M"],
        ["--ram=-5M", ""],
        ["--ram", "1..5G"],
        ["--ram", "99999999999999999999T"],
        ["--cpu-limit", "50"],
        ["--cpu-limit", "-5%"],
        ["--pids", "-1"],
        ["--pids", "ten"],
    ] {
        let value = bad[0].strip_prefix("--ram=").unwrap_or(bad[1]);
        let args: Vec<&str> = bad.iter().copied().filter(|a| !a.is_empty()).collect();
        let mut create = vec!["create", "new", "--template", "bb"];
        create.extend(&args);
        cases.push((create, vec!["new", value]));
        let mut set = vec!["set", "sz"];
        set.extend(&args);
        cases.push((set, vec!["sz", value]));
    }
    cases.push((
        vec!["create", "new", "--template", "bb", "--ram", "banana"],
        vec!["new", "banana"],
    ));
    cases.push((vec!["set", "sz", "--publish", "80"], vec!["sz", "80"]));
    cases.push((
        vec!["set", "sz", "--unpublish", "x/tcp"],
        vec!["sz", "x/tcp"],
    ));
    // Nothing to do is bad usage too.
    cases.push((vec!["set", "sz"], vec!["sz", "nothing to set"]));
    cases.push((vec!["host", "set"], vec!["nothing to set"]));
    cases.push((
        vec!["net", "set", "default"],
        vec!["default", "nothing to change"],
    ));
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(args, names)| usage_problem(&h, args, names))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} not bad usage:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(listed(&h, "new").is_none());
    assert_eq!(h.json(&["show", "sz"])["ram_limit_bytes"], 256 << 20);
}

#[test]
fn unknown_ves_and_ids_are_refused() {
    let Some(h) = TestHost::new("unknown_ves_and_ids_are_refused") else {
        return;
    };
    h.ok(&["create", "known", "--template", "bb"]);
    let mut cases = Vec::new();
    for who in ["nope", "999", "4294967296"] {
        cases.push(case(&["start", who], &[who]));
        cases.push(case(&["stop", who], &[who]));
        cases.push(case(&["restart", who], &[who]));
        cases.push(case(&["show", who], &[who]));
        cases.push(case(&["exec", who, "--", "true"], &[who]));
        cases.push(case(&["enter", who], &[who]));
        cases.push(case(&["set", who, "--pids", "10"], &[who]));
        cases.push(case(&["destroy", who], &[who]));
        cases.push(case(&["destroy", "--force", who], &[who]));
    }
    all_refused(&h, &cases);
    // One bad VE among good ones: the others are done, the command fails.
    let r = h.run(&["start", "known", "nope"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.contains("nope"));
    assert_eq!(status(&h, "known"), "running");
}

#[test]
fn other_bad_create_options_are_refused() {
    let Some(h) = TestHost::new("other_bad_create_options_are_refused") else {
        return;
    };
    let long_host = "h".repeat(300);
    all_refused(
        &h,
        &[
            case(
                &["create", "o", "--template", "bb", "--init", "sbin/init"],
                &["o"],
            ),
            case(&["create", "o", "--template", "bb", "--init", ""], &["o"]),
            case(
                &["create", "o", "--template", "bb", "--init", "'/sbin/init"],
                &["o"],
            ),
            case(
                &[
                    "create",
                    "o",
                    "--template",
                    "bb",
                    "--stop-signal",
                    "SIGKILL",
                ],
                &["o"],
            ),
            case(
                &[
                    "create",
                    "o",
                    "--template",
                    "bb",
                    "--stop-signal",
                    "SIGNOPE",
                ],
                &["o"],
            ),
            case(
                &[
                    "create",
                    "o",
                    "--template",
                    "bb",
                    "--stop-signal",
                    "SIGRTMIN+99",
                ],
                &["o"],
            ),
            case(
                &["create", "o", "--template", "bb", "--hostname", "bad_host"],
                &["bad_host"],
            ),
            case(
                &["create", "o", "--template", "bb", "--hostname", &long_host],
                &[],
            ),
            case(&["create", "o", "--template", "bb", "--id", "5"], &["5"]),
            case(&["create", "o", "--template", "bb", "--id", "0"], &["0"]),
        ],
    );
}

#[test]
fn bad_exec_options_are_refused() {
    let Some(h) = TestHost::new("bad_exec_options_are_refused") else {
        return;
    };
    h.start_ve("ex", &[]);
    all_refused(
        &h,
        &[
            case(&["exec", "ex", "-e", "NOEQUALS", "--", "true"], &["ex"]),
            case(&["exec", "ex", "-e", "=x", "--", "true"], &["ex"]),
            case(
                &["exec", "ex", "-w", "/nonexistent", "--", "true"],
                &["ex", "/nonexistent"],
            ),
            case(&["exec", "ex", "--", "/etc/passwd"], &["ex"]),
            case(&["exec", "ex", "--", "/nonexistent/prog"], &["ex"]),
        ],
    );
}

#[test]
fn usage_errors_exit_2() {
    let Some(h) = TestHost::new("usage_errors_exit_2") else {
        return;
    };
    h.ok(&["create", "u", "--template", "bb"]);
    let cases: &[&[&str]] = &[
        &["create", "v", "--template", "bb", "--bogus"],
        &["create", "v"],
        &["create"],
        &["start"],
        &["exec", "u"],
        &["exec", "u", "true"],
        &["set", "u", "--ram"],
        &["frobnicate"],
        &[],
        &["template", "import", "t"],
        &[
            "template",
            "import",
            "t",
            "--from-dir",
            "/a",
            "--from-tar",
            "/b",
        ],
        &["stop", "u", "--timeout", "soon"],
        &["init", "--backend", "zfs"],
    ];
    let mut wrong = Vec::new();
    for args in cases {
        let before = state_snapshot(&h);
        let r = run_guarded(&h, args);
        let changed = diff(&before, &state_snapshot(&h));
        if r.code != 2
            || r.stderr.is_empty()
            || r.stderr.contains("panicked")
            || !changed.is_empty()
        {
            wrong.push(format!(
                "vectl {args:?}: exit {} {:?} changed: {changed}",
                r.code, r.stderr
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn odd_arguments_never_panic_or_change_anything() {
    let Some(h) = TestHost::new("odd_arguments_never_panic_or_change_anything") else {
        return;
    };
    h.start_ve("odd", &[]);
    let huge = "x".repeat(100_000);
    let huge_num = "9".repeat(400);
    let huge_pct = format!("{huge_num}%");
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![OsStr::new("start"), OsStr::from_bytes(b"\xff\xfe")],
        vec![OsStr::new("show"), OsStr::new(&huge)],
        vec![OsStr::new("show"), OsStr::new(&huge_num)],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::from_bytes(b"bb\xff"),
        ],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::new("bb@99999999999999999999"),
        ],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::new("bb"),
            OsStr::new("--ram"),
            OsStr::new("1e400M"),
        ],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::new("bb"),
            OsStr::new("--cpu-limit"),
            OsStr::new(&huge_pct),
        ],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::new("bb"),
            OsStr::new("--cpu-limit"),
            OsStr::new("nan%"),
        ],
        vec![
            OsStr::new("create"),
            OsStr::new("n"),
            OsStr::new("--template"),
            OsStr::new("bb"),
            OsStr::new("--id"),
            OsStr::new("99999999999"),
        ],
        vec![
            OsStr::new("exec"),
            OsStr::new("odd"),
            OsStr::new("--"),
            OsStr::new(""),
        ],
        vec![
            OsStr::new("exec"),
            OsStr::new("odd"),
            OsStr::new("-w"),
            OsStr::new(""),
            OsStr::new("--"),
            OsStr::new("true"),
        ],
        vec![
            OsStr::new("exec"),
            OsStr::new("odd"),
            OsStr::new("--"),
            OsStr::from_bytes(b"\xff"),
        ],
        vec![
            OsStr::new("template"),
            OsStr::new("import"),
            OsStr::new("../up"),
            OsStr::new("--from-dir"),
            OsStr::new("/nonexistent"),
        ],
    ];
    let mut wrong = Vec::new();
    for args in &cases {
        let before = state_snapshot(&h);
        let mut cmd = h.command();
        cmd.args(args).stdin(Stdio::null());
        let r = run_limited(cmd, std::time::Duration::from_secs(30));
        let changed = diff(&before, &state_snapshot(&h));
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().chars().take(40).collect())
            .collect();
        if !(r.code == 1 || r.code == 2) || r.stderr.contains("panicked") || !changed.is_empty() {
            wrong.push(format!(
                "vectl {shown:?}: exit {} {:?} changed: {changed}",
                r.code,
                r.stderr.chars().take(300).collect::<String>()
            ));
        }
        if r.code == 1 && !(r.stderr.lines().count() == 1 && r.stderr.starts_with("vectl: ")) {
            wrong.push(format!(
                "vectl {shown:?}: not one \"vectl: \" line: {:?}",
                r.stderr
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(status(&h, "odd"), "running");
}

/// Unmounts and detaches whatever an (old, wrong) implicit init made below
/// `dir`, so a failing run leaves no pool behind.
fn undo_pools_below(dir: &std::path::Path) {
    for m in crate::storage::mounts_below(dir).iter().rev() {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    for l in crate::storage::loops_below(dir) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&l)
            .output();
    }
}

/// A scratch directory whose pools go with it.
struct ScratchDir(tempfile::TempDir);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        undo_pools_below(self.0.path());
    }
}

/// The names of the links in the test's network namespace, and its firewall.
fn net_state() -> (Vec<String>, String) {
    let links = integration::sh(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    let rules = integration::sh(&["nft", "list", "ruleset"]).unwrap();
    (links, rules)
}

#[test]
fn commands_on_a_path_that_is_not_a_root_refuse_and_make_nothing() {
    let test = "commands_on_a_path_that_is_not_a_root_refuse_and_make_nothing";
    // The fixture gives this test its own network namespace (with its own
    // root's network in it already: a second one would show).
    let Some(_h) = TestHost::bare(test) else {
        return;
    };
    let scratch = ScratchDir(
        tempfile::Builder::new()
            .prefix("vectl-test-noroot-")
            .tempdir()
            .unwrap(),
    );
    let missing = scratch.0.path().join("typo");
    let empty = scratch.0.path().join("empty");
    fs::create_dir(&empty).unwrap();
    // Every command that only reads, then those that change an existing root:
    // only `init`, `create` and `template import` make a root.
    let read_only: &[&[&str]] = &[
        &["list"],
        &["--json", "list"],
        &["show", "web1"],
        &["stats"],
        &["stats", "web1"],
        &["host", "info"],
        &["template", "list"],
        &["template", "show", "bb"],
        &["template", "log", "bb"],
        &["template", "usage"],
        &["net", "list"],
        &["net", "show", "default"],
        &["pool", "info"],
        &["pool", "check"],
        &["history", "web1"],
        &["snapshot", "list", "web1"],
        &["upgrade", "web1", "--template", "bb@2", "--check"],
    ];
    let changing: &[&[&str]] = &[
        &["start", "web1"],
        &["stop", "web1"],
        &["destroy", "web1"],
        &["set", "web1", "--ram", "1G"],
        &["host", "set", "--reserve-cpu", "10%"],
        &["net", "create", "n1", "--mode", "nat"],
        &["net", "rm", "default"],
        &["pool", "grow", "--size", "2G"],
        &["pool", "check", "--repair"],
        &["template", "rm", "bb"],
        &["template", "gc"],
        &["snapshot", "create", "web1"],
        &["exec", "web1", "--", "true"],
    ];
    let net_before = net_state();
    let mut wrong = Vec::new();
    for root in [&missing, &empty] {
        for args in read_only.iter().chain(changing) {
            let mut c = bare_vectl();
            c.arg("--root").arg(root).args(*args).stdin(Stdio::null());
            let r = run_limited(c, std::time::Duration::from_secs(60));
            let want = format!(
                "vectl: {}: not a vectl root (run `vectl init`",
                root.display()
            );
            // With --json the line is a JSON object whose `error` is that text.
            let line = if args.contains(&"--json") {
                serde_json::from_str::<serde_json::Value>(&r.stderr)
                    .ok()
                    .filter(|v| v["usage"] == false)
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_default()
            } else {
                r.stderr.clone()
            };
            if r.code != 1 || r.stderr.lines().count() != 1 || !line.starts_with(&want) {
                wrong.push(format!(
                    "--root {} {args:?}: exit {}, stderr {:?}",
                    root.display(),
                    r.code,
                    r.stderr.chars().take(300).collect::<String>()
                ));
            }
            let made: Vec<String> = if root == &missing {
                if missing.exists() {
                    vec!["the directory".into()]
                } else {
                    vec![]
                }
            } else {
                fs::read_dir(&empty)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            };
            let loops = crate::storage::loops_below(scratch.0.path());
            if !made.is_empty() || !loops.is_empty() {
                wrong.push(format!(
                    "--root {} {args:?} made {made:?}, loop devices {loops:?}",
                    root.display()
                ));
                // The next case starts from nothing again.
                undo_pools_below(scratch.0.path());
                let _ = fs::remove_dir_all(&missing);
                let _ = fs::remove_dir_all(&empty);
                fs::create_dir(&empty).unwrap();
            }
        }
    }
    let net_after = net_state();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        net_before.0, net_after.0,
        "links appeared in the test's namespace"
    );
    assert_eq!(net_before.1, net_after.1, "the firewall changed");
}
