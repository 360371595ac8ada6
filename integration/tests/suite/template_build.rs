//! `template update NAME --run CMD`: a throwaway build VE on the latest version;
//! what the command changed (deletions included) becomes the next version, and
//! the published versions and the VEs on them never change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use crate::common::*;
use integration::TestHost;

const BUILD: &str = "set -e
echo patched > /etc/motd
rm /etc/app.conf
rm -r /etc/olddir
mkdir -p /opt/tool && echo 1.2 > /opt/tool/VERSION
printf '#!/bin/sh\necho from the build\n' > /usr/bin/hello && chmod 755 /usr/bin/hello
echo build output; echo build errors >&2";

/// bb@1 from the busybox tree plus /etc/app.conf and /etc/olddir/x.
fn host(test: &str, btrfs: bool) -> Option<TestHost> {
    let h = if btrfs {
        TestHost::with_btrfs(test, "1G")?
    } else {
        TestHost::new(test)?
    };
    publish_busybox(&h, "bb", |tree| {
        fs::write(tree.join("etc/app.conf"), "v1\n").unwrap();
        fs::write(tree.join("etc/hostname"), "localhost\n").unwrap();
        fs::create_dir(tree.join("etc/olddir")).unwrap();
        fs::write(tree.join("etc/olddir/x"), "x\n").unwrap();
    });
    h.ok(&["template", "rm", "bb@1"]);
    Some(h)
}

