//! A Debian (or Ubuntu) tree made by debootstrap, as a template source.
//!
//! debootstrap runs below vectl in a private mount namespace and as PID 1 of a
//! PID namespace of its own ([`Contained`]): the /proc, /sys and /dev mounts it
//! makes inside the tree and every process it started die with it, even when it
//! is killed, so a failed or interrupted import never leaves mounts in the pool
//! or a dpkg writing into a removed tree. It dies with vectl too (parent-death
//! signal). Release files are always checked against a keyring
//! (`--force-check-gpg`). Its `I:` lines become progress stages, `W:` lines
//! warnings, and the last `E:` line the error.
//!
//! After a successful run the tree is made host-neutral: the downloaded .deb
//! files go (as `apt-get clean` would), and the host's /etc/hostname and
//! /etc/resolv.conf that debootstrap copies in are replaced (vectl writes a VE's
//! own at start).

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::import::Progress;
use crate::{Error, Result, io_err};

/// The mirror used when none is given.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// What to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debootstrap {
    /// The suite or code name (`bookworm`, `stable`, `noble`).
    pub suite: String,
    /// `http://`, `https://` or `file://` URL of the archive.
    pub mirror: String,
    /// Extra packages.
    pub include: Vec<String>,
    /// debootstrap's variant (`minbase`, `buildd`); `None` = its default.
    pub variant: Option<String>,
    /// An OpenPGP keyring the mirror's Release file is checked against
    /// (default: debootstrap's, i.e. the Debian archive keyring).
    pub keyring: Option<PathBuf>,
}

impl Debootstrap {
    fn bad(&self, reason: String) -> Error {
        Error::BadSource {
            path: PathBuf::from(format!("debootstrap {}", self.suite)),
            reason,
        }
    }

