//! `vectl backup ...` and `vectl restore`: backups of VEs to files, checking
//! and listing them, and VEs made from them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ve_runtime::{BackupOptions, RestoreOptions};

use super::Ctx;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: Option<BackupCommand>,
    /// The VE (name or id).
    #[arg(value_name = "VE", required_unless_present = "all")]
    ve: Option<String>,
    /// A directory (default ROOT/backups), or a file NAME.vbk.
    #[arg(value_name = "DEST")]
    dest: Option<PathBuf>,
    /// Every VE, one after the other, into DEST (a directory).
    #[arg(long)]
    all: bool,
    /// A full backup even where an incremental one could be taken.
    #[arg(long)]
    full: bool,
    /// Put the VE's template version in the backup, for a host that lacks it.
    #[arg(long)]
    with_template: bool,
    /// Keep only the VE's N newest backups in DEST (and those they need).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Read a backup through: every checksum, and the backups it is
    /// incremental to (exit 1 if it cannot be restored).
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The backups in a directory (default ROOT/backups).
    List {
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup file (the backups it is incremental to must be beside it).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The new VE's name (default: the backed-up VE's).
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    /// Start the VE once it is restored.
    #[arg(long)]
    start: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The VE (name or id).
    #[arg(value_name = "VE")]
    ve: String,
    /// Another root on this host (its directory), or
    /// ssh://[USER@]HOST[:PORT][/ROOT] (the remote runs vectl).
    #[arg(value_name = "DEST")]
    dest: String,
    /// The ssh command and its options.
    #[arg(long, value_name = "CMD", default_value = "ssh")]
    ssh: String,
    /// The vectl command on the remote host.
    #[arg(long, value_name = "CMD", default_value = "vectl")]
    remote_vectl: String,
    /// Incremental rounds at most while the VE runs, after the full one.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: u32,
    /// At the switch, halt the VE cleanly (as long as its init's shutdown
    /// takes) instead of freezing it and starting it there from its files as
    /// they were at that moment, as after a power cut.
    #[arg(long)]
    clean_stop: bool,
    /// At the switch, checkpoint the VE's processes with CRIU and restore them
    /// on the target, where they go on (privileged VEs without a console held
    /// by the supervisor; CRIU must work on both kernels).
    #[arg(long, conflicts_with = "clean_stop")]
    live: bool,
    /// Seconds the VE's init gets to halt with --clean-stop.
    #[arg(long, short, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct MigrateReceiveArgs {
    #[arg(value_name = "VE")]
    ve: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from", "from_dir", "from_tar"])))]
pub struct ImportHostArgs {
    /// The VE's name (and its template's).
    #[arg(value_name = "NAME")]
    name: String,
    /// A running server: ssh://[USER@]HOST[:PORT][/ROOT] (rsync over SSH).
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    /// A directory holding a system's root (a mounted disk or image).
    #[arg(long, value_name = "DIR")]
    from_dir: Option<PathBuf>,
    /// A tar archive of a system's root.
    #[arg(long, value_name = "FILE")]
    from_tar: Option<PathBuf>,
    /// The ssh command and its options.
    #[arg(long, value_name = "CMD", default_value = "ssh")]
    ssh: String,
    /// Make only the template NAME (no VE).
    #[arg(long)]
    as_template: bool,
    #[command(flatten)]
    limits: super::ve::LimitArgs,
    #[command(flatten)]
    nic: super::ve::NicArgs,
    /// Hostname (default: the VE name).
    #[arg(long)]
    hostname: Option<String>,
    /// No user namespace (see `create --privileged`).
    #[arg(long)]
    privileged: bool,
}

