//! Terminals: `vectl enter` and `vectl exec -t`, driven through a pseudo-terminal
//! the test opens (as a user's terminal emulator would).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use nix::pty::{Winsize, openpty};

const ROWS: u16 = 37;
const COLS: u16 = 123;

/// vectl running on the slave side of a pty; the test holds the master.
struct Term {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Term {
    fn spawn(h: &TestHost, args: &[&str]) -> Term {
        let ws = Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&ws, None).unwrap();
        let slave: OwnedFd = pty.slave;
        let child = {
            let mut cmd = h.command();
            cmd.args(args)
                .env("TERM", "xterm")
                .stdin(Stdio::from(slave.try_clone().unwrap()))
                .stdout(Stdio::from(slave.try_clone().unwrap()))
                .stderr(Stdio::from(slave));
            cmd.spawn().unwrap()
            // `cmd` (holding our copies of the slave) is dropped here, so the
            // master sees EOF once vectl exits.
        };
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut rd = master.try_clone().unwrap();
        let out = output.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no process holds the slave any more.
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            child,
            master,
            output,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `s`.
    #[track_caller]
    fn expect(&self, s: &str) {
        let ok = wait_until(Duration::from_secs(10), || self.text().contains(s));
        assert!(ok, "no {s:?} on the terminal; got {:?}", self.text());
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    /// Waits for vectl to exit (killing it after 15 s) and returns its exit code
    /// and everything the terminal showed.
    #[track_caller]
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vectl did not exit; the terminal showed {:?}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.reader.take().unwrap().join().unwrap();
        (status.code().unwrap_or(-1), self.text())
    }
}

/// The first `/dev/pts/N` in a text.
fn pts_name(text: &str) -> Option<String> {
    let i = text.find("/dev/pts/")?;
    let digits: String = text[i + 9..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then(|| format!("/dev/pts/{digits}"))
}

#[test]
fn enter_gives_an_interactive_shell_on_a_terminal() {
    let Some(h) = TestHost::new("enter_gives_an_interactive_shell_on_a_terminal") else {
        return;
    };
    h.start_ve("term", &[]);
    let mut t = Term::spawn(&h, &["enter", "term"]);
    t.expect("#");
    t.send("tty; stty size; hostname; echo marker-$((6*7))\r");
    t.expect("marker-42");
    t.send("exit 3\r");
    let (code, text) = t.finish();
    assert_eq!(code, 3, "the shell's exit status; terminal: {text:?}");
    assert!(pts_name(&text).is_some(), "tty is not a pty: {text:?}");
    assert!(
        text.lines().any(|l| l.trim() == format!("{ROWS} {COLS}")),
        "stty size does not show {ROWS} {COLS}: {text:?}"
    );
    assert!(text.lines().any(|l| l.trim() == "term"), "{text:?}");
    // The terminal belongs to the VE's devpts: the host has no such session left.
    assert!(!text.contains("not a tty"), "{text:?}");
}

#[test]
fn enter_accepts_the_id_and_exits_0_on_plain_exit() {
    let Some(h) = TestHost::new("enter_accepts_the_id_and_exits_0_on_plain_exit") else {
        return;
    };
    h.start_ve("byid", &[]);
    let id = h.json(&["show", "byid"])["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let mut t = Term::spawn(&h, &["enter", &id]);
    t.expect("#");
    t.send("echo in-$(hostname)\r");
    t.expect("in-byid");
    t.send("exit\r");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "{text:?}");
}

#[test]
fn exec_t_allocates_a_terminal_with_the_window_size() {
    let Some(h) = TestHost::new("exec_t_allocates_a_terminal_with_the_window_size") else {
        return;
    };
    h.start_ve("ttyx", &[]);
    let t = Term::spawn(
        &h,
        &[
            "exec",
            "-t",
            "ttyx",
            "--",
            "sh",
            "-c",
            "tty; stty size; echo TERM=$TERM; exit 5",
        ],
    );
    let (code, text) = t.finish();
    assert_eq!(code, 5, "{text:?}");
    let pts = pts_name(&text).unwrap_or_else(|| panic!("no pty: {text:?}"));
    assert!(pts.starts_with("/dev/pts/"));
    assert!(
        text.lines().any(|l| l.trim() == format!("{ROWS} {COLS}")),
        "{text:?}"
    );
    assert!(text.contains("TERM=xterm"), "{text:?}");

    // Without -t the same command has no terminal.
    let r = h.exec("ttyx", &["tty"]);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("not a tty"), "{r:?}");
}

#[test]
fn exec_t_relays_input_and_window_size_changes() {
    let Some(h) = TestHost::new("exec_t_relays_input_and_window_size_changes") else {
        return;
    };
    h.start_ve("winch", &[]);
    let mut t = Term::spawn(
        &h,
        &[
            "exec",
            "-t",
            "winch",
            "--",
            "sh",
            "-c",
            "echo ready; read line; echo got-$line; stty size",
        ],
    );
    t.expect("ready");
    // The user resizes the window: the terminal emulator sets the size and the
    // kernel signals the foreground process (vectl here) with SIGWINCH.
    let ws = Winsize {
        ws_row: 50,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master we own, with a valid winsize.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&t.master),
            libc::TIOCSWINSZ,
            &ws,
        )
    };
    assert_eq!(rc, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.child.id().cast_signed()),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    t.send("hello\r");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "{text:?}");
    assert!(text.contains("got-hello"), "{text:?}");
    assert!(
        text.lines().any(|l| l.trim() == "50 160"),
        "the new window size did not reach the VE: {text:?}"
    );
}

