//! VEs in user namespaces of their own: id ranges that never overlap and are
//! reused, files that stay unshifted on disk (idmapped mounts), what VE root
//! may mount and what stays out of its reach, and moving a privileged VE into
//! a user namespace and back. Each refusal has a positive control: the same
//! action works on the host or in the VE where that is safe.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::common::*;

/// The first line of a VE process's uid_map, as its three numbers.
fn uid_map(h: &TestHost, ve: &str) -> (u64, u64, u64) {
    let text = fs::read_to_string(format!("/proc/{}/uid_map", h.init_pid(ve))).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

fn range_of(h: &TestHost, ve: &str) -> Option<(u64, u64)> {
    let j = h.json(&["show", ve]);
    j["userns"]
        .as_object()
        .map(|r| (r["base"].as_u64().unwrap(), r["count"].as_u64().unwrap()))
}

#[track_caller]
fn sh(h: &TestHost, ve: &str, script: &str) -> String {
    let r = h.exec(ve, &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{script}: {r:?}");
    r.stdout
}

/// Whether the host's /sys/fs/cgroup is cgroup v2.
fn cgroup_v2() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// A legacy cgroup-v1 host: no cgroup2 mounted at all (the v1 VM suite; this
/// development host is hybrid, with an empty cgroup2 beside the v1 hierarchies).
fn cgroup_legacy() -> bool {
    !fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup2 "))
}

fn private_dir(h: &TestHost, ve: &str) -> PathBuf {
    PathBuf::from(h.json(&["show", ve])["private_dir"].as_str().unwrap())
}

#[test]
fn every_ve_gets_a_range_of_host_ids_no_other_has_and_ranges_are_reused() {
    let Some(h) = TestHost::new("every_ve_gets_a_range_of_host_ids_no_other_has") else {
        return;
    };
    h.start_ve("ua", &[]);
    h.start_ve("ub", &[]);
    h.start_ve("up", &["--privileged"]);
    let (a, b) = (uid_map(&h, "ua"), uid_map(&h, "ub"));
    assert_eq!(a.0, 0);
    assert_eq!(a.2, 65536);
    assert_eq!(b.2, 65536);
    assert!(a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1, "{a:?} {b:?}");
    assert!(
        a.1 >= 65536,
        "a VE's ids start above the host's users: {a:?}"
    );
    // The config says the same as the kernel, and list/show say which is which.
    assert_eq!(range_of(&h, "ua"), Some((a.1, a.2)));
    assert_eq!(range_of(&h, "up"), None);
    assert_eq!(h.json(&["show", "up"])["privileged"], true);
    assert_eq!(h.json(&["show", "ua"])["privileged"], false);
    assert_eq!(uid_map(&h, "up"), (0, 0, 4_294_967_295));
    let list = h.ok(&["list"]);
    let row = |ve: &str| {
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(ve))
            .unwrap()
            .to_string()
    };
    assert!(row("ua").contains("private"), "{list}");
    assert!(row("up").contains(" host "), "{list}");
    // Root in the VE is uid 0 there and the range's base on the host.
    assert_eq!(sh(&h, "ua", "id -u").trim(), "0");
    let init = fs::metadata(format!("/proc/{}", h.init_pid("ua"))).unwrap();
    assert_eq!(u64::from(init.uid()), a.1);

    // A destroyed VE's range is free again.
    h.ok(&["destroy", "--force", "ua"]);
    h.ok(&["create", "uc", "--template", "bb"]);
    assert_eq!(range_of(&h, "uc"), Some((a.1, a.2)));
    // And a clone gets a range of its own.
    h.ok(&["stop", "ub"]);
    h.ok(&["clone", "ub", "ud"]);
    let d = range_of(&h, "ud").unwrap();
    assert_ne!(d.0, b.1);
    assert_ne!(d.0, a.1);
}

#[test]
fn files_stay_unshifted_on_disk_and_every_ve_reads_the_templates_own_inode() {
    let Some(h) = TestHost::new("files_stay_unshifted_on_disk") else {
        return;
    };
    h.start_ve("fa", &[]);
    h.start_ve("fb", &[]);
    let (_, base, _) = uid_map(&h, "fa");
    sh(
        &h,
        "fa",
        "echo x > /root/mine && echo y > /root/his && chown 1000:1001 /root/his && \
         echo z >> /etc/passwd",
    );
    // On disk: the ids of a plain system, not the host ids.
    let upper = private_dir(&h, "fa").join("upper");
    let mine = fs::symlink_metadata(upper.join("root/mine")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (0, 0));
    let his = fs::symlink_metadata(upper.join("root/his")).unwrap();
    assert_eq!((his.uid(), his.gid()), (1000, 1001));
    // The copied-up file too; the template's stays as it was.
    let copied = fs::symlink_metadata(upper.join("etc/passwd")).unwrap();
    assert_eq!(copied.uid(), 0);
    let tdir = PathBuf::from(h.json(&["show", "fa"])["template_dir"].as_str().unwrap());
    let tpl = fs::symlink_metadata(tdir.join("etc/passwd")).unwrap();
    assert_eq!(tpl.uid(), 0);
    assert!(
        !fs::read_to_string(tdir.join("etc/passwd"))
            .unwrap()
            .contains('z')
    );
    // The host sees the VE's files through the VE's mapping.
    let seen = fs::metadata(format!("/proc/{}/root/root/his", h.init_pid("fa"))).unwrap();
    assert_eq!(u64::from(seen.uid()), base + 1000);
    // Inside, names and ids are the VE's own.
    assert_eq!(sh(&h, "fa", "stat -c %u:%g /root/his").trim(), "1000:1001");
    assert_eq!(sh(&h, "fa", "stat -c %u /bin/busybox").trim(), "0");
    // Both VEs read the template's one inode (one copy in the page cache).
    let ino = |ve: &str| sh(&h, ve, "stat -c %i /bin/busybox").trim().to_string();
    let on_disk = fs::metadata(tdir.join("bin/busybox")).unwrap().ino();
    assert_eq!(ino("fa"), on_disk.to_string());
    assert_eq!(ino("fb"), on_disk.to_string());
    // And what one VE writes, the other never sees.
    assert!(h.exec("fb", &["cat", "/root/mine"]).code != 0);
}

#[test]
fn ve_root_mounts_what_a_container_may_and_nothing_that_reaches_the_host() {
    let Some(h) = TestHost::new("ve_root_mounts_what_a_container_may") else {
        return;
    };
    h.start_ve("mt", &[]);
    // What systemd and containers need: tmpfs, proc, sysfs (read-only, as the
    // VE's /sys is: the kernel allows no less), bind mounts, devpts, mqueue,
    // overlay.
    let out = sh(
        &h,
        "mt",
        "mkdir -p /m/t /m/p /m/s /m/b /m/d /m/q /m/ov && \
         mount -t tmpfs t /m/t && echo tmpfs-ok && \
         mount -t proc p /m/p && echo proc-ok && \
         mount -t sysfs -o ro s /m/s && echo sysfs-ok && \
         mount --bind /etc /m/b && echo bind-ok && \
         mount -t devpts -o newinstance d /m/d && echo devpts-ok && \
         mount -t mqueue q /m/q && echo mqueue-ok && \
         mkdir -p /m/t/u /m/t/w && \
         mount -t overlay o -o lowerdir=/etc,upperdir=/m/t/u,workdir=/m/t/w /m/ov && \
         echo overlay-ok",
    );
    for what in [
        "tmpfs", "proc", "sysfs", "bind", "devpts", "mqueue", "overlay",
    ] {
        assert!(out.contains(&format!("{what}-ok")), "{what}: {out}");
    }

    // A fresh proc is still no way to the host's kernel knobs: the write is
    // refused by the kernel (positive control: the host may write the same
    // value back).
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    fs::write("/proc/sys/kernel/core_pattern", &pattern).unwrap();
    let r = h.exec(
        "mt",
        &[
            "sh",
            "-c",
            "echo '|/bin/sh -c reboot' > /m/p/sys/kernel/core_pattern",
        ],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        pattern
    );
    for knob in ["vm/drop_caches", "vm/overcommit_memory", "kernel/modprobe"] {
        let path = format!("/m/p/sys/{knob}");
        let r = h.exec("mt", &["sh", "-c", &format!("cat {path} > {path}")]);
        assert_ne!(r.code, 0, "{knob}: {r:?}");
    }
    // What is the VE's own stays its to change: its hostname (UTS namespace).
    assert_eq!(
        sh(&h, "mt", "hostname renamed && hostname").trim(),
        "renamed"
    );
    // A fresh sysfs: the host's attributes cannot be opened for writing
    // (positive control: the host can).
    let attr = "kernel/mm/transparent_hugepage/enabled";
    if std::path::Path::new("/sys").join(attr).exists() {
        fs::OpenOptions::new()
            .write(true)
            .open(std::path::Path::new("/sys").join(attr))
            .unwrap();
        let r = h.exec("mt", &["sh", "-c", &format!(": > /m/s/{attr}")]);
        assert_ne!(r.code, 0, "{r:?}");
    }

    // No block or character device of the host can be made, and no disk
    // mounted (positive control: mknod works on the host).
    let probe_dev = h.root().join("probe-null");
    nix::sys::stat::mknod(
        &probe_dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::remove_file(&probe_dev).unwrap();
    for node in [
        "mknod /m/t/sda b 8 0",
        "mknod /m/t/mem c 1 1",
        "mknod /m/t/kmsg c 1 11",
    ] {
        let r = h.exec("mt", &["sh", "-c", node]);
        assert_ne!(r.code, 0, "{node}: {r:?}");
    }
    let root_dev = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_string))
        .unwrap();
    let r = h.exec(
        "mt",
        &[
            "sh",
            "-c",
            &format!("mount {root_dev} /m/t 2>&1 || mount -t ext4 {root_dev} /m/t 2>&1"),
        ],
    );
    assert_ne!(r.code, 0, "mounting the host's {root_dev}: {r:?}");
    let r = h.exec(
        "mt",
        &["sh", "-c", "mount -t ext4 -o loop /bin/busybox /m/t"],
    );
    assert_ne!(r.code, 0, "{r:?}");

    // A cgroup hierarchy: on v1 no hierarchy may be made and no release agent
    // written; on v2 the VE sees only its own cgroup, whose limits stay the
    // host's.
    if cgroup_v2() {
        let out = sh(
            &h,
            "mt",
            "mkdir -p /m/cg && mount -t cgroup2 none /m/cg && cat /proc/self/cgroup && \
             (echo 1 > /m/cg/memory.max && echo WROTE || echo refused)",
        );
        assert!(out.contains("0::/\n"), "{out}");
        assert!(out.contains("refused"), "{out}");
    } else {
        // Positive control: the host may make that hierarchy and set its
        // release agent (in a mount namespace of its own; the empty hierarchy
        // goes with its last mount).
        let dir = h.root().join("cg-control");
        fs::create_dir(&dir).unwrap();
        let d = dir.display();
        let st = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t cgroup -o none,name=vectlescape none {d} && \
                 echo /bin/true > {d}/release_agent && umount {d}"
            ))
            .status()
            .unwrap();
        assert!(st.success(), "the host's own v1 hierarchy: {st:?}");
        let r = h.exec(
            "mt",
            &[
                "sh",
                "-c",
                "mkdir -p /m/cg && mount -t cgroup -o none,name=vectlescape none /m/cg",
            ],
        );
        assert_ne!(r.code, 0, "a new v1 hierarchy: {r:?}");
        let r = h.exec(
            "mt",
            &[
                "sh",
                "-c",
                "mount -t cgroup -o memory none /m/cg && echo /x > /m/cg/release_agent",
            ],
        );
        assert_ne!(r.code, 0, "a v1 release agent: {r:?}");
    }
    // None of it is seen on the host.
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains("/m/t"), "{host_mounts}");
}

