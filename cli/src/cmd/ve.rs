//! The VE commands: create, start, stop, restart, destroy, list, show, set,
//! clone, exec and enter.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use ve_runtime::{
    Amount, Cpus, CreateOptions, ExecOptions, LimitsUpdate, NetShare, NicRequest, Percent, PortMap,
    Rate, Setting, Size, Status, StopOptions, StopOutcome,
};

use super::{Ctx, Many, each};
use crate::parse::{self, Checked};

/// Limits common to `create` and `set`. `unlimited` removes a limit. The values are
/// read by clap but checked by vectl, so a bad one (`12Q`, `-5M`) is a failed
/// operation naming the VE (exit 1), not a usage error.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Memory limit: a size (256M, 1G) or a percentage of host RAM (10%).
    #[arg(long, value_name = "SIZE|P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Amount>>)]
    ram: Option<Checked<Setting<Amount>>>,
    /// Memory protected from reclaim by other VEs: a size or a percentage of host RAM.
    #[arg(long, value_name = "SIZE|P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Amount>>)]
    ram_guarantee: Option<Checked<Setting<Amount>>>,
    /// Swap the VE may use on top of its RAM (needs --ram).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Size>>)]
    swap: Option<Checked<Setting<Size>>>,
    /// CPU cap in percent of one CPU (150% = one and a half CPUs).
    #[arg(long, value_name = "P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Percent>>)]
    cpu_limit: Option<Checked<Setting<Percent>>>,
    /// Minimum share of the whole host's CPU time when it is contended.
    #[arg(long, value_name = "P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Percent>>)]
    cpu_guarantee: Option<Checked<Setting<Percent>>>,
    /// The CPUs the VE may run on: a count (2) or a list (0-1,3).
    #[arg(long, value_name = "N|LIST", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Cpus>>)]
    cpus: Option<Checked<Setting<Cpus>>>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
        value_parser = parse::with(ve_runtime::parse_count))]
    pids: Option<Checked<Setting<u64>>>,
    /// Disk bandwidth cap in bytes per second, reads and writes each (50M).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Size>>)]
    io_limit: Option<Checked<Setting<Size>>>,
    /// Disk operations per second cap, reads and writes each.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
        value_parser = parse::with(ve_runtime::parse_count))]
    iops_limit: Option<Checked<Setting<u64>>>,
    /// Proportional disk weight, 1..1000 (default 100; needs the bfq scheduler).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
        value_parser = parse::with(ve_runtime::parse_count))]
    io_weight: Option<Checked<Setting<u64>>>,
    /// Disk time share under contention (weight 10 per percent; needs bfq).
    #[arg(long, value_name = "P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Percent>>)]
    io_guarantee: Option<Checked<Setting<Percent>>>,
    /// Disk space of the VE's own files (btrfs or xfs pool): 10G; live on a running VE.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Size>>)]
    disk: Option<Checked<Setting<Size>>>,
    /// Network bandwidth cap of each NIC, each direction (100mbit, 1gbit).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<Rate>>)]
    net_limit: Option<Checked<Setting<Rate>>>,
    /// Network bandwidth guaranteed to each NIC under contention: a rate or a
    /// share of the network's --bandwidth (10%).
    #[arg(long, value_name = "RATE|P%", allow_hyphen_values = true,
        value_parser = parse::text::<Setting<NetShare>>)]
    net_guarantee: Option<Checked<Setting<NetShare>>>,
}

