//! The values limits are written in, parsed and printed: sizes (`256M`),
//! percentages (`50%`), amounts (either), network shares, CPU sets, counts and
//! `unlimited`. A value that does not parse is a [`BadValue`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use quota::human_bytes;

/// A value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// `given` is not a `what` (a size, a percentage, ...): `expected` says
    /// what one looks like.
    #[error("invalid {what} {given:?}: expected {expected}")]
    Syntax {
        what: &'static str,
        given: String,
        expected: &'static str,
    },
    /// A size beyond 2^64 bytes.
    #[error("size {0:?} is too large")]
    TooLarge(String),
    /// A network value (a rate).
    #[error(transparent)]
    Net(#[from] netns::model::BadValue),
}

const SIZE: &str = "a number with an optional K, M, G or T suffix, like 256M";
const PERCENT: &str = "a number followed by %, like 50%";

fn syntax(what: &'static str, given: &str, expected: &'static str) -> BadValue {
    BadValue::Syntax {
        what,
        given: given.to_string(),
        expected,
    }
}

/// A byte count with binary suffixes: `512K`, `256M`, `1.5G`, `2T`, or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || syntax("size", s, SIZE);
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
                return Err(BadValue::TooLarge(s.to_string()));
            }
            v.round() as u64
        } else {
            let too_large = || BadValue::TooLarge(s.to_string());
            let n: u64 = num.parse().map_err(|_| too_large())?;
            n.checked_mul(mult).ok_or_else(too_large)?
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

/// A percentage, written `50%`; fractional values like `12.5%` are allowed.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || syntax("percentage", s, PERCENT);
        let num = s.trim().strip_suffix('%').ok_or_else(bad)?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let v: f64 = num.parse().map_err(|_| bad())?;
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
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        if s.trim_end().ends_with('%') {
            Ok(Amount::Percent(s.parse()?))
        } else {
            Ok(Amount::Bytes(s.parse()?))
        }
    }
}

impl Amount {
    /// The amount in bytes, percentages being of `total`.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Amount::Bytes(Size(b)) => b,
            Amount::Percent(Percent(p)) => (total as f64 * p / 100.0) as u64,
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
serde_via_string!(NetShare);

/// A network bandwidth guarantee: a rate, or a share of the network's
/// `--bandwidth`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NetShare {
    Rate(netns::model::Rate),
    Percent(Percent),
}

impl FromStr for NetShare {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        if s.trim_end().ends_with('%') {
            Ok(NetShare::Percent(s.parse()?))
        } else {
            Ok(NetShare::Rate(s.parse()?))
        }
    }
}

impl fmt::Display for NetShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetShare::Rate(r) => r.fmt(f),
            NetShare::Percent(p) => p.fmt(f),
        }
    }
}

impl NetShare {
    /// Bits per second on a network of `bandwidth` (a share needs one).
    pub fn bps(self, bandwidth: Option<u64>) -> Option<u64> {
        match self {
            NetShare::Rate(r) => Some(r.0),
            NetShare::Percent(Percent(p)) => bandwidth.map(|b| (b as f64 * p / 100.0) as u64),
        }
    }
}

/// What a user may write for a limit: a value, or `unlimited` to remove it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    Value(T),
    Unlimited,
}

impl<T: FromStr> FromStr for Setting<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, T::Err> {
        match s.trim() {
            "unlimited" | "max" | "none" => Ok(Setting::Unlimited),
            _ => s.parse().map(Setting::Value),
        }
    }
}

/// Parses a count limit (`200`) or `unlimited`.
pub fn parse_count(s: &str) -> Result<Setting<u64>, BadValue> {
    match s.trim() {
        "unlimited" | "max" | "none" => Ok(Setting::Unlimited),
        t => t
            .parse::<u64>()
            .map(Setting::Value)
            .map_err(|_| syntax("number", s, "a whole number like 200, or unlimited")),
    }
}

impl<T> Setting<T> {
    /// The value, or `None` for unlimited.
    pub fn into_option(self) -> Option<T> {
        match self {
            Setting::Value(v) => Some(v),
            Setting::Unlimited => None,
        }
    }
}

/// The CPUs a VE may run on: a count (`2`: vectl picks which, spreading VEs over
/// the host by id) or an explicit list (`0-1,3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpus {
    Count(u32),
    List(Vec<u32>),
}

impl FromStr for Cpus {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || syntax("CPU set", s, "a count like 2 or a list like 0-1,3");
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = t.parse().map_err(|_| bad())?;
            return if n == 0 {
                Err(bad())
            } else {
                Ok(Cpus::Count(n))
            };
        }
        let mut cpus = Vec::new();
        for part in t.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo, hi),
                None => (part, part),
            };
            let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi || hi > 4095 {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Cpus::List(cpus))
    }
}

/// Writes CPU numbers the way cpusets do: `0-3,6`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cpus::Count(n) => write!(f, "{n}"),
            // One CPU is written `N-N`: a bare number reads back as a count.
            Cpus::List(l) if l.len() == 1 => write!(f, "{0}-{0}", l[0]),
            Cpus::List(l) => f.write_str(&cpu_list(l)),
        }
    }
}

serde_via_string!(Cpus);