#[test]
fn enter_from_a_pipe_runs_the_input_and_ends_at_its_end() {
    let Some(h) = TestHost::new("enter_from_a_pipe_runs_the_input_and_ends_at_its_end") else {
        return;
    };
    h.start_ve("piped", &[]);
    // A script piped in (no terminal on our side): it runs, its exit is the status.
    let mut cmd = h.command();
    cmd.args([
        "exec",
        "-t",
        "piped",
        "--",
        "sh",
        "-c",
        "read a; echo got-$a; exit 4",
    ])
    .stdin(
        std::fs::File::open("/etc/hostname")
            .or_else(|_| std::fs::File::open("/etc/passwd"))
            .unwrap(),
    );
    let r = run_limited(cmd, Duration::from_secs(15));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stdout.contains("got-"), "{r:?}");
    // Input that ends before the shell does: the shell sees end of input and
    // exits; vectl does not wait forever.
    let mut cmd = h.command();
    cmd.args(["enter", "piped"]).stdin(Stdio::null());
    let r = run_limited(cmd, Duration::from_secs(15));
    assert_ne!(r.code, -2, "vectl enter with no more input hangs");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

#[test]
fn exec_without_t_from_a_terminal_gives_the_ve_pipes_not_the_terminal() {
    let Some(h) =
        TestHost::new("exec_without_t_from_a_terminal_gives_the_ve_pipes_not_the_terminal")
    else {
        return;
    };
    h.start_ve("nott", &[]);
    // vectl runs on a terminal; the command in the VE must not get a descriptor
    // of it (it could read what is typed long after), only pipes that vectl
    // relays: input, output and error all still pass.
    let mut t = Term::spawn(
        &h,
        &[
            "exec",
            "nott",
            "--",
            "sh",
            "-c",
            "read line; echo got-$line; echo err-out >&2; ls -l /proc/$$/fd/",
        ],
    );
    t.send("hello\n");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("got-hello"), "{text}");
    assert!(text.contains("err-out"), "{text}");
    for fd in ["0", "1", "2"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!(" {fd} -> ")))
            .unwrap_or_else(|| panic!("no fd {fd} in {text:?}"));
        assert!(line.contains("pipe:"), "fd {fd}: {line}");
    }
    assert!(!text.contains("/dev/pts"), "{text}");
}
