//! `vectl init` and `vectl host info|set|tune`: the state directory, host
//! settings and the host's kernel limits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ve_runtime::host_limits::{self, HostLimits, TuneAction};
use ve_runtime::{Amount, Host, InitOptions, Percent, Setting, Size};

use super::Ctx;
use crate::parse::{self, Checked};
use crate::table::Table;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Parent of the VE cgroups: `vectl`, `/a/b`, or `./name` (below this
    /// command's own cgroup, resolved now).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// Storage backend: `btrfs` (default; disk limits, snapshots, no copies),
    /// `xfs` (disk limits that `df` in a VE shows as its own disk, reflinked
    /// snapshots; needs a kernel with XFS quota support) or `dir` (any file
    /// system, no disk limits).
    #[arg(long, value_parser = ["btrfs", "xfs", "dir"])]
    backend: Option<String>,
    /// Pool directory (default: ROOT/pool). With btrfs or xfs and no --pool-size
    /// or --pool-dev: a directory on a file system of that kind the operator
    /// mounted (xfs: with -o prjquota).
    #[arg(long, value_name = "DIR")]
    pool_dir: Option<PathBuf>,
    /// Size of the pool's sparse image file ROOT/pool.img (default: half the free
    /// space, at most 1T).
    #[arg(long, value_name = "SIZE", value_parser = parse::text::<Size>)]
    pool_size: Option<Checked<Size>>,
    /// A block device for the pool: used if it holds the backend's file system
    /// (btrfs or xfs), formatted if blank.
    #[arg(long, value_name = "DEV", conflicts_with = "pool_size")]
    pool_dev: Option<PathBuf>,
    /// Do not make the default nat network (VEs then get loopback only unless
    /// created with --net).
    #[arg(long)]
    no_net: bool,
    /// The root's identity, which the names of everything it makes on the host
    /// derive from (nft tables `vectl-ID`, interfaces `vID*`, cgroup parent
    /// `vectl-ID`): two lower-case letters; default: a free one at random.
    #[arg(long, value_name = "ID")]
    identity: Option<String>,
    /// Do not raise the host's kernel limits that bind with many VEs (ARP/ND
    /// tables, inotify, pids, keys, conntrack; see `vectl host tune`): print
    /// one line per low one with the command that raises it instead.
    #[arg(long)]
    no_host_tuning: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Capacity, committed guarantees and limits, cgroup version, paths, and
    /// the host's kernel limits against what --ves VEs need.
    Info(LimitsArgs),
    /// Raise the host's kernel limits that bind with many VEs (ARP/ND tables,
    /// inotify, pids, keys, conntrack, open files) to what --ves VEs need, live
    /// and in /etc/sysctl.d/60-vectl.conf; never lowers one. `vectl init`
    /// does this too (unless --no-host-tuning).
    Tune(TuneArgs),
    /// Change host settings.
    Set(HostSetArgs),
    /// Bind LXCFS's /proc files again in this root's running VEs whose binds
    /// died with a restarted LXCFS or that started while it was down (the
    /// lxcfs.service drop-in of the set-up runs this after every LXCFS start).
    RebindProc(RebindArgs),
    /// Start the VEs created or set `--onboot yes` that are not running, by
    /// `--boot-order` (lower first; one order at once, up to --jobs), as
    /// vectl.service does at host boot.
    Boot(BootArgs),
    /// Stop every running VE gracefully, all at once (up to --jobs), by
    /// `--boot-order` (higher first), as vectl.service does at shutdown.
    Shutdown(BootArgs),
    /// Stop this root's VEs and remove everything it made on the host (network
    /// links, nft tables, cgroup parents, the pool mount and its loop device),
    /// leaving its state directory and other roots as they are. The next
    /// command on the root makes what it needs again.
    Teardown(TeardownArgs),
}

#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// The VE count the host's limits are checked for (default: 1000, or this
    /// root's VE count if larger).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ves: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    limits: LimitsArgs,
    /// Show what would be raised; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RebindArgs {
    /// Seconds to wait for LXCFS to answer (it may still be starting).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    wait: u64,
    /// Every root registered on this host instead of --root's.
    #[arg(long)]
    all_roots: bool,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Every root registered on this host instead of --root's.
    #[arg(long)]
    all_roots: bool,
    /// How many VEs are started or stopped at once (default: boot 32,
    /// shutdown 256).
    #[arg(long, short = 'j', value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// shutdown: seconds each init gets to halt before it is killed.
    #[arg(long, short, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Every root registered on this host (as roots come and go) instead of
    /// --root's.
    #[arg(long)]
    all_roots: bool,
}

