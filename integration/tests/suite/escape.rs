//! Ways out of a VE that a hostile root inside it tries, each reproduced as an
//! attack from inside a real VE, with a positive control that proves the attempt
//! was real:
//! - attaching (ptrace) to the process `vectl exec` puts in the VE before it has
//!   exec'd the VE's program, or opening its /proc files (`exe`, `mem`, `fd`);
//! - descriptors of vectl's caller reaching the VE;
//! - `vectl enter` reading the VE's /etc/passwd as a symlink to a host file, a
//!   FIFO, /dev/zero or a huge file;
//! - system calls the seccomp filter refuses (new user namespaces, io_uring, the
//!   real-time I/O class) and capabilities a VE does not keep;
//! - kernel interfaces that reach past the VE (keys, BPF, perf, userfaultfd,
//!   file handles, /proc/kcore, /dev/mem and a /dev/mem node of its own), and
//!   signals or ptrace aimed at a host process.
//!
//! The attacker is `integration/probes/ve_probe.c`, built static with `cc` and
//! copied into the VE.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;

/// The probe, built once per test run.
pub(crate) fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let src = integration::repo_dir().join("integration/probes/ve_probe.c");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ve_probe");
        let st = std::process::Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cc: {e} (scripts/deps.sh installs build-essential)"));
        assert!(st.success(), "cc -static {} failed", src.display());
        out
    })
}

/// Copies the probe into VE `ve` as /ve_probe.
pub(crate) fn plant_probe(h: &TestHost, ve: &str) {
    let r = h
        .command()
        .args([
            "exec",
            ve,
            "--",
            "sh",
            "-c",
            "cat > /ve_probe && chmod 755 /ve_probe",
        ])
        .stdin(fs::File::open(probe()).unwrap())
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
}

/// `key=value` lines of a probe's output.
fn fields(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

pub(crate) fn probe_in(h: &TestHost, ve: &str, args: &[&str]) -> BTreeMap<String, String> {
    let mut cmd = vec!["/ve_probe"];
    cmd.extend_from_slice(args);
    let r = h.exec(ve, &cmd);
    assert_eq!(r.code, 0, "ve_probe {args:?}: {r:?}");
    fields(&r.stdout)
}

/// The probe's `key=value` lines when it runs on the host (the positive control).
fn probe_on_host(args: &[&str]) -> BTreeMap<String, String> {
    let out = std::process::Command::new(probe())
        .args(args)
        .output()
        .unwrap();
    fields(&String::from_utf8_lossy(&out.stdout))
}

/// Runs `script` with the VE's sh, as its root; it must succeed.
#[track_caller]
fn sh_in(h: &TestHost, ve: &str, script: &str) -> String {
    let r = h.exec(ve, &["sh", "-c", script]);
    assert_eq!(r.code, 0, "{script}: {r:?}");
    r.stdout
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

/// The child of `parent` that is stopped (state T), if any.
fn stopped_child_of(parent: u32) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let ppid = status_field(pid, "PPid:")?;
        let state = status_field(pid, "State:")?;
        (ppid == parent.to_string() && state.starts_with('T')).then_some(pid)
    })
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_LINUX_IMMUTABLE: u32 = 9;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_NICE: u32 = 23;

#[test]
fn the_process_vectl_exec_puts_in_a_ve_cannot_be_attached_to_before_it_execs() {
    let Some(h) =
        TestHost::new("the_process_vectl_exec_puts_in_a_ve_cannot_be_attached_to_before_it_execs")
    else {
        return;
    };
    // A VE in its own user namespace (whose root holds CAP_SYS_PTRACE there)
    // and a privileged one.
    for (ve, args) in [("px", &[][..]), ("pp", &["--privileged"][..])] {
        h.start_ve(ve, args);
        plant_probe(&h, ve);

        // Positive control: the probe attaches to, and opens the /proc files
        // of, an ordinary process of the VE.
        let sleeper = sh_in(&h, ve, "sleep 60 >/dev/null 2>&1 & echo $!");
        let sleeper = sleeper.trim().to_string();
        let seen = probe_in(&h, ve, &["inspect", &sleeper]);
        assert_eq!(seen["seize"], "ok", "{ve}: {seen:?}");
        assert_eq!(seen["exe"], "ok", "{ve}: {seen:?}");
        assert_eq!(seen["mem"], "ok", "{ve}: {seen:?}");
        h.exec(ve, &["kill", &sleeper]);

        // The command process, stopped just before its execve: in the VE's PID
        // namespace, still running vectl's code.
        let mut exec = h.command();
        exec.args(["exec", ve, "--", "/bin/true"]);
        let seen = inspect_before_execve(&h, ve, exec);
        assert_confined(&h, ve, &seen);
    }
}