#[test]
fn a_privileged_ve_moves_into_a_user_namespace_and_back_with_its_files() {
    let Some(h) = TestHost::new("a_privileged_ve_moves_into_a_user_namespace") else {
        return;
    };
    h.start_ve("mv", &["--privileged"]);
    assert!(!h.in_own_userns("mv"));
    sh(
        &h,
        "mv",
        "mkdir -p /srv/app && echo data > /srv/app/f && chown -R 33:33 /srv/app && \
         rm /etc/os-release",
    );
    // Only while stopped.
    let e = h.fails(&["set", "mv", "--userns", "private"]);
    assert!(e.contains("VE mv") && e.contains("stopped"), "{e}");
    h.ok(&["stop", "mv"]);
    let out = h.ok(&["set", "mv", "--userns", "private"]);
    assert!(out.contains("own user namespace"), "{out}");
    h.ok(&["start", "mv"]);
    assert!(h.in_own_userns("mv"));
    assert_eq!(sh(&h, "mv", "cat /srv/app/f").trim(), "data");
    assert_eq!(sh(&h, "mv", "stat -c %u:%g /srv/app/f").trim(), "33:33");
    // A whiteout made while privileged still hides the template's file.
    assert_ne!(h.exec("mv", &["test", "-e", "/etc/os-release"]).code, 0);
    sh(&h, "mv", "echo more >> /srv/app/f");
    h.ok(&["stop", "mv"]);
    h.ok(&["set", "mv", "--userns", "host"]);
    h.ok(&["start", "mv"]);
    assert!(!h.in_own_userns("mv"));
    assert_eq!(sh(&h, "mv", "cat /srv/app/f"), "data\nmore\n");
    h.ok(&["stop", "mv"]);

    // The check walks the VE's files without following them: a symlink to a
    // host file of such an id is the VE's symlink, owned by its root.
    let upper = private_dir(&h, "mv").join("upper");
    let decoy = h.root().join("decoy-owned-by-70000");
    fs::write(&decoy, b"host").unwrap();
    std::os::unix::fs::lchown(&decoy, Some(70000), Some(70000)).unwrap();
    std::os::unix::fs::symlink(&decoy, upper.join("srv/app/link")).unwrap();
    h.ok(&["set", "mv", "--userns", "private"]);
    h.ok(&["set", "mv", "--userns", "host"]);
    // A file owned by an id the range cannot map refuses the move, naming it.
    fs::write(upper.join("srv/app/big"), b"").unwrap();
    std::os::unix::fs::lchown(upper.join("srv/app/big"), Some(70000), None).unwrap();
    let e = h.fails(&["set", "mv", "--userns", "private"]);
    assert!(e.contains("srv/app/big") && e.contains("70000"), "{e}");
    assert_eq!(range_of(&h, "mv"), None);
}

