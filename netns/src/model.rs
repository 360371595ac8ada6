//! What a virtual network is (its mode, subnet, uplink...), how vectl names the
//! kernel objects it makes for it, and address management (IPAM). Pure: nothing
//! here touches the kernel.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network value (mode, subnet, rate, port mapping, host service, MAC) that
/// does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// `given` is none of the words a `what` can be.
    #[error("unknown {what} {given:?}: use {choices}")]
    Unknown {
        what: &'static str,
        given: String,
        choices: &'static str,
    },
    /// `given` is not a `what`: `expected` says what one looks like.
    #[error("invalid {what} {given:?}: expected {expected}")]
    Syntax {
        what: &'static str,
        given: String,
        expected: &'static str,
    },
    /// A subnet with host bits set.
    #[error("invalid subnet {given:?}: host bits are set (the network is {network})")]
    HostBits { given: String, network: Subnet },
    /// A subnet prefix vectl does not use.
    #[error("subnet {0}: the prefix must be between /{MIN_PREFIX} and /{MAX_PREFIX}")]
    Prefix(String),
    /// A subnet in a special-use range (loopback, link-local, multicast...):
    /// `why` names the range.
    #[error("subnet {given}: it overlaps {why}, which no network can use")]
    SpecialUse { given: String, why: &'static str },
    /// A rate below 1kbit or above 10000gbit.
    #[error("rate {0:?} is out of range: from 1kbit to 10000gbit")]
    RateRange(String),
    /// A port range whose first port is above its last.
    #[error("invalid host service {0:?}: the range runs backwards")]
    Backwards(String),
    /// More `--allow-host` entries than a network keeps.
    #[error("--allow-host: {count} entries, at most {max}")]
    TooManyHostAccess { count: usize, max: usize },
}

fn syntax(what: &'static str, given: &str, expected: &'static str) -> BadValue {
    BadValue::Syntax {
        what,
        given: given.to_string(),
        expected,
    }
}

/// Why a network cannot give a VE an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefused {
    #[error("address {ip} is not a host address of network {net}'s subnet {subnet}")]
    Outside {
        ip: Ipv4Addr,
        net: String,
        subnet: Subnet,
    },
    #[error("address {ip} is network {net}'s gateway")]
    Gateway { ip: Ipv4Addr, net: String },
    #[error("address {ip} is in use on network {net}")]
    InUse { ip: Ipv4Addr, net: String },
    #[error("address {0} is the last of a /16 (reserved by vectl)")]
    Reserved(Ipv4Addr),
    /// An address in a special-use range (loopback, link-local, multicast...).
    #[error("address {ip} is in {why}, which no VE can have")]
    SpecialUse { ip: Ipv4Addr, why: &'static str },
}

/// Serde as a string through Display/FromStr.
macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
/// How a network connects its VEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A bridge with the host's uplink in it: VEs are on the LAN with their own MACs.
    Bridged,
    /// A bridge with a host address and no forwarding beyond it.
    HostOnly,
    /// host-only plus masquerade to the outside and published ports.
    Nat,
    /// No bridge: each VE's address is routed to its port, and the host answers
    /// ARP for it on the uplink (the venet way).
    Routed,
}

impl Mode {
    /// Whether the network's VEs hang off a bridge.
    pub fn bridged(self) -> bool {
        !matches!(self, Mode::Routed)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Bridged => "bridged",
            Mode::HostOnly => "host-only",
            Mode::Nat => "nat",
            Mode::Routed => "routed",
        })
    }
}

impl FromStr for Mode {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        match s {
            "bridged" => Ok(Mode::Bridged),
            "host-only" => Ok(Mode::HostOnly),
            "nat" => Ok(Mode::Nat),
            "routed" => Ok(Mode::Routed),
            _ => Err(BadValue::Unknown {
                what: "network mode",
                given: s.to_string(),
                choices: "bridged, host-only, nat or routed",
            }),
        }
    }
}