impl LimitArgs {
    /// The limits asked for; a malformed one is an error naming the VE.
    pub fn update(&self, ve: &str) -> Result<LimitsUpdate> {
        let c = format!("VE {ve}: ");
        Ok(LimitsUpdate {
            ram: parse::opt(&self.ram, &c, "ram")?,
            ram_guarantee: parse::opt(&self.ram_guarantee, &c, "ram-guarantee")?,
            swap: parse::opt(&self.swap, &c, "swap")?,
            cpu_limit: parse::opt(&self.cpu_limit, &c, "cpu-limit")?,
            cpu_guarantee: parse::opt(&self.cpu_guarantee, &c, "cpu-guarantee")?,
            cpus: parse::opt(&self.cpus, &c, "cpus")?,
            pids: parse::opt(&self.pids, &c, "pids")?,
            io_limit: parse::opt(&self.io_limit, &c, "io-limit")?,
            iops_limit: parse::opt(&self.iops_limit, &c, "iops-limit")?,
            io_weight: parse::opt(&self.io_weight, &c, "io-weight")?,
            io_guarantee: parse::opt(&self.io_guarantee, &c, "io-guarantee")?,
            disk: parse::opt(&self.disk, &c, "disk")?,
            net_limit: parse::opt(&self.net_limit, &c, "net-limit")?,
            net_guarantee: parse::opt(&self.net_guarantee, &c, "net-guarantee")?,
        })
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VE names: lower-case letters, digits and '-' (several: each gets its own
    /// id, addresses and hostname).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// A VE of that name that exists already is left as it is (and started with
    /// `--start`), not an error: running the same create twice changes nothing.
    #[arg(long)]
    if_missing: bool,
    /// Start the VEs once created (several at once, as `start` does).
    #[arg(long)]
    start: bool,
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
    /// No user namespace: root in the VE is the host's root with a reduced
    /// capability set and cannot mount (the same as `--userns host`).
    #[arg(long)]
    privileged: bool,
    /// `private` (default): the VE runs in a user namespace of its own, mapped
    /// to 65536 host ids nothing else has; `host`: as --privileged.
    #[arg(long, value_name = "private|host", value_parser = ["private", "host"])]
    userns: Option<String>,
    /// Create even if its guarantees do not fit beside the running VEs'.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    nic: NicArgs,
    #[command(flatten)]
    autostart: AutostartArgs,
    /// Publish a port on the host's addresses: HOSTPORT:VEPORT[/tcp|udp]
    /// (repeatable; needs a NIC on a nat network).
    #[arg(long, value_name = "HOST:VE[/PROTO]")]
    publish: Vec<String>,
}

/// The NICs of `create` and `set`.
#[derive(Debug, Args)]
pub struct NicArgs {
    /// A network for a NIC (repeatable: eth0, eth1...; `none` = no NIC). create:
    /// default the network `default`. set: the VE's NICs become these; a NIC on
    /// a network it stays on keeps its address and MAC.
    #[arg(long = "net", value_name = "NET")]
    nets: Vec<String>,
    /// The address of the NIC on the matching --net (in order): an address, a
    /// CIDR with the network's prefix, or auto (default).
    #[arg(long = "ip", value_name = "CIDR|auto")]
    ips: Vec<String>,
}

impl NicArgs {
    /// The NICs asked for: each `--ip` belongs to the `--net` before it on the
    /// command line (`at` = the positions of the --net and --ip values).
    pub fn requests(&self, ve: &str, at: &ArgPositions) -> Result<Option<Vec<NicRequest>>> {
        // Malformed is bad usage (exit 2); whether the address fits its
        // network is the network's to say.
        for ip in &self.ips {
            let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "32"));
            let ok = ip == "auto"
                || (addr.parse::<std::net::Ipv4Addr>().is_ok()
                    && prefix.parse::<u8>().is_ok_and(|p| p <= 32));
            if !ok {
                return Err(crate::parse::usage(format!(
                    "VE {ve}: --ip {ip}: not an IPv4 address (a.b.c.d, a.b.c.d/PREFIX or auto)"
                )));
            }
        }
        if self.nets.is_empty() {
            return match self.ips.as_slice() {
                [] => Ok(None),
                [ip] => Ok(Some(vec![NicRequest {
                    net: ve_runtime::DEFAULT_NET.into(),
                    ip: Some(ip.clone()),
                }])),
                _ => bail!("VE {ve}: several --ip but no --net (one --ip after each --net)"),
            };
        }
        if self.nets.iter().any(|n| n == "none") {
            if self.nets.len() > 1 || !self.ips.is_empty() {
                bail!("VE {ve}: --net none stands alone");
            }
            return Ok(Some(Vec::new()));
        }
        let mut out: Vec<NicRequest> = self
            .nets
            .iter()
            .map(|n| NicRequest {
                net: n.clone(),
                ip: None,
            })
            .collect();
        for (ip, pos) in self.ips.iter().zip(&at.ips) {
            let Some(owner) = at.nets.iter().rposition(|n| n < pos) else {
                bail!("VE {ve}: --ip {ip} comes before any --net (give it after its --net)");
            };
            let nic = &mut out[owner];
            if let Some(first) = &nic.ip {
                bail!("VE {ve}: --net {} has two --ip ({first} and {ip})", nic.net);
            }
            nic.ip = Some(ip.clone());
        }
        Ok(Some(out))
    }
}

