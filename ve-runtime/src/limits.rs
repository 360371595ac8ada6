//! A VE's limits as configured (`Limits`, `LimitsUpdate`), checked against the
//! host (`HostFacts`, `Capacity`) and as written to the kernel (`KernelLimits`).
//! The values they are made of (`256M`, `50%`) are in `units.rs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::{Amount, Cpus, NetShare, Percent, Setting, Size, cpu_list, human_bytes};

/// Smallest RAM limit vectl accepts: below this a VE's init cannot even start.
pub const MIN_RAM: u64 = 4 << 20;
/// Largest pids limit the kernel accepts (PID_MAX_LIMIT).
pub const MAX_PIDS: u64 = 4 << 20;
/// The CFS period vectl uses for CPU caps, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest disk limit: a VE's empty private layer alone takes 16K.
pub const MIN_DISK: u64 = 1 << 20;

/// A VE's limits and guarantees as configured (absent = none). Stored in the VE's
/// config. Percentages of the host are of its capacity: all CPUs together, all RAM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Hard memory limit: bytes or percent of host RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<Amount>,
    /// Memory protected from reclaim by others: bytes or percent of host RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_guarantee: Option<Amount>,
    /// Swap the VE may use (on top of its RAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<Size>,
    /// CPU cap in percent of one CPU (`150%` = one and a half CPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<Percent>,
    /// Minimum share of the whole host's CPU time under contention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_guarantee: Option<Percent>,
    /// The CPUs the VE may run on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Maximum number of processes and threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Disk bandwidth cap, bytes per second, reads and writes each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_limit: Option<Size>,
    /// Disk operations per second cap, reads and writes each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_limit: Option<u64>,
    /// Proportional disk weight (1..1000, default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u64>,
    /// Disk time share under contention, as a weight of 10 per percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_guarantee: Option<Percent>,
    /// Disk space limit of the VE's private layer (btrfs or xfs pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Size>,
    /// Network bandwidth cap of each NIC, in each direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_limit: Option<netns::model::Rate>,
    /// Network bandwidth each NIC is guaranteed under contention: a rate or a
    /// share of its network's bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_guarantee: Option<NetShare>,
}

/// A change to limits, as given to `create` or `set`: `None` = leave as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsUpdate {
    pub ram: Option<Setting<Amount>>,
    pub ram_guarantee: Option<Setting<Amount>>,
    pub swap: Option<Setting<Size>>,
    pub cpu_limit: Option<Setting<Percent>>,
    pub cpu_guarantee: Option<Setting<Percent>>,
    pub cpus: Option<Setting<Cpus>>,
    pub pids: Option<Setting<u64>>,
    pub io_limit: Option<Setting<Size>>,
    pub iops_limit: Option<Setting<u64>>,
    pub io_weight: Option<Setting<u64>>,
    pub io_guarantee: Option<Setting<Percent>>,
    pub disk: Option<Setting<Size>>,
    pub net_limit: Option<Setting<netns::model::Rate>>,
    pub net_guarantee: Option<Setting<NetShare>>,
}

impl LimitsUpdate {
    /// True when nothing is to change.
    pub fn is_empty(&self) -> bool {
        *self == LimitsUpdate::default()
    }

    /// The limits after this change.
    pub fn applied_to(&self, base: &Limits) -> Limits {
        fn up<T: Clone>(field: &mut Option<T>, change: &Option<Setting<T>>) {
            if let Some(s) = change {
                *field = s.clone().into_option();
            }
        }
        let mut out = base.clone();
        up(&mut out.ram, &self.ram);
        up(&mut out.ram_guarantee, &self.ram_guarantee);
        up(&mut out.swap, &self.swap);
        up(&mut out.cpu_limit, &self.cpu_limit);
        up(&mut out.cpu_guarantee, &self.cpu_guarantee);
        up(&mut out.cpus, &self.cpus);
        up(&mut out.pids, &self.pids);
        up(&mut out.io_limit, &self.io_limit);
        up(&mut out.iops_limit, &self.iops_limit);
        up(&mut out.io_weight, &self.io_weight);
        up(&mut out.io_guarantee, &self.io_guarantee);
        up(&mut out.disk, &self.disk);
        up(&mut out.net_limit, &self.net_limit);
        up(&mut out.net_guarantee, &self.net_guarantee);
        // --io-weight and --io-guarantee are two spellings of one knob: the one
        // given replaces the other (giving both is refused when resolved).
        if self.io_weight.is_some() && self.io_guarantee.is_none() {
            out.io_guarantee = None;
        }
        if self.io_guarantee.is_some() && self.io_weight.is_none() {
            out.io_weight = None;
        }
        out
    }
}

