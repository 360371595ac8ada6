//! `vectl`: the command line of the vectl runtime.
//!
//! Exit status: 0 on success, 1 when an operation failed (one line on stderr saying
//! what and why), 2 on bad usage; `exec` and `enter` return the command's status.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use ve_runtime::{
    Amount, CreateOptions, ExecOptions, Host, InitOptions, LimitsUpdate, Percent, Setting, Source,
    StopOptions, StopOutcome,
};

use crate::output::Out;

/// vectl: full system containers (virtual environments) on a stock Linux kernel.
#[derive(Debug, Parser)]
#[command(name = "vectl", version, about, max_term_width = 100)]
struct Cli {
    /// State directory.
    #[arg(long, global = true, env = "VECTL_ROOT", default_value = ve_runtime::DEFAULT_ROOT)]
    root: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state directory and settings (idempotent).
    Init(InitArgs),
    /// Host facts and settings.
    #[command(subcommand)]
    Host(HostCommand),
    /// Manage OS templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Create a VE (stopped).
    Create(CreateArgs),
    /// Start VEs.
    Start {
        #[arg(required = true, value_name = "VE")]
        ves: Vec<String>,
    },
    /// Stop VEs: ask init to halt, wait, then kill what is left.
    Stop(StopArgs),
    /// Stop and start VEs.
    Restart(StopArgs),
    /// Destroy VEs and their private files.
    Destroy {
        #[arg(required = true, value_name = "VE")]
        ves: Vec<String>,
        /// Kill a running VE first.
        #[arg(long, short)]
        force: bool,
    },
    /// List VEs.
    List,
    /// Show one VE in full.
    Show {
        #[arg(value_name = "VE")]
        ve: String,
    },
    /// Change a VE's limits (live if it runs).
    Set(SetArgs),
    /// Run a command inside a running VE.
    Exec(ExecArgs),
    /// Open an interactive shell inside a running VE.
    Enter {
        #[arg(value_name = "VE")]
        ve: String,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Parent of the VE cgroups: `vectl`, `/a/b`, or `./name` (below this
    /// command's own cgroup, resolved now).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// Storage backend (only `dir` for now).
    #[arg(long, value_parser = ["dir"])]
    backend: Option<String>,
    /// Pool directory for the `dir` backend (default: ROOT/pool).
    #[arg(long, value_name = "DIR")]
    pool_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Capacity, cgroup version, paths and settings.
    Info,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Import a root file system as the next version of a template.
    Import(ImportArgs),
    /// List template versions.
    List,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)))]
struct ImportArgs {
    /// Template name.
    name: String,
    /// A directory holding the root file system.
    #[arg(long, group = "source", value_name = "DIR")]
    from_dir: Option<PathBuf>,
    /// A tar archive of it (plain, .gz or .zst).
    #[arg(long, group = "source", value_name = "FILE")]
    from_tar: Option<PathBuf>,
    /// A note recorded with the version.
    #[arg(long, short, default_value = "")]
    message: String,
}

/// Limits common to `create` and `set`. `unlimited` removes a limit. The values are
/// taken as text and checked by vectl, so a bad one (`12Q`, `-5M`) is a failed
/// operation naming the VE (exit 1), not a usage error.
#[derive(Debug, Args, Default)]
struct LimitArgs {
    /// Memory limit: a size (256M, 1G) or a percentage of host RAM (10%).
    #[arg(long, value_name = "SIZE|P%", allow_hyphen_values = true)]
    ram: Option<String>,
    /// CPU cap in percent of one CPU (150% = one and a half CPUs).
    #[arg(long, value_name = "P%", allow_hyphen_values = true)]
    cpu_limit: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pids: Option<String>,
}

impl LimitArgs {
    fn update(&self, ve: &str) -> Result<LimitsUpdate> {
        fn parse<T>(
            ve: &str,
            flag: &str,
            v: &Option<String>,
            p: impl Fn(&str) -> std::result::Result<T, String>,
        ) -> Result<Option<T>> {
            v.as_deref()
                .map(|s| p(s).map_err(|e| anyhow::anyhow!("VE {ve}: --{flag}: {e}")))
                .transpose()
        }
        Ok(LimitsUpdate {
            ram: parse(ve, "ram", &self.ram, |s| s.parse::<Setting<Amount>>())?,
            cpu_limit: parse(ve, "cpu-limit", &self.cpu_limit, |s| {
                s.parse::<Setting<Percent>>()
            })?,
            pids: parse(ve, "pids", &self.pids, ve_runtime::parse_count)?,
        })
    }
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// VE name: lower-case letters, digits and '-'.
    name: String,
    /// Template, NAME or NAME@VERSION (default: its latest version).
    #[arg(long, short = 'T')]
    template: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Hostname (default: the VE name).
    #[arg(long)]
    hostname: Option<String>,
    /// Init command (default: the template's /sbin/init).
    #[arg(long, value_name = "CMD")]
    init: Option<String>,
    /// Signal that asks init to halt (default: chosen from the init program).
    #[arg(long, value_name = "SIG")]
    stop_signal: Option<String>,
    /// Numeric id (default: the lowest free one from 100).
    #[arg(long)]
    id: Option<u32>,
}