/// Where the --net and --ip values of `create` stand on the command line.
#[derive(Debug, Default)]
pub struct ArgPositions {
    nets: Vec<usize>,
    ips: Vec<usize>,
}

impl ArgPositions {
    pub fn of(matches: &clap::ArgMatches) -> ArgPositions {
        let Some(("create" | "set" | "import-host", sub)) = matches.subcommand() else {
            return ArgPositions::default();
        };
        let at = |id: &str| {
            sub.indices_of(id)
                .map(|i| i.collect::<Vec<_>>())
                .unwrap_or_default()
        };
        ArgPositions {
            nets: at("nets"),
            ips: at("ips"),
        }
    }
}

fn parse_publish(ve: &str, flag: &str, list: &[String]) -> Result<Vec<PortMap>> {
    list.iter()
        .map(|p| {
            p.parse::<PortMap>()
                .map_err(|e| crate::parse::usage(format!("VE {ve}: --{flag}: {e}")))
        })
        .collect()
}

/// `--unpublish HOSTPORT[/PROTO]`.
fn parse_unpublish(ve: &str, list: &[String]) -> Result<Vec<PortMap>> {
    list.iter()
        .map(|p| {
            let (port, proto) = match p.rsplit_once('/') {
                Some((port, "tcp")) => (port, ve_runtime::Proto::Tcp),
                Some((port, "udp")) => (port, ve_runtime::Proto::Udp),
                Some(_) => {
                    return Err(crate::parse::usage(format!(
                        "VE {ve}: --unpublish {p:?}: expected HOSTPORT[/tcp|udp]"
                    )));
                }
                None => (p.as_str(), ve_runtime::Proto::Tcp),
            };
            let host_port: u16 = port.parse().map_err(|_| {
                crate::parse::usage(format!(
                    "VE {ve}: --unpublish {p:?}: expected HOSTPORT[/tcp|udp]"
                ))
            })?;
            Ok(PortMap {
                host_port,
                ve_port: 0,
                proto,
            })
        })
        .collect()
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    many: Many,
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

    /// The same options, for a vectl process that stops or restarts one VE.
    fn child_args(&self, verb: &'static str) -> Vec<String> {
        let mut args = vec![
            verb.to_string(),
            "--timeout".into(),
            self.timeout.to_string(),
        ];
        if self.fast {
            args.push("--fast".into());
        }
        args
    }
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The VE and its limits, as `resize` takes them.
    #[command(flatten)]
    res: ResizeArgs,
    /// Publish a port on the host's addresses: HOSTPORT:VEPORT[/tcp|udp]
    /// (repeatable).
    #[arg(long, value_name = "HOST:VE[/PROTO]")]
    publish: Vec<String>,
    /// Withdraw a published port: HOSTPORT[/tcp|udp] (repeatable).
    #[arg(long, value_name = "HOST[/PROTO]")]
    unpublish: Vec<String>,
    /// Move the stopped VE into a user namespace of its own (`private`) or
    /// out of it (`host`, privileged); its files stay as they are.
    #[arg(long, value_name = "private|host", value_parser = ["private", "host"])]
    userns: Option<String>,
    /// The VE's hostname: at once in a running VE, and in its /etc/hostname
    /// and /etc/hosts at its next start.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// NICs (of a stopped VE).
    #[command(flatten)]
    nic: NicArgs,
    #[command(flatten)]
    autostart: AutostartArgs,
}

