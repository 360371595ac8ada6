//! Resource use per VE (`vectl stats`): cumulative counters from the cgroups, and
//! the limits they run against. Its JSON names are the ones `list` and `show`
//! use for the same things (README, "JSON schema"): sizes in bytes
//! (`*_bytes`), shares in percent (`*_percent`), `uptime_seconds`, and the
//! VE's addresses with (`addresses`) and without (`ips`) their prefix.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::state::Status;
use crate::units::{Amount, Percent, Size};
use crate::ve::VeInfo;

/// One VE's use of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VeStats {
    pub id: u32,
    pub name: String,
    pub status: Status,
    /// Its template version, `NAME@VERSION`.
    pub template: String,
    /// Seconds since start, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// CPU time used since start, nanoseconds.
    pub cpu_usage_ns: u64,
    /// CPU use in percent of one CPU (like `top`): averaged since start, or over
    /// the interval between two samples (`stats --watch`).
    pub cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<f64>,
    /// Its guaranteed share of the whole host's CPU time, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_guarantee_percent: Option<f64>,
    pub ram_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_bytes: Option<u64>,
    /// The RAM limit as given, when it is a percentage of the host's RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_guarantee_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_guarantee_percent: Option<f64>,
    pub swap_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_limit_bytes: Option<u64>,
    pub pids: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub oom_kills: u64,
    /// Disk used by the VE's own files (btrfs or xfs pool; absent on `dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
    /// Its addresses with the prefix they have in the VE (`10.0.0.2/24`), in
    /// NIC order, running or not.
    pub addresses: Vec<String>,
    /// The same addresses without prefix.
    pub ips: Vec<Ipv4Addr>,
    /// Traffic of each NIC of a running VE, as the VE sees it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicStats>,
}

/// One NIC's counters, from the VE's side (what it received and sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicStats {
    /// Its name in the VE (`eth0`).
    pub ifname: String,
    /// Its network.
    pub net: String,
    /// The port on the host it is paired with.
    pub port: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// A link's counters from /proc/net/dev, as the host sees the link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkCounters {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

/// Parses /proc/net/dev: every link of the reader's network namespace and its
/// counters (one read for all VEs, however many there are).
fn parse_net_dev(text: &str) -> HashMap<&str, LinkCounters> {
    let mut out = HashMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_ascii_whitespace()
            .map(|w| w.parse().unwrap_or(0))
            .collect();
        if f.len() < 10 {
            continue;
        }
        out.insert(
            name.trim(),
            LinkCounters {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            },
        );
    }
    out
}

impl VeStats {
    /// What a RAM amount (`--ram`, `--ram-guarantee`) comes to in bytes on a
    /// host with `host_ram` bytes: a size as it is, a percentage of the host's
    /// RAM in whole pages, as the kernel gets it.
    pub fn ram_amount_bytes(a: Amount, host_ram: u64) -> u64 {
        match a {
            Amount::Bytes(Size(b)) => b,
            Amount::Percent(Percent(p)) => (host_ram as f64 * p / 100.0) as u64 & !4095,
        }
    }

    /// CPU use between an earlier sample of the same VE and this one, `secs` apart,
    /// in percent of one CPU.
    pub fn cpu_percent_since(&self, earlier: &VeStats, secs: f64) -> f64 {
        if secs <= 0.0 || self.cpu_usage_ns < earlier.cpu_usage_ns {
            return 0.0;
        }
        (self.cpu_usage_ns - earlier.cpu_usage_ns) as f64 / (secs * 1e9) * 100.0
    }
}

/// `items` mapped by `f`, in order. With many items (`list`, `stats` over
/// hundreds of VEs, where each costs a few file reads), on up to one thread
/// per CPU (at most 4): those reads are the kernel's work, and they run side
/// by side. A panic in `f` is passed on. Only for commands that do not go on
/// to `setns` into a mount namespace: a thread that was joined may still share
/// the process's file system state for a moment, and the kernel then refuses.
pub(crate) fn par_map<T: Send, U: Send>(items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    const WORTH_A_THREAD: usize = 64;
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(4)
        .min(items.len() / WORTH_A_THREAD);
    if threads < 2 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let chunk: Vec<T> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|s| {
        let running: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.into_iter().map(f).collect::<Vec<U>>()))
            .collect();
        running
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

