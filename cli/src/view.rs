//! The CLI's own views of data that ve-runtime hands over in its leaf crates'
//! types (the storage pool's space and snapshots); their JSON is the same as
//! those types'.
//!
//! The VEs of `list` and `show` are views too ([`VeView`], [`ShowView`]):
//! their JSON is the one vocabulary of `list`, `show` and `stats` (README,
//! "JSON schema").
//!
//! Two leaf-crate types are used as they are, through ve-runtime's named
//! re-exports: the network's host-service rule (parsed from `--allow-host`)
//! and the pool's source (printed by `pool info`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;
use ve_runtime::{
    Amount, Autostart, Cpus, ExitRecord, Host, IdRange, KernelLimits, Limits, Mode, NetConfig,
    NetShare, Percent, PortMap, ProcView, Size, Status, Usage, VeDetails, VeInfo, VeStats,
};

pub use ve_runtime::{HostAccess, PoolSource};

/// A pool's totals (`pool grow`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSpaceView {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// One snapshot of a VE (`snapshot list`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub created_unix: u64,
    /// Data only this snapshot holds.
    pub exclusive_bytes: u64,
}

// --- `list`, `show` and `stats` as JSON ----------------------------------
//
// One vocabulary for the three (README, "JSON schema"): a VE is `name`;
// every size is a whole number of bytes named `*_bytes`; shares of a CPU or
// of the host are `*_percent`; durations are `*_seconds` (CPU time, a
// counter, `cpu_usage_ns`); a VE's addresses are `addresses` with their
// prefix (`10.0.0.2/24`) and `ips` without. `stats` prints
// [`ve_runtime::VeStats`], whose names these follow.

/// A VE's limits and guarantees as `list` and `show` print them (absent =
/// none): sizes in bytes, whatever unit they were given in.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_bytes: Option<u64>,
    /// The RAM limit as given, when it is a percentage of the host's RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_guarantee_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_guarantee_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_guarantee_percent: Option<f64>,
    /// `--cpus N`: how many CPUs (vectl picks which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_count: Option<u32>,
    /// `--cpus LIST`: which CPUs (`0-1,3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_limit_bytes_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_guarantee_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_limit_bits_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_guarantee_bits_per_second: Option<u64>,
    /// The network guarantee as a share of its network's bandwidth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_guarantee_percent: Option<f64>,
}

impl LimitsView {
    /// `l` on a host with `host_ram` bytes of RAM (percentages of it come to
    /// what the kernel gets, as in `stats`).
    pub fn new(l: &Limits, host_ram: u64) -> LimitsView {
        let bytes = |a: Amount| VeStats::ram_amount_bytes(a, host_ram);
        let percent = |a: Amount| match a {
            Amount::Percent(Percent(p)) => Some(p),
            Amount::Bytes(_) => None,
        };
        LimitsView {
            ram_limit_bytes: l.ram.map(bytes),
            ram_limit_percent: l.ram.and_then(percent),
            ram_guarantee_bytes: l.ram_guarantee.map(bytes),
            ram_guarantee_percent: l.ram_guarantee.and_then(percent),
            swap_limit_bytes: l.swap.map(|Size(b)| b),
            cpu_limit_percent: l.cpu_limit.map(|Percent(p)| p),
            cpu_guarantee_percent: l.cpu_guarantee.map(|Percent(p)| p),
            cpus_count: match &l.cpus {
                Some(Cpus::Count(n)) => Some(*n),
                _ => None,
            },
            cpus_list: match &l.cpus {
                Some(c @ Cpus::List(_)) => Some(c.to_string()),
                _ => None,
            },
            pids_limit: l.pids,
            disk_limit_bytes: l.disk.map(|Size(b)| b),
            io_limit_bytes_per_second: l.io_limit.map(|Size(b)| b),
            iops_limit: l.iops_limit,
            io_weight: l.io_weight,
            io_guarantee_percent: l.io_guarantee.map(|Percent(p)| p),
            net_limit_bits_per_second: l.net_limit.map(|r| r.0),
            net_guarantee_bits_per_second: match l.net_guarantee {
                Some(NetShare::Rate(r)) => Some(r.0),
                _ => None,
            },
            net_guarantee_percent: match l.net_guarantee {
                Some(NetShare::Percent(Percent(p))) => Some(p),
                _ => None,
            },
        }
    }
}