#[derive(Debug, Args)]
struct StopArgs {
    #[arg(required = true, value_name = "VE")]
    ves: Vec<String>,
    /// Seconds init gets to halt before everything is killed.
    #[arg(long, short, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    /// Kill at once, without asking init to halt.
    #[arg(long)]
    fast: bool,
}

impl StopArgs {
    fn options(&self) -> StopOptions {
        StopOptions {
            timeout: Duration::from_secs(self.timeout),
            fast: self.fast,
        }
    }
}

#[derive(Debug, Args)]
struct SetArgs {
    #[arg(value_name = "VE")]
    ve: String,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[arg(value_name = "VE")]
    ve: String,
    /// Allocate a pseudo-terminal.
    #[arg(long, short)]
    tty: bool,
    /// Set an environment variable (repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the VE.
    #[arg(long, short, value_name = "DIR")]
    workdir: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    // Like every Unix filter: end quietly when the reader of our output goes away
    // (`vectl list | head`), instead of failing on EPIPE.
    // SAFETY: restoring the default disposition of SIGPIPE at startup, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let out = Out::new(cli.json);
    match run(cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::from(1)
        }
    }
}

fn open(cli: &Cli) -> Result<Host> {
    Ok(Host::open(&cli.root)?)
}

fn run(cli: Cli, out: &Out) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(a) => {
            let opts = InitOptions {
                cgroup_parent: a.cgroup_parent.clone(),
                backend: a
                    .backend
                    .as_ref()
                    .map(|_| ve_runtime::HostSettings::default().backend),
                pool_dir: a.pool_dir.clone(),
            };
            let (host, created) = Host::init(&cli.root, &opts)?;
            out.init(&host, created);
        }
        Command::Host(HostCommand::Info) => out.host_info(&open(&cli)?)?,
        Command::Template(TemplateCommand::Import(a)) => {
            let source = match (&a.from_dir, &a.from_tar) {
                (Some(d), _) => Source::Dir(d.clone()),
                (None, Some(t)) => Source::Tar(t.clone()),
                (None, None) => bail!("give --from-dir or --from-tar"),
            };
            let host = open(&cli)?;
            let mut progress = out.progress(&format!("importing {}", a.name));
            let (tv, warnings) =
                host.import_template(&a.name, &source, &a.message, &mut progress)?;
            drop(progress);
            for w in warnings {
                out.warn(&format!("template {}: {w}", tv.reference()));
            }
            out.template_imported(&tv);
        }
        Command::Template(TemplateCommand::List) => out.templates(&open(&cli)?.list_templates()?),
        Command::Create(a) => {
            let host = open(&cli)?;
            let cfg = host.create(&CreateOptions {
                name: a.name.clone(),
                template: a.template.clone(),
                limits: a.limits.update(&a.name)?,
                hostname: a.hostname.clone(),
                init: a.init.clone(),
                stop_signal: a.stop_signal.clone(),
                id: a.id,
            })?;
            out.created(&cfg);
        }
        Command::Start { ves } => {
            let host = open(&cli)?;
            return Ok(each(out, ves, |ve| {
                let rs = host.start(ve)?;
                out.started(ve, &rs);
                Ok(())
            }));
        }
        Command::Stop(a) => {
            let host = open(&cli)?;
            return Ok(each(out, &a.ves, |ve| {
                let outcome = host.stop(ve, a.options())?;
                out.stopped(ve, outcome);
                Ok(())
            }));
        }
        Command::Restart(a) => {
            let host = open(&cli)?;
            return Ok(each(out, &a.ves, |ve| {
                let outcome = host.stop(ve, a.options())?;
                if outcome == StopOutcome::AlreadyStopped {
                    out.note(&format!("VE {ve}: was not running"));
                }
                let rs = host.start(ve)?;
                out.started(ve, &rs);
                Ok(())
            }));
        }
        Command::Destroy { ves, force } => {
            let host = open(&cli)?;
            return Ok(each(out, ves, |ve| {
                host.destroy(ve, *force)?;
                out.destroyed(ve);
                Ok(())
            }));
        }
        Command::List => {
            let host = open(&cli)?;
            let (ves, errors) = host.list()?;
            for e in &errors {
                out.warn(&e.to_string());
            }
            out.list(&ves);
        }
        Command::Show { ve } => out.show(&open(&cli)?.show(ve)?),
        Command::Set(a) => {
            let update = a.limits.update(&a.ve)?;
            if update.is_empty() {
                bail!(
                    "VE {}: nothing to set (give --ram, --cpu-limit or --pids)",
                    a.ve
                );
            }
            let outcome = open(&cli)?.set(&a.ve, &update)?;
            out.set(&a.ve, &outcome);
        }
        Command::Exec(a) => {
            let code = open(&cli)?.exec(
                &a.ve,
                &ExecOptions {
                    argv: a.command.clone(),
                    tty: a.tty,
                    env: a.env.clone(),
                    workdir: a.workdir.clone(),
                    arg0: None,
                },
            )?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Enter { ve } => {
            let code = open(&cli)?.enter(ve)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` for each VE; reports each failure and goes on. Exit 1 if any failed.
fn each(out: &Out, ves: &[String], mut f: impl FnMut(&str) -> Result<()>) -> ExitCode {
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
