//! What a VE sees: its own PID 1 and process tree, hostname, cgroup namespace,
//! a reduced capability bounding set, no block devices, a read-only /sys and a
//! minimal /dev.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;

use crate::common::*;

/// `ps -o pid,comm` inside the VE, as (pid, command) rows.
fn ps(h: &TestHost, ve: &str) -> Vec<(i32, String)> {
    let r = h.exec(ve, &["ps", "-o", "pid,comm"]);
    assert_eq!(r.code, 0, "ps in {ve}: {}", r.stderr);
    r.stdout
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn pid_1_is_the_init_and_a_ve_sees_only_its_own_processes() {
    let Some(h) = TestHost::new("pid_1_is_the_init_and_a_ve_sees_only_its_own_processes") else {
        return;
    };
    h.start_ve("one", &[]);
    h.start_ve("two", &[]);
    wait_http(&h, "one");
    wait_http(&h, "two");

    // Seen from the host, the VE's init is busybox init, and PID 1 in its namespace.
    let init = h.init_pid("one");
    let status = fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(nspid, [init.to_string().as_str(), "1"], "{status}");
    assert!(
        fs::read_link(format!("/proc/{init}/exe"))
            .unwrap()
            .ends_with("bin/busybox")
    );

    // A process only VE two runs.
    let bg = h.exec(
        "two",
        &["sh", "-c", "sleep 4242 </dev/null >/dev/null 2>&1 &"],
    );
    assert_eq!(bg.code, 0, "{}", bg.stderr);
    assert!(
        ps(&h, "two").iter().any(|(_, c)| c == "sleep"),
        "{:?}",
        ps(&h, "two")
    );

    let rows = ps(&h, "one");
    assert_eq!(rows[0], (1, "init".to_string()), "{rows:?}");
    let comms: BTreeSet<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        comms,
        BTreeSet::from(["init", "httpd", "ps"]),
        "VE one sees other processes: {rows:?}"
    );
    // /proc inside holds exactly those processes, all with small pids.
    let inside = h.exec("one", &["sh", "-c", "ls -d /proc/[0-9]*"]);
    let pids: Vec<i32> = inside
        .stdout
        .lines()
        .map(|l| l.trim_start_matches("/proc/").parse().unwrap())
        .collect();
    assert!(pids.len() <= 4 && pids.iter().all(|p| *p < 100), "{pids:?}");
    let host_procs = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .count();
    assert!(
        host_procs > pids.len() + 5,
        "the host has {host_procs} processes"
    );
}

#[test]
fn the_hostname_is_the_ve_name_or_the_one_given() {
    let Some(h) = TestHost::new("the_hostname_is_the_ve_name_or_the_one_given") else {
        return;
    };
    let host_before = nix::unistd::gethostname().unwrap();
    h.start_ve("named", &[]);
    h.start_ve("other", &["--hostname", "shop.example.com"]);
    assert_eq!(h.exec("named", &["hostname"]).stdout.trim(), "named");
    assert_eq!(
        h.exec("other", &["cat", "/proc/sys/kernel/hostname"])
            .stdout
            .trim(),
        "shop.example.com"
    );
    assert_eq!(
        h.exec("other", &["uname", "-n"]).stdout.trim(),
        "shop.example.com"
    );
    // The init's rcS saw the same name.
    assert_eq!(wait_http(&h, "other"), "hello from shop.example.com");
    assert_eq!(wait_http(&h, "named"), "hello from named");
    assert_eq!(h.json(&["show", "other"])["hostname"], "shop.example.com");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);
}