/// `vectl import-host`.
pub fn import_host(ctx: &Ctx, a: ImportHostArgs, at: &super::ve::ArgPositions) -> Result<ExitCode> {
    let limits = a.limits.update(&a.name)?;
    let nics = a.nic.requests(&a.name, at)?;
    let from = match (a.from, a.from_dir, a.from_tar) {
        (Some(u), _, _) => ve_runtime::ServerSource::Ssh(u),
        (_, Some(d), _) => ve_runtime::ServerSource::Dir(d),
        (_, _, Some(t)) => ve_runtime::ServerSource::Tar(t),
        _ => {
            return Err(crate::parse::usage(
                "import-host: --from, --from-dir or --from-tar",
            ));
        }
    };
    let opts = ve_runtime::ImportHostOptions {
        from,
        ssh: Some(a.ssh),
        as_template: a.as_template,
        create: ve_runtime::CreateOptions {
            name: a.name.clone(),
            limits,
            hostname: a.hostname,
            nics,
            privileged: a.privileged,
            ..Default::default()
        },
    };
    let host = ctx.open_or_init()?;
    let mut progress = ctx.out.progress(&format!("import-host {}", a.name));
    let made = host.backups().import_host(&a.name, &opts, &mut progress)?;
    ctx.out.host_imported(&made);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The VE (name or id).
    #[arg(value_name = "VE")]
    ve: String,
    /// The standby: a root of this host, or ssh://[USER@]HOST[:PORT][/ROOT].
    /// Without it: the VE's schedule, now.
    #[arg(value_name = "DEST")]
    dest: Option<String>,
    /// Record a schedule: the supervisor replicates to DEST this often
    /// (e.g. 60s, 5m); one run now too.
    #[arg(long, value_name = "DURATION", requires = "dest")]
    every: Option<String>,
    /// Remove the VE's schedule.
    #[arg(long, conflicts_with_all = ["dest", "every"])]
    stop: bool,
    /// The ssh command and its options.
    #[arg(long, value_name = "CMD")]
    ssh: Option<String>,
    /// The vectl command on the remote host.
    #[arg(long, value_name = "CMD")]
    remote_vectl: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// The replicas this root keeps as a standby.
    List,
    /// This root's replication schedules and how each last ran.
    Schedules,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The VE whose replica this root keeps.
    #[arg(value_name = "VE")]
    ve: String,
    /// The primary (a root of this host, or ssh://...): asked whether it still
    /// runs the VE; refused if it does.
    #[arg(long, value_name = "DEST")]
    primary: Option<String>,
    /// The primary is down for good: start the replica without its answer.
    #[arg(long)]
    force: bool,
    /// The ssh command and its options.
    #[arg(long, value_name = "CMD")]
    ssh: Option<String>,
    /// The vectl command on the primary.
    #[arg(long, value_name = "CMD")]
    remote_vectl: Option<String>,
}

/// `vectl replicate`.
pub fn replicate(ctx: &Ctx, a: ReplicateArgs) -> Result<ExitCode> {
    let host = ctx.open()?;
    if a.stop {
        let ve = host.backups().set_schedule(&a.ve, None)?;
        ctx.out.done(&format!("VE {ve}: no replication schedule"));
        return Ok(ExitCode::SUCCESS);
    }
    let every = match &a.every {
        Some(t) => {
            let d = humantime::parse_duration(t)
                .map_err(|e| crate::parse::usage(format!("VE {}: --every {t:?}: {e}", a.ve)))?;
            if d.as_secs() < 10 {
                return Err(crate::parse::usage(format!(
                    "VE {}: --every {t}: at least 10s (the supervisor looks every 10 s)",
                    a.ve
                )));
            }
            Some(d.as_secs())
        }
        None => None,
    };
    let sched = a.dest.map(|dest| ve_runtime::ReplicaSchedule {
        dest,
        every_secs: every,
        ssh: a.ssh,
        remote_vectl: a.remote_vectl,
    });
    if let Some(s) = sched.as_ref().filter(|s| s.every_secs.is_some()) {
        host.backups().set_schedule(&a.ve, Some(s))?;
        let r = host.backups().replicate(&a.ve, None)?;
        ctx.out.replicated(&r);
        return Ok(ExitCode::SUCCESS);
    }
    let r = host.backups().replicate(&a.ve, sched.as_ref())?;
    ctx.out.replicated(&r);
    Ok(ExitCode::SUCCESS)
}