/// An IPv4 subnet, `10.0.3.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// The widest subnet vectl manages (class ids and address scans stay small).
pub const MIN_PREFIX: u8 = 16;
/// The narrowest: room for a gateway and at least one VE.
pub const MAX_PREFIX: u8 = 30;

impl Subnet {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    /// The broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// Whether two subnets share an address.
    pub fn overlaps(self, other: Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        let a = Subnet {
            addr: self.addr,
            prefix: p,
        };
        a.contains(other.addr)
    }
    /// The first usable host address (the default gateway).
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
    /// `ip`'s offset from the network address.
    pub fn offset(self, ip: Ipv4Addr) -> u32 {
        u32::from(ip) - u32::from(self.network())
    }
    /// Why the subnet cannot be a network's: it overlaps loopback (127.0.0.0/8),
    /// "this network" (0.0.0.0/8), link-local (169.254.0.0/16: routed VEs'
    /// gateway is 169.254.0.1) or multicast and reserved (224.0.0.0/3, up to the
    /// broadcast address 255.255.255.255).
    pub fn special_use(self) -> Option<&'static str> {
        let net = |a: u8, prefix: u8| Subnet {
            addr: Ipv4Addr::new(a, 0, 0, 0),
            prefix,
        };
        [
            (net(0, 8), "\"this network\" (0.0.0.0/8)"),
            (net(127, 8), "loopback (127.0.0.0/8)"),
            (
                Subnet {
                    addr: Ipv4Addr::new(169, 254, 0, 0),
                    prefix: 16,
                },
                "link-local (169.254.0.0/16)",
            ),
            (net(224, 3), "multicast and reserved (224.0.0.0/3)"),
        ]
        .into_iter()
        .find(|(n, _)| self.overlaps(*n))
        .map(|(_, what)| what)
    }
    /// Whether `ip` is a usable host address of the subnet (not the network or
    /// broadcast address).
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Subnet {
    /// Parses a CIDR without the special-use check: what a stored network config
    /// holds (one written before that check must still load, to be removed).
    fn parse_cidr(s: &str) -> Result<Subnet, BadValue> {
        let bad = || syntax("subnet", s, "an IPv4 CIDR like 10.0.3.0/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let sn = Subnet { addr, prefix };
        if sn.network() != addr {
            return Err(BadValue::HostBits {
                given: s.to_string(),
                network: Subnet {
                    addr: sn.network(),
                    prefix,
                },
            });
        }
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(BadValue::Prefix(s.to_string()));
        }
        Ok(sn)
    }
}

impl FromStr for Subnet {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let sn = Subnet::parse_cidr(s)?;
        if let Some(why) = sn.special_use() {
            return Err(BadValue::SpecialUse {
                given: s.to_string(),
                why,
            });
        }
        Ok(sn)
    }
}

/// A bandwidth in bits per second: `10mbit`, `1gbit`, `500kbit`, `100M` (= 100
/// Mbit/s), or a plain number of bit/s. Decimal units, as tc has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || syntax("rate", s, "a bandwidth like 100mbit, 1gbit or 500kbit");
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix("bit").unwrap_or(&t);
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit {
            "" => 1.0,
            "k" => 1e3,
            "m" => 1e6,
            "g" => 1e9,
            "t" => 1e12,
            _ => return Err(bad()),
        };
        let v = (n * mult).round();
        if !(1000.0..=1e13).contains(&v) {
            return Err(BadValue::RateRange(s.to_string()));
        }
        Ok(Rate(v as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (div, unit) in [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1000, "kbit")] {
            if b >= div && b.is_multiple_of(div) {
                return write!(f, "{}{unit}", b / div);
            }
        }
        if b >= 1_000_000 {
            return write!(f, "{}mbit", b as f64 / 1e6);
        }
        write!(f, "{b}bit")
    }
}

serde_via_str!(Rate);

/// Protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port: `HOSTPORT:VEPORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMap {
    pub host_port: u16,
    pub ve_port: u16,
    pub proto: Proto,
}