/// One NIC of a VE in `list` and `show` (`show` adds `port`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NicView {
    /// Its name in the VE (`eth0`).
    pub ifname: String,
    pub net: String,
    /// The network's mode (absent if the network is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Its address without prefix.
    pub ip: Ipv4Addr,
    /// Its address with the prefix it has in the VE (`10.0.0.2/24`).
    pub address: String,
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The port on the host it is paired with (`show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// How a VE's init last ended, as `list` and `show` print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastExitView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// How long it had run.
    pub ran_seconds: u64,
    /// Restarts by the supervisor in a row.
    pub restarts: u32,
}

impl From<&ExitRecord> for LastExitView {
    fn from(x: &ExitRecord) -> LastExitView {
        LastExitView {
            code: x.code,
            signal: x.signal.clone(),
            at: x.at.clone(),
            ran_seconds: x.ran_secs,
            restarts: x.restarts,
        }
    }
}

/// A container an OCI engine made through `vectl oci`, in `list --json`: the
/// engine owns it (vectl's own verbs refuse it).
#[derive(Debug, Clone, Serialize)]
pub struct OciView {
    /// Its container id.
    pub name: String,
    /// `oci`.
    pub managed_by: &'static str,
    pub status: String,
    /// Its init's pid on the host, unless stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: std::path::PathBuf,
    pub created: String,
    /// Its cgroup, below each hierarchy's root.
    pub cgroup: String,
}

impl OciView {
    pub fn new(s: &ve_runtime::oci::State) -> OciView {
        OciView {
            name: s.id.clone(),
            managed_by: "oci",
            status: s.status.to_string(),
            pid: (s.pid > 0).then_some(s.pid),
            bundle: s.bundle.clone(),
            created: s.created.clone(),
            cgroup: s.cgroup.clone(),
        }
    }
}

/// One VE in `list --json`, and the first part of `show --json`.
#[derive(Debug, Clone, Serialize)]
pub struct VeView {
    pub id: u32,
    pub name: String,
    /// `vectl` (a container an OCI engine made is an [`OciView`], `oci`).
    pub managed_by: &'static str,
    pub status: Status,
    /// Its template version, `NAME@VERSION`.
    pub template: String,
    pub hostname: String,
    /// Its init's pid on the host, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// While running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(flatten)]
    pub limits: LimitsView,
    /// Its addresses with prefix, in NIC order.
    pub addresses: Vec<String>,
    /// Its addresses without prefix, in NIC order.
    pub ips: Vec<Ipv4Addr>,
    pub nics: Vec<NicView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMap>,
    pub privileged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns: Option<IdRange>,
    pub autostart: Autostart,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExitView>,
}

impl VeView {
    /// `info`'s view; `nets` are the host's networks (for prefixes, modes and
    /// gateways), `host_ram` its RAM in bytes.
    pub fn new(info: &VeInfo, nets: &[NetConfig], host_ram: u64) -> VeView {
        let nics: Vec<NicView> = info
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let net = nets.iter().find(|n| n.name == nic.net);
                NicView {
                    // netns::nic::ve_ifname, as `show` and `stats` name it.
                    ifname: format!("eth{i}"),
                    net: nic.net.clone(),
                    mode: net.map(|n| n.mode),
                    ip: nic.ip,
                    // As `show` has it (ve-runtime's NicInfo).
                    address: match net {
                        Some(n) => format!("{}/{}", nic.ip, n.ve_prefix()),
                        None => nic.ip.to_string(),
                    },
                    mac: nic.mac.to_string(),
                    gateway: net.and_then(NetConfig::ve_gateway),
                    port: None,
                }
            })
            .collect();
        VeView {
            managed_by: "vectl",
            id: info.id,
            name: info.name.clone(),
            status: info.status,
            template: info.template.clone(),
            hostname: info.hostname.clone(),
            pid: info.pid,
            uptime_seconds: info.uptime_secs,
            limits: LimitsView::new(&info.limits, host_ram),
            addresses: nics.iter().map(|n| n.address.clone()).collect(),
            ips: nics.iter().map(|n| n.ip).collect(),
            nics,
            publish: info.ports.clone(),
            privileged: info.privileged,
            userns: info.userns,
            autostart: info.autostart.clone(),
            last_exit: info.last_exit.as_ref().map(LastExitView::from),
        }
    }

    /// Every VE of `ves` (`list --json`). A network whose config cannot be
    /// read leaves its addresses without prefix, as in `show`.
    pub fn all(host: &Host, ves: &[VeInfo]) -> Vec<VeView> {
        let mut nets: Vec<NetConfig> = Vec::new();
        for nic in ves.iter().flat_map(|v| &v.nics) {
            if !nets.iter().any(|n| n.name == nic.net)
                && let Ok(n) = host.nets().get(&nic.net)
            {
                nets.push(n);
            }
        }
        let ram = host.capacity().ram_bytes;
        ves.iter().map(|v| VeView::new(v, &nets, ram)).collect()
    }
}

/// A VE's limits in the kernel's terms (`show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelLimitsView {
    /// memory.max (v1: memory.limit_in_bytes).
    pub memory_bytes: Option<u64>,
    /// memory.low (v1: memory.soft_limit_in_bytes).
    pub memory_low_bytes: Option<u64>,
    /// Swap on top of memory.
    pub swap_bytes: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    /// cpu.weight scale (1..10000).
    pub cpu_weight: Option<u64>,
    pub cpuset: Option<String>,
    pub pids: Option<u64>,
    pub io: Option<KernelIoView>,
    pub io_weight: Option<u64>,
}

/// The I/O throttle of a VE on the pool's disk (`show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelIoView {
    pub major: u32,
    pub minor: u32,
    /// Reads and writes each.
    pub bytes_per_second: Option<u64>,
    /// Reads and writes each.
    pub ops_per_second: Option<u64>,
}