/// `vectl supervise`: runs until killed.
pub fn supervise(ctx: &Ctx, a: SuperviseArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find vectl's own binary: {e}"))?;
    let root = ctx.root.clone();
    if !a.all_roots {
        Host::open(&root)?;
    }
    let roots = move || {
        if a.all_roots {
            ve_runtime::registered_roots()
        } else {
            vec![root.clone()]
        }
    };
    ve_runtime::supervise(&roots, &exe)?;
    Ok(ExitCode::SUCCESS)
}

/// `vectl host boot` and `host shutdown`: the roots' VEs in boot-order groups.
fn boot_or_shutdown(ctx: &Ctx, a: &BootArgs, boot: bool) -> Result<ExitCode> {
    let roots = if a.all_roots {
        ve_runtime::registered_roots()
    } else {
        vec![ctx.root.clone()]
    };
    let mut code = ExitCode::SUCCESS;
    for root in roots {
        let rctx = Ctx {
            root: root.clone(),
            json: ctx.json,
            out: crate::output::Out::new(ctx.json),
        };
        // One root's trouble must not keep the others from booting or
        // stopping gracefully.
        let listed = Host::open(&root).and_then(|h| Ok((h.ves().list()?, h)));
        let ((ves, errors), host) = match listed {
            Ok(l) => l,
            Err(e) => {
                ctx.out.error(&anyhow::anyhow!("{}: {e}", root.display()));
                code = ExitCode::FAILURE;
                continue;
            }
        };
        for e in &errors {
            ctx.out.warn(&e.to_string());
        }
        let mut groups: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for v in ves {
            let wanted = if boot {
                v.autostart.onboot && !v.status.is_running()
            } else {
                v.status.is_running()
            };
            if wanted {
                groups
                    .entry(v.autostart.boot_order)
                    .or_default()
                    .push(v.name);
            }
        }
        let mut order: Vec<(u32, Vec<String>)> = groups.into_iter().collect();
        if !boot {
            order.reverse();
        }
        let stop = ve_runtime::StopOptions {
            timeout: std::time::Duration::from_secs(a.timeout),
            fast: false,
        };
        let timeout = a.timeout.to_string();
        for (n, names) in order {
            ctx.out.note(&format!(
                "{}: boot order {n}: {} {}",
                root.display(),
                if boot { "starting" } else { "stopping" },
                names.join(" ")
            ));
            let many = super::Many::of(names).with_jobs(a.jobs.unwrap_or(if boot {
                32
            } else {
                super::STOP_JOBS
            }));
            let args: Vec<&str> = if boot {
                vec!["start"]
            } else {
                vec!["stop", "--timeout", &timeout]
            };
            let done = many.run(&rctx, &many.ves, &args, |ve| {
                if boot {
                    let rs = host.ves().start(ve, false)?;
                    rctx.out.started(ve, &rs);
                } else {
                    let outcome = host.ves().stop(ve, stop)?;
                    rctx.out.stopped(ve, outcome);
                }
                Ok(())
            });
            if done != ExitCode::SUCCESS {
                code = done;
            }
        }
    }
    Ok(code)
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Seconds each VE's init gets to halt before everything is killed.
    #[arg(long, short, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    /// Kill the VEs at once, without asking their inits to halt.
    #[arg(long)]
    fast: bool,
}

#[derive(Debug, Args)]
pub struct HostSetArgs {
    /// Share of the host's CPU time kept out of VE guarantees.
    #[arg(long, value_name = "P%", value_parser = parse::text::<Percent>)]
    reserve_cpu: Option<Checked<Percent>>,
    /// RAM kept out of VE guarantees: a size or a percentage.
    #[arg(long, value_name = "SIZE|P%", value_parser = parse::text::<Amount>)]
    reserve_ram: Option<Checked<Amount>>,
    /// RAM limit of VEs created without --ram (`unlimited`: none).
    #[arg(long, value_name = "SIZE|P%|unlimited", value_parser = parse::text::<Setting<Amount>>)]
    default_ram: Option<Checked<Setting<Amount>>>,
    /// Process limit of VEs created without --pids (`unlimited`: none).
    #[arg(long, value_name = "N|unlimited", value_parser = parse::with(ve_runtime::parse_count))]
    default_pids: Option<Checked<Setting<u64>>>,
    /// Bind LXCFS's /proc files into VEs at start, so that `free`, `top` and
    /// `uptime` in a VE show its own limits and use (`on`, the default).
    #[arg(long, value_name = "on|off", value_parser = parse::with(parse::yes_no))]
    proc_view: Option<Checked<bool>>,
    /// Where LXCFS is mounted (default /var/lib/lxcfs).
    #[arg(long, value_name = "DIR")]
    lxcfs_dir: Option<PathBuf>,
    /// Accept a raised reserve that does not fit beside the CPU and RAM
    /// guarantees of the running VEs.
    #[arg(long)]
    force: bool,
}

