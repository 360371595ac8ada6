//! Resource use per VE (`vectl stats`): cumulative counters from the cgroups, and
//! the limits they run against.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::state::Status;
use crate::units::{Amount, Percent, Size};

/// One VE's use of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VeStats {
    pub id: u32,
    pub name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// CPU time used since start, nanoseconds.
    pub cpu_usage_ns: u64,
    /// CPU use in percent of one CPU (like `top`): averaged since start, or over
    /// the interval between two samples (`stats --watch`).
    pub cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<f64>,
    pub ram_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_bytes: Option<u64>,
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
}

impl VeStats {
    /// CPU use between an earlier sample of the same VE and this one, `secs` apart,
    /// in percent of one CPU.
    pub fn cpu_percent_since(&self, earlier: &VeStats, secs: f64) -> f64 {
        if secs <= 0.0 || self.cpu_usage_ns < earlier.cpu_usage_ns {
            return 0.0;
        }
        (self.cpu_usage_ns - earlier.cpu_usage_ns) as f64 / (secs * 1e9) * 100.0
    }
}

impl Host {
    /// Stats of the named VEs (names or ids), or of every VE when `names` is empty.
    pub(crate) fn stats(&self, names: &[String]) -> Result<Vec<VeStats>> {
        let (all, _) = self.list()?;
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
        let bytes = |a: Amount| match a {
            Amount::Bytes(Size(b)) => b,
            Amount::Percent(Percent(p)) => (cap.ram_bytes as f64 * p / 100.0) as u64,
        };
        let mut out = Vec::with_capacity(chosen.len());
        let btrfs = self.pool().backend().has_limits();
        for mut info in chosen {
            // On `dir` use means walking the VE's files: too slow for stats.
            let disk = btrfs.then(|| self.pool().disk(&info.name).ok()).flatten();
            // A VE that stops while its cgroups are read is reported as stopped.
            let usage = self.usage_of(&mut info)?;
            let cpu_percent = match info.uptime_secs {
                Some(up) if up > 0 => usage.cpu_usage_ns as f64 / (up as f64 * 1e9) * 100.0,
                _ => 0.0,
            };
            out.push(VeStats {
                id: info.id,
                name: info.name.clone(),
                status: info.status,
                uptime_secs: info.uptime_secs,
                cpu_usage_ns: usage.cpu_usage_ns,
                cpu_percent,
                cpu_limit_percent: info.limits.cpu_limit.map(|Percent(p)| p),
                ram_bytes: usage.memory_bytes,
                ram_limit_bytes: info.limits.ram.map(bytes),
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
            });
        }
        Ok(out)
    }
}