impl From<&KernelLimits> for KernelLimitsView {
    fn from(k: &KernelLimits) -> KernelLimitsView {
        KernelLimitsView {
            memory_bytes: k.memory_bytes,
            memory_low_bytes: k.memory_low,
            swap_bytes: k.swap_bytes,
            cpu_quota_us: k.cpu_quota_us,
            cpu_weight: k.cpu_weight,
            cpuset: k.cpuset.clone(),
            pids: k.pids,
            io: k.io.as_ref().map(|io| KernelIoView {
                major: io.major,
                minor: io.minor,
                bytes_per_second: io.bps,
                ops_per_second: io.iops,
            }),
            io_weight: k.io_weight,
        }
    }
}

/// A VE's use of the host as `show` prints it: the names and units of
/// `stats` (zero while stopped, as there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageView {
    /// CPU time used since start.
    pub cpu_usage_ns: u64,
    /// RAM in use.
    pub ram_bytes: u64,
    /// Swap in use.
    pub swap_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub oom_kills: u64,
}

impl From<&Usage> for UsageView {
    fn from(u: &Usage) -> UsageView {
        UsageView {
            cpu_usage_ns: u.cpu_usage_ns,
            ram_bytes: u.memory_bytes,
            swap_bytes: u.swap_bytes,
            pids: u.pids,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            io_read_ops: u.io_read_ops,
            io_write_ops: u.io_write_ops,
            oom_kills: u.oom_kills,
        }
    }
}