/// When a VE starts by itself (`create` and `set`).
#[derive(Debug, Args, Default)]
pub struct AutostartArgs {
    /// Start the VE at host boot (`vectl host boot`, run by vectl.service).
    #[arg(long, value_name = "yes|no", value_parser = crate::parse::with(crate::parse::yes_no))]
    onboot: Option<crate::parse::Checked<bool>>,
    /// Its place at boot: lower orders start first (and stop last); VEs of one
    /// order start at once. Default 0.
    #[arg(long, value_name = "N")]
    boot_order: Option<u32>,
    /// What the supervisor (vectl-supervisor.service) does when the VE's init
    /// ends without `vectl stop`: `no` (default), `on-failure` (a signal or a
    /// status other than 0), `always`; with back-off, 1 s doubling to 5 min.
    #[arg(long, value_name = "no|on-failure|always",
          value_parser = crate::parse::text::<ve_runtime::RestartPolicy>)]
    restart: Option<crate::parse::Checked<ve_runtime::RestartPolicy>>,
}

impl AutostartArgs {
    fn is_empty(&self) -> bool {
        self.onboot.is_none() && self.boot_order.is_none() && self.restart.is_none()
    }

    fn change(&self, ve: &str) -> Result<ve_runtime::AutostartChange> {
        let ctx = format!("VE {ve}: ");
        Ok(ve_runtime::AutostartChange {
            onboot: crate::parse::opt(&self.onboot, &ctx, "onboot")?,
            boot_order: self.boot_order,
            restart: crate::parse::opt(&self.restart, &ctx, "restart")?,
        })
    }
}

/// `vectl resize`: `set` of the resources alone.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    #[arg(value_name = "VE")]
    ve: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Skip admission control, and lower RAM below what the VE uses even where
    /// the kernel then kills processes in it to make it fit.
    #[arg(long)]
    force: bool,
}

/// `vectl resize`: the same as `set` with the same limits.
pub fn resize(ctx: &Ctx, a: ResizeArgs) -> Result<ExitCode> {
    if a.limits.update(&a.ve)?.is_empty() {
        return Err(crate::parse::usage(format!(
            "VE {}: nothing to resize (give --ram, --disk, --cpu-limit or another limit)",
            a.ve
        )));
    }
    set(
        ctx,
        SetArgs {
            res: a,
            publish: Vec::new(),
            unpublish: Vec::new(),
            userns: None,
            hostname: None,
            nic: NicArgs {
                nets: Vec::new(),
                ips: Vec::new(),
            },
            autostart: AutostartArgs::default(),
        },
        &ArgPositions::default(),
    )
}

#[derive(Debug, Args)]
pub struct ExecArgs {
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
    /// Pass N file descriptors after stdio (3 .. 3+N-1) that this command was
    /// given on to CMD; every other descriptor is closed in the VE.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    many: Many,
    /// Start even if guarantees do not fit beside the running VEs'.
    #[arg(long)]
    force: bool,
    /// The supervisor's restart: only if no stop or start came since the
    /// init ended.
    #[arg(long, hide = true, conflicts_with = "force")]
    pending_restart: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[arg(required = true, value_name = "VE")]
    ves: Vec<String>,
    /// Kill a running VE first.
    #[arg(long, short)]
    force: bool,
}

/// One VE, by name (`show`, `enter`).
#[derive(Debug, Args)]
pub struct VeArg {
    #[arg(value_name = "VE")]
    pub ve: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(value_name = "VE")]
    ve: String,
    /// Only the last N lines.
    #[arg(long, short = 'n', value_name = "N")]
    lines: Option<usize>,
    /// Then print what comes, until interrupted.
    #[arg(long, short)]
    follow: bool,
}