impl FromStr for PortMap {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || syntax("port mapping", s, "HOSTPORT:VEPORT[/tcp|udp], like 8080:80");
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        let (h, v) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(PortMap {
            host_port: port(h)?,
            ve_port: port(v)?,
            proto,
        })
    }
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.ve_port, self.proto)
    }
}

serde_via_str!(PortMap);

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Subnet::parse_cidr(&s).map_err(serde::de::Error::custom)
    }
}

/// A service on the host's own addresses that a network's VEs may reach
/// (`--allow-host`): `tcp:22`, `udp:53`, a port range `tcp:8000-8100`, or `all`.
/// Without any, a VE reaches no service of the host (see the firewall, `nft`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostAccess {
    /// Ports `first..=last` of a protocol.
    Ports { proto: Proto, first: u16, last: u16 },
    /// Every service of the host (the behaviour before vectl limited it).
    All,
}

/// At most this many `--allow-host` entries per network.
pub const MAX_HOST_ACCESS: usize = 64;

impl HostAccess {
    /// Parses a comma-separated list (`tcp:22,udp:53`); `none` or nothing is
    /// the empty list. Sorted, without duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<HostAccess>, BadValue> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Vec::new());
        }
        let mut out: Vec<HostAccess> = s
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        if out.len() > MAX_HOST_ACCESS {
            return Err(BadValue::TooManyHostAccess {
                count: out.len(),
                max: MAX_HOST_ACCESS,
            });
        }
        Ok(out)
    }
}

impl FromStr for HostAccess {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || {
            syntax(
                "host service",
                s,
                "PROTO:PORT or PROTO:FIRST-LAST (tcp:22, udp:53, tcp:8000-8100), all or none",
            )
        };
        if s == "all" {
            return Ok(HostAccess::All);
        }
        let (proto, ports) = s.split_once(':').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(BadValue::Backwards(s.to_string()));
        }
        Ok(HostAccess::Ports { proto, first, last })
    }
}

impl fmt::Display for HostAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAccess::All => f.write_str("all"),
            HostAccess::Ports { proto, first, last } if first == last => {
                write!(f, "{proto}:{first}")
            }
            HostAccess::Ports { proto, first, last } => write!(f, "{proto}:{first}-{last}"),
        }
    }
}

serde_via_str!(HostAccess);

/// The largest network id: interface names (`vn999p999999999`, `vabrrp999999999`)
/// must fit in 15 characters.
pub const MAX_NET_ID: u32 = 999;

/// A network as configured (`nets/<name>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub name: String,
    /// 1..=999, part of the names of the network's interfaces.
    pub id: u32,
    pub mode: Mode,
    pub subnet: Subnet,
    /// The VEs' default gateway: the host's address on the bridge for host-only
    /// and nat; the LAN's router for bridged (none = no default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The host interface the network reaches the outside by (bridged: enslaved
    /// or used as the bridge; routed: where the host answers ARP for VEs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// 802.1Q VLAN id on the uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Name servers written to the VEs' /etc/resolv.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// The network's total bandwidth, shared by guarantees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Rate>,
    /// Services on the host's own addresses its VEs may reach besides ping
    /// (`--allow-host`); none by default. Always written, so `net show --json`
    /// shows the empty list too.
    #[serde(default)]
    pub allow_host: Vec<HostAccess>,
    pub created: String,
    /// The identity of the root the network belongs to, which its interfaces'
    /// names derive from (see [`Names`]); none in a root made before roots had
    /// identities. Not stored: the root's settings have it, and whoever loads
    /// the config sets it.
    #[serde(skip)]
    pub root: Option<String>,
}