    /// Checks the request before anything is created.
    pub(crate) fn check(&self) -> Result<()> {
        let word = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        if !word(&self.suite, b".-") {
            return Err(self.bad("invalid suite name".into()));
        }
        for p in &self.include {
            if !word(p, b".+-") {
                return Err(self.bad(format!("--include: invalid package name {p:?}")));
            }
        }
        if let Some(v) = &self.variant
            && !word(v, b"-")
        {
            return Err(self.bad(format!("--variant: invalid variant {v:?}")));
        }
        let scheme_ok = ["http://", "https://", "file:///"]
            .iter()
            .any(|s| self.mirror.starts_with(s) && self.mirror.len() > s.len());
        if !scheme_ok || self.mirror.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(self.bad(format!(
                "--mirror {}: expected an http://, https:// or file:/// URL",
                self.mirror
            )));
        }
        if let Some(k) = &self.keyring {
            fs::File::open(k).map_err(|e| Error::BadSource {
                path: k.clone(),
                reason: format!("keyring: {}", crate::import::io_reason(&e)),
            })?;
        }
        program().ok_or_else(|| {
            self.bad("debootstrap is not installed (apt-get install debootstrap)".into())
        })?;
        Ok(())
    }

    /// A short description for the version's metadata.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("debootstrap:{} {}", self.suite, self.mirror);
        if let Some(v) = &self.variant {
            s.push_str(&format!(" variant={v}"));
        }
        if !self.include.is_empty() {
            s.push_str(&format!(" include={}", self.include.join(",")));
        }
        s
    }

    /// debootstrap's arguments. `--force-check-gpg`: a Release file that cannot
    /// be checked (no keyring given and the suite's default one not installed)
    /// fails the import instead of installing unverified packages.
    fn args(&self, dest: &Path) -> Vec<OsString> {
        let mut args = vec![OsString::from("--force-check-gpg")];
        if let Some(v) = &self.variant {
            args.push(format!("--variant={v}").into());
        }
        if !self.include.is_empty() {
            args.push(format!("--include={}", self.include.join(",")).into());
        }
        if let Some(k) = &self.keyring {
            let mut arg = OsString::from("--keyring=");
            arg.push(k);
            args.push(arg);
        }
        args.push(self.suite.clone().into());
        args.push(dest.into());
        args.push(self.mirror.clone().into());
        args
    }

    /// Runs debootstrap into `dest` (an empty directory). Returns its warnings.
    pub(crate) fn fill(
        &self,
        dest: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<String>> {
        let prog = program().ok_or_else(|| self.bad("debootstrap is not installed".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(self.args(dest));
        cmd.env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        let (reader, writer) = io::pipe().map_err(io_err(dest))?;
        cmd.stdout(writer.try_clone().map_err(io_err(dest))?)
            .stderr(writer);
        let mut child =
            Contained::spawn(cmd).map_err(|e| self.bad(format!("run debootstrap: {e}")))?;
        // On an error from here on, dropping `child` kills debootstrap and
        // everything it started.
        let out = follow(BufReader::new(reader), progress).map_err(io_err(dest))?;
        let status = child.wait().map_err(io_err(dest))?;
        if !status.success() {
            let why = out.last_error.unwrap_or(out.last_line);
            let why: String = why.chars().take(300).collect();
            return Err(self.bad(format!(
                "debootstrap failed ({status}): {}",
                if why.is_empty() { "no output" } else { &why }
            )));
        }
        neutralise(dest)?;
        Ok(out.warnings)
    }
}

/// What debootstrap's output said.
#[derive(Debug, Default)]
struct Output {
    warnings: Vec<String>,
    /// The last `E:` line.
    last_error: Option<String>,
    last_line: String,
}

/// Reads debootstrap's output to its end, reporting its `I:` lines as
/// progress. Lines need not be UTF-8 (a package or file name in another
/// encoding): what is not becomes U+FFFD.
fn follow(mut reader: impl BufRead, progress: &mut dyn FnMut(Progress)) -> io::Result<Output> {
    let mut out = Output::default();
    let mut done = Progress::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(out),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if let Some(step) = line.strip_prefix("I: ") {
            // Stages only move forward: debootstrap's own messages of
            // later checks do not send the display back.
            let stage = stage_of(step);
            if rank(Some(stage)) > rank(done.stage) {
                done.stage = Some(stage);
                done.files = 0;
            }
            done.files += 1;
            progress(done);
        } else if let Some(w) = line.strip_prefix("W: ") {
            if out.warnings.len() < 10 {
                out.warnings.push(format!("debootstrap: {w}"));
            }
        } else if let Some(e) = line.strip_prefix("E: ") {
            out.last_error = Some(e.to_string());
        }
        if !line.is_empty() {
            out.last_line = line.to_string();
        }
    }
}

/// debootstrap running as the first process (PID 1) of a PID namespace of its
/// own, in a mount namespace of its own: when it exits or is killed, the
/// kernel kills every process it started (wget, dpkg, maintainer scripts), and
/// the mounts it made inside the tree go with the last of them.
///
/// The child vectl spawns is a small waiter outside that namespace (a PID
/// namespace takes effect for the children of the process that makes it):
/// it forks debootstrap, waits for it and exits with its status. Each dies with
/// its parent (parent-death signal), so vectl killed means debootstrap and all
/// its descendants killed. Dropping a `Contained` that was not waited for kills
/// and reaps the waiter, and so the whole namespace.
struct Contained(Child);

impl Contained {
    fn spawn(mut cmd: Command) -> io::Result<Contained> {
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe system calls (prctl, unshare, mount, fork, close,
        // waitpid, _exit); it allocates nothing.
        unsafe {
            cmd.pre_exec(contain);
        }
        Ok(Contained(cmd.spawn()?))
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// In the child before exec: die with vectl, make the namespaces, and fork the
/// process that execs debootstrap as PID 1 of the new PID namespace; this one
/// stays behind to wait for it and never returns.
fn contain() -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::signal::Signal;
    use nix::sys::wait::{WaitStatus, waitpid};
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    // SAFETY: this process is the single-threaded child of a fork; the new child
    // and this one go on calling only async-signal-safe functions.
    let forked = unsafe { nix::unistd::fork() }?;
    let nix::unistd::ForkResult::Parent { child } = forked else {
        // debootstrap: killed when the waiter dies.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        return Ok(());
    };
    // The waiter holds nothing open: not the output pipe, and not the pipe
    // through which std learns that the exec happened (spawn would otherwise
    // wait for debootstrap to end).
    close_all();
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break 127,
        }
    };
    // SAFETY: _exit is async-signal-safe and ends this process without running
    // anything of the parent's (no atexit handlers, no destructors).
    unsafe { libc::_exit(code) }
}

/// Closes every file descriptor of the process.
fn close_all() {
    // SAFETY: close_range only closes descriptors; nothing in this process uses
    // them afterwards.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    if rc != 0 {
        // Kernels before 5.9.
        for fd in 0..4096 {
            // SAFETY: as above, for one descriptor.
            unsafe { libc::close(fd) };
        }
    }
}

