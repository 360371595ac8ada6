//! The VE lifecycle on the real kernel: create, start, exec, stop, destroy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use crate::common::*;

#[test]
fn a_ve_runs_its_init_as_pid_1_and_serves_http() {
    let Some(h) = TestHost::new("a_ve_runs_its_init_as_pid_1_and_serves_http") else {
        return;
    };
    h.start_ve(
        "web1",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    let ps = h.exec("web1", &["ps", "-o", "pid,comm"]);
    assert_eq!(ps.code, 0, "{}", ps.stderr);
    let first = ps.stdout.lines().nth(1).unwrap();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["1", "init"],
        "{}",
        ps.stdout
    );
    // httpd comes up right after init's rcS: wait for it.
    assert_eq!(wait_http(&h, "web1"), "hello from web1");
    h.ok(&["stop", "--fast", "web1"]);
    h.ok(&["destroy", "web1"]);
    assert!(h.json(&["list"]).as_array().unwrap().is_empty());
}

#[test]
fn writes_stay_private_to_the_ve_and_survive_stop_start() {
    let Some(h) = TestHost::new("writes_stay_private_to_the_ve_and_survive_stop_start") else {
        return;
    };
    h.start_ve("mine", &[]);
    h.start_ve("theirs", &[]);
    let w = h.exec(
        "mine",
        &[
            "sh",
            "-c",
            "echo secret > /root/note && echo changed > /etc/hosts && mkdir -p /srv/data && echo x > /srv/data/f",
        ],
    );
    assert_eq!(w.code, 0, "{}", w.stderr);
    assert_eq!(h.exec("mine", &["cat", "/root/note"]).stdout, "secret\n");
    // The other VE from the same template sees none of it.
    assert_ne!(h.exec("theirs", &["test", "-e", "/root/note"]).code, 0);
    assert_ne!(h.exec("theirs", &["test", "-e", "/srv/data"]).code, 0);
    assert!(
        h.exec("theirs", &["cat", "/etc/hosts"])
            .stdout
            .contains("localhost")
    );
    // The files are in the VE's private layer.
    let upper = h.root().join("pool/ves/mine/upper");
    assert_eq!(
        fs::read_to_string(upper.join("root/note")).unwrap(),
        "secret\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("etc/hosts")).unwrap(),
        "changed\n"
    );
    assert!(upper.join("srv/data/f").is_file());
    assert!(!h.root().join("pool/ves/theirs/upper/root/note").exists());
    // Template files are shared, not copied into the private layer.
    assert!(!upper.join("bin/busybox").exists());

    // They survive a stop and a start.
    h.ok(&["stop", "--fast", "mine"]);
    assert!(upper.join("root/note").is_file());
    h.ok(&["start", "mine"]);
    assert_eq!(h.exec("mine", &["cat", "/root/note"]).stdout, "secret\n");
    // vectl puts its own lines (`# vectl`) in /etc/hosts at start; the VE's stay.
    let hosts = h.exec("mine", &["cat", "/etc/hosts"]).stdout;
    assert!(
        hosts.starts_with("changed\n") && hosts.contains("\tmine # vectl\n"),
        "{hosts}"
    );
    assert_eq!(h.exec("mine", &["cat", "/srv/data/f"]).stdout, "x\n");
}

