//! Admission control: the CPU and RAM guarantees of running VEs, plus the host's
//! reserve, may not add up to more than the host has. `create`, `start` and `set`
//! that would over-commit are refused with the commitments in the message, unless
//! forced; so is `host set` raising the reserve past what running VEs leave.
//!
//! The commitments are computed from the configs of the VEs that run (no separate
//! ledger to drift out of step); callers hold the host lock from the check until
//! the VE runs, so two starts cannot both take the last share.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::{Host, Reserve};
use crate::limits::Limits;
use crate::units::{Amount, Percent, human_bytes};

/// The guarantees one VE holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Commitment {
    pub ve: String,
    /// Share of the host's CPU time, 0..1.
    pub cpu: f64,
    /// Protected RAM, bytes.
    pub ram_bytes: u64,
    /// CPU cap in percent of one CPU, if any (for `host info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_pct: Option<f64>,
    /// RAM cap in bytes, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit_bytes: Option<u64>,
}

/// What running VEs are promised, in total and each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Commitments {
    pub cpu: f64,
    pub ram_bytes: u64,
    pub ves: Vec<Commitment>,
}

impl Host {
    /// The guarantees a VE with `limits` would hold on this host.
    pub(crate) fn commitment(&self, ve: &str, limits: &Limits) -> Commitment {
        let cap = self.capacity();
        let bytes = |a: Amount| a.bytes_of(cap.ram_bytes);
        Commitment {
            ve: ve.to_string(),
            cpu: limits.cpu_guarantee_fraction(),
            ram_bytes: limits.ram_guarantee.map_or(0, bytes),
            cpu_limit_pct: limits.cpu_limit.map(|Percent(p)| p),
            ram_limit_bytes: limits.ram.map(bytes),
        }
    }

    /// The guarantees of the VEs that run now, except `except`.
    pub fn commitments(&self, except: Option<&str>) -> Result<Commitments> {
        let (ves, _) = self.list()?;
        let mut c = Commitments::default();
        for info in ves {
            if info.status != crate::state::Status::Running || Some(info.name.as_str()) == except {
                continue;
            }
            let one = self.commitment(&info.name, &info.limits);
            c.cpu += one.cpu;
            c.ram_bytes += one.ram_bytes;
            c.ves.push(one);
        }
        Ok(c)
    }

    /// Refuses `limits` for VE `ve` if its guarantees, with those of the other
    /// running VEs and the host reserve, exceed the host. `force` skips the check.
    pub(crate) fn admit(&self, ve: &str, limits: &Limits, force: bool) -> Result<()> {
        if force || (limits.cpu_guarantee.is_none() && limits.ram_guarantee.is_none()) {
            return Ok(());
        }
        let mine = self.commitment(ve, limits);
        let others = self.commitments(Some(ve))?;
        let (reserve_cpu, reserve_ram) = self.reserve();
        let cap = self.capacity();
        let list = |f: &dyn Fn(&Commitment) -> String| listed(&others, f);
        let cpu_total = others.cpu + mine.cpu + reserve_cpu;
        if mine.cpu > 0.0 && cpu_total > 1.0 + 1e-9 {
            return Err(Error::Admission {
                ve: ve.to_string(),
                reason: format!(
                    "CPU guarantees would total {} of the host: running VEs {}; this VE {}; host reserve {}",
                    pct(cpu_total),
                    list(&|c| if c.cpu > 0.0 {
                        pct(c.cpu)
                    } else {
                        String::new()
                    }),
                    pct(mine.cpu),
                    pct(reserve_cpu)
                ),
            });
        }
        let ram_total = others.ram_bytes + mine.ram_bytes + reserve_ram;
        if mine.ram_bytes > 0 && ram_total > cap.ram_bytes {
            return Err(Error::Admission {
                ve: ve.to_string(),
                reason: format!(
                    "RAM guarantees would total {} of the host's {}: running VEs {}; this VE {}; host reserve {}",
                    human_bytes(ram_total),
                    human_bytes(cap.ram_bytes),
                    list(&|c| if c.ram_bytes > 0 {
                        human_bytes(c.ram_bytes)
                    } else {
                        String::new()
                    }),
                    human_bytes(mine.ram_bytes),
                    human_bytes(reserve_ram)
                ),
            });
        }
        Ok(())
    }

    /// Refuses a new host reserve that, raised, does not fit beside the
    /// guarantees running VEs hold (`host set --reserve-cpu/--reserve-ram`);
    /// lowering it is always allowed. `force` skips the check.
    pub(crate) fn admit_reserve(&self, new: &Reserve, force: bool) -> Result<()> {
        let old = &self.settings().reserve;
        let cap = self.capacity();
        let (old_cpu, new_cpu) = (old.cpu.0 / 100.0, new.cpu.0 / 100.0);
        let (old_ram, new_ram) = (
            old.ram.bytes_of(cap.ram_bytes),
            new.ram.bytes_of(cap.ram_bytes),
        );
        if force || (new_cpu <= old_cpu && new_ram <= old_ram) {
            return Ok(());
        }
        let running = self.commitments(None)?;
        let cpu_total = running.cpu + new_cpu;
        if new_cpu > old_cpu && cpu_total > 1.0 + 1e-9 {
            return Err(Error::Option {
                option: format!("--reserve-cpu {}", new.cpu),
                reason: format!(
                    "CPU guarantees would total {} of the host: running VEs {}; host reserve {} (lower their guarantees first, or use --force)",
                    pct(cpu_total),
                    listed(&running, &|c| if c.cpu > 0.0 {
                        pct(c.cpu)
                    } else {
                        String::new()
                    }),
                    pct(new_cpu)
                ),
            });
        }
        let ram_total = running.ram_bytes + new_ram;
        if new_ram > old_ram && ram_total > cap.ram_bytes {
            return Err(Error::Option {
                option: format!("--reserve-ram {}", new.ram),
                reason: format!(
                    "RAM guarantees would total {} of the host's {}: running VEs {}; host reserve {} (lower their guarantees first, or use --force)",
                    human_bytes(ram_total),
                    human_bytes(cap.ram_bytes),
                    listed(&running, &|c| if c.ram_bytes > 0 {
                        human_bytes(c.ram_bytes)
                    } else {
                        String::new()
                    }),
                    human_bytes(new_ram)
                ),
            });
        }
        Ok(())
    }
}

/// A share of the host as a percentage with one decimal (`52.5%`).
fn pct(x: f64) -> String {
    format!("{}", Percent((x * 1000.0).round() / 10.0))
}

/// The VEs of `c` that `f` says something about, as `web1 50%, db 30%`
/// (`none` if no VE).
fn listed(c: &Commitments, f: &dyn Fn(&Commitment) -> String) -> String {
    let parts: Vec<String> = c
        .ves
        .iter()
        .filter(|one| !f(one).is_empty())
        .map(|one| format!("{} {}", one.ve, f(one)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
