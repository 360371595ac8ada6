//! The limits vocabulary: sizes (`256M`), percentages (`50%`), and the VE's limits as
//! configured (`Limits`) and as written to the kernel (`KernelLimits`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Smallest RAM limit vectl accepts: below this a VE's init cannot even start.
pub const MIN_RAM: u64 = 4 << 20;
/// Largest pids limit the kernel accepts (PID_MAX_LIMIT).
pub const MAX_PIDS: u64 = 4 << 20;
/// The CFS period vectl uses for CPU caps, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A byte count with binary suffixes: `512K`, `256M`, `1.5G`, `2T`, or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "invalid size {s:?}: expected a number with an optional K, M, G or T suffix, like 256M"
            )
        };
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m: u64 = match c.to_ascii_uppercase() {
                    'B' => 1,
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => return Err(bad()),
                };
                (&t[..i], m)
            }
            _ => (t, 1),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let bytes = if num.contains('.') {
            let f: f64 = num.parse().map_err(|_| bad())?;
            let v = f * mult as f64;
            if !v.is_finite() || v >= u64::MAX as f64 {
                return Err(format!("size {s:?} is too large"));
            }
            v.round() as u64
        } else {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("size {s:?} is too large"))?;
            n.checked_mul(mult)
                .ok_or_else(|| format!("size {s:?} is too large"))?
        };
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (suffix, unit) in [
            ("T", 1u64 << 40),
            ("G", 1 << 30),
            ("M", 1 << 20),
            ("K", 1 << 10),
        ] {
            if b >= unit && b.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", b / unit);
            }
        }
        write!(f, "{b}")
    }
}

/// Formats a byte count for people: `1.5G`, `256M`, `12K`.
pub fn human_bytes(b: u64) -> String {
    for (suffix, unit) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if b >= unit {
            let v = b as f64 / unit as f64;
            return if v >= 100.0 || (v - v.round()).abs() < 0.05 {
                format!("{:.0}{suffix}", v)
            } else {
                format!("{v:.1}{suffix}")
            };
        }
    }
    format!("{b}B")
}

/// A percentage, written `50%`; fractional values like `12.5%` are allowed.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let num = t.strip_suffix('%').ok_or_else(|| {
            format!("invalid percentage {s:?}: expected a number followed by %, like 50%")
        })?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "invalid percentage {s:?}: expected a number followed by %, like 50%"
            ));
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("invalid percentage {s:?}"))?;
        Ok(Percent(v))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.fract() == 0.0 {
            write!(f, "{:.0}%", self.0)
        } else {
            write!(f, "{}%", self.0)
        }
    }
}

/// A quantity given either absolutely or as a percentage of the host's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Bytes(Size),
    Percent(Percent),
}

impl FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim_end().ends_with('%') {
            Ok(Amount::Percent(s.parse()?))
        } else {
            Ok(Amount::Bytes(s.parse()?))
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Bytes(b) => b.fmt(f),
            Amount::Percent(p) => p.fmt(f),
        }
    }
}

macro_rules! serde_via_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_string!(Size);
serde_via_string!(Percent);
serde_via_string!(Amount);

/// What a user may write for a limit: a value, or `unlimited` to remove it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    Value(T),
    Unlimited,
}

impl<T: FromStr<Err = String>> FromStr for Setting<T> {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "unlimited" | "max" | "none" => Ok(Setting::Unlimited),
            _ => s.parse().map(Setting::Value),
        }
    }
}

/// Parses a count limit (`200`) or `unlimited`.
pub fn parse_count(s: &str) -> std::result::Result<Setting<u64>, String> {
    match s.trim() {
        "unlimited" | "max" | "none" => Ok(Setting::Unlimited),
        t => t.parse::<u64>().map(Setting::Value).map_err(|_| {
            format!("invalid number {s:?}: expected a whole number like 200, or unlimited")
        }),
    }
}

impl<T> Setting<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Setting::Value(v) => Some(v),
            Setting::Unlimited => None,
        }
    }
}

/// A VE's limits as configured (absent = unlimited). Stored in the VE's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Hard memory limit: bytes or percent of host RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<Amount>,
    /// CPU cap in percent of one CPU (`150%` = one and a half CPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<Percent>,
    /// Maximum number of processes and threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// A change to limits, as given to `create` or `set`: `None` = leave as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsUpdate {
    pub ram: Option<Setting<Amount>>,
    pub cpu_limit: Option<Setting<Percent>>,
    pub pids: Option<Setting<u64>>,
}

impl LimitsUpdate {
    /// True when nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.ram.is_none() && self.cpu_limit.is_none() && self.pids.is_none()
    }

    /// The limits after this change.
    pub fn applied_to(&self, base: &Limits) -> Limits {
        let mut out = base.clone();
        if let Some(s) = self.ram {
            out.ram = s.into_option();
        }
        if let Some(s) = self.cpu_limit {
            out.cpu_limit = s.into_option();
        }
        if let Some(s) = self.pids {
            out.pids = s.into_option();
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

/// Limits as the kernel takes them (absent = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KernelLimits {
    pub memory_bytes: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    /// Checks the limits against the host and converts them to kernel values.
    /// `ve` names the VE in errors.
    pub fn resolve(&self, ve: &str, cap: Capacity) -> Result<KernelLimits> {
        let bad = |what: String| Error::BadLimit {
            ve: ve.to_string(),
            reason: what,
        };
        let memory_bytes = match self.ram {
            None => None,
            Some(Amount::Bytes(Size(b))) => Some(b),
            Some(Amount::Percent(Percent(p))) => {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(bad(format!(
                        "--ram {p}% is not between 0% and 100% of host RAM"
                    )));
                }
                Some((cap.ram_bytes as f64 * p / 100.0) as u64 & !4095)
            }
        };
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
        if let Some(n) = self.pids
            && !(1..=MAX_PIDS).contains(&n)
        {
            return Err(bad(format!("--pids {n} is outside 1..{MAX_PIDS}")));
        }
        Ok(KernelLimits {
            memory_bytes,
            cpu_quota_us,
            pids: self.pids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Capacity = Capacity {
        cpus: 2,
        ram_bytes: 8 << 30,
    };

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
        };
        let k = l.resolve("web1", CAP).unwrap();
        assert_eq!(k.memory_bytes, Some(256 << 20));
        assert_eq!(k.cpu_quota_us, Some(50_000));
        assert_eq!(k.pids, Some(200));
        let pct = Limits {
            ram: Some(Amount::Percent(Percent(50.0))),
            ..Limits::default()
        };
        assert_eq!(pct.resolve("w", CAP).unwrap().memory_bytes, Some(4 << 30));
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
        ];
        for (l, want) in cases {
            let e = l.resolve("web1", CAP).unwrap_err().to_string();
            assert!(e.starts_with("VE web1: ") && e.contains(want), "{e}");
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
            pids: None,
        };
        let out = up.applied_to(&base);
        assert_eq!(out.ram, None);
        assert_eq!(out.cpu_limit, Some(Percent(25.0)));
        assert_eq!(out.pids, Some(10));
    }
}