#[test]
fn template_files_are_never_modified() {
    let Some(h) = TestHost::new("template_files_are_never_modified") else {
        return;
    };
    let tdir = h.root().join("pool/templates/bb/1");
    assert!(tdir.join("bin/busybox").is_file(), "{}", tdir.display());
    let before = snapshot(&tdir, true, &|_| false);
    assert!(before.len() > 100, "{} entries", before.len());
    h.start_ve("vandal", &[]);
    let script = "set -e
        echo new > /etc/newfile
        echo changed >> /etc/passwd
        rm /etc/os-release
        rm /bin/ls
        echo '#!/bin/sh' > /bin/newcmd
        chmod 755 /bin/newcmd
        chmod 600 /etc/hosts
        touch /etc/inittab
        mv /etc/group /etc/group.old
        rm -r /etc/init.d
        ln -sf /bin/busybox /bin/cat2";
    let r = h.exec("vandal", &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The VE sees its changes...
    assert_ne!(h.exec("vandal", &["test", "-e", "/etc/os-release"]).code, 0);
    assert_ne!(h.exec("vandal", &["test", "-e", "/bin/ls"]).code, 0);
    assert_eq!(h.exec("vandal", &["cat", "/etc/newfile"]).stdout, "new\n");
    // ...another VE on the same version does not, and the template is untouched.
    h.start_ve("bystander", &[]);
    assert_eq!(
        h.exec("bystander", &["test", "-e", "/etc/os-release"]).code,
        0
    );
    assert_eq!(
        h.exec("bystander", &["test", "-e", "/etc/init.d/rcS"]).code,
        0
    );
    h.ok(&["stop", "--fast", "vandal"]);
    h.ok(&["destroy", "vandal"]);
    let after = snapshot(&tdir, true, &|_| false);
    assert_eq!(diff(&before, &after), "", "the template version changed");
}

#[test]
fn ids_start_at_100_are_accepted_everywhere_and_are_reused() {
    let Some(h) = TestHost::new("ids_start_at_100_are_accepted_everywhere_and_are_reused") else {
        return;
    };
    for (i, name) in ["ida", "idb", "idc"].iter().enumerate() {
        let cfg = h.json(&["create", name, "--template", "bb"]);
        assert_eq!(cfg["id"], 100 + i as u64, "{cfg}");
    }
    let list = h.json(&["list"]);
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [100, 101, 102]);

    // Every command takes the id instead of the name.
    h.ok(&["start", "101"]);
    assert_eq!(status(&h, "idb"), "running");
    assert_eq!(h.json(&["show", "101"])["name"], "idb");
    assert_eq!(h.exec("101", &["hostname"]).stdout.trim(), "idb");
    let set = h.json(&["set", "101", "--pids", "77"]);
    assert_eq!(set["live"], true);
    assert_eq!(knob(&h, "pids", "idb", "pids.max"), "77");
    h.ok(&["stop", "--fast", "101"]);
    assert_eq!(status(&h, "idb"), "stopped");
    h.ok(&["restart", "--fast", "101"]);
    assert_eq!(status(&h, "idb"), "running");
    h.ok(&["destroy", "--force", "101"]);
    assert_gone(&h, "idb");
    // A freed id is unknown until reused...
    let line = h.fails(&["show", "101"]);
    assert!(line.contains("101"), "{line}");
    // ...and the next VE gets the lowest free id.
    assert_eq!(h.json(&["create", "idd", "--template", "bb"])["id"], 101);
    assert_eq!(h.json(&["create", "ide", "--template", "bb"])["id"], 103);
    h.ok(&["destroy", "100"]);
    assert_gone(&h, "ida");
    assert_eq!(h.json(&["create", "idf", "--template", "bb"])["id"], 100);
    // An explicit id.
    assert_eq!(
        h.json(&["create", "idg", "--template", "bb", "--id", "500"])["id"],
        500
    );
    assert_eq!(h.json(&["show", "500"])["name"], "idg");
}

/// The VE lock files in `ROOT/locks/` (`ve-NAME.lock`).
fn ve_lock_files(h: &TestHost) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(h.root().join("locks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ve-"))
        .collect();
    v.sort();
    v
}