#[test]
fn proc_self_cgroup_shows_the_cgroup_namespace_root() {
    let Some(h) = TestHost::new("proc_self_cgroup_shows_the_cgroup_namespace_root") else {
        return;
    };
    h.start_ve("cg", &[]);
    for file in ["/proc/self/cgroup", "/proc/1/cgroup"] {
        let r = h.exec("cg", &["cat", file]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert!(!lines.is_empty());
        for l in &lines {
            assert!(
                l.ends_with(":/"),
                "{file} inside the VE shows a path outside its cgroup namespace: {l:?}"
            );
        }
    }
    // From the host, the init is in the VE's cgroup below the test's parent.
    let init = h.init_pid("cg");
    let host_view = fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(
        host_view
            .lines()
            .any(|l| l.contains(&format!("/{}/cg", h.name))),
        "{host_view}"
    );
}

const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_TIME: u32 = 25;
const CAP_CHOWN: u32 = 0;
const CAP_NET_BIND_SERVICE: u32 = 10;

fn cap_field(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn the_capability_bounding_set_lacks_host_wide_powers() {
    let Some(h) = TestHost::new("the_capability_bounding_set_lacks_host_wide_powers") else {
        return;
    };
    h.start_ve("caps", &[]);
    h.start_ve("priv", &["--privileged"]);
    // The init, an exec'd command, and the host's view of the init, in a VE
    // with its own user namespace and in a privileged one.
    let mut views = Vec::new();
    for ve in ["caps", "priv"] {
        let init = h.init_pid(ve);
        for status in [
            h.exec(ve, &["cat", "/proc/1/status"]).stdout,
            h.exec(ve, &["cat", "/proc/self/status"]).stdout,
            fs::read_to_string(format!("/proc/{init}/status")).unwrap(),
        ] {
            views.push((ve, status));
        }
    }
    for (ve, status) in &views {
        for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
            let set = cap_field(status, field);
            for (name, bit) in [
                ("CAP_SYS_MODULE", CAP_SYS_MODULE),
                ("CAP_SYS_RAWIO", CAP_SYS_RAWIO),
                ("CAP_SYS_TIME", CAP_SYS_TIME),
            ] {
                assert_eq!(set & (1 << bit), 0, "{ve}: {field} {set:016x} has {name}");
            }
            // reboot() ends a PID namespace whose user namespace is the VE's
            // own (how systemd halts in a container); never the host.
            assert_eq!(
                set & (1 << CAP_SYS_BOOT) != 0,
                *ve == "caps",
                "{ve}: {field} {set:016x} and CAP_SYS_BOOT"
            );
        }
        // Not an empty set: root in the VE keeps ordinary powers.
        let bnd = cap_field(status, "CapBnd:");
        assert_ne!(bnd & (1 << CAP_CHOWN), 0, "{bnd:016x}");
        assert_ne!(bnd & (1 << CAP_NET_BIND_SERVICE), 0, "{bnd:016x}");
    }
}

#[test]
fn block_devices_cannot_be_made_but_fifos_can() {
    let Some(h) = TestHost::new("block_devices_cannot_be_made_but_fifos_can") else {
        return;
    };
    h.start_ve("dev", &[]);
    let b = h.exec("dev", &["mknod", "/tmp/b", "b", "8", "0"]);
    assert_ne!(b.code, 0, "mknod of a block device worked");
    assert_eq!(
        h.exec("dev", &["test", "-e", "/tmp/b"]).code,
        1,
        "/tmp/b exists"
    );
    let p = h.exec("dev", &["mknod", "/tmp/p", "p"]);
    assert_eq!(p.code, 0, "mknod of a fifo failed: {}", p.stderr);
    assert_eq!(h.exec("dev", &["test", "-p", "/tmp/p"]).code, 0);
    // And it landed in the VE's private layer.
    let upper = h.root().join("pool/ves/dev/upper/tmp/p");
    assert!(
        fs::symlink_metadata(&upper).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_fifo()
        }),
        "{}",
        upper.display()
    );
}

#[test]
fn sys_is_read_only_inside() {
    let Some(h) = TestHost::new("sys_is_read_only_inside") else {
        return;
    };
    h.start_ve("sys", &[]);
    let mounts = h.exec("sys", &["cat", "/proc/mounts"]).stdout;
    let sys = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/sys"))
        .unwrap_or_else(|| panic!("no /sys mount: {mounts}"));
    let opts = sys.split_whitespace().nth(3).unwrap();
    assert!(opts.split(',').any(|o| o == "ro"), "{sys}");
    let t = h.exec("sys", &["touch", "/sys/x"]);
    assert_ne!(t.code, 0);
    assert!(t.stderr.contains("Read-only"), "{}", t.stderr);
    // It is a real sysfs (not an empty directory).
    assert_eq!(h.exec("sys", &["test", "-d", "/sys/kernel"]).code, 0);
}