/// `vectl console`.
pub fn console(ctx: &Ctx, a: VeArg) -> Result<ExitCode> {
    ctx.open()?.ves().console(&a.ve)?;
    Ok(ExitCode::SUCCESS)
}

/// `vectl logs`.
pub fn logs(ctx: &Ctx, a: LogsArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    ctx.open()?.ves().logs(&a.ve, a.lines, a.follow, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    #[arg(value_name = "VE")]
    ve: String,
    #[arg(value_name = "NEW")]
    new: String,
}

/// `vectl rename`.
pub fn rename(ctx: &Ctx, a: RenameArgs) -> Result<ExitCode> {
    let done = ctx.open()?.ves().rename(&a.ve, &a.new)?;
    ctx.out.renamed(&done);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    #[arg(value_name = "SRC")]
    src: String,
    #[arg(value_name = "DST")]
    dst: String,
    /// Template version of the copy (default: the source's).
    #[arg(long, short = 'T', value_name = "NAME@VERSION")]
    template: Option<String>,
    /// Hostname of the copy (default: its name).
    #[arg(long)]
    hostname: Option<String>,
}

/// `vectl create`.
pub fn create(ctx: &Ctx, a: CreateArgs, at: &ArgPositions) -> Result<ExitCode> {
    let first = a.names[0].clone();
    if a.names.len() > 1 {
        let one_only = [
            ("--id", a.id.is_some()),
            ("--hostname", a.hostname.is_some()),
            ("--publish", !a.publish.is_empty()),
            ("--ip ADDRESS", a.nic.ips.iter().any(|ip| ip != "auto")),
        ];
        if let Some((opt, _)) = one_only.iter().find(|(_, given)| *given) {
            return Err(crate::parse::usage(format!(
                "create {first} and {} more: {opt} is for one VE; create that one alone",
                a.names.len() - 1
            )));
        }
    }
    // Checked in this order: limits, NICs, ports; before a root is made.
    let limits = a.limits.update(&first)?;
    let nics = a.nic.requests(&first, at)?;
    let publish = parse_publish(&first, "publish", &a.publish)?;
    let autostart = a.autostart.change(&first)?;
    // The one VE command that initialises a new root (README: init).
    let host = ctx.open_or_init()?;
    let mut opts = CreateOptions {
        limits,
        name: first,
        template: a.template,
        hostname: a.hostname,
        init: a.init,
        stop_signal: a.stop_signal,
        id: a.id,
        force: a.force,
        nics,
        ports: publish,
        privileged: a.privileged || a.userns.as_deref() == Some("host"),
        autostart: autostart.applied_to(&ve_runtime::Autostart::default()),
    };
    let mut ready = Vec::new();
    let mut failed = false;
    for name in &a.names {
        opts.name = name.clone();
        match host.ves().create(&opts) {
            Ok(cfg) => {
                ctx.out.created(&cfg);
                ready.push(name.clone());
            }
            Err(ve_runtime::Error::VeExists { .. }) if a.if_missing => {
                ctx.out.note(&format!("VE {name} exists: left as it is"));
                ready.push(name.clone());
            }
            Err(e) => {
                ctx.out.error(&e.into());
                failed = true;
            }
        }
    }
    if a.start && !ready.is_empty() {
        // Those not running yet (with --if-missing some may be).
        let (ves, _) = host.ves().list()?;
        ready.retain(|n| ves.iter().any(|v| v.name == *n && !v.status.is_running()));
        let many = Many::of(ready);
        if many.run(ctx, &many.ves, &["start"], |ve| {
            let rs = host.ves().start(ve, false)?;
            ctx.out.started(ve, &rs);
            Ok(())
        }) != ExitCode::SUCCESS
        {
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `vectl start`.
pub fn start(ctx: &Ctx, a: StartArgs) -> Result<ExitCode> {
    let ves = a.many.names(ctx, Status::Stopped)?;
    let host = ctx.open()?;
    let out = &ctx.out;
    let args: &[&str] = if a.force {
        &["start", "--force"]
    } else {
        &["start"]
    };
    Ok(a.many.run(ctx, &ves, args, |ve| {
        if a.pending_restart {
            match host.ves().start_pending_restart(ve)? {
                Some(rs) => out.started(ve, &rs),
                None => out.note(&format!("VE {ve}: not restarted, stopped or started since")),
            }
            return Ok(());
        }
        let rs = host.ves().start(ve, a.force)?;
        out.started(ve, &rs);
        Ok(())
    }))
}

/// `vectl stop`.
pub fn stop(ctx: &Ctx, a: StopArgs) -> Result<ExitCode> {
    let ves = a.many.names(ctx, Status::Running)?;
    let host = ctx.open()?;
    let out = &ctx.out;
    let args = a.child_args("stop");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(a.many.run(ctx, &ves, &args, |ve| {
        let outcome = host.ves().stop(ve, a.options())?;
        out.stopped(ve, outcome);
        Ok(())
    }))
}

/// `vectl restart`.
pub fn restart(ctx: &Ctx, a: StopArgs) -> Result<ExitCode> {
    let ves = a.many.names(ctx, Status::Running)?;
    let host = ctx.open()?;
    let out = &ctx.out;
    let args = a.child_args("restart");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(a.many.run(ctx, &ves, &args, |ve| {
        let outcome = host.ves().stop(ve, a.options())?;
        if outcome == StopOutcome::AlreadyStopped {
            out.note(&format!("VE {ve}: was not running"));
        }
        let rs = host.ves().start(ve, false)?;
        out.started(ve, &rs);
        Ok(())
    }))
}

/// `vectl destroy`.
pub fn destroy(ctx: &Ctx, a: DestroyArgs) -> Result<ExitCode> {
    let host = ctx.open()?;
    let out = &ctx.out;
    Ok(each(out, &a.ves, |ve| {
        host.ves().destroy(ve, a.force)?;
        out.destroyed(ve);
        Ok(())
    }))
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the VEs in this state.
    /// (`stopped`: every VE that does not run, crashed and exited ones too).
    #[arg(long, value_name = "STATUS", value_parser = ["running", "stopped", "crashed", "exited"])]
    status: Option<String>,
    /// The columns, comma-separated: id, name, status, template, hostname, ram,
    /// swap, cpu, cpus, pids, disk, address, addresses, userns, pid, uptime.
    #[arg(long, short = 'o', value_name = "COLUMNS", default_value = crate::output::LIST_DEFAULT)]
    output: String,
    /// Text layout: an aligned table, or CSV with a header line.
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "csv"])]
    format: String,
}

/// `vectl list`.
pub fn list(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let mut cols = Vec::new();
    for name in a.output.split(',').map(str::trim) {
        let Some(c) = crate::output::LIST_COLUMNS.iter().find(|c| c.name == name) else {
            let known: Vec<&str> = crate::output::LIST_COLUMNS.iter().map(|c| c.name).collect();
            return Err(crate::parse::usage(format!(
                "list -o: no column {name:?} (columns: {})",
                known.join(", ")
            )));
        };
        cols.push(c);
    }
    let host = ctx.open()?;
    let (mut ves, errors) = host.ves().list_to_show()?;
    for e in &errors {
        ctx.out.warn(&e.to_string());
    }
    // Containers OCI engines made through `vectl oci` (their runtime root:
    // $VECTL_OCI_ROOT or /run/vectl-oci), marked as theirs.
    let mut oci = ve_runtime::oci::managed(&ve_runtime::oci::default_root());
    if let Some(status) = &a.status {
        let want = match status.as_str() {
            "running" => Status::Running,
            "crashed" => Status::Crashed,
            "exited" => Status::Exited,
            _ => Status::Stopped,
        };
        ves.retain(|v| v.status.matches(want));
        oci.retain(|s| s.status.to_string() == status.as_str());
    }
    ctx.out.list(&host, &ves, &oci, &cols, a.format == "csv");
    Ok(ExitCode::SUCCESS)
}

/// `vectl show`.
pub fn show(ctx: &Ctx, a: VeArg) -> Result<ExitCode> {
    let host = ctx.open()?;
    let d = host.ves().show(&a.ve)?;
    for p in &d.problems {
        ctx.out.warn(p);
    }
    ctx.out.show(&host, &d);
    Ok(ExitCode::SUCCESS)
}

/// `vectl clone`.
pub fn clone(ctx: &Ctx, a: CloneArgs) -> Result<ExitCode> {
    let c =
        ctx.open()?
            .ves()
            .clone(&a.src, &a.dst, a.template.as_deref(), a.hostname.as_deref())?;
    ctx.out.cloned(&a.src, &c);
    Ok(ExitCode::SUCCESS)
}

/// `vectl set`.
pub fn set(ctx: &Ctx, s: SetArgs, at: &ArgPositions) -> Result<ExitCode> {
    let a = &s.res;
    let update = a.limits.update(&a.ve)?;
    let add = parse_publish(&a.ve, "publish", &s.publish)?;
    let remove = parse_unpublish(&a.ve, &s.unpublish)?;
    let nics = s.nic.requests(&a.ve, at)?;
    let autostart = s.autostart.change(&a.ve)?;
    if update.is_empty()
        && add.is_empty()
        && remove.is_empty()
        && s.userns.is_none()
        && s.hostname.is_none()
        && nics.is_none()
        && s.autostart.is_empty()
    {
        return Err(crate::parse::usage(format!(
            "VE {}: nothing to set (give a limit such as --ram or --cpu-limit, --publish, \
             --hostname, --net or --userns)",
            a.ve
        )));
    }
    let host = ctx.open()?;
    // What a running VE refuses (NICs, its user namespace) first, then what
    // the kernel may refuse (limits, ports); the hostname and autostart, which
    // a valid value always takes, last: a refusal leaves the rest as it was.
    if let Some(reqs) = &nics {
        let now = host.ves().set_nics(&a.ve, reqs)?;
        ctx.out.nics_set(&a.ve, &now);
    }
    if let Some(mode) = &s.userns {
        let range = host.ves().set_userns(&a.ve, mode == "private")?;
        ctx.out.userns_set(&a.ve, range);
    }
    if let Some(h) = &s.hostname {
        ve_runtime::validate_hostname(h)?;
    }
    let ports = !add.is_empty() || !remove.is_empty();
    if !update.is_empty() {
        // Both or neither: the ports are checked before the limits change.
        if ports {
            host.ves().map_ports(&a.ve, &add, &remove, true)?;
        }
        let outcome = host.ves().set(&a.ve, &update, a.force)?;
        ctx.out.set(&a.ve, &outcome);
    }
    if ports {
        let list = host.ves().map_ports(&a.ve, &add, &remove, false)?;
        ctx.out.published(&a.ve, &list);
    }
    if let Some(h) = &s.hostname {
        let live = host.ves().set_hostname(&a.ve, h)?;
        ctx.out.hostname_set(&a.ve, h, live);
    }
    if !s.autostart.is_empty() {
        let now = host.ves().set_autostart(&a.ve, &autostart)?;
        ctx.out.autostart_set(&a.ve, &now);
    }
    Ok(ExitCode::SUCCESS)
}

/// `vectl exec`: the command's exit status.
pub fn exec(ctx: &Ctx, a: ExecArgs) -> Result<ExitCode> {
    let code = ctx.open()?.ves().exec(
        &a.ve,
        &ExecOptions {
            argv: a.command,
            tty: a.tty,
            env: a.env,
            workdir: a.workdir,
            arg0: None,
            preserve_fds: a.preserve_fds,
        },
    )?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `vectl enter`: the shell's exit status.
pub fn enter(ctx: &Ctx, a: VeArg) -> Result<ExitCode> {
    let code = ctx.open()?.ves().enter(&a.ve)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