#[test]
fn exec_joins_the_ves_user_namespace_as_its_root_with_no_host_groups() {
    let Some(h) = TestHost::new("exec_joins_the_ves_user_namespace") else {
        return;
    };
    h.start_ve("ex", &[]);
    let init = h.init_pid("ex");
    let out = sh(
        &h,
        "ex",
        "id; cat /proc/self/uid_map; readlink /proc/self/ns/user; grep Groups /proc/self/status",
    );
    assert!(out.contains("uid=0(root) gid=0(root)"), "{out}");
    let init_ns = fs::read_link(format!("/proc/{init}/ns/user")).unwrap();
    assert!(out.contains(init_ns.to_str().unwrap()), "{out}");
    assert!(out.lines().any(|l| l.trim() == "Groups:"), "{out}");
}

#[test]
fn the_ves_cgroup_is_delegated_and_its_limits_stay_out_of_its_reach() {
    let Some(h) = TestHost::new("the_ves_cgroup_is_its_roots_to_manage") else {
        return;
    };
    h.start_ve("cg", &[]);
    let limits_dir = h.cgroup_dir("memory", "cg");
    // Delegated, as systemd needs: its root makes cgroups and moves its
    // processes between them. On v2 that is the VE's own cgroup; on a v1
    // (hybrid) host its own cgroup in the v2 hierarchy, which has no
    // controllers, and in the named systemd hierarchy; on a legacy v1 host
    // (no cgroup2 mounted) the named systemd hierarchy alone.
    let script = "mount -t cgroup2 none /sys/fs/cgroup && mkdir /sys/fs/cgroup/svc && \
                  echo $$ > /sys/fs/cgroup/svc/cgroup.procs && cat /proc/self/cgroup";
    let tracking = if cgroup_v2() {
        vec![limits_dir.clone()]
    } else if cgroup_legacy() {
        vec![h.cgroup_dir("systemd", "cg")]
    } else {
        vec![h.cgroup_dir("unified", "cg"), h.cgroup_dir("systemd", "cg")]
    };
    if cgroup_legacy() {
        // The v2 hierarchy the VE may mount is the host's root one, which
        // nobody uses here: not its to write.
        let r = h.exec("cg", &["sh", "-c", script]);
        assert!(
            r.code != 0 && r.stderr.contains("ermission denied"),
            "{r:?}"
        );
    } else {
        let out = sh(&h, "cg", script);
        assert!(out.contains("0::/svc"), "{out}");
        assert!(
            tracking[0].join("ve/svc").is_dir(),
            "{}",
            tracking[0].display()
        );
    }
    if !cgroup_v2() {
        let named = tracking.last().unwrap();
        let script = "mkdir -p /m/sd && mount -t cgroup -o none,name=systemd none /m/sd && \
                      mkdir /m/sd/svc && echo $$ > /m/sd/svc/cgroup.procs && cat /proc/self/cgroup";
        let out = sh(&h, "cg", script);
        assert!(out.contains(":name=systemd:/svc"), "{out}");
        assert!(named.join("ve/svc").is_dir(), "{}", named.display());
    }
    // The limits stay the host's: one level up, out of the VE's view, owned by
    // the host's root, and the VE cannot raise its own tree's bounds.
    let knob = if cgroup_v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(fs::metadata(limits_dir.join(knob)).unwrap().uid(), 0);
    let r = h.exec(
        "cg",
        &[
            "sh",
            "-c",
            "echo 1 > /sys/fs/cgroup/cgroup.max.depth || \
             echo 1 > /sys/fs/cgroup/cgroup.max.descendants",
        ],
    );
    assert_ne!(r.code, 0, "{r:?}");
    if !cgroup_v2() {
        // The controllers' hierarchies are not delegated: the VE may mount its
        // memory cgroup but neither change its limit nor make cgroups in it.
        let r = h.exec(
            "cg",
            &[
                "sh",
                "-c",
                "mkdir -p /m/mem && mount -t cgroup -o memory none /m/mem && \
                 { echo 1 > /m/mem/memory.limit_in_bytes || mkdir /m/mem/x; }",
            ],
        );
        assert_ne!(r.code, 0, "{r:?}");
        assert!(
            r.stderr.contains("denied") || r.stderr.contains("ermission"),
            "{r:?}"
        );
        // Positive control: the host's root can make a cgroup there.
        let x = limits_dir.join("x");
        fs::create_dir(&x).unwrap();
        fs::remove_dir(&x).unwrap();
    }
    h.ok(&["stop", "--fast", "cg"]);
    // A privileged VE's is not handed over (its root cannot mount one).
    h.start_ve("cp", &["--privileged"]);
    for dir in tracking.iter().map(|d| d.parent().unwrap().join("cp/ve")) {
        assert_eq!(fs::metadata(&dir).unwrap().uid(), 0, "{}", dir.display());
    }
}