fn ve_names(h: &TestHost) -> Vec<String> {
    h.json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn build_publishes_the_changes(test: &str, btrfs: bool) {
    let Some(h) = host(test, btrfs) else {
        return;
    };
    let v2 = h.root().join("pool/templates/bb/2");
    let before = snapshot(&v2, true, &|_| false);
    // A VE pinned to bb@2, running through the build.
    h.ok(&["create", "old", "--template", "bb@2"]);
    h.ok(&["start", "old"]);

    let r = h.run(&["template", "update", "bb", "--run", BUILD, "-m", "patch 1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The command's output reaches the operator.
    assert!(r.stdout.contains("build output"), "{}", r.stdout);
    assert!(r.stderr.contains("build errors"), "{}", r.stderr);
    assert!(r.stdout.contains("bb@3"), "{}", r.stdout);

    // bb@2 is exactly as it was; bb@3 has the changes, deletions included.
    assert_eq!(snapshot(&v2, true, &|_| false), before, "bb@2 changed");
    let v3 = h.root().join("pool/templates/bb/3");
    assert_eq!(
        fs::read_to_string(v3.join("etc/motd")).unwrap(),
        "patched\n"
    );
    assert_eq!(
        fs::read_to_string(v3.join("opt/tool/VERSION")).unwrap(),
        "1.2\n"
    );
    assert!(!v3.join("etc/app.conf").exists());
    assert!(!v3.join("etc/olddir").exists());
    assert!(v3.join("bin/busybox").is_file());
    // Nothing of the build VE's own (its name in /etc/hostname, vectl's
    // /etc/hosts lines, resolv.conf).
    assert_eq!(
        fs::read_to_string(v3.join("etc/hostname")).unwrap(),
        "localhost\n"
    );
    let hosts = fs::read_to_string(v3.join("etc/hosts")).unwrap_or_default();
    assert!(!hosts.contains("# vectl"), "{hosts}");
    assert_eq!(
        fs::read(v3.join("etc/resolv.conf")).ok(),
        fs::read(v2.join("etc/resolv.conf")).ok()
    );
    // No whiteout or overlay mark made it into the version.
    for (path, (entry, _)) in snapshot(&v3, false, &|_| false) {
        assert!(!matches!(entry, Entry::Other { .. }), "{path:?}: {entry:?}");
    }

    let show = h.json(&["template", "show", "bb@3"]);
    assert_eq!(show["message"], "patch 1", "{show}");
    assert!(
        show["source"].as_str().unwrap().starts_with("run:set -e"),
        "{show}"
    );
    assert!(
        show["source"].as_str().unwrap().ends_with("(on bb@2)"),
        "{show}"
    );

    // The build VE is gone; the running VE stays on bb@2 and sees no change.
    assert_eq!(ve_names(&h), ["old"]);
    assert_eq!(h.exec("old", &["cat", "/etc/app.conf"]).stdout, "v1\n");
    h.ok(&["stop", "old", "--fast"]);
    h.ok(&["start", "old"]);
    assert_eq!(h.exec("old", &["cat", "/etc/app.conf"]).stdout, "v1\n");
    assert_eq!(h.json(&["show", "old"])["template"], "bb@2");
    // New VEs get bb@3.
    h.ok(&["create", "new", "--template", "bb"]);
    h.ok(&["start", "new"]);
    assert_eq!(h.json(&["show", "new"])["template"], "bb@3");
    assert_eq!(h.exec("new", &["hello"]).stdout, "from the build\n");
    // Each VE's /etc/hostname has its own name.
    assert_eq!(h.exec("new", &["cat", "/etc/hostname"]).stdout, "new\n");
    assert_eq!(h.exec("old", &["cat", "/etc/hostname"]).stdout, "old\n");
    assert_ne!(h.exec("new", &["cat", "/etc/app.conf"]).code, 0);
}

#[test]
fn build_publishes_the_changes_on_a_dir_pool() {
    build_publishes_the_changes("build_publishes_the_changes_on_a_dir_pool", false);
}

#[test]
fn build_publishes_the_changes_on_btrfs() {
    build_publishes_the_changes("build_publishes_the_changes_on_btrfs", true);
}

#[test]
fn a_failed_build_publishes_nothing() {
    let Some(h) = host("a_failed_build_publishes_nothing", false) else {
        return;
    };
    let tdir = h.root().join("pool/templates/bb");
    let listing = |d: &std::path::Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing(&tdir);
    let e = h.fails(&[
        "template",
        "update",
        "bb",
        "--run",
        "echo half > /etc/motd; exit 3",
    ]);
    assert!(e.contains("exit status 3"), "{e}");
    assert!(e.contains("nothing was published"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert_eq!(listing(&tdir), before);
    assert!(ve_names(&h).is_empty());
    assert_eq!(fs::read_dir(h.root().join("builds")).unwrap().count(), 0);

    // Bad input: unknown template, empty command.
    let e = h.fails(&["template", "update", "nosuch", "--run", "true"]);
    assert!(e.contains("nosuch"), "{e}");
    let e = h.fails(&["template", "update", "bb", "--run", " "]);
    assert!(e.contains("--run needs a command"), "{e}");
    // --run is a source of its own.
    let r = h.run(&[
        "template",
        "update",
        "bb",
        "--run",
        "true",
        "--from-dir",
        "/nonexistent",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(listing(&tdir), before);
    // A tree that holds the pool itself would copy into itself forever.
    let root = h.root().to_str().unwrap().to_string();
    let e = h.fails(&["template", "update", "bb", "--from-dir", &root]);
    assert!(e.contains("holds the template store"), "{e}");
    assert_eq!(listing(&tdir), before);
}

#[test]
fn a_killed_build_is_cleaned_up_by_the_next() {
    let Some(h) = host("a_killed_build_is_cleaned_up_by_the_next", false) else {
        return;
    };
    crash_at(
        &h,
        "build-after-start",
        &["template", "update", "bb", "--run", "true"],
    );
    assert_eq!(ve_names(&h), ["build-bb"]);
    // The version it was building on cannot go while its build VE uses it.
    let e = h.fails(&["template", "rm", "bb@2"]);
    assert!(e.contains("build-bb"), "{e}");
    // A VE of the build VE's name that is not one is never touched.
    let r = h.json(&["template", "update", "bb", "--run", "echo x > /x"]);
    assert_eq!(r["version"], 3, "{r}");
    assert!(ve_names(&h).is_empty());
    h.ok(&["create", "build-bb", "--template", "bb"]);
    let e = h.fails(&["template", "update", "bb", "--run", "true"]);
    assert!(e.contains("not a build VE"), "{e}");
    assert_eq!(ve_names(&h), ["build-bb"]);
}

#[test]
fn json_output_stays_parseable() {
    let Some(h) = host("json_output_stays_parseable", false) else {
        return;
    };
    let r = h.run(&[
        "--json",
        "template",
        "update",
        "bb",
        "--run",
        "echo to-stdout",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["version"], 3, "{v}");
    assert!(r.stderr.contains("to-stdout"), "{}", r.stderr);
}