#[test]
fn dev_holds_only_the_minimal_nodes() {
    let Some(h) = TestHost::new("dev_holds_only_the_minimal_nodes") else {
        return;
    };
    h.start_ve("mini", &[]);
    let r = h.exec("mini", &["ls", "-A", "/dev"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: BTreeSet<&str> = r.stdout.split_whitespace().collect();
    let want = BTreeSet::from([
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "shm",
        "mqueue", "fd", "stdin", "stdout", "stderr",
    ]);
    assert_eq!(got, want);
    // The nodes work.
    let z = h.exec(
        "mini",
        &[
            "sh",
            "-c",
            "head -c 5 /dev/zero | od -An -tx1; echo x > /dev/null && echo ok",
        ],
    );
    assert_eq!(
        z.stdout.split_whitespace().collect::<Vec<_>>(),
        ["00", "00", "00", "00", "00", "ok"]
    );
    let full = h.exec("mini", &["sh", "-c", "echo x > /dev/full"]);
    assert_ne!(full.code, 0, "writing /dev/full worked");
    let rnd = h.exec("mini", &["sh", "-c", "head -c 16 /dev/urandom | wc -c"]);
    assert_eq!(rnd.stdout.trim(), "16");
}

#[test]
fn the_ve_cannot_make_sys_or_proc_sys_writable() {
    let Some(h) = TestHost::new("the_ve_cannot_make_sys_or_proc_sys_writable") else {
        return;
    };
    h.start_ve("ro", &[]);
    // Every probe only opens files for appending (`exec 3>>`), never writes: the
    // host's kernel settings are not touched even where a probe succeeds. Each
    // probe prints a word when it got through; all must stay silent.
    let probes = [
        // The read-only mounts hold as set up.
        "(exec 3>>/proc/sys/kernel/core_pattern) 2>/dev/null && echo proc-sys-writable",
        "(exec 3>>/sys/kernel/uevent_helper) 2>/dev/null && echo sys-writable",
        // /sys cannot be remounted read-write.
        "mount -o remount,rw /sys 2>/dev/null; \
         grep ' /sys ' /proc/mounts | grep -q '[ ,]rw[ ,]' && echo sys-remounted-rw",
        // /proc/sys neither.
        "mount -o remount,rw /proc/sys 2>/dev/null; \
         (exec 3>>/proc/sys/kernel/core_pattern) 2>/dev/null && echo proc-sys-remounted-rw",
        // A fresh procfs must not expose the host's sysctls for writing (the
        // kernel runs core_pattern's program as host root).
        "mkdir -p /tmp/p && mount -t proc proc /tmp/p 2>/dev/null && \
         (exec 3>>/tmp/p/sys/kernel/core_pattern) 2>/dev/null && echo fresh-proc-sys-writable; \
         umount /tmp/p 2>/dev/null",
        // Nor a fresh, writable sysfs.
        "mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s 2>/dev/null && \
         grep ' /tmp/s ' /proc/mounts | grep -q '[ ,]rw[ ,]' && echo fresh-sysfs-rw; \
         umount /tmp/s 2>/dev/null",
    ];
    let mut got = Vec::new();
    for p in probes {
        let out = h.exec("ro", &["sh", "-c", &format!("{p}; true")]).stdout;
        got.extend(out.split_whitespace().map(str::to_string));
    }
    assert!(got.is_empty(), "VE root got through: {got:?}");
}

#[test]
fn device_nodes_planted_in_a_ves_files_cannot_be_opened() {
    let test = "device_nodes_planted_in_a_ves_files_cannot_be_opened";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.start_ve("dev", &[]);
    // The host plants nodes in the VE's private layer, past the seccomp mknod
    // filter: only the devices controller (v1) or the BPF device program (v2) on
    // the VE's cgroup stands between the VE and them.
    let upper = h.root().join("pool/ves/dev/upper/root");
    std::fs::create_dir_all(&upper).unwrap();
    let mk = |name: &str, kind: nix::sys::stat::SFlag, major: u64, minor: u64| {
        nix::sys::stat::mknod(
            &upper.join(name),
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap();
    };
    use nix::sys::stat::SFlag;
    mk("null", SFlag::S_IFCHR, 1, 3);
    mk("mem", SFlag::S_IFCHR, 1, 1);
    mk("console", SFlag::S_IFCHR, 5, 1);
    mk("loop0", SFlag::S_IFBLK, 7, 0);
    let r = h.exec("dev", &["sh", "-c", "echo x > /root/null && echo null-ok"]);
    assert_eq!(r.stdout.trim(), "null-ok", "{r:?}");
    for node in ["mem", "console", "loop0"] {
        let r = h.exec(
            "dev",
            &["sh", "-c", &format!("head -c 1 /root/{node} >/dev/null")],
        );
        assert_ne!(r.code, 0, "{node} opened inside the VE: {r:?}");
        assert!(
            r.stderr.contains("Operation not permitted"),
            "{node}: {}",
            r.stderr
        );
    }
}