/// How one state root names what it makes on the host: its nft tables and the
/// interfaces of its networks. A root has an identity (two lowercase letters,
/// recorded in its settings at `init`) and every host-global name derives from
/// it, so two roots on a host never see or touch each other's objects:
///
/// | object            | root `ab`         | a root from before identities |
/// |-------------------|-------------------|-------------------------------|
/// | nft tables        | `vectl-ab`        | `vectl`                       |
/// | bridge of net 1   | `vab01b`          | `vn1b`                        |
/// | port of VE 100    | `vab01p100`       | `vn1p100`                     |
/// | IFBs              | `vab01u`/`vab01d` | `vn1u`/`vn1d`                 |
/// | VLAN link         | `vab01v`          | `vn1v`                        |
///
/// With an identity the network id is written in two base-36 digits, so that
/// the longest name (`vab` + `rr` + `p` + a 9-digit VE id) fits the kernel's 15
/// characters. An identity never starts with `n`, so `vn*` (a root from before
/// identities) and `vab*` never match each other's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Names {
    identity: Option<String>,
}

/// Letters an identity may start with: not `n` (see [`Names`]), nor the first
/// letters after `v` of common interface names (`veth*`, `virbr*`, `vlan*`,
/// `vxlan*`, `vmnet*`, `vcan*`, `vrf*`, `vboxnet*`, `vti*`, `vport*`).
pub const IDENTITY_FIRST: &str = "adfghjkqsuwyz";

impl Names {
    /// The names of a root with `identity` (`None`: a root made before roots had
    /// identities, which keeps its names).
    pub fn new(identity: Option<&str>) -> Names {
        Names {
            identity: identity.map(str::to_string),
        }
    }

    /// Whether `s` may be a root's identity: two lowercase ASCII letters, the
    /// first one of [`IDENTITY_FIRST`].
    pub fn valid_identity(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 2 && IDENTITY_FIRST.as_bytes().contains(&b[0]) && b[1].is_ascii_lowercase()
    }

    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The name of the root's nft tables (one each in the ip, ip6 and bridge
    /// families).
    pub fn table(&self) -> String {
        match &self.identity {
            Some(i) => format!("vectl-{i}"),
            None => "vectl".into(),
        }
    }

    /// What all of the root's interface names start with.
    pub fn prefix(&self) -> String {
        match &self.identity {
            Some(i) => format!("v{i}"),
            None => "vn".into(),
        }
    }

    /// An nft wildcard for all of the root's interfaces.
    pub fn glob(&self) -> String {
        format!("{}*", self.prefix())
    }

    /// The prefix of network `id`'s interfaces.
    fn net(&self, id: u32) -> String {
        match &self.identity {
            Some(i) => {
                const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
                let hi = DIGITS[(id / 36 % 36) as usize] as char;
                let lo = DIGITS[(id % 36) as usize] as char;
                format!("v{i}{hi}{lo}")
            }
            None => format!("vn{id}"),
        }
    }

    /// Name of the bridge vectl makes for network `id`.
    pub fn bridge(&self, id: u32) -> String {
        format!("{}b", self.net(id))
    }

    /// Both names a VE's port on a network may have: a start takes the second
    /// when the first is still there, being removed by the kernel with the
    /// namespace of the VE's previous run (deleting it would wait out an RCU
    /// grace period).
    pub fn ports(&self, net_id: u32, ve_id: u32) -> [String; 2] {
        let n = self.net(net_id);
        [format!("{n}p{ve_id}"), format!("{n}q{ve_id}")]
    }

    /// Wildcards (nft) for all ports of network `id`, one per slot.
    pub fn port_globs(&self, id: u32) -> [String; 2] {
        let n = self.net(id);
        [format!("{n}p*"), format!("{n}q*")]
    }

    /// Names of the network's IFB devices (traffic from the VEs, traffic to them).
    pub fn ifbs(&self, id: u32) -> (String, String) {
        let n = self.net(id);
        (format!("{n}u"), format!("{n}d"))
    }

    /// Name of the VLAN link vectl makes on the uplink.
    pub fn vlan(&self, id: u32) -> String {
        format!("{}v", self.net(id))
    }
}

/// The root class of a network without `--bandwidth`.
pub const UNLIMITED_BPS: u64 = 100_000_000_000;

/// The host-side address of every routed port: the VEs' next hop.
pub const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

impl NetConfig {
    /// How the network's interfaces are named (its root's [`Names`]).
    pub fn names(&self) -> Names {
        Names::new(self.root.as_deref())
    }