/// systemd in a VE enables controllers in its delegated cgroup; a cgroup with
/// enabled controllers holds no processes on v2, so `vectl exec` must place
/// its commands in a leaf.
#[test]
fn exec_works_after_the_ve_enables_controllers_in_its_cgroup() {
    let Some(h) = TestHost::new("exec_works_after_the_ve_enables_controllers") else {
        return;
    };
    h.start_ve("ctl", &[]);
    // What systemd does at boot: its processes (here all, this shell too)
    // into a child, controllers on for the children (v2 offers pids; a hybrid host's v2 hierarchy offers none).
    let enable = if cgroup_v2() {
        "echo +pids > /sys/fs/cgroup/cgroup.subtree_control && "
    } else {
        ""
    };
    let script = if cgroup_legacy() {
        // The same in the named systemd hierarchy, systemd's on such a host.
        "mkdir -p /m/sd && mount -t cgroup -o none,name=systemd none /m/sd && \
         mkdir /m/sd/init.scope && for p in $(cat /m/sd/cgroup.procs); do \
             echo $p > /m/sd/init.scope/cgroup.procs || true; done"
            .to_string()
    } else {
        format!(
            "mount -t cgroup2 none /sys/fs/cgroup && mkdir /sys/fs/cgroup/init.scope && \
             for p in $(cat /sys/fs/cgroup/cgroup.procs); do \
                 echo $p > /sys/fs/cgroup/init.scope/cgroup.procs || true; done && {enable}\
             cat /sys/fs/cgroup/cgroup.subtree_control"
        )
    };
    let out = sh(&h, "ctl", &script);
    if cgroup_v2() {
        assert!(out.contains("pids"), "{out}");
    }
    let r = h.exec("ctl", &["cat", "/proc/self/cgroup"]);
    assert_eq!(r.code, 0, "{r:?}");
    let own = r
        .stdout
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_default();
    if cgroup_v2() {
        assert_eq!(own, "0::/.vectl-exec", "{r:?}");
    } else if !cgroup_legacy() {
        assert_eq!(own, "0::/", "{r:?}");
    }
    // Its limits still hold for what exec started: it is below them.
    h.ok(&["stop", "--fast", "ctl"]);
    assert!(integration::procs_below(&h.cgroup_dir("memory", "ctl")).is_empty());
}