/// One VE in `show --json`: its `list` entry and more.
#[derive(Debug, Clone, Serialize)]
pub struct ShowView {
    #[serde(flatten)]
    pub ve: VeView,
    /// When it was created (RFC 3339 UTC).
    pub created: String,
    pub init: Vec<String>,
    pub stop_signal: String,
    pub config_path: PathBuf,
    pub private_dir: PathBuf,
    pub template_dir: PathBuf,
    pub cgroups: Vec<PathBuf>,
    pub kernel_limits: KernelLimitsView,
    #[serde(flatten)]
    pub usage: UsageView,
    /// Disk used by its own files (its private layer).
    pub disk_bytes: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_view: Option<ProcView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysinfo: Option<bool>,
}

impl ShowView {
    pub fn new(host: &Host, d: &VeDetails) -> ShowView {
        let mut ve = VeView::new(&d.info, &[], host.capacity().ram_bytes);
        // The NICs as `show` found them (with their host ports); the disk
        // limit as the pool enforces it (as in `stats`).
        for (view, i) in ve.nics.iter_mut().zip(&d.interfaces) {
            view.mode = Some(i.mode);
            view.address = i.ip.clone();
            view.gateway = i.gateway;
            view.port = Some(i.port.clone());
        }
        ve.addresses = ve.nics.iter().map(|n| n.address.clone()).collect();
        ve.limits.disk_limit_bytes = d.disk_limit_bytes;
        ShowView {
            ve,
            created: d.created.clone(),
            init: d.init.clone(),
            stop_signal: d.stop_signal.clone(),
            config_path: d.config_path.clone(),
            private_dir: d.private_dir.clone(),
            template_dir: d.template_dir.clone(),
            cgroups: d.cgroups.clone(),
            kernel_limits: KernelLimitsView::from(&d.kernel_limits),
            usage: UsageView::from(&d.usage.unwrap_or_default()),
            disk_bytes: d.private_bytes,
            problems: d.problems.clone(),
            proc_view: d.proc_view.clone(),
            console: d.console,
            sysinfo: d.sysinfo,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bytes_and_percent_whatever_unit_they_were_given_in() {
        let host_ram = 8u64 << 30;
        let l = Limits {
            ram: Some(Amount::Percent(Percent(10.0))),
            ram_guarantee: Some(Amount::Bytes(Size(64 << 20))),
            swap: Some(Size(32 << 20)),
            cpu_limit: Some(Percent(150.0)),
            cpus: Some(Cpus::List(vec![0, 1, 3])),
            io_limit: Some(Size(50 << 20)),
            net_limit: Some(ve_runtime::Rate(100_000_000)),
            net_guarantee: Some(NetShare::Percent(Percent(10.0))),
            ..Limits::default()
        };
        let v = LimitsView::new(&l, host_ram);
        assert_eq!(v.ram_limit_bytes, Some((host_ram / 10) & !4095));
        assert_eq!(v.ram_limit_percent, Some(10.0));
        assert_eq!(v.ram_guarantee_bytes, Some(64 << 20));
        assert_eq!(v.ram_guarantee_percent, None);
        assert_eq!(v.swap_limit_bytes, Some(32 << 20));
        assert_eq!(v.cpu_limit_percent, Some(150.0));
        assert_eq!(v.cpus_list.as_deref(), Some("0-1,3"));
        assert_eq!(v.cpus_count, None);
        assert_eq!(v.io_limit_bytes_per_second, Some(50 << 20));
        assert_eq!(v.net_limit_bits_per_second, Some(100_000_000));
        assert_eq!(v.net_guarantee_percent, Some(10.0));
        assert_eq!(v.net_guarantee_bits_per_second, None);
        let json = serde_json::to_value(&v).unwrap_or_default();
        assert_eq!(json["ram_limit_bytes"], (host_ram / 10) & !4095);
        assert!(json.get("pids_limit").is_none(), "{json}");
        // Nothing set: nothing printed.
        let none = serde_json::to_value(LimitsView::new(&Limits::default(), host_ram));
        assert_eq!(none.ok(), Some(serde_json::json!({})));
    }
}
