//! `vectl`: the command line of the vectl runtime. This file holds the
//! top-level parser, the global options, error printing and exit codes, and
//! hands each command to its family's file under `cmd/`; `docs.rs` makes shell
//! completions and manual pages from this parser.
//!
//! Exit status: 0 on success, 1 when an operation failed (one line on stderr saying
//! what and why), 2 on bad usage (clap's, a malformed option value, nothing to do;
//! see `parse::Usage`); `exec` and `enter` return the command's status.

mod cmd;
mod docs;
mod oci;
mod output;
mod parse;
mod table;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::{Ctx, backup, host, net, pool, stats, template, upgrade, ve};
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
    Init(host::InitArgs),
    /// Host facts and settings.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Manage OS templates.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Create a VE (stopped).
    Create(ve::CreateArgs),
    /// Start VEs.
    Start(ve::StartArgs),
    /// Stop VEs: ask init to halt, wait, then kill what is left.
    Stop(ve::StopArgs),
    /// Stop and start VEs.
    Restart(ve::StopArgs),
    /// Destroy VEs and their private files.
    Destroy(ve::DestroyArgs),
    /// List VEs.
    List(ve::ListArgs),
    /// Show one VE in full.
    Show(ve::VeArg),
    /// Change a VE's limits (live if it runs), published ports, hostname (live)
    /// or NICs (while stopped).
    Set(ve::SetArgs),
    /// Run the host-wide supervisor in the foreground (vectl-supervisor.service):
    /// records how VEs' inits end (`crashed`, `exited`) and restarts them as
    /// their --restart policy says. One process for every VE.
    Supervise(host::SuperviseArgs),
    /// Attach to a running VE's console (its init's terminal and /dev/console);
    /// Ctrl-] detaches. Needs the supervisor, which holds the consoles.
    Console(ve::VeArg),
    /// A VE's console log (bounded: 1 MiB and the one before).
    Logs(ve::LogsArgs),
    /// Rename a stopped VE (id, addresses, files and snapshots stay; a hostname
    /// that was its name follows).
    Rename(ve::RenameArgs),
    /// Change a VE's resources: RAM, swap, CPU, disk, I/O, network (live if it
    /// runs); `set` with its limit options only.
    Resize(ve::ResizeArgs),
    /// Move a VE to another template version: its own files are snapshotted
    /// first, a running VE is restarted. With --check: only the conflict report
    /// (exit status 3 when there are conflicts). With --all --from --to: every VE
    /// on a version, in batches, with a health check (exit status 1 if the
    /// rollout was halted).
    Upgrade(upgrade::UpgradeArgs),
    /// Undo a VE's latest upgrade: its own files exactly as before it, and the
    /// version it came from.
    Rollback(upgrade::RollbackArgs),
    /// Keep VEs' upgrades for good: delete their rollback snapshots and let
    /// go of the versions they came from (`template gc` may then remove them);
    /// `rollback` has nothing to undo afterwards.
    Commit(upgrade::CommitArgs),
    /// A VE's moves between template versions.
    History(upgrade::HistoryArgs),
    /// Copy a VE (its own files, limits and networks) as a new, stopped VE, on
    /// its template version or another one, with a new name, id, MACs and
    /// addresses. A running source is frozen for the moment of the copy.
    Clone(ve::CloneArgs),
    /// Resource use per VE: CPU, RAM, swap, processes, disk I/O, OOM kills.
    Stats(stats::StatsArgs),
    /// Run a command inside a running VE.
    Exec(ve::ExecArgs),
    /// Open an interactive shell inside a running VE.
    Enter(ve::VeArg),
    /// The storage pool: use, growing it, checking it.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Snapshots of a VE's own files (btrfs or xfs pool).
    #[command(subcommand)]
    Snapshot(pool::SnapshotCommand),
    /// Virtual networks: bridged, host-only, nat, routed.
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Back up a VE (or --all) to a file: its own files, config, template
    /// reference and state; incremental against its previous backup in DEST.
    /// A running VE is frozen for the moment of a snapshot (btrfs pool).
    /// `backup verify FILE` checks one, `backup list [DIR]` lists them.
    Backup(backup::BackupArgs),
    /// Make a VE from a backup file, on this root or another, under its name
    /// or --as NAME; a new id, MAC or address where the old one is taken here.
    Restore(backup::RestoreArgs),
    /// Move a VE to another root, on this host (its directory) or another
    /// (ssh://[USER@]HOST[:PORT][/ROOT]): copies while it runs, then stops it,
    /// sends the last change and starts it there; it is removed here only once
    /// it runs there, and runs here again on any failure.
    Migrate(backup::MigrateArgs),
    /// Make a VE of a server's system: its files over SSH (rsync), from a
    /// directory or a tar archive, without /proc, /sys, /dev, /run, /tmp,
    /// kernel modules and /boot; adapted for a VE (fstab, gettys, udev, time
    /// sync and the system's own network configuration off; network from
    /// --net/--ip) as template NAME, and a VE NAME on it that boots the
    /// server's own init. --as-template: the template only.
    ImportHost(backup::ImportHostArgs),
    /// Send what changed in a VE since its last replication to a standby root
    /// (this host's or over SSH another's), which keeps the newest copy;
    /// --every records a schedule the supervisor runs.
    Replicate(backup::ReplicateArgs),
    /// The replicas this root keeps, and its replication schedules.
    #[command(subcommand)]
    Replica(backup::ReplicaCommand),
    /// On a standby: start the newest replica of a VE whose primary is gone
    /// (asked with --primary, refused while it runs the VE there; --force if it
    /// is down for good). A fence is recorded first: no replication lands in
    /// that name afterwards.
    Failover(backup::FailoverArgs),
    /// The standby's end of `replicate`.
    #[command(hide = true)]
    ReplicaReceive(backup::MigrateReceiveArgs),
    /// The target's end of `migrate` (run by it, over SSH or locally).
    #[command(hide = true)]
    MigrateReceive(backup::MigrateReceiveArgs),
    /// Print vectl's completion script for bash, zsh or fish.
    ///
    /// In a running bash: `source <(vectl completion bash)`; the Debian
    /// package installs all three where the shells look for them.
    Completion(docs::CompletionArgs),
    /// The OCI runtime for podman, containerd and CRI-O (runc's command line:
    /// create, start, state, kill, delete, exec, update, features, list), also
    /// installed as `vectl-oci`. See `vectl oci --help`.
    Oci {
        /// The runtime's command and its options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write vectl's manual pages (section 8) into DIR: vectl.8 and one per
    /// subcommand (the Debian package's build runs it).
    #[command(hide = true)]
    Man(docs::ManArgs),
}

