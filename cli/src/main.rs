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
    Amount, Cpus, CreateOptions, ExecOptions, Host, InitOptions, LimitsUpdate, Mode, NetCreate,
    NetShare, NetUpdate, NicRequest, Percent, Publish, Rate, Setting, Size, Source, StopOptions,
    StopOutcome, Subnet,
};

use ve_runtime::netns::model::HostAccess;

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
        /// Start even if guarantees do not fit beside the running VEs'.
        #[arg(long)]
        force: bool,
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
    /// Move a VE to another template version: its own files are snapshotted
    /// first, a running VE is restarted. With --check: only the conflict report
    /// (exit status 3 when there are conflicts). With --all --from --to: every VE
    /// on a version, in batches, with a health check (exit status 1 if the
    /// rollout was halted).
    Upgrade {
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
    },
    /// Undo a VE's latest upgrade: its own files exactly as before it, and the
    /// version it came from.
    Rollback {
        #[arg(value_name = "VE")]
        ve: String,
        #[command(flatten)]
        stop: StopFlags,
    },
    /// Keep VEs' upgrades for good: delete their rollback snapshots and let
    /// go of the versions they came from (`template gc` may then remove them);
    /// `rollback` has nothing to undo afterwards.
    Commit {
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
    },
    /// A VE's moves between template versions.
    History {
        #[arg(value_name = "VE")]
        ve: String,
    },
    /// Copy a VE (its own files, limits and networks) as a new, stopped VE, on
    /// its template version or another one, with a new name, id, MACs and
    /// addresses. A running source is frozen for the moment of the copy.
    Clone {
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
    },
    /// Resource use per VE: CPU, RAM, swap, processes, disk I/O, OOM kills.
    Stats {
        /// VEs (default: all).
        #[arg(value_name = "VE")]
        ves: Vec<String>,
        /// Refresh every SECS seconds like `top` (CPU % over each interval).
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Run a command inside a running VE.
    Exec(ExecArgs),
    /// Open an interactive shell inside a running VE.
    Enter {
        #[arg(value_name = "VE")]
        ve: String,
    },
    /// The storage pool: use, growing it, checking it.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Snapshots of a VE's own files (btrfs pool).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Virtual networks: bridged, host-only, nat, routed.
    #[command(subcommand)]
    Net(NetCommand),
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Create a network.
    Create(NetCreateArgs),
    /// List networks.
    List,
    /// Show a network and the VEs on it.
    Show {
        #[arg(value_name = "NET")]
        net: String,
    },
    /// Remove a network (refused while a VE has a NIC on it).
    Rm {
        #[arg(value_name = "NET")]
        net: String,
    },
    /// Change a network's settings (the firewall follows at once, running VEs
    /// included).
    Set(NetSetArgs),
}

#[derive(Debug, Args)]
struct NetSetArgs {
    #[arg(value_name = "NET")]
    net: String,
    /// The services on the host's own addresses the VEs may reach besides ping,
    /// replacing the list: tcp:22,udp:53,tcp:8000-8100, all, or none.
    #[arg(long, value_name = "PROTO:PORT,...")]
    allow_host: Option<String>,
}