/// What the host has, for percentages and range checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub cpus: u32,
    pub ram_bytes: u64,
}

/// The block device that holds a VE's files, for I/O limits (a whole disk: the
/// kernel throttles disks, not partitions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoDevice {
    pub major: u32,
    pub minor: u32,
    /// Kernel name (`vda`).
    pub name: String,
    /// Its active I/O scheduler (`mq-deadline`, `bfq`, `none`).
    pub scheduler: String,
}

/// What limits are checked against and resolved with.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub capacity: Capacity,
    /// The device holding VE files, or why there is none to throttle.
    pub io_device: std::result::Result<IoDevice, NoIoDevice>,
}

/// Why there is no one disk under the VEs' files to throttle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoIoDevice {
    /// The host's facts were gathered without it (no disk I/O setting asked).
    #[error("not looked up (no disk I/O settings)")]
    NotLookedUp,
    /// A file that tells the device could not be read.
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// A btrfs on several devices.
    #[error(
        "the VEs' files ({}) are on a btrfs spanning {devices} devices: there is no one disk to throttle",
        dir.display()
    )]
    Spanning { dir: PathBuf, devices: usize },
    /// tmpfs, a network file system...
    #[error(
        "the VEs' files ({}) are not on a block device ({fstype}, device {major}:{minor}), so there is no disk to throttle",
        dir.display()
    )]
    NotBlock {
        dir: PathBuf,
        fstype: String,
        major: u32,
        minor: u32,
    },
}

/// The weight a VE without a CPU guarantee gets (cpu.weight scale, 1..10000):
/// the smallest, so guarantees hold however many such VEs there are; among
/// themselves they share equally, and idle CPU time goes to whoever wants it.
pub const CPU_WEIGHT_BEST_EFFORT: u64 = 1;

/// Disk limits of a VE on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoLimits {
    pub major: u32,
    pub minor: u32,
    /// Bytes per second, reads and writes each.
    pub bps: Option<u64>,
    /// Operations per second, reads and writes each.
    pub iops: Option<u64>,
}

/// Limits as the kernel takes them (absent = unlimited / kernel default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelLimits {
    pub memory_bytes: Option<u64>,
    /// Protected memory (memory.low, v1 soft limit).
    pub memory_low: Option<u64>,
    /// Swap on top of memory.
    pub swap_bytes: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    /// cpu.weight scale (1..10000); `None` = the kernel's default.
    pub cpu_weight: Option<u64>,
    /// CPU list; `None` = all the parent has.
    pub cpuset: Option<String>,
    pub pids: Option<u64>,
    pub io: Option<IoLimits>,
    /// BFQ weight (1..1000); `None` = the kernel's default.
    pub io_weight: Option<u64>,
}

