//! Moving VEs between template versions: upgrade (one VE or a fleet),
//! rollback, commit and history.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use ve_runtime::StopOptions;

use super::Ctx;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[arg(
        value_name = "VE",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    ve: Option<String>,
    /// The version to move to.
    #[arg(
        long,
        short = 'T',
        value_name = "NAME@VERSION",
        required_unless_present = "all"
    )]
    template: Option<String>,
    /// Every VE on --from, to --to.
    #[arg(long, requires_all = ["from", "to"], conflicts_with = "check")]
    all: bool,
    /// The version the fleet is on.
    #[arg(long, value_name = "NAME@VERSION", requires = "all")]
    from: Option<String>,
    /// The version the fleet moves to.
    #[arg(long, value_name = "NAME@VERSION", requires = "all")]
    to: Option<String>,
    /// VEs upgraded per batch (VEs skipped for conflicts do not count).
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        requires = "all",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    batch: u32,
    /// Shell command run inside each upgraded VE of a batch, again until it
    /// succeeds or --health-timeout passes; a failure rolls that VE back and
    /// halts the rollout.
    #[arg(long, value_name = "CMD", requires = "all")]
    health: Option<String>,
    /// How long the health command is retried in a VE just started.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        requires = "health"
    )]
    health_timeout: f64,
    /// Only report the files the VE changed that the new version changes too.
    #[arg(long)]
    check: bool,
    /// Move it even with conflicts (the VE's copies stay).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    stop: StopFlags,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_name = "VE")]
    ve: String,
    #[command(flatten)]
    stop: StopFlags,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(
        value_name = "VE",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    ves: Vec<String>,
    /// Every VE with upgrades to keep.
    #[arg(long)]
    all: bool,
    /// With --all: only the VEs on this version.
    #[arg(long, short = 'T', value_name = "NAME@VERSION", requires = "all")]
    template: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(value_name = "VE")]
    ve: String,
}

/// How a running VE is stopped for an upgrade or rollback.
#[derive(Debug, Args)]
pub struct StopFlags {
    /// Seconds init gets to halt before everything is killed.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    /// Kill at once, without asking init to halt.
    #[arg(long)]
    fast: bool,
}

impl StopFlags {
    fn options(&self) -> StopOptions {
        StopOptions {
            timeout: Duration::from_secs(self.timeout),
            fast: self.fast,
        }
    }
}

/// `vectl upgrade`: exit 3 when --check finds conflicts, 1 when a rollout
/// was halted.
pub fn upgrade(ctx: &Ctx, a: UpgradeArgs) -> Result<ExitCode> {
    let out = &ctx.out;
    let host = ctx.open()?;
    if a.all {
        let (Some(from), Some(to)) = (&a.from, &a.to) else {
            bail!("--all needs --from and --to");
        };
        let health_timeout = a.health_timeout;
        let health_timeout = Duration::try_from_secs_f64(health_timeout).map_err(|_| {
            anyhow::anyhow!("--health-timeout {health_timeout}: give a number of seconds")
        })?;
        let rows = host.upgrades().fleet(
            from,
            to,
            &ve_runtime::Rollout {
                batch: a.batch as usize,
                health: a.health.clone(),
                health_timeout,
                force: a.force,
                stop: a.stop.options(),
            },
            &mut |row| out.fleet_progress(row),
        )?;
        out.fleet(&rows);
        if rows
            .iter()
            .any(|r| r.outcome == "rolled back" || r.outcome == "failed")
        {
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(ve), Some(template)) = (&a.ve, &a.template) else {
        bail!("give a VE and --template (or --all --from --to)");
    };
    if a.check {
        let c = host.upgrades().check(ve, template)?;
        out.upgrade_check(&c);
        if !c.conflicts.is_empty() {
            return Ok(ExitCode::from(3));
        }
    } else {
        let m = host
            .upgrades()
            .upgrade(ve, template, a.force, a.stop.options())?;
        out.moved("upgraded", &m);
    }
    Ok(ExitCode::SUCCESS)
}

/// `vectl rollback`.
pub fn rollback(ctx: &Ctx, a: RollbackArgs) -> Result<ExitCode> {
    let m = ctx.open()?.upgrades().rollback(&a.ve, a.stop.options())?;
    ctx.out.moved("rolled back", &m);
    Ok(ExitCode::SUCCESS)
}

/// `vectl commit`: exit 1 if any VE failed.
pub fn commit(ctx: &Ctx, a: CommitArgs) -> Result<ExitCode> {
    let host = ctx.open()?;
    let (done, errors) = if a.all {
        host.upgrades().commit_all(a.template.as_deref())?
    } else {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for ve in &a.ves {
            match host.upgrades().commit(ve) {
                Ok(c) => done.push(c),
                Err(e) => errors.push(e),
            }
        }
        (done, errors)
    };
    ctx.out.committed(&done, errors.is_empty());
    for e in &errors {
        ctx.out.error(&anyhow::anyhow!("{e}"));
    }
    if !errors.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `vectl history`.
pub fn history(ctx: &Ctx, a: HistoryArgs) -> Result<ExitCode> {
    let (ve, h) = ctx.open()?.upgrades().history(&a.ve)?;
    ctx.out.history(&ve, &h);
    Ok(ExitCode::SUCCESS)
}
