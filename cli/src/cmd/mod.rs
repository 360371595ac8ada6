//! The commands, one file per family: each holds its clap argument types and a
//! `run` doing what the command does; `Ctx` is what every command is given.

pub mod backup;
pub mod host;
pub mod net;
pub mod pool;
pub mod stats;
pub mod template;
pub mod upgrade;
pub mod ve;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::Result;
use clap::Args;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use ve_runtime::{Host, Status};

use crate::output::Out;

/// The global options and the output of one vectl run.
#[derive(Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub json: bool,
    pub out: Out,
}

impl Ctx {
    /// The host at `--root`: it must be initialised (`vectl init`); any other
    /// path is refused and nothing is made there.
    pub fn open(&self) -> Result<Host> {
        Ok(Host::open(&self.root)?)
    }

    /// The host at `--root`, initialised with defaults if it is not yet: only
    /// for `create` and `template import`, the implicit `vectl init`.
    pub fn open_or_init(&self) -> Result<Host> {
        Ok(Host::open_or_init(&self.root)?)
    }
}

/// Runs `f` for each VE; reports each failure and goes on. Exit 1 if any failed.
pub fn each(out: &Out, ves: &[String], mut f: impl FnMut(&str) -> Result<()>) -> ExitCode {
    let mut failed = false;
    for ve in ves {
        if let Err(e) = f(ve) {
            out.error(&e);
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// How many VEs `start` and `restart` handle at once by default (a start
/// works the CPU: more than a few dozen at once only queue).
const JOBS: u16 = 32;
/// How many VEs `stop` (and `host shutdown`) handle at once by default: a
/// graceful stop only waits for the VE's init to halt, so 200 VEs take about
/// as long as one.
pub const STOP_JOBS: u16 = 256;

/// The VEs a command that takes several acts on, and how many at once.
#[derive(Debug, Args)]
pub struct Many {
    #[arg(value_name = "VE", required_unless_present = "all")]
    pub ves: Vec<String>,
    /// Every VE of the root that is stopped (`start`) or running (`stop`,
    /// `restart`), instead of names.
    #[arg(long, conflicts_with = "ves")]
    all: bool,
    /// How many VEs are handled at once when there are several, each by a vectl
    /// process of its own (default 32; stop: 256); 1: one after another, in
    /// this process.
    #[arg(long, short = 'j', value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
}

impl Many {
    /// These VEs, handled as many at once as `--jobs` would by default.
    pub fn of(ves: Vec<String>) -> Many {
        Many {
            ves,
            all: false,
            jobs: None,
        }
    }

    /// At most `jobs` at once.
    pub fn with_jobs(mut self, jobs: u16) -> Many {
        self.jobs = Some(jobs);
        self
    }

    /// The VEs named, or with `--all` every VE of `ctx`'s root in `status`
    /// (in id order).
    pub fn names(&self, ctx: &Ctx, status: Status) -> Result<Vec<String>> {
        if !self.all {
            return Ok(self.ves.clone());
        }
        let (ves, errors) = ctx.open()?.ves().list()?;
        for e in &errors {
            ctx.out.warn(&e.to_string());
        }
        let names: Vec<String> = ves
            .into_iter()
            .filter(|v| v.status.matches(status))
            .map(|v| v.name)
            .collect();
        if names.is_empty() {
            ctx.out.note(&format!("no VE is {status}"));
        }
        Ok(names)
    }

    /// Runs `f` for each of `ves`: in this process when there is one VE or
    /// `--jobs 1`; otherwise up to `--jobs` at once, each as
    /// `vectl --root ROOT [--json] ARGS... VE` in a process of its own (the
    /// start of a VE forks, so it is not done from threads). What each one
    /// prints is passed on whole when it ends, so VEs' outputs never mix. Exit 1
    /// if any failed.
    pub fn run(
        &self,
        ctx: &Ctx,
        ves: &[String],
        args: &[&str],
        f: impl FnMut(&str) -> Result<()>,
    ) -> ExitCode {
        let jobs = self.jobs.unwrap_or(match args.first() {
            Some(&"stop") => STOP_JOBS,
            _ => JOBS,
        });
        if ves.len() <= 1 || jobs == 1 {
            return each(&ctx.out, ves, f);
        }
        match in_processes(ctx, ves, args, usize::from(jobs)) {
            Ok(code) => code,
            Err(e) => {
                ctx.out.error(&e);
                ExitCode::from(1)
            }
        }
    }
}

/// Copies what a vectl process printed to `to`, from the start.
fn pass_on(mut from: File, to: &mut impl Write) {
    if from.seek(SeekFrom::Start(0)).is_ok() {
        let _ = std::io::copy(&mut from, to);
        let _ = to.flush();
    }
}

/// See [`Many::run`].
fn in_processes(ctx: &Ctx, ves: &[String], args: &[&str], jobs: usize) -> Result<ExitCode> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find vectl's own binary: {e}"))?;
    // Its name and what it printed (files, not pipes: nothing waits to be
    // read while others run).
    let mut running: HashMap<Pid, (&str, File, File)> = HashMap::new();
    let mut next = ves.iter();
    let mut failed = false;
    loop {
        while running.len() < jobs {
            let Some(ve) = next.next() else { break };
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--root").arg(&ctx.root);
            if ctx.json {
                cmd.arg("--json");
            }
            let outputs = tempfile::tempfile().and_then(|o| Ok((o.try_clone()?, o)));
            let errors = tempfile::tempfile().and_then(|e| Ok((e.try_clone()?, e)));
            let ((out_w, out_r), (err_w, err_r)) = match (outputs, errors) {
                (Ok(o), Ok(e)) => (o, e),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(anyhow::anyhow!("cannot make a temporary file: {e}"));
                }
            };
            cmd.args(args)
                .arg(ve)
                .stdin(Stdio::null())
                .stdout(out_w)
                .stderr(err_w);
            match cmd.spawn() {
                // Waited for below, by pid; dropping the handle neither waits
                // nor kills.
                Ok(child) => {
                    running.insert(Pid::from_raw(child.id().cast_signed()), (ve, out_r, err_r));
                }
                Err(e) => {
                    ctx.out.error(&anyhow::anyhow!(
                        "VE {ve}: cannot run {}: {e}",
                        exe.display()
                    ));
                    failed = true;
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let (pid, signal) = match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) => {
                failed |= code != 0;
                (pid, None)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                failed = true;
                (pid, Some(sig))
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow::anyhow!("waiting for vectl processes: {e}")),
        };
        let Some((ve, out, err)) = running.remove(&pid) else {
            continue;
        };
        pass_on(out, &mut std::io::stdout());
        pass_on(err, &mut std::io::stderr());
        if let Some(sig) = signal {
            ctx.out.error(&anyhow::anyhow!(
                "VE {ve}: its vectl process was killed by {sig}"
            ));
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