impl Limits {
    /// Checks the limits against the host and converts them to kernel values.
    /// `ve` names the VE in errors; `id` spreads `--cpus N` over the host's CPUs.
    pub fn resolve(&self, ve: &str, id: u32, host: &HostFacts) -> Result<KernelLimits> {
        let cap = host.capacity;
        let bad = |what: String| Error::BadLimit {
            ve: ve.to_string(),
            reason: what,
        };
        let bytes_of = |flag: &str, a: Amount| -> Result<u64> {
            match a {
                Amount::Bytes(Size(b)) => Ok(b),
                Amount::Percent(Percent(p)) => {
                    if !(p > 0.0 && p <= 100.0) {
                        return Err(bad(format!(
                            "{flag} {p}% is not between 0% and 100% of host RAM"
                        )));
                    }
                    Ok((cap.ram_bytes as f64 * p / 100.0) as u64 & !4095)
                }
            }
        };
        let memory_bytes = self.ram.map(|a| bytes_of("--ram", a)).transpose()?;
        if let Some(b) = memory_bytes {
            if b < MIN_RAM {
                return Err(bad(format!(
                    "--ram {} is below the minimum of {}",
                    human_bytes(b),
                    Size(MIN_RAM)
                )));
            }
            if b > cap.ram_bytes {
                return Err(bad(format!(
                    "--ram {} is more than the host's {} of RAM",
                    human_bytes(b),
                    human_bytes(cap.ram_bytes)
                )));
            }
        }
        let memory_low = self
            .ram_guarantee
            .map(|a| bytes_of("--ram-guarantee", a))
            .transpose()?;
        if let Some(low) = memory_low {
            if low > cap.ram_bytes {
                return Err(bad(format!(
                    "--ram-guarantee {} is more than the host's {} of RAM",
                    human_bytes(low),
                    human_bytes(cap.ram_bytes)
                )));
            }
            if let Some(max) = memory_bytes
                && low > max
            {
                return Err(bad(format!(
                    "--ram-guarantee {} is more than its --ram {}",
                    human_bytes(low),
                    human_bytes(max)
                )));
            }
        }
        let swap_bytes = self.swap.map(|Size(b)| b);
        if swap_bytes.is_some() && memory_bytes.is_none() {
            return Err(bad(
                "--swap needs a --ram limit (swap is counted on top of RAM)".into(),
            ));
        }
        let cpu_quota_us = match self.cpu_limit {
            None => None,
            Some(Percent(p)) => {
                let max = f64::from(cap.cpus) * 100.0;
                if !(p >= 1.0 && p <= max) {
                    return Err(bad(format!(
                        "--cpu-limit {} is outside 1%..{max}% (100% = one CPU; this host has {} CPUs)",
                        Percent(p),
                        cap.cpus
                    )));
                }
                Some((p / 100.0 * CPU_PERIOD_US as f64).round() as u64)
            }
        };
        let cpu_weight = match self.cpu_guarantee {
            None => Some(CPU_WEIGHT_BEST_EFFORT),
            Some(Percent(p)) => {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(bad(format!(
                        "--cpu-guarantee {} is not between 0% and 100% of the host",
                        Percent(p)
                    )));
                }
                // The guarantee is of the whole host; a cap is per CPU.
                let as_cpu_pct = p * f64::from(cap.cpus);
                if let Some(Percent(limit)) = self.cpu_limit
                    && as_cpu_pct > limit + 1e-9
                {
                    return Err(bad(format!(
                        "--cpu-guarantee {} of this {}-CPU host is {}% of one CPU, more than its --cpu-limit {}",
                        Percent(p),
                        cap.cpus,
                        as_cpu_pct,
                        Percent(limit)
                    )));
                }
                Some(((p * 100.0).round() as u64).clamp(1, 10_000))
            }
        };
        let cpuset = match &self.cpus {
            None => None,
            Some(Cpus::Count(n)) => {
                if *n > cap.cpus {
                    return Err(bad(format!("--cpus {n}: this host has {} CPUs", cap.cpus)));
                }
                let start = (id * n) % cap.cpus;
                let mut list: Vec<u32> = (0..*n).map(|i| (start + i) % cap.cpus).collect();
                list.sort_unstable();
                Some(cpu_list(&list))
            }
            Some(Cpus::List(list)) => {
                if let Some(c) = list.iter().find(|c| **c >= cap.cpus) {
                    return Err(bad(format!(
                        "--cpus {}: CPU {c} does not exist (this host has CPUs 0-{})",
                        cpu_list(list),
                        cap.cpus - 1
                    )));
                }
                Some(cpu_list(list))
            }
        };
        if let Some(Size(d)) = self.disk
            && d < MIN_DISK
        {
            return Err(bad(format!(
                "--disk {}: a VE needs at least 1M of disk",
                human_bytes(d)
            )));
        }
        if let Some(n) = self.pids
            && !(1..=MAX_PIDS).contains(&n)
        {
            return Err(bad(format!("--pids {n} is outside 1..{MAX_PIDS}")));
        }
        let io = self.resolve_io(&bad, host)?;
        let io_weight = match (self.io_weight, self.io_guarantee) {
            (Some(_), Some(_)) => {
                return Err(bad("give --io-weight or --io-guarantee, not both".into()));
            }
            (Some(w), None) => {
                if !(1..=1000).contains(&w) {
                    return Err(bad(format!("--io-weight {w} is outside 1..1000")));
                }
                Some(w)
            }
            (None, Some(Percent(p))) => {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(bad(format!(
                        "--io-guarantee {} is not between 0% and 100%",
                        Percent(p)
                    )));
                }
                Some(((p * 10.0).round() as u64).clamp(1, 1000))
            }
            (None, None) => None,
        };
        if io_weight.is_some() {
            let dev = host
                .io_device
                .as_ref()
                .map_err(|why| bad(format!("--io-weight/--io-guarantee: {why}")))?;
            if dev.scheduler != "bfq" {
                return Err(bad(format!(
                    "--io-weight/--io-guarantee: disk weights need the bfq I/O scheduler, and {} uses {} (echo bfq > /sys/block/{}/queue/scheduler)",
                    dev.name, dev.scheduler, dev.name
                )));
            }
        }
        Ok(KernelLimits {
            memory_bytes,
            memory_low,
            swap_bytes,
            cpu_quota_us,
            cpu_weight,
            cpuset,
            pids: self.pids,
            io,
            io_weight,
        })
    }

    fn resolve_io(
        &self,
        bad: &dyn Fn(String) -> Error,
        host: &HostFacts,
    ) -> Result<Option<IoLimits>> {
        if self.io_limit.is_none() && self.iops_limit.is_none() {
            return Ok(None);
        }
        if let Some(Size(b)) = self.io_limit
            && b < 4096
        {
            return Err(bad(format!("--io-limit {b} is below 4K per second")));
        }
        if self.iops_limit == Some(0) {
            return Err(bad("--iops-limit 0: give at least 1, or unlimited".into()));
        }
        let dev = host
            .io_device
            .as_ref()
            .map_err(|why| bad(format!("--io-limit/--iops-limit: {why}")))?;
        Ok(Some(IoLimits {
            major: dev.major,
            minor: dev.minor,
            bps: self.io_limit.map(|Size(b)| b),
            iops: self.iops_limit,
        }))
    }

    /// The CPU guarantee as a fraction of the host (0 when none).
    pub fn cpu_guarantee_fraction(&self) -> f64 {
        self.cpu_guarantee.map_or(0.0, |Percent(p)| p / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Capacity = Capacity {
        cpus: 2,
        ram_bytes: 8 << 30,
    };

    fn host() -> HostFacts {
        HostFacts {
            capacity: CAP,
            io_device: Ok(IoDevice {
                major: 254,
                minor: 0,
                name: "vda".into(),
                scheduler: "mq-deadline".into(),
            }),
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!("256M".parse::<Size>().unwrap(), Size(256 << 20));
        assert_eq!("1g".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("1.5G".parse::<Size>().unwrap(), Size(3 << 29));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("10K".parse::<Size>().unwrap(), Size(10240));
        for bad in [
            "12Q",
            "-5M",
            "",
            "M",
            "1..5G",
            "5 M",
            "0x10",
            "99999999999999999999T",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_print_in_their_largest_exact_unit() {
        assert_eq!(Size(256 << 20).to_string(), "256M");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(1000).to_string(), "1000");
        assert_eq!(human_bytes(1536 << 20), "1.5G");
        assert_eq!(human_bytes(512), "512B");
    }

    #[test]
    fn percentages_and_amounts() {
        assert_eq!("50%".parse::<Percent>().unwrap(), Percent(50.0));
        assert_eq!("12.5%".parse::<Percent>().unwrap().to_string(), "12.5%");
        assert!("50".parse::<Percent>().is_err());
        assert!("-5%".parse::<Percent>().is_err());
        assert_eq!(
            "10%".parse::<Amount>().unwrap(),
            Amount::Percent(Percent(10.0))
        );
        assert_eq!(
            "unlimited".parse::<Setting<Amount>>().unwrap(),
            Setting::Unlimited
        );
    }

    #[test]
    fn limits_resolve_to_kernel_values() {
        let l = Limits {
            ram: Some(Amount::Bytes(Size(256 << 20))),
            cpu_limit: Some(Percent(50.0)),
            pids: Some(200),
            ..Limits::default()
        };
        let k = l.resolve("web1", 100, &host()).unwrap();
        assert_eq!(k.cpu_weight, Some(CPU_WEIGHT_BEST_EFFORT));
        assert_eq!(
            (k.cpuset, k.io, k.io_weight, k.memory_low),
            (None, None, None, None)
        );
        assert_eq!(k.memory_bytes, Some(256 << 20));
        assert_eq!(k.cpu_quota_us, Some(50_000));
        assert_eq!(k.pids, Some(200));
        let pct = Limits {
            ram: Some(Amount::Percent(Percent(50.0))),
            ..Limits::default()
        };
        assert_eq!(
            pct.resolve("w", 100, &host()).unwrap().memory_bytes,
            Some(4 << 30)
        );
    }

    #[test]
    fn out_of_range_limits_are_refused_with_the_ve_named() {
        let cases = [
            (
                Limits {
                    ram: Some(Amount::Bytes(Size(1024))),
                    ..Default::default()
                },
                "below the minimum",
            ),
            (
                Limits {
                    ram: Some(Amount::Bytes(Size(9 << 30))),
                    ..Default::default()
                },
                "more than the host",
            ),
            (
                Limits {
                    cpu_limit: Some(Percent(0.0)),
                    ..Default::default()
                },
                "outside 1%..200%",
            ),
            (
                Limits {
                    cpu_limit: Some(Percent(500.0)),
                    ..Default::default()
                },
                "outside 1%..200%",
            ),
            (
                Limits {
                    pids: Some(0),
                    ..Default::default()
                },
                "--pids 0",
            ),
            (
                Limits {
                    ram: Some(Amount::Percent(Percent(150.0))),
                    ..Default::default()
                },
                "between 0% and 100%",
            ),
            (
                Limits {
                    ram: Some(Amount::Bytes(Size(64 << 20))),
                    ram_guarantee: Some(Amount::Bytes(Size(128 << 20))),
                    ..Default::default()
                },
                "more than its --ram",
            ),
            (
                Limits {
                    swap: Some(Size(1 << 30)),
                    ..Default::default()
                },
                "--swap needs a --ram",
            ),
            (
                Limits {
                    cpu_guarantee: Some(Percent(50.0)),
                    cpu_limit: Some(Percent(50.0)),
                    ..Default::default()
                },
                "100% of one CPU, more than its --cpu-limit 50%",
            ),
            (
                Limits {
                    cpus: Some(Cpus::Count(7)),
                    ..Default::default()
                },
                "--cpus 7: this host has 2 CPUs",
            ),
            (
                Limits {
                    cpus: Some(Cpus::List(vec![1, 2])),
                    ..Default::default()
                },
                "CPU 2 does not exist",
            ),
            (
                Limits {
                    io_weight: Some(100),
                    ..Default::default()
                },
                "need the bfq I/O scheduler, and vda uses mq-deadline",
            ),
            (
                Limits {
                    io_weight: Some(100),
                    io_guarantee: Some(Percent(10.0)),
                    ..Default::default()
                },
                "not both",
            ),
            (
                Limits {
                    io_limit: Some(Size(100)),
                    ..Default::default()
                },
                "below 4K",
            ),
        ];
        for (l, want) in cases {
            let e = l.resolve("web1", 100, &host()).unwrap_err().to_string();
            assert!(e.starts_with("VE web1: ") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn guarantees_cpus_and_io_resolve() {
        let l = Limits {
            cpu_guarantee: Some(Percent(25.0)),
            ram: Some(Amount::Bytes(Size(1 << 30))),
            ram_guarantee: Some(Amount::Percent(Percent(1.0))),
            swap: Some(Size(512 << 20)),
            cpus: Some(Cpus::Count(1)),
            io_limit: Some(Size(10 << 20)),
            ..Default::default()
        };
        let k = l.resolve("w", 101, &host()).unwrap();
        assert_eq!(k.cpu_weight, Some(2500));
        assert_eq!(k.memory_low, Some(((8u64 << 30) / 100) & !4095));
        assert_eq!(k.swap_bytes, Some(512 << 20));
        assert_eq!(
            k.cpuset.as_deref(),
            Some("1"),
            "id 101 takes the second CPU"
        );
        let io = k.io.unwrap();
        assert_eq!(
            (io.major, io.minor, io.bps, io.iops),
            (254, 0, Some(10 << 20), None)
        );
        let no_disk = HostFacts {
            io_device: Err(NoIoDevice::NotBlock {
                dir: "/var/lib/vectl/pool".into(),
                fstype: "tmpfs".into(),
                major: 0,
                minor: 40,
            }),
            ..host()
        };
        let e = l.resolve("w", 101, &no_disk).unwrap_err().to_string();
        assert!(
            e.contains("--io-limit/--iops-limit: the VEs' files (/var/lib/vectl/pool) are not on a block device (tmpfs, device 0:40)"),
            "{e}"
        );
        let mut bfq = host();
        if let Ok(d) = &mut bfq.io_device {
            d.scheduler = "bfq".into();
        }
        let w = Limits {
            io_guarantee: Some(Percent(20.0)),
            ..Default::default()
        };
        assert_eq!(w.resolve("w", 1, &bfq).unwrap().io_weight, Some(200));
    }

    #[test]
    fn cpu_sets_parse_and_print() {
        assert_eq!("2".parse::<Cpus>().unwrap(), Cpus::Count(2));
        assert_eq!(
            "0-2,5".parse::<Cpus>().unwrap(),
            Cpus::List(vec![0, 1, 2, 5])
        );
        assert_eq!(Cpus::List(vec![0, 1, 2, 5, 7, 8]).to_string(), "0-2,5,7-8");
        for bad in ["0", "", "a", "3-1", "1,,2", "-1"] {
            assert!(bad.parse::<Cpus>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn updates_apply_and_clear() {
        let base = Limits {
            ram: Some(Amount::Bytes(Size(1 << 30))),
            pids: Some(10),
            ..Default::default()
        };
        let up = LimitsUpdate {
            ram: Some(Setting::Unlimited),
            cpu_limit: Some(Setting::Value(Percent(25.0))),
            ..LimitsUpdate::default()
        };
        assert!(!up.is_empty() && LimitsUpdate::default().is_empty());
        let out = up.applied_to(&base);
        assert_eq!(out.ram, None);
        assert_eq!(out.cpu_limit, Some(Percent(25.0)));
        assert_eq!(out.pids, Some(10));
    }

    #[test]
    fn io_weight_and_io_guarantee_replace_each_other() {
        let base = Limits {
            io_weight: Some(300),
            ..Default::default()
        };
        let up = LimitsUpdate {
            io_guarantee: Some(Setting::Value(Percent(30.0))),
            ..LimitsUpdate::default()
        };
        let out = up.applied_to(&base);
        assert_eq!(
            (out.io_weight, out.io_guarantee),
            (None, Some(Percent(30.0)))
        );
        let back = LimitsUpdate {
            io_weight: Some(Setting::Value(500)),
            ..LimitsUpdate::default()
        }
        .applied_to(&out);
        assert_eq!((back.io_weight, back.io_guarantee), (Some(500), None));
    }

    #[test]
    fn one_listed_cpu_reads_back_as_a_list_not_a_count() {
        let one: Cpus = "1-1".parse().unwrap();
        assert_eq!(one, Cpus::List(vec![1]));
        assert_eq!(one.to_string(), "1-1");
        assert_eq!(one.to_string().parse::<Cpus>().unwrap(), one);
        assert_eq!("1".parse::<Cpus>().unwrap(), Cpus::Count(1));
        assert_eq!(Cpus::List(vec![0, 1, 3]).to_string(), "0-1,3");
    }
}