    /// The bridge vectl makes for the network (see [`NetConfig::bridge`] for
    /// the one its VEs' ports join).
    pub fn bridge_name(&self) -> String {
        self.names().bridge(self.id)
    }

    /// The first name of VE `ve_id`'s port on the network ([`Names::ports`]).
    pub fn port_name(&self, ve_id: u32) -> String {
        let [p, _] = self.names().ports(self.id, ve_id);
        p
    }

    /// Both names VE `ve_id`'s port may have ([`Names::ports`]).
    pub fn port_names(&self, ve_id: u32) -> [String; 2] {
        self.names().ports(self.id, ve_id)
    }

    /// Wildcards (nft) for all of the network's ports.
    pub fn port_globs(&self) -> [String; 2] {
        self.names().port_globs(self.id)
    }

    /// The network's IFB devices (traffic from the VEs, traffic to them).
    pub fn ifb_names(&self) -> (String, String) {
        self.names().ifbs(self.id)
    }

    /// The VLAN link vectl makes on the uplink.
    pub fn vlan_name(&self) -> String {
        self.names().vlan(self.id)
    }

    /// The bridge the VEs' ports join, if the mode has one: the uplink itself when
    /// bridged to an operator's bridge (`uplink_is_bridge`), else vectl's own.
    pub fn bridge(&self, uplink_is_bridge: bool) -> Option<String> {
        match self.mode {
            Mode::Routed => None,
            Mode::Bridged if uplink_is_bridge && self.vlan.is_none() => self.uplink.clone(),
            _ => Some(self.bridge_name()),
        }
    }

    /// The gateway VEs route through, if any.
    pub fn ve_gateway(&self) -> Option<Ipv4Addr> {
        match self.mode {
            Mode::Routed => Some(ROUTED_GATEWAY),
            Mode::HostOnly => None,
            _ => self.gateway,
        }
    }

    /// The host's own address on the network's bridge (host-only and nat).
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        match self.mode {
            Mode::HostOnly | Mode::Nat => self.gateway,
            _ => None,
        }
    }

    /// The bandwidth of the shaper's root class: the network's, or for a network
    /// without one more than any link, so only the VEs' own limits count.
    pub fn total_bps(&self) -> u64 {
        self.bandwidth.map_or(UNLIMITED_BPS, |b| b.0)
    }

    /// The prefix a VE's address gets inside the VE.
    pub fn ve_prefix(&self) -> u8 {
        if self.mode == Mode::Routed {
            32
        } else {
            self.subnet.prefix
        }
    }

    /// The uplink interface after VLAN tagging: the VLAN link, or the uplink.
    pub fn effective_uplink(&self) -> Option<String> {
        match (self.vlan, &self.uplink) {
            (Some(_), Some(_)) => Some(self.vlan_name()),
            (None, Some(u)) => Some(u.clone()),
            _ => None,
        }
    }

    /// The addresses of the subnet no VE may have.
    pub fn reserved(&self) -> BTreeSet<Ipv4Addr> {
        let mut r = BTreeSet::new();
        r.insert(self.subnet.network());
        r.insert(self.subnet.broadcast());
        if let Some(g) = self.gateway {
            r.insert(g);
        }
        r
    }

    /// Checks that `ip` may be a VE's address here; `used` are the addresses of
    /// the other VEs on the network.
    pub fn check_address(
        &self,
        ip: Ipv4Addr,
        used: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), AddressRefused> {
        let net = || self.name.clone();
        let this = Subnet {
            addr: ip,
            prefix: 32,
        };
        if let Some(why) = this.special_use() {
            return Err(AddressRefused::SpecialUse { ip, why });
        }
        if !self.subnet.is_host(ip) {
            return Err(AddressRefused::Outside {
                ip,
                net: net(),
                subnet: self.subnet,
            });
        }
        if self.gateway == Some(ip) {
            return Err(AddressRefused::Gateway { ip, net: net() });
        }
        if used.contains(&ip) {
            return Err(AddressRefused::InUse { ip, net: net() });
        }
        if class_minor(self.subnet, ip).is_none() {
            return Err(AddressRefused::Reserved(ip));
        }
        Ok(())
    }

    /// The lowest free address for a VE, given the ones in use.
    pub fn allocate(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast());
        let reserved = self.reserved();
        (first..last).map(Ipv4Addr::from).find(|ip| {
            !reserved.contains(ip) && !used.contains(ip) && class_minor(self.subnet, *ip).is_some()
        })
    }
}