/// Issue 18, defect 9: a VE's lock file goes with the VE (and with a create that
/// failed), so names that come and go leave no files in `locks/`; commands
/// waiting for the lock of a VE being destroyed take a new one, never the
/// unlinked file's.
#[test]
fn lock_files_go_with_their_ves() {
    let Some(h) = TestHost::new("lock_files_go_with_their_ves") else {
        return;
    };
    h.ok(&["create", "keep", "--template", "bb", "--net", "none"]);
    for i in 0..40 {
        let n = format!("gone{i}");
        h.ok(&["create", &n, "--template", "bb", "--net", "none"]);
        if i % 4 == 0 {
            h.ok(&["start", &n]);
            h.ok(&["destroy", "--force", &n]);
        } else {
            h.ok(&["destroy", &n]);
        }
    }
    // A create refused once it holds the lock (the id is taken).
    let r = h.run(&["create", "refused", "--template", "bb", "--id", "100"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(ve_lock_files(&h), vec!["ve-keep.lock".to_string()]);

    // Commands that wait for a VE's lock while it is destroyed.
    for i in 0..10 {
        let n = format!("raced{i}");
        h.ok(&["create", &n, "--template", "bb", "--net", "none"]);
        let destroy = spawn(&h, &["destroy", "--force", &n]);
        let others: Vec<_> = [
            &["set", &n, "--pids", "50"][..],
            &["start", &n],
            &["create", &n, "--template", "bb", "--net", "none"],
        ]
        .iter()
        .map(|a| spawn(&h, a))
        .collect();
        let d = finish(destroy);
        assert_eq!(d.code, 0, "{d:?}");
        for c in others {
            let r = finish(c);
            assert!(r.code == 0 || r.stderr.lines().count() == 1, "{r:?}");
            no_panic(&r);
        }
        // Whatever won: the VE is there (the create ran last) with its lock
        // file, or gone with it.
        let exists = listed(&h, &n).is_some();
        let lock = h.root().join("locks").join(format!("ve-{n}.lock"));
        if exists {
            h.ok(&["destroy", "--force", &n]);
        } else {
            assert!(!lock.exists(), "{n} is gone, its lock file is not");
        }
        assert!(!lock.exists(), "{n} destroyed, its lock file is left");
    }
    assert_eq!(ve_lock_files(&h), vec!["ve-keep.lock".to_string()]);
}

/// Issue 18, defect 10: two VEs whose configs have one id (one was edited) are
/// refused by `start`, naming both; `list` and `show` warn about it.
#[test]
fn a_duplicate_id_from_an_edited_config_is_refused_at_start() {
    let Some(h) = TestHost::new("a_duplicate_id_from_an_edited_config_is_refused_at_start") else {
        return;
    };
    h.ok(&["create", "first", "--template", "bb", "--net", "none"]);
    h.ok(&["create", "second", "--template", "bb", "--net", "none"]);
    let id = |n: &str| listed(&h, n).unwrap()["id"].as_u64().unwrap();
    let (a, b) = (id("first"), id("second"));
    assert_ne!(a, b);
    let path = h.root().join("ves/second.toml");
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replace(&format!("id = {b}\n"), &format!("id = {a}\n"));
    assert_ne!(text, edited, "no `id = {b}` line in {text}");
    fs::write(&path, &edited).unwrap();

    // The edited VE is refused; the one the id is claimed for (its link
    // `ids/ID`) is not: the two never run at once.
    let e = h.fails(&["start", "second"]);
    assert!(
        e.contains("second") && e.contains("first") && e.contains(&a.to_string()),
        "{e}"
    );
    assert_eq!(status(&h, "second"), "stopped");
    assert!(leftover_procs(&h, "second").is_empty());
    h.ok(&["start", "first"]);
    assert_eq!(h.fails(&["start", "second"]), e);
    h.ok(&["stop", "--fast", "first"]);
    // list and show still work, and say it.
    for args in [
        &["list"][..],
        &["show", "second"],
        &["--json", "show", "second"],
    ] {
        let r = h.run(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(
            r.stderr.lines().count() == 1
                && r.stderr.contains("first")
                && r.stderr.contains("second")
                && r.stderr.contains(&a.to_string()),
            "{args:?}: {r:?}"
        );
    }
    // A new VE gets neither id.
    h.ok(&["create", "third", "--template", "bb", "--net", "none"]);
    assert!(![a, b].contains(&id("third")), "{}", id("third"));
    // Put right, both start.
    fs::write(&path, &text).unwrap();
    h.ok(&["start", "first"]);
    h.ok(&["start", "second"]);
}

#[test]
fn destroy_with_a_corrupt_network_config_changes_nothing() {
    let Some(h) = TestHost::new("destroy_with_a_corrupt_network_config_changes_nothing") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "dnet",
        "--mode",
        "nat",
        "--subnet",
        "10.74.0.0/24",
    ]);
    h.ok(&["create", "still", "--template", "bb", "--net", "dnet"]);
    h.start_ve("runs", &["--net", "dnet"]);
    let net_file = h.root().join("nets/dnet.toml");
    let good = fs::read_to_string(&net_file).unwrap();
    fs::write(&net_file, "garbage = [").unwrap();
    let rules = || integration::sh(&["nft", "list", "ruleset"]).unwrap();
    let (state, ruleset) = (state_snapshot(&h), rules());
    let pid = h.init_pid("runs");
    let ips: Vec<String> = ["still", "runs"]
        .iter()
        .map(|ve| {
            listed(&h, ve).unwrap()["nics"][0]["ip"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for ip in &ips {
        assert!(ruleset.contains(ip.as_str()), "no {ip} in:\n{ruleset}");
    }
    for args in [
        &["destroy", "still"][..],
        &["destroy", "--force", "runs"][..],
    ] {
        let line = h.fails(args);
        assert!(
            line.contains(args[args.len() - 1]) && line.contains("nets/dnet.toml"),
            "{args:?}: {line}"
        );
        assert_eq!(
            diff(&state, &state_snapshot(&h)),
            "",
            "{args:?} changed the state"
        );
        assert_eq!(ruleset, rules(), "{args:?} changed the firewall");
    }
    assert_eq!(h.init_pid("runs"), pid);
    assert_eq!(h.exec("runs", &["true"]).code, 0);
    assert_eq!(status(&h, "still"), "stopped");
    // With the file repaired, destroy does it all.
    fs::write(&net_file, good).unwrap();
    h.ok(&["destroy", "still"]);
    assert_gone(&h, "still");
    h.ok(&["destroy", "--force", "runs"]);
    assert_gone(&h, "runs");
    let left = rules();
    for ip in &ips {
        assert!(
            !left.contains(ip.as_str()),
            "firewall elements of the destroyed VEs left ({ip}):\n{left}"
        );
    }
}

/// Fills the file system holding `dir` with one file, to the last byte.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    path
}

#[test]
fn a_create_that_fails_for_want_of_space_leaves_nothing() {
    let test = "a_create_that_fails_for_want_of_space_leaves_nothing";
    let Some(t) = TmpfsRoot::new(test) else {
        return;
    };
    let rootfs = integration::busybox_rootfs().unwrap();
    let r = t.run(&[
        "template",
        "import",
        "bb",
        "--from-dir",
        rootfs.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = t.run(&["create", "first", "--template", "bb"]);
    assert_eq!(r.code, 0, "{r:?}");
    let view = t.view();
    let filler = fill(view.parent().unwrap());
    let before = snapshot(&view, false, &|_| false);
    let r = t.run(&["create", "second", "--template", "bb"]);
    no_panic(&r);
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{r:?}");
    assert!(
        lines[0].contains("second") && lines[0].contains("ves/") && lines[0].contains("space"),
        "the message does not name the VE, the file and the reason: {}",
        lines[0]
    );
    // No volume, id link, .tmp file or lock file: nothing at all.
    assert_eq!(diff(&before, &snapshot(&view, false, &|_| false)), "");
    // With space again, the same create works and takes the next id.
    fs::remove_file(filler).unwrap();
    let r = t.run(&["--json", "create", "second", "--template", "bb"]);
    assert_eq!(r.code, 0, "{r:?}");
    let cfg: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(cfg["id"], 101, "{cfg}");
    for ve in ["first", "second"] {
        let r = t.run(&["destroy", ve]);
        assert_eq!(r.code, 0, "{r:?}");
    }
}

#[test]
fn many_ves_are_created_in_one_command_and_again_changes_nothing() {
    let Some(h) = TestHost::new("many_ves_are_created_in_one_command") else {
        return;
    };
    let names = ["w001", "w002", "w003"];
    let mut args = vec!["create", "--template", "bb", "--ram", "64M", "--start"];
    args.extend(names);
    let out = h.ok(&args);
    for ve in names {
        assert!(out.contains(&format!("created VE {ve} ")), "{out}");
        assert!(out.contains(&format!("started VE {ve} ")), "{out}");
        assert_eq!(wait_http(&h, ve), format!("hello from {ve}"));
    }
    // Each got its own id and address.
    let listed = h.json(&["list"]);
    let ids: std::collections::BTreeSet<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    // Again, with one more name: without --if-missing the existing ones are
    // errors (the new one is made all the same); with it, nothing but the new
    // one changes.
    let r = h.run(&["create", "--template", "bb", "w001", "w004"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("w001"), "{r:?}");
    assert!(r.stdout.contains("created VE w004 "), "{r:?}");
    let pids: Vec<i32> = names.iter().map(|ve| h.init_pid(ve)).collect();
    let r = h.run(&[
        "create",
        "--template",
        "bb",
        "--if-missing",
        "--start",
        "w001",
        "w002",
        "w003",
        "w004",
        "w005",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("VE w001 exists"), "{r:?}");
    assert_eq!(r.stdout.matches("created VE").count(), 1, "{r:?}");
    // The running ones were left running; the stopped w004 and new w005 started.
    assert_eq!(r.stdout.matches("started VE").count(), 2, "{r:?}");
    let again: Vec<i32> = names.iter().map(|ve| h.init_pid(ve)).collect();
    assert_eq!(pids, again);
    // Options that name one VE are refused for several, before anything is made.
    for extra in [
        &["--id", "300"][..],
        &["--hostname", "x"],
        &["--ip", "10.200.0.50"],
        &["--publish", "8080:80"],
    ] {
        let mut args = vec!["create", "--template", "bb"];
        args.extend_from_slice(extra);
        args.extend(["w006", "w007"]);
        let r = h.run(&args);
        assert_eq!(r.code, 2, "{extra:?}: {r:?}");
        assert!(r.stderr.contains(extra[0]), "{r:?}");
    }
    assert_eq!(h.json(&["list"]).as_array().unwrap().len(), 5);

    // list: by state, chosen columns, CSV.
    h.ok(&["stop", "--fast", "w005"]);
    let out = h.ok(&["list", "--status", "stopped", "-o", "name,status"]);
    assert_eq!(out, "NAME  STATUS\nw005  stopped\n");
    let out = h.ok(&[
        "list",
        "--status",
        "running",
        "-o",
        "name,ram,address",
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    // RFC 4180: CRLF line ends.
    assert!(out.starts_with("NAME,RAM,ADDRESS\r\n"), "{out:?}");
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[1].starts_with("w001,64M,10."), "{out}");
    let r = h.run(&["list", "-o", "name,colour"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("colour"), "{r:?}");
    let j = h.json(&["list", "--status", "stopped"]);
    assert_eq!(j.as_array().unwrap().len(), 1);

    // resize: `set` of the resources, live.
    let out = h.ok(&["resize", "w001", "--ram", "128M"]);
    assert!(out.contains("live"), "{out}");
    assert_eq!(h.json(&["show", "w001"])["ram_limit_bytes"], 128 << 20);
    assert_eq!(h.run(&["resize", "w001"]).code, 2);
    assert_eq!(h.run(&["resize", "w001", "--publish", "8080:80"]).code, 2);
    h.ok(&["stop", "--fast", "--all"]);
}