/// `vectl replica ...`.
pub fn replica(ctx: &Ctx, c: ReplicaCommand) -> Result<ExitCode> {
    let host = ctx.open()?;
    match c {
        ReplicaCommand::List => ctx.out.replicas(&host.backups().replicas()?),
        ReplicaCommand::Schedules => ctx.out.replica_schedules(&host.backups().schedules()?),
    }
    Ok(ExitCode::SUCCESS)
}

/// `vectl failover`.
pub fn failover(ctx: &Ctx, a: FailoverArgs) -> Result<ExitCode> {
    let opts = ve_runtime::FailoverOptions {
        primary: a.primary,
        force: a.force,
        ssh: a.ssh,
        remote_vectl: a.remote_vectl,
    };
    let f = ctx.open()?.backups().failover(&a.ve, &opts)?;
    ctx.out.failed_over(&f);
    Ok(ExitCode::SUCCESS)
}

/// `vectl replica-receive`: the standby's end, on stdin and stdout.
pub fn replica_receive(ctx: &Ctx, a: MigrateReceiveArgs) -> Result<ExitCode> {
    // As migrate-receive: a source that goes away is an error, not SIGPIPE.
    // SAFETY: changing a signal's disposition; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let told = ctx.open()?.backups().replica_receive(
        &a.ve,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )?;
    Ok(received(told))
}

/// The exit status of a channel's target end. An error the source was told
/// is the source's to print: printed here too, the operator would read it
/// twice (this process's stderr is the source's).
fn received(told: Option<ve_runtime::Error>) -> ExitCode {
    if told.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `vectl migrate`.
pub fn migrate(ctx: &Ctx, a: MigrateArgs) -> Result<ExitCode> {
    let opts = ve_runtime::MigrateOptions {
        dest: a.dest,
        ssh: Some(a.ssh),
        remote_vectl: Some(a.remote_vectl),
        rounds: a.rounds,
        clean_stop: a.clean_stop,
        live: a.live,
        stop_timeout: std::time::Duration::from_secs(a.timeout),
    };
    let m = ctx.open()?.backups().migrate(&a.ve, &opts)?;
    ctx.out.migrated(&m);
    Ok(ExitCode::SUCCESS)
}

/// `vectl migrate-receive`: the target's end, on stdin and stdout.
pub fn migrate_receive(ctx: &Ctx, a: MigrateReceiveArgs) -> Result<ExitCode> {
    // A source that goes away must not kill us by SIGPIPE before we have
    // removed what we received: a write to it fails instead.
    // SAFETY: changing a signal's disposition; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let told = ctx.open()?.backups().migrate_receive(
        &a.ve,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )?;
    Ok(received(told))
}

/// `vectl backup ...`.
pub fn backup(ctx: &Ctx, a: BackupArgs) -> Result<ExitCode> {
    let host = ctx.open()?;
    let out = &ctx.out;
    match a.cmd {
        Some(BackupCommand::Verify { file }) => {
            out.backup_verified(&host.backups().verify(&file)?);
            return Ok(ExitCode::SUCCESS);
        }
        Some(BackupCommand::List { dir }) => {
            out.backups(&host.backups().list(dir.as_deref())?);
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    // `vectl backup --all DIR`: the one positional is the destination.
    let (ve, dest) = if a.all {
        if a.dest.is_some() {
            return Err(crate::parse::usage(
                "backup --all: takes one DEST directory and no VE",
            ));
        }
        (None, a.ve.map(PathBuf::from))
    } else {
        (a.ve, a.dest)
    };
    let opts = BackupOptions {
        dest,
        full: a.full,
        with_template: a.with_template,
        keep: a.keep.map(|k| k as usize),
    };
    match ve {
        Some(ve) => {
            out.backup_made(&host.backups().backup(&ve, &opts)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let all = host.backups().all(&opts)?;
            Ok(out.backups_made(all))
        }
    }
}

/// `vectl restore`.
pub fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<ExitCode> {
    let opts = RestoreOptions {
        name: a.name,
        start: a.start,
    };
    let r = ctx.open()?.backups().restore(&a.file, &opts)?;
    ctx.out.restored(&r, opts.start);
    Ok(ExitCode::SUCCESS)
}