/// The traffic class minor of a VE's address on its network (unique per network:
/// the address's offset, plus one so that 1:1 stays the root class).
pub fn class_minor(subnet: Subnet, ip: Ipv4Addr) -> Option<u16> {
    let m = subnet.offset(ip) + 1;
    u16::try_from(m).ok().filter(|m| (2..=0xfffe).contains(m))
}

/// A MAC address, written `02:ab:cd:ef:01:23`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address (what a VE's NIC gets at
    /// create, kept in its config so it is the same at every start).
    pub fn random() -> std::io::Result<Mac> {
        use std::io::Read;
        let mut b = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        b[0] = (b[0] & 0xfc) | 0x02;
        Ok(Mac(b))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || syntax("MAC address", s, "six hex pairs like 02:00:00:00:00:01");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(b))
    }
}
serde_via_str!(Mac);

/// Checks an interface name (the kernel's rules: 1..15 bytes, no '/', ':' or
/// white space).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_overlap() {
        let a: Subnet = "10.0.3.0/24".parse().unwrap();
        assert_eq!(a.first_host(), Ipv4Addr::new(10, 0, 3, 1));
        assert_eq!(a.broadcast(), Ipv4Addr::new(10, 0, 3, 255));
        assert!(a.contains(Ipv4Addr::new(10, 0, 3, 7)));
        assert!(!a.contains(Ipv4Addr::new(10, 0, 4, 7)));
        let b: Subnet = "10.0.0.0/16".parse().unwrap();
        assert!(a.overlaps(b) && b.overlaps(a));
        let c: Subnet = "10.1.0.0/16".parse().unwrap();
        assert!(!a.overlaps(c));
        for bad in [
            "10.0.3.1/24",
            "10.0.3.0",
            "10.0.3.0/33",
            "x/24",
            "10.0.0.0/8",
            "10.0.3.0/31",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_access_lists_parse_sorted_and_round_trip() {
        let l = HostAccess::parse_list("udp:53, tcp:8000-8100,tcp:22,tcp:22").unwrap();
        assert_eq!(
            l.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tcp:22", "tcp:8000-8100", "udp:53"]
        );
        for t in ["tcp:22", "udp:1-65535", "all"] {
            assert_eq!(t.parse::<HostAccess>().unwrap().to_string(), t);
        }
        assert_eq!(HostAccess::parse_list("none").unwrap(), vec![]);
        assert_eq!(HostAccess::parse_list("").unwrap(), vec![]);
        for bad in [
            "22",
            "tcp:0",
            "tcp:70000",
            "sctp:22",
            "tcp:9-8",
            "tcp:",
            "tcp:a",
            "none,tcp:1",
        ] {
            assert!(HostAccess::parse_list(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (1..=65).map(|p| format!("tcp:{p}")).collect();
        assert!(HostAccess::parse_list(&many.join(",")).is_err());
    }

    #[test]
    fn special_use_subnets_are_named() {
        let sn = |s: &str| Subnet::parse_cidr(s).unwrap();
        assert!(
            sn("127.0.0.0/16")
                .special_use()
                .unwrap()
                .contains("loopback")
        );
        assert!(sn("0.0.0.0/16").special_use().is_some());
        assert!(sn("224.1.0.0/16").special_use().is_some());
        assert!(sn("250.1.0.0/16").special_use().is_some());
        assert_eq!(sn("10.0.3.0/24").special_use(), None);
        assert_eq!(sn("126.255.0.0/16").special_use(), None);
        assert_eq!(sn("192.0.2.0/24").special_use(), None);
    }

    #[test]
    fn special_use_subnets_do_not_parse() {
        for (given, why) in [
            ("0.0.0.0/16", "this network"),
            ("255.255.0.0/16", "reserved"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.3.0/24", "link-local"),
            ("224.0.0.0/16", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("127.0.0.0/16", "loopback"),
            ("240.0.0.0/16", "reserved"),
        ] {
            let e = given.parse::<Subnet>().unwrap_err();
            assert!(matches!(e, BadValue::SpecialUse { .. }), "{given}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(given) && msg.contains(why), "{msg}");
        }
        assert!("169.253.0.0/16".parse::<Subnet>().is_ok());
        assert!("169.255.0.0/16".parse::<Subnet>().is_ok());
        // A stored config from before the check still loads.
        let old: Subnet = serde_json::from_str("\"169.254.0.0/16\"").unwrap();
        assert_eq!(old.prefix, 16);
    }

    #[test]
    fn rates_parse_in_decimal_units() {
        assert_eq!("10mbit".parse::<Rate>().unwrap(), Rate(10_000_000));
        assert_eq!("1gbit".parse::<Rate>().unwrap(), Rate(1_000_000_000));
        assert_eq!("100M".parse::<Rate>().unwrap(), Rate(100_000_000));
        assert_eq!("1.5mbit".parse::<Rate>().unwrap(), Rate(1_500_000));
        assert_eq!(Rate(10_000_000).to_string(), "10mbit");
        assert_eq!(Rate(1_500_000).to_string(), "1500kbit");
        for bad in ["", "fast", "10xbit", "0", "1bit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_publish_syntax() {
        let p: PortMap = "8080:80".parse().unwrap();
        assert_eq!((p.host_port, p.ve_port, p.proto), (8080, 80, Proto::Tcp));
        let u: PortMap = "53:5353/udp".parse().unwrap();
        assert_eq!(u.to_string(), "53:5353/udp");
        for bad in ["80", "0:80", "80:70000", "80:80/sctp", "a:b"] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_allocated_lowest_first_without_duplicates() {
        let net = NetConfig {
            name: "n".into(),
            id: 1,
            mode: Mode::Nat,
            subnet: "10.0.3.0/29".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 3, 1)),
            uplink: None,
            vlan: None,
            dns: vec![],
            bandwidth: None,
            allow_host: vec![],
            created: String::new(),
            root: None,
        };
        let mut used = BTreeSet::new();
        for want in 2..=6 {
            let ip = net.allocate(&used).unwrap();
            assert_eq!(ip, Ipv4Addr::new(10, 0, 3, want));
            net.check_address(ip, &used).unwrap();
            used.insert(ip);
        }
        assert_eq!(net.allocate(&used), None);
        assert!(
            net.check_address(Ipv4Addr::new(10, 0, 3, 1), &used)
                .is_err()
        );
        assert!(
            net.check_address(Ipv4Addr::new(10, 0, 3, 7), &used)
                .is_err()
        );
        assert!(
            net.check_address(Ipv4Addr::new(10, 0, 4, 2), &used)
                .is_err()
        );
        assert_eq!(class_minor(net.subnet, Ipv4Addr::new(10, 0, 3, 2)), Some(3));
        assert_eq!(Names::new(None).ports(999, 999_999_999)[0].len(), 15);
        let ab = Names::new(Some("ab"));
        assert_eq!(ab.ports(999, 999_999_999)[1], "vabrrq999999999");
        assert_eq!(ab.bridge(1), "vab01b");
        assert_eq!(ab.ifbs(36), ("vab10u".into(), "vab10d".into()));
        assert_eq!(ab.table(), "vectl-ab");
        assert_eq!(Names::new(None).bridge(1), "vn1b");
        assert!(Names::valid_identity("ab") && Names::valid_identity("zz"));
        for bad in ["na", "ea", "a", "abc", "aB", "a1", ""] {
            assert!(!Names::valid_identity(bad), "{bad}");
        }
        let m = Mac::random().unwrap();
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        assert!("02:00:00:00:00".parse::<Mac>().is_err());
    }
}