#[derive(Debug, Args)]
struct NetCreateArgs {
    /// Network name.
    name: String,
    /// bridged (VEs on the LAN through --uplink), host-only (VEs and the host),
    /// nat (host-only plus masquerade and published ports), routed (each VE's
    /// address routed to it, the host answering ARP on --uplink).
    #[arg(long)]
    mode: String,
    /// IPv4 subnet of the VEs' addresses (default for nat and host-only: a free
    /// 10.x.y.0/20).
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
    /// The VEs' default gateway (nat and host-only: the host's address on the
    /// bridge, default the subnet's first address; bridged: the LAN's router).
    #[arg(long, value_name = "IP")]
    gateway: Option<String>,
    /// Host interface to the LAN (bridged: an interface without addresses, or a
    /// bridge such as br0; routed: where the host answers ARP for the VEs).
    #[arg(long, value_name = "IFACE")]
    uplink: Option<String>,
    /// Make the uplink an 802.1Q VLAN of --uplink with this id.
    #[arg(long, value_name = "ID")]
    vlan: Option<u16>,
    /// Name servers for the VEs' /etc/resolv.conf (default for nat: the host's).
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    dns: Option<Vec<String>>,
    /// Total bandwidth, shared by the VEs' --net-guarantee (100mbit, 1gbit).
    #[arg(long, value_name = "RATE")]
    bandwidth: Option<String>,
    /// Services on the host's own addresses the VEs may reach besides ping
    /// (default none): tcp:22,udp:53,tcp:8000-8100, or all.
    #[arg(long, value_name = "PROTO:PORT,...")]
    allow_host: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Size, use and free space; each VE's and template's use.
    Info,
    /// Grow the pool online (an image pool to SIZE; a device pool to its device).
    Grow {
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
    },
    /// Find what a crash left behind (volumes without VEs, VEs without volumes,
    /// stale quota groups); --repair fixes it.
    Check {
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Snapshot a VE's files (a running VE is frozen for the moment it takes).
    Create {
        #[arg(value_name = "VE")]
        ve: String,
        /// Snapshot name (default: the time, like 20261126-104512).
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// A VE's snapshots.
    List {
        #[arg(value_name = "VE")]
        ve: String,
    },
    /// Delete a snapshot.
    Rm {
        #[arg(value_name = "VE")]
        ve: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Put a stopped VE's files back to a snapshot (the snapshot stays).
    Restore {
        #[arg(value_name = "VE")]
        ve: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Parent of the VE cgroups: `vectl`, `/a/b`, or `./name` (below this
    /// command's own cgroup, resolved now).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// Storage backend: `btrfs` (default; disk limits, no copies) or `dir` (any
    /// file system, no disk limits).
    #[arg(long, value_parser = ["btrfs", "dir"])]
    backend: Option<String>,
    /// Pool directory (default: ROOT/pool). With btrfs and no --pool-size or
    /// --pool-dev: a directory on a btrfs the operator mounted.
    #[arg(long, value_name = "DIR")]
    pool_dir: Option<PathBuf>,
    /// Size of the pool's sparse image file ROOT/pool.img (default: half the free
    /// space, at most 1T).
    #[arg(long, value_name = "SIZE")]
    pool_size: Option<String>,
    /// A block device for the pool: used if it holds btrfs, formatted if blank.
    #[arg(long, value_name = "DEV", conflicts_with = "pool_size")]
    pool_dev: Option<PathBuf>,
    /// Do not make the default nat network (VEs then get loopback only unless
    /// created with --net).
    #[arg(long)]
    no_net: bool,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Capacity, committed guarantees and limits, cgroup version, paths.
    Info,
    /// Change host settings.
    Set {
        /// Share of the host's CPU time kept out of VE guarantees.
        #[arg(long, value_name = "P%")]
        reserve_cpu: Option<String>,
        /// RAM kept out of VE guarantees: a size or a percentage.
        #[arg(long, value_name = "SIZE|P%")]
        reserve_ram: Option<String>,
        /// RAM limit of VEs created without --ram (`unlimited`: none).
        #[arg(long, value_name = "SIZE|P%|unlimited")]
        default_ram: Option<String>,
        /// Process limit of VEs created without --pids (`unlimited`: none).
        #[arg(long, value_name = "N|unlimited")]
        default_pids: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Import a root file system as the next version of a template.
    Import(ImportArgs),
    /// Publish the next version of an existing template: a command run in a
    /// throwaway build VE on the latest version (--run), or a given tree. VEs stay
    /// pinned to their versions.
    Update(UpdateArgs),
    /// List template versions.
    List,
    /// One version (the latest without @VERSION) and the VEs on it.
    Show {
        #[arg(value_name = "NAME[@VERSION]")]
        template: String,
    },
    /// A template's versions, oldest first: date, source, size, message, VEs.
    Log {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// The VEs on each version (of NAME, or of every template).
    Usage {
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// Remove a version (or all versions of NAME); refused while a VE uses it.
    Rm {
        #[arg(value_name = "NAME[@VERSION]")]
        template: String,
    },
    /// Remove every version that is neither a template's latest nor used.
    Gc,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)))]
struct ImportArgs {
    #[command(flatten)]
    src: SourceArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)))]
struct UpdateArgs {
    /// Run this command (with /bin/sh -c, no input) in a throwaway build VE on the
    /// latest version and publish what it changed, e.g.
    /// 'apt-get update && apt-get -y upgrade'.
    #[arg(long, group = "source", value_name = "CMD")]
    run: Option<String>,
    #[command(flatten)]
    src: SourceArgs,
}

/// Where a template version comes from.
#[derive(Debug, Args)]
struct SourceArgs {
    /// Template name.
    name: String,
    /// A directory holding the root file system.
    #[arg(long, group = "source", value_name = "DIR")]
    from_dir: Option<PathBuf>,
    /// A tar archive of it (plain, .gz or .zst).
    #[arg(long, group = "source", value_name = "FILE")]
    from_tar: Option<PathBuf>,
    /// Build a Debian/Ubuntu tree of this suite (bookworm, noble...) with debootstrap.
    #[arg(long, group = "source", value_name = "SUITE")]
    debootstrap: Option<String>,
    /// The archive debootstrap installs from (http://, https:// or file:///).
    /// [default: http://deb.debian.org/debian]
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "URL")]
    mirror: Option<String>,
    /// Extra packages for debootstrap, comma-separated.
    #[arg(
        long,
        requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"],
        value_name = "PKG,...",
        value_delimiter = ','
    )]
    include: Vec<String>,
    /// debootstrap's variant: minbase (the smallest tree), buildd, ...
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "VARIANT")]
    variant: Option<String>,
    /// OpenPGP keyring the mirror's Release file is checked against (default: the
    /// Debian archive keyring).
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// A local OCI image layout directory (`skopeo copy IMAGE oci:DIR`, or an
    /// unpacked `docker save`): its image's layers applied in order, digests checked.
    /// DIR:REF picks the image of that ref name; else the only image or the one for
    /// this host's platform.
    #[arg(long, group = "source", value_name = "DIR[:REF]")]
    oci_layout: Option<PathBuf>,
    /// A note recorded with the version.
    #[arg(long, short, default_value = "")]
    message: String,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<Source> {
        Ok(if let Some(d) = &self.from_dir {
            Source::Dir(d.clone())
        } else if let Some(t) = &self.from_tar {
            Source::Tar(t.clone())
        } else if let Some(o) = &self.oci_layout {
            Source::OciLayout(o.clone())
        } else if let Some(suite) = &self.debootstrap {
            Source::Debootstrap(ve_runtime::Debootstrap {
                suite: suite.clone(),
                mirror: self
                    .mirror
                    .clone()
                    .unwrap_or_else(|| ve_runtime::DEBIAN_MIRROR.into()),
                include: self.include.clone(),
                variant: self.variant.clone(),
                keyring: self.keyring.clone(),
            })
        } else {
            bail!("give --from-dir, --from-tar, --oci-layout or --debootstrap")
        })
    }
}