fn main() -> ExitCode {
    // Like every Unix filter: end quietly when the reader of our output goes away
    // (`vectl list | head`), instead of failing on EPIPE.
    // SAFETY: restoring the default disposition of SIGPIPE at startup, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The OCI runtime's command line: as `vectl-oci` (a link to this binary,
    // which engines are given as their runtime) or `vectl oci ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_owned()));
    if called.as_deref() == Some(std::ffi::OsStr::new("vectl-oci")) {
        return oci::main(args);
    }
    if args.get(1).map(|a| a.as_os_str()) == Some(std::ffi::OsStr::new("oci")) {
        args.remove(0);
        args[0] = "vectl-oci".into();
        return oci::main(args);
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let ctx = Ctx {
        root: cli.root,
        json: cli.json,
        out: Out::new(cli.json),
    };
    match run(&ctx, cli.command, &ve::ArgPositions::of(&matches)) {
        Ok(code) => code,
        Err(e) => {
            ctx.out.error(&e);
            // A malformed option value or nothing to do is bad usage, like
            // what clap refuses; anything else is a failed operation.
            ExitCode::from(if parse::is_usage(&e) { 2 } else { 1 })
        }
    }
}

/// Hands the command to its family.
fn run(ctx: &Ctx, command: Command, at: &ve::ArgPositions) -> Result<ExitCode> {
    match command {
        Command::Init(a) => host::init(ctx, a),
        Command::Host(c) => host::run(ctx, c),
        Command::Template(c) => template::run(ctx, c),
        Command::Create(a) => ve::create(ctx, a, at),
        Command::Start(a) => ve::start(ctx, a),
        Command::Stop(a) => ve::stop(ctx, a),
        Command::Restart(a) => ve::restart(ctx, a),
        Command::Destroy(a) => ve::destroy(ctx, a),
        Command::List(a) => ve::list(ctx, a),
        Command::Show(a) => ve::show(ctx, a),
        Command::Set(a) => ve::set(ctx, a, at),
        Command::Resize(a) => ve::resize(ctx, a),
        Command::Rename(a) => ve::rename(ctx, a),
        Command::Console(a) => ve::console(ctx, a),
        Command::Logs(a) => ve::logs(ctx, a),
        Command::Supervise(a) => host::supervise(ctx, a),
        Command::Upgrade(a) => upgrade::upgrade(ctx, a),
        Command::Rollback(a) => upgrade::rollback(ctx, a),
        Command::Commit(a) => upgrade::commit(ctx, a),
        Command::History(a) => upgrade::history(ctx, a),
        Command::Clone(a) => ve::clone(ctx, a),
        Command::Stats(a) => stats::run(ctx, a),
        Command::Exec(a) => ve::exec(ctx, a),
        Command::Enter(a) => ve::enter(ctx, a),
        Command::Pool(c) => pool::pool(ctx, c),
        Command::Snapshot(c) => pool::snapshot(ctx, c),
        Command::Net(c) => net::run(ctx, c),
        Command::Backup(a) => backup::backup(ctx, a),
        Command::Restore(a) => backup::restore(ctx, a),
        Command::Migrate(a) => backup::migrate(ctx, a),
        Command::MigrateReceive(a) => backup::migrate_receive(ctx, a),
        Command::ImportHost(a) => backup::import_host(ctx, a, at),
        Command::Replicate(a) => backup::replicate(ctx, a),
        Command::Replica(c) => backup::replica(ctx, c),
        Command::Failover(a) => backup::failover(ctx, a),
        Command::ReplicaReceive(a) => backup::replica_receive(ctx, a),
        // main() hands `vectl oci ...` over before this parser runs.
        Command::Oci { .. } => Ok(oci::main(vec!["vectl-oci".into(), "--help".into()])),
        Command::Completion(a) => docs::completion(<Cli as clap::CommandFactory>::command(), a),
        Command::Man(a) => docs::man(<Cli as clap::CommandFactory>::command(), a),
    }
}