/// Runs `cmd` (a vectl command that enters VE `ve`) stopped at its command's
/// execve, looks at that process with the probe from inside the VE, lets it go
/// on, and returns what the probe saw. The vectl command must succeed.
fn inspect_before_execve(
    h: &TestHost,
    ve: &str,
    mut cmd: std::process::Command,
) -> BTreeMap<String, String> {
    cmd.env("VECTL_FAILPOINT", "exec-before-execve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut running = cmd.spawn().unwrap();
    let mut child = None;
    let reached = wait_until(Duration::from_secs(60), || {
        child = stopped_child_of(running.id());
        child.is_some()
    });
    if !reached {
        let _ = running.kill();
        let _ = running.wait();
        panic!("the command never reached its execve");
    }
    let child = child.unwrap();
    let ns_pid = status_field(child, "NSpid:").unwrap();
    let in_ve = ns_pid.split_whitespace().last().unwrap().to_string();
    assert_ne!(in_ve, child.to_string(), "not in the VE's PID namespace");
    let seen = probe_in(h, ve, &["inspect", &in_ve]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGCONT,
    );
    let st = running.wait().unwrap();
    assert!(st.success(), "vectl after SIGCONT: {st:?}");
    seen
}

/// What the probe saw of vectl's process before its execve: nothing it may
/// attach to or open, and already the VE's capabilities and seccomp filter.
fn assert_confined(h: &TestHost, ve: &str, seen: &BTreeMap<String, String>) {
    assert_eq!(seen["Name"], "vectl", "probed the wrong process: {seen:?}");
    for what in ["seize", "exe", "mem", "fd", "environ"] {
        assert!(
            seen[what] == "EPERM" || seen[what] == "EACCES",
            "VE root got {what} of vectl's process: {seen:?}"
        );
    }
    let eff = u64::from_str_radix(&seen["CapEff"], 16).unwrap();
    let prm = u64::from_str_radix(&seen["CapPrm"], 16).unwrap();
    let init_eff =
        u64::from_str_radix(&status_field(h.init_pid(ve), "CapEff:").unwrap(), 16).unwrap();
    assert_eq!(eff, init_eff, "{seen:?}");
    assert_eq!(prm, init_eff, "{seen:?}");
    // CAP_SYS_ADMIN only where it is held in the VE's own user namespace.
    if !h.in_own_userns(ve) {
        assert_eq!(eff & (1 << CAP_SYS_ADMIN), 0, "{seen:?}");
    }
    assert_eq!(seen["Seccomp"], "2", "{seen:?}");
}

#[test]
fn a_build_ves_command_is_as_confined_as_an_exec() {
    let Some(h) = TestHost::new("a_build_ves_command_is_as_confined_as_an_exec") else {
        return;
    };
    // A template whose tree holds the attacker: the build of its next version
    // runs in a VE of it.
    publish_busybox(&h, "bb", |tree| {
        fs::copy(probe(), tree.join("ve_probe")).unwrap();
    });
    let mut build = h.command();
    build.args(["template", "update", "bb", "--run", "true"]);
    let seen = inspect_before_execve(&h, "build-bb", build);
    assert_eq!(seen["Name"], "vectl", "probed the wrong process: {seen:?}");
    for what in ["seize", "exe", "mem", "fd", "environ"] {
        assert!(
            seen[what] == "EPERM" || seen[what] == "EACCES",
            "the build VE's root got {what} of vectl's process: {seen:?}"
        );
    }
    assert_eq!(seen["Seccomp"], "2", "{seen:?}");
    // The build VE runs in a user namespace of its own: its capabilities are
    // those of a VE's root there.
    let eff = u64::from_str_radix(&seen["CapEff"], 16).unwrap();
    assert_eq!(eff & (1 << CAP_SYS_NICE), 0, "{seen:?}");
    assert_eq!(eff & (1 << CAP_DAC_READ_SEARCH), 0, "{seen:?}");
}

#[test]
fn a_command_stopped_inside_the_ve_before_its_exec_does_not_hang_vectl() {
    let Some(h) =
        TestHost::new("a_command_stopped_inside_the_ve_before_its_exec_does_not_hang_vectl")
    else {
        return;
    };
    h.start_ve("halt", &[]);
    // The command stops before its exec (as VE root can make it, with SIGSTOP);
    // vectl, asked to end, ends, and takes the command with it.
    // stderr goes to a file, not a pipe: if vectl left the stopped command
    // behind, the command would hold a pipe open and this test would hang
    // instead of failing.
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut exec = h.command();
    exec.args(["exec", "halt", "--", "/bin/true"])
        .env("VECTL_FAILPOINT", "exec-before-execve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap());
    let mut running = exec.spawn().unwrap();
    let mut child = None;
    let found = wait_until(Duration::from_secs(60), || {
        child = stopped_child_of(running.id());
        child.is_some()
    });
    let term = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut status = None;
    wait_until(Duration::from_secs(30), || {
        status = running.try_wait().unwrap();
        status.is_some()
    });
    let left = child.filter(|&c| alive(c));
    // Whatever happened, nothing of this test outlives it.
    let _ = running.kill();
    let _ = running.wait();
    if let Some(c) = left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(found, "the command never stopped at its failpoint");
    term.unwrap();
    let stderr = fs::read_to_string(err.path()).unwrap();
    let status = status.expect("vectl did not end on SIGTERM");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("VE halt"), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    // vectl kills and reaps the command before it exits.
    assert_eq!(left, None, "the stopped command was left behind");
}

#[test]
fn a_ve_process_racing_for_the_next_pid_never_attaches_to_vectl() {
    let Some(h) = TestHost::new("a_ve_process_racing_for_the_next_pid_never_attaches_to_vectl")
    else {
        return;
    };
    h.start_ve("race", &[]);
    plant_probe(&h, "race");
    // The attacker spins on the next PIDs of the VE while execs come in.
    let racer = spawn(&h, &["exec", "race", "--", "/ve_probe", "race", "6"]);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..40 {
        let r = h.exec("race", &["/bin/true"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let out = finish(racer);
    assert_eq!(out.code, 0, "{out:?}");
    let f = fields(&out.stdout);
    assert!(f["tries"].parse::<u64>().unwrap() > 0, "{out:?}");
    // Whatever it attached to was already the VE's own program.
    for line in out.stdout.lines().filter(|l| l.starts_with("attached=")) {
        let exe = line.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(
            exe, "/bin/busybox",
            "attached to vectl before its exec: {line}"
        );
    }
}

/// In a forked child: makes `raw` its fd 5 (without close-on-exec).
fn dup_to_5(raw: i32) -> std::io::Result<()> {
    // SAFETY: dup2 on a descriptor number; it touches no memory.
    if unsafe { libc::dup2(raw, 5) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `vectl ARGS` with a directory of the host open as fd 5 (not
/// close-on-exec, as a shell passes it on).
fn run_with_dir_fd(h: &TestHost, dir: &Path, args: &[&str]) -> Run {
    let fd: OwnedFd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let raw = fd.as_raw_fd();
    let mut cmd = h.command();
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure only calls dup2, which is async-signal-safe, in the
    // forked child before exec.
    unsafe {
        cmd.pre_exec(move || dup_to_5(raw));
    }
    let r = run_limited(cmd, Duration::from_secs(20));
    drop(fd);
    r
}

#[test]
fn descriptors_of_the_caller_do_not_reach_the_ve() {
    let Some(h) = TestHost::new("descriptors_of_the_caller_do_not_reach_the_ve") else {
        return;
    };
    h.start_ve("fds", &[]);
    let host_dir = tempfile::tempdir().unwrap();
    let secret = integration::unique("host-secret");
    fs::write(host_dir.path().join("secret"), &secret).unwrap();
    let script =
        "if [ -e /proc/$$/fd/5 ]; then cat /proc/$$/fd/5/secret; echo LEAKED; fi; ls /proc/$$/fd";
    for tty in [false, true] {
        let mut args = vec!["exec"];
        if tty {
            args.push("-t");
        }
        args.extend(["fds", "--", "sh", "-c", script]);
        let r = run_with_dir_fd(&h, host_dir.path(), &args);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stdout.contains(&secret), "tty {tty}: {r:?}");
        assert!(!r.stdout.contains("LEAKED"), "tty {tty}: {r:?}");
        // Nothing but stdio (and ls's own directory).
        let fds: Vec<&str> = r.stdout.split_whitespace().collect();
        assert!(
            fds.iter().all(|f| ["0", "1", "2", "3"].contains(f)),
            "tty {tty}: {r:?}"
        );
    }
    // Positive control: passed on on purpose, the same descriptor is a way onto
    // the host's file system.
    let r = run_with_dir_fd(
        &h,
        host_dir.path(),
        &[
            "exec",
            "--preserve-fds",
            "3",
            "fds",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&secret), "{r:?}");
}

#[test]
fn ve_paths_through_proc_self_fd_never_reach_a_descriptor_of_the_host() {
    let Some(h) =
        TestHost::new("ve_paths_through_proc_self_fd_never_reach_a_descriptor_of_the_host")
    else {
        return;
    };
    h.start_ve("via", &[]);
    let host_dir = tempfile::tempdir().unwrap();
    let secret = integration::unique("host-secret");
    fs::write(host_dir.path().join("secret"), &secret).unwrap();
    let bin = host_dir.path().join("hostbin");
    fs::write(&bin, "#!/bin/sh\necho HOST-BINARY-RAN\n").unwrap();
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // VE root points root's home and a program at what the command process
    // would hold open as fd 5 while it looks them up (before its exec).
    sh_in(
        &h,
        "via",
        "rm -rf /root && ln -s /proc/self/fd/5 /root && ln -s /proc/self/fd/5/hostbin /bin/vt",
    );
    // The default working directory (/root) is looked up before the exec.
    let r = run_with_dir_fd(
        &h,
        host_dir.path(),
        &["exec", "via", "--", "sh", "-c", "pwd; cat secret"],
    );
    assert!(!r.stdout.contains(&secret), "{r:?}");
    assert_eq!(r.stdout.lines().next(), Some("/"), "{r:?}");
    // So is the program.
    let r = run_with_dir_fd(&h, host_dir.path(), &["exec", "via", "--", "/bin/vt"]);
    assert!(!r.stdout.contains("HOST-BINARY-RAN"), "{r:?}");
    assert_ne!(r.code, 0, "{r:?}");
    // Positive control: passed on on purpose, the same descriptor leads there,
    // and a working directory outside the VE is refused.
    let r = run_with_dir_fd(
        &h,
        host_dir.path(),
        &[
            "exec",
            "--preserve-fds",
            "3",
            "-w",
            "/",
            "via",
            "--",
            "/bin/vt",
        ],
    );
    assert!(r.stdout.contains("HOST-BINARY-RAN"), "{r:?}");
    let r = run_with_dir_fd(
        &h,
        host_dir.path(),
        &[
            "exec",
            "--preserve-fds",
            "3",
            "via",
            "--",
            "sh",
            "-c",
            "cat secret",
        ],
    );
    assert!(!r.stdout.contains(&secret), "{r:?}");
    assert!(r.stderr.contains("outside the VE"), "{r:?}");
}

/// Starts `vectl enter VE` (its input left open) and returns the login shell it
/// started in the VE: the command line of the first process in the VE's cgroup
/// that is a login shell (`-sh`) or the marked shell; `None` if none came within
/// 30 s (vectl hung). The shell and vectl are killed again.
fn login_shell(h: &TestHost, ve: &str, before: &[i32]) -> Option<String> {
    let mut enter = h
        .command()
        .args(["enter", ve])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut found = None;
    wait_until(Duration::from_secs(30), || {
        found = leftover_procs(h, ve)
            .into_iter()
            .filter(|p| !before.contains(p))
            .find_map(|p| {
                let cmd = fs::read(format!("/proc/{p}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.starts_with("-sh") || cmd.contains("vt-shell")).then_some((p, cmd))
            });
        found.is_some()
    });
    let _ = enter.kill();
    let _ = enter.wait();
    found.map(|(pid, cmd)| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        cmd.trim().to_string()
    })
}

#[test]
fn enter_reads_the_ves_passwd_inside_the_ve_only_and_only_a_small_regular_file() {
    let Some(h) = TestHost::new(
        "enter_reads_the_ves_passwd_inside_the_ve_only_and_only_a_small_regular_file",
    ) else {
        return;
    };
    h.start_ve("pw", &[]);
    let before = leftover_procs(&h, "pw");
    let root_line = "root:x:0:0:root:/root:/bin/vt-shell";
    sh_in(
        &h,
        "pw",
        "printf '#!/bin/sh\\nread x\\n' > /bin/vt-shell && chmod 755 /bin/vt-shell",
    );
    // Positive control: the VE's own passwd names root's shell, and enter runs it.
    sh_in(&h, "pw", &format!("echo '{root_line}' > /etc/passwd"));
    let shell = login_shell(&h, "pw", &before);
    assert!(
        shell.as_deref().is_some_and(|c| c.contains("vt-shell")),
        "{shell:?}"
    );

    // A host file naming the same shell, and the VE's passwd a link to it; a
    // FIFO; /dev/zero; a huge file that starts with the same line.
    let host = tempfile::tempdir().unwrap();
    let host_passwd = host.path().join("passwd");
    fs::write(&host_passwd, format!("{root_line}\n")).unwrap();
    let plant = [
        format!(
            "rm -f /etc/passwd && ln -s {} /etc/passwd",
            host_passwd.display()
        ),
        "rm -f /etc/passwd && mkfifo /etc/passwd".to_string(),
        "rm -f /etc/passwd && ln -s /dev/zero /etc/passwd".to_string(),
        format!(
            "rm -f /etc/passwd && echo '{root_line}' > /etc/passwd && dd if=/dev/zero of=/etc/passwd bs=1 count=0 seek=3G 2>/dev/null"
        ),
    ];
    for how in &plant {
        sh_in(&h, "pw", how);
        let shell = login_shell(&h, "pw", &before);
        assert_eq!(shell.as_deref(), Some("-sh"), "{how}");
    }
    // The host's file is untouched.
    assert_eq!(
        fs::read_to_string(&host_passwd).unwrap(),
        format!("{root_line}\n")
    );
    h.exec("pw", &["rm", "-f", "/etc/passwd"]);
}

#[test]
fn the_seccomp_filter_refuses_new_user_namespaces_io_uring_and_realtime_io() {
    let Some(h) =
        TestHost::new("the_seccomp_filter_refuses_new_user_namespaces_io_uring_and_realtime_io")
    else {
        return;
    };
    // Positive control: on the host, every call works.
    let host = probe_on_host(&["syscalls"]);
    for call in [
        "unshare_user",
        "clone3",
        "clone_newuser",
        "io_uring_setup",
        "ioprio_rt",
        "ioprio_be",
    ] {
        assert_eq!(host[call], "ok", "{call} on the host: {host:?}");
    }
    // A privileged VE may not make a user namespace; one with its own may
    // nest them (what containers inside it need).
    h.start_ve("sp", &["--privileged"]);
    plant_probe(&h, "sp");
    let ve = probe_in(&h, "sp", &["syscalls"]);
    assert_eq!(ve["unshare_user"], "EPERM", "{ve:?}");
    assert_eq!(ve["clone_newuser"], "EPERM", "{ve:?}");
    h.start_ve("sc", &[]);
    plant_probe(&h, "sc");
    let nested = probe_in(&h, "sc", &["syscalls"]);
    assert_eq!(nested["unshare_user"], "ok", "{nested:?}");
    assert_eq!(nested["clone_newuser"], "ok", "{nested:?}");
    // The rest alike (but a new UTS namespace, which needs CAP_SYS_ADMIN: held
    // in the VE's own user namespace only).
    for (k, v) in &ve {
        if !k.ends_with("user") && k != "unshare_uts" {
            assert_eq!(nested.get(k), Some(v), "{k}: {nested:?} vs {ve:?}");
        }
    }
    assert_eq!(ve["unshare_uts"], "EPERM", "{ve:?}");
    assert_eq!(nested["unshare_uts"], "ok", "{nested:?}");
    assert_eq!(ve["clone3"], "ENOSYS", "{ve:?}");
    assert_eq!(ve["io_uring_setup"], "EPERM", "{ve:?}");
    assert_eq!(ve["ioprio_rt"], "EPERM", "{ve:?}");
    // The x32 ABI is closed whether the kernel has it on (the VM suite boots
    // with syscall.x32=y, where the host's call is the positive control) or not.
    assert_eq!(ve["x32_getpid"], "ENOSYS", "{ve:?}");
    println!("x32 on this kernel: {}", host["x32_getpid"]);
    // What a VE may do still works.
    assert_eq!(ve["clone_plain"], "ok", "{ve:?}");
    assert_eq!(ve["ioprio_be"], "ok", "{ve:?}");
    // And busybox's own forks (through clone3's fallback) are fine.
    assert_eq!(
        h.exec("sc", &["sh", "-c", "(true) && echo ok"])
            .stdout
            .trim(),
        "ok"
    );
}

#[test]
fn a_ve_keeps_only_the_capabilities_a_system_container_needs() {
    let Some(h) = TestHost::new("a_ve_keeps_only_the_capabilities_a_system_container_needs") else {
        return;
    };
    h.start_ve("caps", &[]);
    h.start_ve("priv", &["--privileged"]);
    for ve in ["caps", "priv"] {
        let own_userns = ve == "caps";
        assert_eq!(h.in_own_userns(ve), own_userns, "{ve}");
        let views = [
            fs::read_to_string(format!("/proc/{}/status", h.init_pid(ve))).unwrap(),
            h.exec(ve, &["cat", "/proc/self/status"]).stdout,
        ];
        for status in &views {
            for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
                let set = status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                    .unwrap();
                for (name, bit) in [
                    ("DAC_READ_SEARCH", CAP_DAC_READ_SEARCH),
                    ("SYS_NICE", CAP_SYS_NICE),
                    ("LINUX_IMMUTABLE", CAP_LINUX_IMMUTABLE),
                ] {
                    assert_eq!(set & (1 << bit), 0, "{ve}: {field} {set:x} has {name}");
                }
                // Held against the VE's own user namespace only; never in a
                // privileged VE.
                for (name, bit) in [("SYS_PTRACE", CAP_SYS_PTRACE), ("SYS_ADMIN", CAP_SYS_ADMIN)] {
                    assert_eq!(
                        set & (1 << bit) != 0,
                        own_userns,
                        "{ve}: {field} {set:x} and {name}"
                    );
                }
                assert_ne!(set & (1 << CAP_NET_ADMIN), 0, "{ve}: {field} {set:x}");
            }
        }
    }
    // The kernel's slab statistics are hidden (the host's are not empty).
    assert!(!fs::read_to_string("/proc/slabinfo").unwrap().is_empty());
    let r = h.exec("caps", &["cat", "/proc/slabinfo"]);
    assert_eq!(r.stdout, "", "{r:?}");
}

#[test]
fn kernel_interfaces_that_reach_past_the_ve_are_refused() {
    let Some(h) = TestHost::new("kernel_interfaces_that_reach_past_the_ve_are_refused") else {
        return;
    };
    // Positive control: on the host, as root, each works where this kernel
    // has it (this machine's kernel has neither /proc/kcore nor /dev/mem; the
    // VM suite's has both).
    let host = probe_on_host(&["kernel"]);
    println!("on the host: {host:?}");
    const CALLS: [&str; 5] = [
        "add_key",
        "bpf_map_create",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
    ];
    for call in CALLS {
        assert_eq!(host[call], "ok", "{call} on the host: {host:?}");
    }
    for file in ["read_kcore", "read_dev_mem"] {
        assert!(
            host[file] == "ok" || host[file] == "ENOENT",
            "{file} on the host: {host:?}"
        );
    }
    h.start_ve("kp", &["--privileged"]);
    h.start_ve("ku", &[]);
    for ve in ["kp", "ku"] {
        plant_probe(&h, ve);
        let seen = probe_in(&h, ve, &["kernel"]);
        for call in CALLS.iter().chain(&["mknod_and_read_mem"]) {
            assert_eq!(seen[*call], "EPERM", "{ve}: {call}: {seen:?}");
        }
        // The host's kernel memory: hidden (an empty file) or absent.
        let kcore = &seen["read_kcore"];
        assert!(kcore == "ENODATA" || kcore == "ENOENT", "{ve}: {seen:?}");
        if host["read_kcore"] == "ok" {
            assert_eq!(kcore, "ENODATA", "{ve}: {seen:?}");
        }
        assert_eq!(seen["read_dev_mem"], "ENOENT", "{ve}: {seen:?}");
    }
}

#[test]
fn a_ve_can_neither_signal_nor_trace_host_processes() {
    let Some(h) = TestHost::new("a_ve_can_neither_signal_nor_trace_host_processes") else {
        return;
    };
    // A host process, not init: the host's root may signal and trace it.
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = victim.id().to_string();
    let host = probe_on_host(&["signal", &pid]);
    assert_eq!(host["kill"], "ok", "{host:?}");
    assert_eq!(host["ptrace_seize"], "ok", "{host:?}");
    h.start_ve("sp", &["--privileged"]);
    h.start_ve("su", &[]);
    for ve in ["sp", "su"] {
        plant_probe(&h, ve);
        // The VE's PID namespace has no such process: nothing to aim at.
        let seen = probe_in(&h, ve, &["signal", &pid]);
        assert_eq!(seen["kill"], "ESRCH", "{ve}: {seen:?}");
        assert_eq!(seen["ptrace_seize"], "ESRCH", "{ve}: {seen:?}");
        let r = h.exec(ve, &["ls", &format!("/proc/{pid}")]);
        assert_ne!(r.code, 0, "{ve}: {r:?}");
    }
    // Not even through the VE's view of its parent: init's parent is 0.
    let r = h.exec("su", &["sh", "-c", "grep PPid /proc/1/status"]);
    assert_eq!(r.stdout.split_whitespace().last(), Some("0"), "{r:?}");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process is alive"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn a_ve_cannot_sniff_another_ves_traffic() {
    use std::io::{Read, Write};
    let Some(h) = TestHost::new("a_ve_cannot_sniff_another_ves_traffic") else {
        return;
    };
    // Both on the default network's bridge, each in its own user namespace.
    h.start_ve("spy", &[]);
    h.start_ve("victim", &[]);
    let ip = h.json(&["show", "victim"])["nics"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    crate::network::wait_http(&ip);
    for ve in ["spy", "victim"] {
        plant_probe(&h, ve);
    }
    let needle = integration::unique("needle");
    let seen = std::thread::scope(|s| {
        // Root of each VE listens to everything its eth0 gets, promiscuous;
        // the victim's own sniffer is the positive control.
        let sniffers: Vec<_> = ["spy", "victim"]
            .map(|ve| s.spawn(|| probe_in(&h, ve, &["sniff", "4", &needle])))
            .into_iter()
            .collect();
        // Meanwhile the host talks to the victim, the needle in every request.
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(3500) {
            if let Ok(mut c) = std::net::TcpStream::connect((ip.as_str(), 80)) {
                let _ = write!(c, "GET /{needle} HTTP/1.0\r\n\r\n");
                let _ = c.read_to_end(&mut Vec::new());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sniffers
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let (spy, victim) = (&seen[0], &seen[1]);
    assert!(victim["needle"].parse::<u32>().unwrap() > 0, "{victim:?}");
    assert_eq!(
        spy["needle"], "0",
        "the spy saw the victim's traffic: {spy:?}"
    );
    println!("spy: {spy:?}, victim: {victim:?}");
}