/// Limits common to `create` and `set`. `unlimited` removes a limit. The values are
/// taken as text and checked by vectl, so a bad one (`12Q`, `-5M`) is a failed
/// operation naming the VE (exit 1), not a usage error.
#[derive(Debug, Args, Default)]
struct LimitArgs {
    /// Memory limit: a size (256M, 1G) or a percentage of host RAM (10%).
    #[arg(long, value_name = "SIZE|P%", allow_hyphen_values = true)]
    ram: Option<String>,
    /// Memory protected from reclaim by other VEs: a size or a percentage of host RAM.
    #[arg(long, value_name = "SIZE|P%", allow_hyphen_values = true)]
    ram_guarantee: Option<String>,
    /// Swap the VE may use on top of its RAM (needs --ram).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    swap: Option<String>,
    /// CPU cap in percent of one CPU (150% = one and a half CPUs).
    #[arg(long, value_name = "P%", allow_hyphen_values = true)]
    cpu_limit: Option<String>,
    /// Minimum share of the whole host's CPU time when it is contended.
    #[arg(long, value_name = "P%", allow_hyphen_values = true)]
    cpu_guarantee: Option<String>,
    /// The CPUs the VE may run on: a count (2) or a list (0-1,3).
    #[arg(long, value_name = "N|LIST", allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pids: Option<String>,
    /// Disk bandwidth cap in bytes per second, reads and writes each (50M).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    io_limit: Option<String>,
    /// Disk operations per second cap, reads and writes each.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    iops_limit: Option<String>,
    /// Proportional disk weight, 1..1000 (default 100; needs the bfq scheduler).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    io_weight: Option<String>,
    /// Disk time share under contention (weight 10 per percent; needs bfq).
    #[arg(long, value_name = "P%", allow_hyphen_values = true)]
    io_guarantee: Option<String>,
    /// Disk space of the VE's own files (btrfs pool): 10G; live on a running VE.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    disk: Option<String>,
    /// Network bandwidth cap of each NIC, each direction (100mbit, 1gbit).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    net_limit: Option<String>,
    /// Network bandwidth guaranteed to each NIC under contention: a rate or a
    /// share of the network's --bandwidth (10%).
    #[arg(long, value_name = "RATE|P%", allow_hyphen_values = true)]
    net_guarantee: Option<String>,
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
        fn text<T: std::str::FromStr<Err = String>>(
            s: &str,
        ) -> std::result::Result<Setting<T>, String> {
            s.parse::<Setting<T>>()
        }
        Ok(LimitsUpdate {
            ram: parse(ve, "ram", &self.ram, text::<Amount>)?,
            ram_guarantee: parse(ve, "ram-guarantee", &self.ram_guarantee, text::<Amount>)?,
            swap: parse(ve, "swap", &self.swap, text::<Size>)?,
            cpu_limit: parse(ve, "cpu-limit", &self.cpu_limit, text::<Percent>)?,
            cpu_guarantee: parse(ve, "cpu-guarantee", &self.cpu_guarantee, text::<Percent>)?,
            cpus: parse(ve, "cpus", &self.cpus, text::<Cpus>)?,
            pids: parse(ve, "pids", &self.pids, ve_runtime::parse_count)?,
            io_limit: parse(ve, "io-limit", &self.io_limit, text::<Size>)?,
            iops_limit: parse(ve, "iops-limit", &self.iops_limit, ve_runtime::parse_count)?,
            io_weight: parse(ve, "io-weight", &self.io_weight, ve_runtime::parse_count)?,
            io_guarantee: parse(ve, "io-guarantee", &self.io_guarantee, text::<Percent>)?,
            disk: parse(ve, "disk", &self.disk, text::<Size>)?,
            net_limit: parse(ve, "net-limit", &self.net_limit, text::<Rate>)?,
            net_guarantee: parse(ve, "net-guarantee", &self.net_guarantee, text::<NetShare>)?,
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
    /// Create even if its guarantees do not fit beside the running VEs'.
    #[arg(long)]
    force: bool,
    /// A network for a NIC (repeatable: eth0, eth1...; default: the network
    /// `default`; `none` = no NIC).
    #[arg(long = "net", value_name = "NET")]
    nets: Vec<String>,
    /// The address of the NIC on the matching --net (in order): an address, a
    /// CIDR with the network's prefix, or auto (default).
    #[arg(long = "ip", value_name = "CIDR|auto")]
    ips: Vec<String>,
    /// Publish a port on the host's addresses: HOSTPORT:VEPORT[/tcp|udp]
    /// (repeatable; needs a NIC on a nat network).
    #[arg(long, value_name = "HOST:VE[/PROTO]")]
    publish: Vec<String>,
}

impl CreateArgs {
    /// The NICs asked for: each `--ip` belongs to the `--net` before it on the
    /// command line (`at` = the positions of the --net and --ip values).
    fn nics(&self, at: &ArgPositions) -> Result<Option<Vec<NicRequest>>> {
        let ve = &self.name;
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
struct ArgPositions {
    nets: Vec<usize>,
    ips: Vec<usize>,
}

impl ArgPositions {
    fn of(matches: &clap::ArgMatches) -> ArgPositions {
        let Some(("create", sub)) = matches.subcommand() else {
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

fn parse_publish(ve: &str, flag: &str, list: &[String]) -> Result<Vec<Publish>> {
    list.iter()
        .map(|p| {
            p.parse::<Publish>()
                .map_err(|e| anyhow::anyhow!("VE {ve}: --{flag}: {e}"))
        })
        .collect()
}

/// `--unpublish HOSTPORT[/PROTO]`.
fn parse_unpublish(ve: &str, list: &[String]) -> Result<Vec<Publish>> {
    list.iter()
        .map(|p| {
            let (port, proto) = match p.rsplit_once('/') {
                Some((port, "tcp")) => (port, ve_runtime::Proto::Tcp),
                Some((port, "udp")) => (port, ve_runtime::Proto::Udp),
                Some(_) => bail!("VE {ve}: --unpublish {p:?}: expected HOSTPORT[/tcp|udp]"),
                None => (p.as_str(), ve_runtime::Proto::Tcp),
            };
            let host_port: u16 = port.parse().map_err(|_| {
                anyhow::anyhow!("VE {ve}: --unpublish {p:?}: expected HOSTPORT[/tcp|udp]")
            })?;
            Ok(Publish {
                host_port,
                ve_port: 0,
                proto,
            })
        })
        .collect()
}

/// How a running VE is stopped for an upgrade or rollback.
#[derive(Debug, Args)]
struct StopFlags {
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
    /// Skip admission control, and lower RAM below what the VE uses even where
    /// the kernel then kills processes in it to make it fit.
    #[arg(long)]
    force: bool,
    /// Publish a port on the host's addresses: HOSTPORT:VEPORT[/tcp|udp]
    /// (repeatable).
    #[arg(long, value_name = "HOST:VE[/PROTO]")]
    publish: Vec<String>,
    /// Withdraw a published port: HOSTPORT[/tcp|udp] (repeatable).
    #[arg(long, value_name = "HOST[/PROTO]")]
    unpublish: Vec<String>,
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
    /// Pass N file descriptors after stdio (3 .. 3+N-1) that this command was
    /// given on to CMD; every other descriptor is closed in the VE.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
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
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let out = Out::new(cli.json);
    match run(cli, &ArgPositions::of(&matches), &out) {
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

fn run(cli: Cli, at: &ArgPositions, out: &Out) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(a) => {
            let opts = InitOptions {
                cgroup_parent: a.cgroup_parent.clone(),
                backend: a
                    .backend
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!("--backend: {e}"))?,
                pool_dir: a.pool_dir.clone(),
                pool_size: a
                    .pool_size
                    .as_deref()
                    .map(|t| {
                        t.parse::<ve_runtime::Size>()
                            .map(|s| s.0)
                            .map_err(|e| anyhow::anyhow!("--pool-size: {e}"))
                    })
                    .transpose()?,
                pool_dev: a.pool_dev.clone(),
                no_net: a.no_net,
            };
            let (host, created) = Host::init(&cli.root, &opts)?;
            out.init(&host, created);
        }
        Command::Host(HostCommand::Info) => out.host_info(&open(&cli)?)?,
        Command::Host(HostCommand::Set {
            reserve_cpu,
            reserve_ram,
            default_ram,
            default_pids,
        }) => {
            let cpu = reserve_cpu
                .as_deref()
                .map(|s| {
                    s.parse::<Percent>()
                        .map_err(|e| anyhow::anyhow!("--reserve-cpu: {e}"))
                })
                .transpose()?;
            let ram = reserve_ram
                .as_deref()
                .map(|s| {
                    s.parse::<Amount>()
                        .map_err(|e| anyhow::anyhow!("--reserve-ram: {e}"))
                })
                .transpose()?;
            let default_ram = default_ram
                .as_deref()
                .map(|s| {
                    s.parse::<Setting<Amount>>()
                        .map(Setting::into_option)
                        .map_err(|e| anyhow::anyhow!("--default-ram: {e}"))
                })
                .transpose()?;
            let default_pids = default_pids
                .as_deref()
                .map(|s| {
                    ve_runtime::parse_count(s)
                        .map(Setting::into_option)
                        .map_err(|e| anyhow::anyhow!("--default-pids: {e}"))
                })
                .transpose()?;
            if cpu.is_none() && ram.is_none() && default_ram.is_none() && default_pids.is_none() {
                bail!(
                    "nothing to set (give --reserve-cpu, --reserve-ram, --default-ram or --default-pids)"
                );
            }
            let mut host = open(&cli)?;
            host.set_settings(&ve_runtime::SettingsChange {
                reserve_cpu: cpu,
                reserve_ram: ram,
                default_ram,
                default_pids,
            })?;
            out.host_info(&host)?;
        }
        Command::Stats { ves, watch } => {
            let host = open(&cli)?;
            match watch {
                None => out.stats(&host.stats(ves)?, None),
                Some(secs) => {
                    if secs.is_nan() || *secs < 0.1 {
                        bail!("--watch {secs}: give an interval of at least 0.1 seconds");
                    }
                    let mut before = host.stats(ves)?;
                    let mut at = std::time::Instant::now();
                    loop {
                        std::thread::sleep(Duration::from_secs_f64(*secs));
                        let mut now = host.stats(ves)?;
                        let dt = at.elapsed().as_secs_f64();
                        at = std::time::Instant::now();
                        for s in &mut now {
                            s.cpu_percent = before
                                .iter()
                                .find(|b| b.name == s.name && b.status == s.status)
                                .map_or(0.0, |b| s.cpu_percent_since(b, dt));
                        }
                        out.stats(&now, Some(*secs));
                        before = now;
                    }
                }
            }
        }
        Command::Template(TemplateCommand::Import(ImportArgs { src: a })) => {
            let host = open(&cli)?;
            let mut progress = out.progress(&format!("importing {}", a.name));
            let (tv, warnings) =
                host.import_template(&a.name, &a.source()?, &a.message, &mut progress)?;
            drop(progress);
            for w in warnings {
                out.warn(&format!("template {}: {w}", tv.reference()));
            }
            out.template_imported(&tv, "imported");
        }
        Command::Template(TemplateCommand::Update(UpdateArgs { run, src: a })) => {
            let host = open(&cli)?;
            let mut progress = out.progress(&format!("updating {}", a.name));
            let (tv, warnings) = match run {
                Some(cmd) => {
                    // The command's output is the operator's to see, on stderr
                    // when stdout carries JSON.
                    let _stdout = cli.json.then(output::StdoutToStderr::new).transpose()?;
                    host.build_template(&a.name, cmd, &a.message, &mut progress)?
                }
                None => host.update_template(&a.name, &a.source()?, &a.message, &mut progress)?,
            };
            drop(progress);
            for w in warnings {
                out.warn(&format!("template {}: {w}", tv.reference()));
            }
            out.template_imported(&tv, "published");
        }
        Command::Template(TemplateCommand::List) => out.templates(&open(&cli)?.list_templates()?),
        Command::Template(TemplateCommand::Show { template }) => {
            let r: ve_runtime::TemplateRef = template
                .parse()
                .map_err(|e: ve_runtime::TemplateError| anyhow::anyhow!("{e}"))?;
            let host = open(&cli)?;
            let all = host.template_usage(Some(&r.name))?;
            let one = match r.version {
                Some(v) => all.iter().find(|u| u.version.version == v),
                None => all.last(),
            }
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "template {template}: no such version (see `vectl template log {}`)",
                    r.name
                )
            })?;
            out.template_show(one, &host.template_dir(&one.version));
        }
        Command::Template(TemplateCommand::Log { name }) => {
            out.template_log(&open(&cli)?.template_log(name)?);
        }
        Command::Template(TemplateCommand::Usage { name }) => {
            out.template_usage(&open(&cli)?.template_usage(name.as_deref())?);
        }
        Command::Template(TemplateCommand::Rm { template }) => {
            let removed = open(&cli)?.remove_template(template)?;
            out.templates_removed(&removed);
        }
        Command::Template(TemplateCommand::Gc) => {
            let removed = open(&cli)?.gc_templates()?;
            out.templates_removed(&removed);
        }
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
                force: a.force,
                nics: a.nics(at)?,
                publish: parse_publish(&a.name, "publish", &a.publish)?,
            })?;
            out.created(&cfg);
        }
        Command::Start { ves, force } => {
            let host = open(&cli)?;
            return Ok(each(out, ves, |ve| {
                let rs = host.start(ve, *force)?;
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
                let rs = host.start(ve, false)?;
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
        Command::Upgrade {
            ve,
            template,
            all,
            from,
            to,
            batch,
            health,
            health_timeout,
            check,
            force,
            stop,
        } => {
            let host = open(&cli)?;
            if *all {
                let (Some(from), Some(to)) = (from, to) else {
                    bail!("--all needs --from and --to");
                };
                let health_timeout =
                    Duration::try_from_secs_f64(*health_timeout).map_err(|_| {
                        anyhow::anyhow!(
                            "--health-timeout {health_timeout}: give a number of seconds"
                        )
                    })?;
                let rows = host.upgrade_fleet(
                    from,
                    to,
                    &ve_runtime::Rollout {
                        batch: *batch as usize,
                        health: health.clone(),
                        health_timeout,
                        force: *force,
                        stop: stop.options(),
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
            let (Some(ve), Some(template)) = (ve, template) else {
                bail!("give a VE and --template (or --all --from --to)");
            };
            if *check {
                let c = host.upgrade_check(ve, template)?;
                out.upgrade_check(&c);
                if !c.conflicts.is_empty() {
                    return Ok(ExitCode::from(3));
                }
            } else {
                let m = host.upgrade(ve, template, *force, stop.options())?;
                out.moved("upgraded", &m);
            }
        }
        Command::Rollback { ve, stop } => {
            let m = open(&cli)?.rollback(ve, stop.options())?;
            out.moved("rolled back", &m);
        }
        Command::Commit { ves, all, template } => {
            let host = open(&cli)?;
            let (done, errors) = if *all {
                host.commit_all(template.as_deref())?
            } else {
                let mut done = Vec::new();
                let mut errors = Vec::new();
                for ve in ves {
                    match host.commit(ve) {
                        Ok(c) => done.push(c),
                        Err(e) => errors.push(e),
                    }
                }
                (done, errors)
            };
            out.committed(&done, errors.is_empty());
            for e in &errors {
                out.error(&anyhow::anyhow!("{e}"));
            }
            if !errors.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::History { ve } => {
            let (ve, h) = open(&cli)?.history(ve)?;
            out.history(&ve, &h);
        }
        Command::Clone {
            src,
            dst,
            template,
            hostname,
        } => {
            let c = open(&cli)?.clone_ve(src, dst, template.as_deref(), hostname.as_deref())?;
            out.cloned(src, &c);
        }
        Command::Set(a) => {
            let update = a.limits.update(&a.ve)?;
            let add = parse_publish(&a.ve, "publish", &a.publish)?;
            let remove = parse_unpublish(&a.ve, &a.unpublish)?;
            if update.is_empty() && add.is_empty() && remove.is_empty() {
                bail!(
                    "VE {}: nothing to set (give a limit such as --ram or --cpu-limit, or --publish)",
                    a.ve
                );
            }
            let host = open(&cli)?;
            let ports = !add.is_empty() || !remove.is_empty();
            if !update.is_empty() {
                // Both or neither: the ports are checked before the limits change.
                if ports {
                    host.publish(&a.ve, &add, &remove, true)?;
                }
                let outcome = host.set(&a.ve, &update, a.force)?;
                out.set(&a.ve, &outcome);
            }
            if ports {
                let list = host.publish(&a.ve, &add, &remove, false)?;
                out.published(&a.ve, &list);
            }
        }
        Command::Net(NetCommand::Create(a)) => {
            let bad = |flag: &str, e: String| anyhow::anyhow!("network {}: --{flag}: {e}", a.name);
            let mode: Mode = a.mode.parse().map_err(|e| bad("mode", e))?;
            let subnet = a
                .subnet
                .as_deref()
                .map(|s| s.parse::<Subnet>().map_err(|e| bad("subnet", e)))
                .transpose()?;
            let ip = |flag: &str, s: &str| {
                s.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad(flag, format!("{s:?} is not an IPv4 address")))
            };
            let gateway = a.gateway.as_deref().map(|g| ip("gateway", g)).transpose()?;
            let dns = a
                .dns
                .as_ref()
                .map(|l| l.iter().map(|d| ip("dns", d)).collect::<Result<Vec<_>>>())
                .transpose()?;
            let bandwidth = a
                .bandwidth
                .as_deref()
                .map(|b| b.parse::<Rate>().map_err(|e| bad("bandwidth", e)))
                .transpose()?;
            let allow_host = a
                .allow_host
                .as_deref()
                .map(|l| HostAccess::parse_list(l).map_err(|e| bad("allow-host", e)))
                .transpose()?;
            let net = open(&cli)?.net_create_with(
                &NetCreate {
                    name: a.name.clone(),
                    mode,
                    subnet,
                    gateway,
                    uplink: a.uplink.clone(),
                    vlan: a.vlan,
                    dns,
                    bandwidth,
                },
                &NetUpdate { allow_host },
            )?;
            out.net_created(&net);
        }
        Command::Net(NetCommand::Set(a)) => {
            let bad = |flag: &str, e: String| anyhow::anyhow!("network {}: --{flag}: {e}", a.net);
            let allow_host = a
                .allow_host
                .as_deref()
                .map(|l| HostAccess::parse_list(l).map_err(|e| bad("allow-host", e)))
                .transpose()?;
            if allow_host.is_none() {
                bail!("network {}: nothing to change (give --allow-host)", a.net);
            }
            let net = open(&cli)?.net_update(&a.net, &NetUpdate { allow_host })?;
            out.net_updated(&net);
        }
        Command::Net(NetCommand::List) => {
            let host = open(&cli)?;
            let nets = host
                .nets()?
                .iter()
                .map(|n| host.net_show(&n.name))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.nets(&nets);
        }
        Command::Net(NetCommand::Show { net }) => out.net_show(&open(&cli)?.net_show(net)?),
        Command::Net(NetCommand::Rm { net }) => {
            open(&cli)?.net_rm(net)?;
            out.done(&format!("network {net}: removed"));
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
                    preserve_fds: a.preserve_fds,
                },
            )?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Enter { ve } => {
            let code = open(&cli)?.enter(ve)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Pool(PoolCommand::Info) => out.pool_info(&open(&cli)?.pool_info()?),
        Command::Pool(PoolCommand::Grow { size }) => {
            let size = size
                .as_deref()
                .map(|t| {
                    t.parse::<Size>()
                        .map(|s| s.0)
                        .map_err(|e| anyhow::anyhow!("--size: {e}"))
                })
                .transpose()?;
            out.pool_grown(&open(&cli)?.pool_grow(size)?);
        }
        Command::Pool(PoolCommand::Check { repair }) => {
            let problems = open(&cli)?.pool_check(*repair)?;
            out.pool_check(&problems, *repair);
            if problems.iter().any(|p| !p.repaired && !p.is_note()) {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Snapshot(SnapshotCommand::Create { ve, name }) => {
            let name = name.clone().unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(['-', ':'], "")
                    .replace('T', "-")
                    .trim_end_matches('Z')
                    .to_string()
            });
            out.snapshot_made(&open(&cli)?.snapshot_create(ve, &name)?);
        }
        Command::Snapshot(SnapshotCommand::List { ve }) => {
            let (ve, list) = open(&cli)?.snapshot_list(ve)?;
            out.snapshots(&ve, &list);
        }
        Command::Snapshot(SnapshotCommand::Rm { ve, name }) => {
            let ve = open(&cli)?.snapshot_remove(ve, name)?;
            out.done(&format!("VE {ve}: removed snapshot {name}"));
        }
        Command::Snapshot(SnapshotCommand::Restore { ve, name }) => {
            let ve = open(&cli)?.snapshot_restore(ve, name)?;
            out.done(&format!("VE {ve}: files restored from snapshot {name}"));
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
