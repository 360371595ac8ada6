//! The commands, one file per family: each holds its clap argument types and a
//! `run` doing what the command does; `Ctx` is what every command is given.

pub mod host;
pub mod net;
pub mod pool;
pub mod stats;
pub mod template;
pub mod upgrade;
pub mod ve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ve_runtime::Host;

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