/// The stages of a debootstrap run, in order.
const STAGES: [&str; 5] = [
    "preparing",
    "retrieving",
    "extracting",
    "unpacking",
    "configuring",
];

/// The progress stage an `I:` line belongs to.
fn stage_of(step: &str) -> &'static str {
    let first = step.split_whitespace().next().unwrap_or("");
    match first {
        "Retrieving" | "Validating" | "Resolving" => STAGES[1],
        "Extracting" => STAGES[2],
        "Installing" | "Unpacking" => STAGES[3],
        "Configuring" => STAGES[4],
        _ => STAGES[0],
    }
}

fn rank(stage: Option<&str>) -> Option<usize> {
    stage.and_then(|s| STAGES.iter().position(|x| *x == s))
}

fn program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("debootstrap"))
        .find(|p| p.is_file())
}

/// Removes what belongs to the host rather than the template.
fn neutralise(root: &Path) -> Result<()> {
    let archives = root.join("var/cache/apt/archives");
    if let Ok(rd) = fs::read_dir(&archives) {
        for entry in rd {
            let entry = entry.map_err(io_err(&archives))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "deb") {
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    for (file, content) in [("etc/hostname", "localhost\n"), ("etc/resolv.conf", "")] {
        let p = root.join(file);
        // Only regular files: a symlink here points into the tree's own /run.
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            fs::write(&p, content).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Debootstrap {
        Debootstrap {
            suite: "bookworm".into(),
            mirror: DEFAULT_MIRROR.into(),
            include: vec!["netbase".into(), "libc++1".into()],
            variant: Some("minbase".into()),
            keyring: None,
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_runs() {
        let cases: Vec<(Debootstrap, &str)> = vec![
            (
                Debootstrap {
                    suite: "../x".into(),
                    ..req()
                },
                "invalid suite",
            ),
            (
                Debootstrap {
                    include: vec!["-oops".into()],
                    ..req()
                },
                "--include",
            ),
            (
                Debootstrap {
                    mirror: "ftp://x".into(),
                    ..req()
                },
                "--mirror",
            ),
            (
                Debootstrap {
                    mirror: "http://".into(),
                    ..req()
                },
                "--mirror",
            ),
            (
                Debootstrap {
                    variant: Some("min base".into()),
                    ..req()
                },
                "--variant",
            ),
            (
                Debootstrap {
                    keyring: Some("/nonexistent/k.gpg".into()),
                    ..req()
                },
                "no such file",
            ),
        ];
        for (r, want) in cases {
            let e = r.check().unwrap_err().to_string();
            assert!(e.contains(want), "{r:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn stages_and_description() {
        assert_eq!(stage_of("Retrieving libc6 2.36"), "retrieving");
        assert_eq!(stage_of("Configuring apt..."), "configuring");
        assert_eq!(stage_of("Base system installed"), "preparing");
        assert!(rank(Some("configuring")) > rank(Some("retrieving")));
        assert!(rank(Some("preparing")) > rank(None));
        assert_eq!(
            req().describe(),
            "debootstrap:bookworm http://deb.debian.org/debian variant=minbase include=netbase,libc++1"
        );
    }

    #[test]
    fn signatures_are_always_checked() {
        let args = |r: &Debootstrap| -> Vec<String> {
            r.args(Path::new("/t"))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(&req()),
            [
                "--force-check-gpg",
                "--variant=minbase",
                "--include=netbase,libc++1",
                "bookworm",
                "/t",
                DEFAULT_MIRROR
            ]
        );
        let with_key = Debootstrap {
            keyring: Some("/k/ring.gpg".into()),
            ..req()
        };
        assert!(args(&with_key).contains(&"--keyring=/k/ring.gpg".to_string()));
    }

    /// Without `--force-check-gpg`, a suite whose keyring is not installed is
    /// imported unchecked (debootstrap warns and goes on to the mirror).
    #[test]
    fn a_suite_without_a_keyring_is_refused() {
        let keyring = Path::new("/usr/share/keyrings/ubuntu-archive-keyring.gpg");
        if program().is_none() || !nix::unistd::geteuid().is_root() || keyring.exists() {
            eprintln!("SKIP: needs root, debootstrap and no {}", keyring.display());
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let r = Debootstrap {
            suite: "jammy".into(),
            mirror: "file:///nonexistent/ubuntu".into(),
            include: vec![],
            variant: None,
            keyring: None,
        };
        let e = r.fill(d.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("Keyring-based check was requested"), "{e}");
    }

    #[test]
    fn output_that_is_not_utf8_is_read_to_its_end() {
        let out = b"I: Retrieving libc6\nW: bad \xff name\n\xfe\xfd\nI: Configuring apt\nE: it failed\nlast\n";
        let mut seen = Vec::new();
        let out = follow(&out[..], &mut |p| seen.push(p.stage)).unwrap();
        assert_eq!(seen, [Some("retrieving"), Some("configuring")]);
        assert_eq!(out.warnings, ["debootstrap: bad \u{fffd} name"]);
        assert_eq!(out.last_error.as_deref(), Some("it failed"));
        assert_eq!(out.last_line, "last");
    }

    /// The processes whose command line is `sleep <marker>`.
    fn sleepers(marker: &str) -> usize {
        let want = format!("sleep\0{marker}\0");
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
            .count()
    }

    fn wait_for_sleepers(marker: &str, n: usize) {
        for _ in 0..500 {
            if sleepers(marker) == n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} sleep {marker} processes, not {n}", sleepers(marker));
    }

    #[test]
    fn what_debootstrap_started_dies_with_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        // Short sleeps, so a failed test leaves nothing for long.
        let marker = |n: u32| format!("30.{}{n}", std::process::id());
        let sh = |script: String| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        // Killed (an error while reading its output): its children too.
        let m = marker(1);
        let running = Contained::spawn(sh(format!("sleep {m} & sleep {m} & wait"))).unwrap();
        wait_for_sleepers(&m, 2);
        drop(running);
        wait_for_sleepers(&m, 0);
        // Exited: what it left running is killed.
        let m = marker(2);
        let mut done = Contained::spawn(sh(format!("sleep {m} & exit 3"))).unwrap();
        assert_eq!(done.wait().unwrap().code(), Some(3));
        wait_for_sleepers(&m, 0);
        // A program that is not there: spawn says so.
        let e = Contained::spawn(Command::new("/nonexistent/debootstrap"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn neutralise_drops_debs_and_host_files() {
        let d = tempfile::tempdir().unwrap();
        let arch = d.path().join("var/cache/apt/archives");
        fs::create_dir_all(arch.join("partial")).unwrap();
        fs::write(arch.join("a_1_amd64.deb"), "x").unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/hostname"), "buildhost\n").unwrap();
        fs::write(d.path().join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        neutralise(d.path()).unwrap();
        assert!(!arch.join("a_1_amd64.deb").exists());
        assert!(arch.join("partial").is_dir());
        assert_eq!(
            fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "localhost\n"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("etc/resolv.conf")).unwrap(),
            ""
        );
    }
}
