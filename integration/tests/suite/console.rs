//! Consoles: a VE's init writes to a pty the supervisor holds; `vectl logs`
//! shows it (bounded, rotated), `vectl console` attaches (input reaches the
//! VE, output comes back), and without a supervisor the console is /dev/null.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn a_ves_console_output_is_logged_bounded_and_attachable() {
    let Some(h) = TestHost::new("a_ves_console_output_is_logged") else {
        return;
    };
    // Without a supervisor: no console, and show says so.
    h.start_ve("c0", &[]);
    assert_eq!(h.json(&["show", "c0"])["console"], false);
    let err = h.fails(&["console", "c0"]);
    assert!(err.contains("supervisor"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let mut sup = Supervisor::start(&h);
    // Init writes to its stdout and to /dev/console, then reads commands.
    h.ok(&[
        "create",
        "c1",
        "--template",
        "bb",
        "--init",
        "/bin/sh -c 'echo hello-from-init; echo via-dev-console > /dev/console; exec sh -i'",
    ]);
    h.ok(&["start", "c1"]);
    assert_eq!(h.json(&["show", "c1"])["console"], true);
    wait_for("the console log", || {
        let out = h.ok(&["logs", "c1"]);
        out.contains("hello-from-init") && out.contains("via-dev-console")
    });
    assert!(h.ok(&["logs", "c1"]).contains("-- vectl: VE c1 started at"));
    let last = h.ok(&["logs", "-n", "1", "c1"]);
    assert_eq!(last.lines().count(), 1, "{last:?}");

    // Attach: what is typed reaches the VE's shell, its answer comes back.
    let mut client = h
        .command()
        .args(["console", "c1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"echo ATTACHED-$((6*7))\n").unwrap();
    let mut out = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains("ATTACHED-42") {
                        break;
                    }
                }
            }
        }
        // The pipe stays open: the client writes on (the shell's prompt).
        (String::from_utf8_lossy(&seen).into_owned(), out)
    });
    let (seen, mut out) = reader.join().unwrap();
    let drain = std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    assert!(seen.contains("ATTACHED-42"), "{seen:?}");
    // Ctrl-] detaches; the VE runs on.
    let sent = stdin.write_all(&[0x1d]);
    let st = client.wait().unwrap();
    let mut err = String::new();
    let _ = client.stderr.take().unwrap().read_to_string(&mut err);
    assert!(sent.is_ok() && st.success(), "{sent:?} {st:?} {err}");
    drain.join().unwrap();
    assert_eq!(h.json(&["show", "c1"])["status"], "running");
    // The answer is in the log too.
    assert!(h.ok(&["logs", "c1"]).contains("ATTACHED-42"));

    // A flood is bounded: the log and the one before stay within twice the cap.
    // A client that is attached and never reads, and one killed meanwhile,
    // hold up nothing and do not end the supervisor.
    let attach = || {
        h.command()
            .args(["console", "c1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut stuck, mut gone) = (attach(), attach());
    std::thread::sleep(Duration::from_millis(300));
    let _ = gone.kill();
    let _ = gone.wait();
    let r = h.exec(
        "c1",
        &[
            "sh",
            "-c",
            "x=0123456789; x=$x$x$x$x$x$x$x$x$x$x; x=$x$x$x$x$x$x$x$x$x$x; i=0; \
             while [ $i -lt 3000 ]; do echo line-$i-$x > /dev/console; i=$((i+1)); done",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    wait_for("the last flood line in the log", || {
        h.ok(&["logs", "-n", "3", "c1"]).contains("line-2999-")
    });
    let log = h.root().join("run/c1.console.log");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    assert!(log.with_extension("log.1").exists(), "rotated");
    assert!(size(&log) <= 1 << 20, "{}", size(&log));
    assert!(size(&log.with_extension("log.1")) <= 1 << 20);
    assert!(sup.0.try_wait().unwrap().is_none(), "the supervisor ended");
    let _ = stuck.kill();
    let _ = stuck.wait();
    // Stopped: attaching is refused with one line; the log stays readable.
    h.ok(&["stop", "--fast", "c1"]);
    let err = h.fails(&["console", "c1"]);
    assert!(err.contains("not running"), "{err}");
    assert!(h.ok(&["logs", "-n", "3", "c1"]).contains("line-2999-"));
    // A destroyed VE's log goes with it: a new VE of that name starts clean.
    h.ok(&["destroy", "c1"]);
    h.ok(&["create", "c1", "--template", "bb"]);
    assert_eq!(h.ok(&["logs", "c1"]), "");
}