/// `vectl init`.
pub fn init(ctx: &Ctx, a: InitArgs) -> Result<ExitCode> {
    let opts = InitOptions {
        cgroup_parent: a.cgroup_parent,
        backend: a
            .backend
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: ve_runtime::UnknownBackend| anyhow::anyhow!("--backend: {e}"))?,
        pool_dir: a.pool_dir,
        pool_size: parse::opt(&a.pool_size, "", "pool-size")?.map(|s| s.0),
        pool_dev: a.pool_dev,
        identity: a.identity,
        no_net: a.no_net,
    };
    let (host, created) = Host::init(&ctx.root, &opts)?;
    ctx.out.init(&host, created);
    let ves = ve_count(None, Some(&host));
    if a.no_host_tuning {
        for l in HostLimits::check(ves).low() {
            ctx.out.warn(&format!(
                "host limit {} is {}, below {} for {ves} VEs: raise it with `{}` (and in /etc/sysctl.d)",
                l.key,
                l.current.unwrap_or(0),
                l.recommended,
                l.command.as_deref().unwrap_or_default()
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The host's limits are no part of the root: a failure to raise them is
    // said, and the root is initialised all the same.
    let report = host_limits::tune(ves, false);
    for l in report.raised() {
        ctx.out.note(&format!(
            "raised host limit {} from {} to {} (for {ves} VEs)",
            l.key,
            l.before.unwrap_or(0),
            l.after.unwrap_or(l.recommended)
        ));
    }
    if report.persisted {
        ctx.out
            .note(&format!("persisted in {}", report.conf.display()));
    }
    for e in &report.errors {
        ctx.out.warn(e);
    }
    let left: Vec<&str> = report
        .limits
        .iter()
        .filter(|l| l.action == TuneAction::LeftToOperator)
        .map(|l| l.key)
        .collect();
    if !left.is_empty() {
        ctx.out.warn(&format!(
            "host limits below what {ves} VEs need, left to the host because vectl runs in a network namespace of its own: {} (`vectl host tune --dry-run` shows the commands)",
            left.join(", ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The VE count to size the host's limits for: `--ves`, else the default or
/// the root's VE count if larger.
fn ve_count(asked: Option<u64>, host: Option<&Host>) -> u64 {
    if let Some(n) = asked {
        return n;
    }
    let here = host
        .and_then(|h| h.ves().list().ok())
        .map_or(0, |(ves, _)| ves.len() as u64);
    here.max(host_limits::DEFAULT_VES)
}

/// `host info`'s section on the host's limits, as text (`host info --json`
/// has them as `host_limits`).
fn print_limits(limits: &HostLimits) {
    println!();
    println!(
        "host limits for {} VEs ({}):",
        limits.ves,
        if limits.host_netns {
            "`vectl host tune` raises the LOW ones"
        } else {
            "vectl runs in a network namespace of its own: LOW ones are for the host to raise"
        }
    );
    let mut t = Table::new(&["KEY", "CURRENT", "RECOMMENDED", "STATUS"])
        .right(1)
        .right(2);
    for l in &limits.limits {
        t.row(vec![
            l.key.to_string(),
            l.current.map_or("-".into(), |v| v.to_string()),
            l.recommended.to_string(),
            match &l.problem {
                Some(p) => format!("{}: {p}", l.status.as_str()),
                None => l.status.as_str().to_string(),
            },
        ]);
    }
    t.print();
}

/// `vectl host tune`.
fn tune(ctx: &Ctx, a: &TuneArgs) -> Result<ExitCode> {
    // The root only counts its VEs (and need not be initialised).
    let host = match a.limits.ves {
        Some(_) => None,
        None => Host::open(&ctx.root).ok(),
    };
    let ves = ve_count(a.limits.ves, host.as_ref());
    let report = host_limits::tune(ves, a.dry_run);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut t = Table::new(&["KEY", "BEFORE", "AFTER", "RECOMMENDED", "RESULT"])
            .right(1)
            .right(2)
            .right(3);
        let num = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        for l in &report.limits {
            let result = match l.action {
                TuneAction::Ok => "ok".to_string(),
                TuneAction::Raised => "raised".to_string(),
                TuneAction::WouldRaise => {
                    format!("would raise: {}", l.command.as_deref().unwrap_or_default())
                }
                TuneAction::LeftToOperator => format!(
                    "left to the host: {}",
                    l.command.as_deref().unwrap_or_default()
                ),
                TuneAction::Skipped => {
                    format!("skipped: {}", l.reason.as_deref().unwrap_or_default())
                }
                TuneAction::Failed => "failed (below)".to_string(),
            };
            t.row(vec![
                l.key.to_string(),
                num(l.before),
                num(l.after),
                l.recommended.to_string(),
                result,
            ]);
        }
        println!("for {ves} VEs:");
        t.print();
        if report.persisted {
            println!("persisted in {}", report.conf.display());
        } else if report.raised().next().is_some() {
            println!("{} already held these values", report.conf.display());
        }
        if !report.host_netns
            && report
                .limits
                .iter()
                .any(|l| l.action == TuneAction::LeftToOperator)
        {
            println!(
                "vectl runs in a network namespace of its own: run the commands on the host, and persist them in /etc/sysctl.d"
            );
        }
    }
    match report.errors.as_slice() {
        [] => Ok(ExitCode::SUCCESS),
        [one] => Err(anyhow::anyhow!("{one}")),
        [first, rest @ ..] => Err(anyhow::anyhow!("{first} (and {} more)", rest.len())),
    }
}

/// `vectl host ...`.
pub fn run(ctx: &Ctx, cmd: HostCommand) -> Result<ExitCode> {
    match cmd {
        HostCommand::Info(a) => {
            let host = ctx.open()?;
            let limits = HostLimits::check(ve_count(a.ves, Some(&host)));
            ctx.out.host_info(&host, &limits)?;
            if !ctx.json {
                print_limits(&limits);
            }
        }
        HostCommand::Tune(a) => return tune(ctx, &a),
        HostCommand::Boot(a) => return boot_or_shutdown(ctx, &a, true),
        HostCommand::Shutdown(a) => return boot_or_shutdown(ctx, &a, false),
        HostCommand::RebindProc(a) => {
            let roots = if a.all_roots {
                ve_runtime::registered_roots()
            } else {
                vec![ctx.root.clone()]
            };
            let wait = std::time::Duration::from_secs(a.wait);
            let mut done = Vec::new();
            let mut failed = false;
            for root in roots {
                let rebound = Host::open(&root).and_then(|h| h.ves().rebind_proc_view(wait));
                match rebound {
                    Ok(list) => done.extend(list.into_iter().map(|(ve, r)| (root.clone(), ve, r))),
                    // With --all-roots a root without the view is no failure,
                    // and one root's trouble does not keep the others waiting.
                    Err(ve_runtime::Error::Refused { reason, .. })
                        if a.all_roots && reason == ve_runtime::VIEW_OFF => {}
                    Err(e) if a.all_roots => {
                        ctx.out.error(&anyhow::anyhow!("{}: {e}", root.display()));
                        failed = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let code = ctx.out.rebound(&done);
            return Ok(if failed { ExitCode::FAILURE } else { code });
        }
        HostCommand::Teardown(a) => {
            let host = ctx.open()?;
            let done = host.teardown(ve_runtime::StopOptions {
                timeout: std::time::Duration::from_secs(a.timeout),
                fast: a.fast,
            })?;
            ctx.out.torn_down(&host, &done);
        }
        HostCommand::Set(a) => {
            let cpu = parse::opt(&a.reserve_cpu, "", "reserve-cpu")?;
            let ram = parse::opt(&a.reserve_ram, "", "reserve-ram")?;
            let default_ram =
                parse::opt(&a.default_ram, "", "default-ram")?.map(Setting::into_option);
            let default_pids =
                parse::opt(&a.default_pids, "", "default-pids")?.map(Setting::into_option);
            if cpu.is_none()
                && ram.is_none()
                && default_ram.is_none()
                && default_pids.is_none()
                && a.proc_view.is_none()
                && a.lxcfs_dir.is_none()
            {
                return Err(parse::usage(
                    "nothing to set (give --reserve-cpu, --reserve-ram, --default-ram, --default-pids, --proc-view or --lxcfs-dir)",
                ));
            }
            let mut host = ctx.open()?;
            host.set_settings(&ve_runtime::SettingsChange {
                reserve_cpu: cpu,
                reserve_ram: ram,
                default_ram,
                default_pids,
                proc_view: parse::opt(&a.proc_view, "", "proc-view")?,
                lxcfs_dir: a.lxcfs_dir,
                force: a.force,
            })?;
            let limits = HostLimits::check(ve_count(None, Some(&host)));
            ctx.out.host_info(&host, &limits)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