impl Host {
    /// Stats of the named VEs (names or ids), or of every VE when `names` is
    /// empty; read on several threads ([`par_map`]).
    pub(crate) fn stats(&self, names: &[String]) -> Result<Vec<VeStats>> {
        let (all, _) = self.list_in_threads()?;
        let chosen: Vec<_> = if names.is_empty() {
            all
        } else {
            let mut out = Vec::new();
            for n in names {
                let ve = self.resolve(n)?;
                let info = all
                    .iter()
                    .find(|i| i.name == ve)
                    .ok_or_else(|| Error::NoSuchVe(n.clone()))?;
                out.push(info.clone());
            }
            out
        };
        let cap = self.capacity();
        let bytes = |a: Amount| VeStats::ram_amount_bytes(a, cap.ram_bytes);
        let percent = |a: Amount| match a {
            Amount::Percent(Percent(p)) => Some(p),
            Amount::Bytes(_) => None,
        };
        // The prefix of each network the VEs are on, read once (`None`: the
        // network is gone, and the address goes without one, as in `show`).
        let mut prefixes: HashMap<String, Option<u8>> = HashMap::new();
        for nic in chosen.iter().flat_map(|i| &i.nics) {
            if !prefixes.contains_key(&nic.net) {
                let prefix = self.net(&nic.net).ok().map(|n| n.ve_prefix());
                prefixes.insert(nic.net.clone(), prefix);
            }
        }
        let btrfs = self.pool().backend().has_limits();
        // The ports are in vectl's own network namespace, which is the one
        // /proc/self/net shows.
        let net_dev = if chosen.iter().any(|i| !i.host_ports.is_empty()) {
            std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default()
        } else {
            String::new()
        };
        let links = parse_net_dev(&net_dev);
        let one = |mut info: VeInfo| -> Result<VeStats> {
            // On `dir` use means walking the VE's files: too slow for stats.
            let disk = btrfs.then(|| self.pool().disk(&info.name).ok()).flatten();
            // A VE that stops while its cgroups are read is reported as stopped.
            let usage = self.usage_of(&mut info)?;
            let cpu_percent = match info.uptime_secs {
                Some(up) if up > 0 => usage.cpu_usage_ns as f64 / (up as f64 * 1e9) * 100.0,
                _ => 0.0,
            };
            // The host's port receives what the VE sends, and the other way.
            let nics = if info.status.is_running() {
                info.nics
                    .iter()
                    .zip(&info.host_ports)
                    .enumerate()
                    .filter_map(|(i, (nic, port))| {
                        let c = links.get(port.as_str())?;
                        Some(NicStats {
                            ifname: netns::nic::ve_ifname(i),
                            net: nic.net.clone(),
                            port: port.clone(),
                            rx_bytes: c.tx_bytes,
                            rx_packets: c.tx_packets,
                            tx_bytes: c.rx_bytes,
                            tx_packets: c.rx_packets,
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let addresses = info
                .nics
                .iter()
                .map(|nic| match prefixes.get(&nic.net).copied().flatten() {
                    Some(p) => format!("{}/{p}", nic.ip),
                    None => nic.ip.to_string(),
                })
                .collect();
            Ok(VeStats {
                id: info.id,
                name: info.name.clone(),
                status: info.status,
                template: info.template.clone(),
                uptime_seconds: info.uptime_secs,
                cpu_usage_ns: usage.cpu_usage_ns,
                cpu_percent,
                cpu_limit_percent: info.limits.cpu_limit.map(|Percent(p)| p),
                cpu_guarantee_percent: info.limits.cpu_guarantee.map(|Percent(p)| p),
                ram_bytes: usage.memory_bytes,
                ram_limit_bytes: info.limits.ram.map(bytes),
                ram_limit_percent: info.limits.ram.and_then(percent),
                ram_guarantee_bytes: info.limits.ram_guarantee.map(bytes),
                ram_guarantee_percent: info.limits.ram_guarantee.and_then(percent),
                swap_bytes: usage.swap_bytes,
                swap_limit_bytes: info.limits.swap.map(|Size(b)| b),
                pids: usage.pids,
                pids_limit: info.limits.pids,
                io_read_bytes: usage.io_read_bytes,
                io_write_bytes: usage.io_write_bytes,
                io_read_ops: usage.io_read_ops,
                io_write_ops: usage.io_write_ops,
                oom_kills: usage.oom_kills,
                disk_bytes: disk.map(|d| d.used),
                disk_limit_bytes: disk.and_then(|d| d.limit),
                addresses,
                ips: info.nics.iter().map(|n| n.ip).collect(),
                nics,
            })
        };
        par_map(chosen, one).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_is_read_per_link() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n\
vab01p100: 5000      40    0    0    0     0          0         0     7000      50    0    0    0     0       0          0\n\
broken: 1 2\n";
        let links = parse_net_dev(text);
        assert_eq!(links.len(), 2);
        assert_eq!(
            links["vab01p100"],
            LinkCounters {
                rx_bytes: 5000,
                rx_packets: 40,
                tx_bytes: 7000,
                tx_packets: 50
            }
        );
        assert_eq!(links["lo"].tx_packets, 2);
    }

    #[test]
    fn par_map_keeps_the_order_and_every_item() {
        for n in [0, 1, 63, 64, 128, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let threads = std::sync::Mutex::new(std::collections::HashSet::new());
            let out = par_map(items, |i| {
                threads.lock().unwrap().insert(std::thread::current().id());
                i * 2
            });
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "{n} items");
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let used = threads.lock().unwrap().len();
            if n < 128 || cpus < 2 {
                assert!(used <= 1, "{n} items on {used} threads");
            } else {
                assert!(used >= 2, "{n} items on {used} thread(s), {cpus} CPUs");
            }
        }
    }

    #[test]
    fn a_panic_in_par_map_is_passed_on() {
        let r = std::panic::catch_unwind(|| {
            par_map((0..1000).collect::<Vec<u32>>(), |i| {
                assert!(i != 999, "item 999");
                i
            })
        });
        assert!(r.is_err());
    }
}
