//! A Debian (or Ubuntu) tree made by debootstrap, as a template source.
//!
//! debootstrap runs as a child of vectl in a private mount namespace: the /proc,
//! /sys and /dev mounts it makes inside the tree die with it, even when it is
//! killed, so a failed or interrupted import never leaves mounts in the pool. It
//! dies with vectl too (parent-death signal). Its `I:` lines become progress
//! stages, `W:` lines warnings, and the last `E:` line the error.
//!
//! After a successful run the tree is made host-neutral: the downloaded .deb
//! files go (as `apt-get clean` would), and the host's /etc/hostname and
//! /etc/resolv.conf that debootstrap copies in are replaced (vectl writes a VE's
//! own at start).

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

    /// Runs debootstrap into `dest` (an empty directory). Returns its warnings.
    pub(crate) fn fill(
        &self,
        dest: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<String>> {
        let prog = program().ok_or_else(|| self.bad("debootstrap is not installed".into()))?;
        let mut cmd = Command::new(prog);
        if let Some(v) = &self.variant {
            cmd.arg(format!("--variant={v}"));
        }
        if !self.include.is_empty() {
            cmd.arg(format!("--include={}", self.include.join(",")));
        }
        if let Some(k) = &self.keyring {
            cmd.arg(format!("--keyring={}", k.display()));
        }
        cmd.arg(&self.suite).arg(dest).arg(&self.mirror);
        cmd.env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        let (reader, writer) = io::pipe().map_err(io_err(dest))?;
        cmd.stdout(writer.try_clone().map_err(io_err(dest))?)
            .stderr(writer);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe system calls (prctl, unshare, mount); it allocates nothing.
        unsafe {
            cmd.pre_exec(private_mounts);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| self.bad(format!("run debootstrap: {e}")))?;
        drop(cmd);
        let mut warnings = Vec::new();
        let mut last_error = None;
        let mut last_line = String::new();
        let mut done = Progress::default();
        for line in BufReader::new(reader).lines() {
            let line = line.map_err(io_err(dest))?;
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
                if warnings.len() < 10 {
                    warnings.push(format!("debootstrap: {w}"));
                }
            } else if let Some(e) = line.strip_prefix("E: ") {
                last_error = Some(e.to_string());
            }
            if !line.is_empty() {
                last_line = line.to_string();
            }
        }
        let status = child.wait().map_err(io_err(dest))?;
        if !status.success() {
            let why = last_error.unwrap_or(last_line);
            let why: String = why.chars().take(300).collect();
            return Err(self.bad(format!(
                "debootstrap failed ({status}): {}",
                if why.is_empty() { "no output" } else { &why }
            )));
        }
        neutralise(dest)?;
        Ok(warnings)
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

/// In the child before exec: die with vectl, and keep every mount debootstrap
/// makes in a mount namespace of its own.
fn private_mounts() -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
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
