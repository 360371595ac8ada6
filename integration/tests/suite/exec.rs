//! `vectl exec` without a terminal: exit codes, stdin/stdout/stderr, -e and -w.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::process::Stdio;

use crate::common::*;

#[test]
fn exit_codes_propagate() {
    let Some(h) = TestHost::new("exit_codes_propagate") else {
        return;
    };
    h.start_ve("codes", &[]);
    assert_eq!(h.exec("codes", &["true"]).code, 0);
    assert_eq!(h.exec("codes", &["false"]).code, 1);
    assert_eq!(h.exec("codes", &["sh", "-c", "exit 7"]).code, 7);
    assert_eq!(h.exec("codes", &["sh", "-c", "exit 255"]).code, 255);
    // Killed by a signal: 128 + N, like a shell reports it.
    assert_eq!(h.exec("codes", &["sh", "-c", "kill -9 $$"]).code, 128 + 9);
    assert_eq!(
        h.exec("codes", &["sh", "-c", "kill -TERM $$"]).code,
        128 + 15
    );
    // By id, too.
    let id = h.json(&["show", "codes"])["id"]
        .as_u64()
        .unwrap()
        .to_string();
    assert_eq!(h.exec(&id, &["sh", "-c", "exit 42"]).code, 42);
}

#[test]
fn a_missing_command_is_exit_1_with_one_line_naming_the_ve() {
    let Some(h) = TestHost::new("a_missing_command_is_exit_1_with_one_line_naming_the_ve") else {
        return;
    };
    h.start_ve("nocmd", &[]);
    let line = h.fails(&["exec", "nocmd", "--", "no-such-program", "arg"]);
    assert!(line.contains("VE nocmd"), "{line}");
    assert!(line.contains("no-such-program"), "{line}");
    let line = h.fails(&["exec", "nocmd", "--", "/bin/no-such-program"]);
    assert!(line.contains("VE nocmd"), "{line}");
    // The VE is unharmed.
    assert_eq!(h.exec("nocmd", &["true"]).code, 0);
}

#[test]
fn stdin_stdout_and_stderr_pass_through() {
    let Some(h) = TestHost::new("stdin_stdout_and_stderr_pass_through") else {
        return;
    };
    h.start_ve("pipe", &[]);
    // 1 MiB of lines through `cat`, fed while it runs.
    let data: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i:07} of the input\n").into_bytes())
        .collect();
    let mut child = h
        .command()
        .args(["exec", "pipe", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&feed).unwrap();
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdout differs from stdin");

    // A command reading stdin to its end, and stderr kept apart from stdout.
    let mut child = h
        .command()
        .args([
            "exec",
            "pipe",
            "--",
            "sh",
            "-c",
            "wc -l; echo to-stderr >&2; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout.trim(), "3");
    assert_eq!(r.stderr.trim(), "to-stderr");
}

#[test]
fn env_and_workdir_options_work() {
    let Some(h) = TestHost::new("env_and_workdir_options_work") else {
        return;
    };
    h.start_ve("envw", &[]);
    let r = h.run(&[
        "exec",
        "envw",
        "-e",
        "FOO=bar baz",
        "--env",
        "EMPTY=",
        "-e",
        "EQ=a=b",
        "-w",
        "/etc/init.d",
        "--",
        "sh",
        "-c",
        "echo \"$FOO|${EMPTY-unset}|$EQ|$(pwd)\"",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "bar baz||a=b|/etc/init.d");
    // Without options: the defaults (root's home or /, and a PATH that finds busybox).
    let r = h.exec("envw", &["sh", "-c", "echo \"${FOO-unset}\"; which httpd"]);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["unset", "/usr/sbin/httpd"]
    );
    let r = h.run(&[
        "exec",
        "--workdir",
        "/var/www",
        "envw",
        "--",
        "cat",
        "index.html",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("hello from envw"), "{}", r.stdout);
}

#[test]
fn exec_joins_the_ve_cgroup_and_leaves_nothing_behind() {
    let Some(h) = TestHost::new("exec_joins_the_ve_cgroup_and_leaves_nothing_behind") else {
        return;
    };
    h.start_ve("join", &[]);
    // The command runs inside the VE's cgroup.
    let dir = h.cgroup_dir("pids", "join");
    let before = procs_below(&dir);
    let mut child = h
        .command()
        .args(["exec", "join", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut sleeper = None;
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            sleeper = procs_below(&dir).into_iter().find(|p| {
                !before.contains(p)
                    && std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
            });
            sleeper.is_some()
        }),
        "the exec'd sleep is not in the VE's cgroup"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Stopping the VE takes whatever exec started with it.
    h.ok(&["stop", "--fast", "join"]);
    assert_stopped_clean(&h, "join");
}

#[test]
fn signals_to_vectl_exec_are_relayed_to_the_command() {
    let Some(h) = TestHost::new("signals_to_vectl_exec_are_relayed_to_the_command") else {
        return;
    };
    h.start_ve("relay", &[]);
    let dir = h.cgroup_dir("pids", "relay");
    let before = procs_below(&dir);
    let mut child = h
        .command()
        .args(["exec", "relay", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            procs_below(&dir).into_iter().any(|p| {
                !before.contains(&p)
                    && std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
            })
        }),
        "sleep did not start"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = status.expect("vectl exec did not exit after SIGTERM was relayed");
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
}
