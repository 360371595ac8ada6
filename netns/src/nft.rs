//! The firewall of vectl's networks: masquerade, published ports, isolation between
//! networks, anti-spoofing and what of the host a VE reaches, as nftables tables of
//! vectl's own (`ip vectl` and `bridge vectl`). The whole ruleset is generated from
//! the configs and replaced in one atomic `nft -f` transaction whenever networks,
//! VE addresses or published ports change: never on a VE's start or stop, which
//! only create and delete links (the rules match interface names, so they hold for
//! a port the moment it exists).
//!
//! The host is not a VE's to use: packets from VE ports and bridges to or from
//! 127.0.0.0/8 are dropped before routing (nat bridges have `route_localnet` on
//! so that published ports answer on the host's 127.0.0.1, which would otherwise
//! let a VE that routes 127.0.0.1 through its gateway reach services bound to the
//! host's loopback), and of the services on the host's own addresses a VE reaches
//! only what its network allows (`allow_host`), besides ping and the replies of
//! connections the host opened. vectl serves neither DNS nor DHCP on a gateway,
//! so nothing else is open by default.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::model::{HostAccess, Mac, Mode, Names, NetConfig, PortMap, Proto};
use crate::{Error, Result};

/// Bumped whenever the ruleset's shape changes: a network made in an older
/// generation gets the whole ruleset again at its next VE's start (see
/// ve-runtime's network markers), so an upgrade of vectl takes effect.
pub const GENERATION: u32 = 2;

/// One VE NIC as the firewall needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNic {
    /// The host side of its veth pair.
    pub port: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Its network's mode.
    pub mode: Mode,
}

/// A published port, forwarded to `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwPort {
    pub port: PortMap,
    pub ip: Ipv4Addr,
}

/// One VE's own elements of the ruleset: its NICs' addresses and MACs (bridges:
/// also in the bridge table; `bridged` networks: its address among the LAN's VEs)
/// and its published ports. Added and deleted on their own when the VE is created
/// or destroyed (one small nft transaction instead of the whole ruleset).
#[derive(Debug, Clone, Default)]
pub struct VeRules {
    /// The root's names (its tables).
    pub names: Names,
    pub nics: Vec<FwNic>,
    pub published: Vec<FwPort>,
}

impl VeRules {
    fn script(&self, verb: &str) -> String {
        let t = self.names.table();
        let mut s = String::new();
        let mut lan = std::collections::BTreeSet::new();
        for n in &self.nics {
            let _ = writeln!(
                s,
                "{verb} element ip {t} ve_ips {{ \"{}\" . {} }}",
                n.port, n.ip
            );
            if n.mode.bridged() {
                let _ = writeln!(
                    s,
                    "{verb} element bridge {t} ve_ips {{ \"{}\" . {} }}\n{verb} element bridge {t} ve_macs {{ \"{}\" . {} }}",
                    n.port, n.ip, n.port, n.mac
                );
            }
            if n.mode == Mode::Bridged {
                lan.insert(n.ip);
            }
        }
        // Once per address (a NIC has two port names).
        for ip in lan {
            let _ = writeln!(s, "{verb} element ip {t} lan_ves {{ {ip} }}");
        }
        for p in &self.published {
            let proto = p.port.proto;
            if verb == "add" {
                let _ = writeln!(
                    s,
                    "add element ip {t} published_{proto} {{ {} : {} . {} }}",
                    p.port.host_port, p.ip, p.port.ve_port
                );
            } else {
                let _ = writeln!(
                    s,
                    "delete element ip {t} published_{proto} {{ {} }}",
                    p.port.host_port
                );
            }
        }
        s
    }

    /// Adds the VE's elements to the ruleset in force.
    pub fn add(&self) -> Result<()> {
        if self.nics.is_empty() && self.published.is_empty() {
            return Ok(());
        }
        run_nft(&self.script("add"))
    }

    /// Deletes the VE's elements from the ruleset in force.
    pub fn delete(&self) -> Result<()> {
        if self.nics.is_empty() && self.published.is_empty() {
            return Ok(());
        }
        run_nft(&self.script("delete"))
    }
}

/// Everything the ruleset is made of.
#[derive(Debug, Clone, Default)]
pub struct Firewall {
    /// The root's names: its tables, and the wildcard for all its interfaces.
    pub names: Names,
    pub nets: Vec<NetConfig>,
    pub nics: Vec<FwNic>,
    pub published: Vec<FwPort>,
}

fn elements(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", items.join(", "))
    }
}

impl Firewall {
    /// The nft script that replaces vectl's tables with this ruleset (or removes
    /// them when there are no networks).
    pub fn script(&self) -> String {
        let t = self.names.table();
        let all = self.names.glob();
        let mut s = String::new();
        // Creating then deleting makes the delete safe when the table is absent.
        for family in ["ip", "bridge", "ip6"] {
            let _ = writeln!(s, "table {family} {t}\ndelete table {family} {t}");
        }
        if self.nets.is_empty() {
            return s;
        }
        // VEs are IPv4 only: nothing IPv6 from their ports or bridges reaches the
        // host or goes further (bridged ports are also held to IPv4 and ARP below).
        let _ = writeln!(
            s,
            "table ip6 {t} {{\n  chain ipv4_only {{\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"{all}\" drop\n  }}\n}}"
        );
        let ips: Vec<String> = self
            .nics
            .iter()
            .map(|n| format!("\"{}\" . {}", n.port, n.ip))
            .collect();
        let macs: Vec<String> = self
            .nics
            .iter()
            .map(|n| format!("\"{}\" . {}", n.port, n.mac))
            .collect();
        let lan: std::collections::BTreeSet<String> = self
            .nics
            .iter()
            .filter(|n| n.mode == Mode::Bridged)
            .map(|n| n.ip.to_string())
            .collect();
        let lan: Vec<String> = lan.into_iter().collect();
        let map = |proto: Proto| -> Vec<String> {
            self.published
                .iter()
                .filter(|p| p.port.proto == proto)
                .map(|p| format!("{} : {} . {}", p.port.host_port, p.ip, p.port.ve_port))
                .collect()
        };

        // --- ip vectl: NAT, published ports, forwarding policy, routed anti-spoofing.
        let _ = writeln!(s, "table ip {t} {{");
        let _ = writeln!(
            s,
            "  set ve_ips {{ type ifname . ipv4_addr;{} }}",
            elements(&ips)
        );
        // The addresses of bridged networks' VEs: their packets reach the host
        // through a bridge it shares with the LAN, so the address (which the
        // bridge table holds to each port's own) tells them from the LAN's.
        let _ = writeln!(s, "  set lan_ves {{ type ipv4_addr;{} }}", elements(&lan));
        for proto in [Proto::Tcp, Proto::Udp] {
            let _ = writeln!(
                s,
                "  map published_{proto} {{ type inet_service : ipv4_addr . inet_service;{} }}",
                elements(&map(proto))
            );
        }
        // Nothing from a VE to or from the loopback range: before routing, where
        // route_localnet (nat bridges) would deliver it to the host's 127.0.0.1.
        // Replies to the host's own connections to published ports arrive with
        // the gateway as destination and are only then un-NATed to 127.0.0.1.
        // Bridges' ports get the same rule in the bridge table.
        s.push_str(
            "  chain loopback {\n    type filter hook prerouting priority raw; policy accept;\n",
        );
        for n in &self.nets {
            for i in ve_ingress(n) {
                let _ = writeln!(
                    s,
                    "    iifname \"{i}\" ip daddr 127.0.0.0/8 drop\n    iifname \"{i}\" ip saddr 127.0.0.0/8 drop"
                );
            }
        }
        s.push_str("  }\n");
        s.push_str(
            "  chain antispoof {\n    type filter hook prerouting priority raw; policy accept;\n",
        );
        for n in self.nets.iter().filter(|n| n.mode == Mode::Routed) {
            for g in n.port_globs() {
                let _ = writeln!(s, "    iifname \"{g}\" iifname . ip saddr != @ve_ips drop");
            }
        }
        s.push_str("  }\n");
        let nat_nets: Vec<&NetConfig> = self.nets.iter().filter(|n| n.mode == Mode::Nat).collect();
        if !nat_nets.is_empty() {
            for (chain, hook, prio) in [
                ("publish_in", "prerouting", "dstnat"),
                ("publish_local", "output", "-100"),
            ] {
                let _ = writeln!(
                    s,
                    "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;"
                );
                // VEs of host-only, routed and bridged networks reach the host's
                // addresses, not through them to published VEs.
                if hook == "prerouting" {
                    for n in self.nets.iter().filter(|n| n.mode != Mode::Nat) {
                        let from: Vec<String> = if n.mode == Mode::Routed {
                            n.port_globs().to_vec()
                        } else {
                            vec![n.bridge_name()]
                        };
                        for f in from {
                            let _ = writeln!(s, "    iifname \"{f}\" return");
                        }
                    }
                }
                for proto in [Proto::Tcp, Proto::Udp] {
                    let _ = writeln!(
                        s,
                        "    fib daddr type local dnat ip to {proto} dport map @published_{proto}"
                    );
                }
                s.push_str("  }\n");
            }
            s.push_str(
                "  chain source_nat {\n    type nat hook postrouting priority srcnat; policy accept;\n",
            );
            for n in &nat_nets {
                let br = n.bridge_name();
                let _ = writeln!(
                    s,
                    "    ip saddr {sn} oifname != \"{br}\" masquerade\n    ip saddr {sn} oifname \"{br}\" ct status dnat masquerade\n    ip saddr 127.0.0.0/8 oifname \"{br}\" ct status dnat masquerade",
                    sn = n.subnet
                );
            }
            s.push_str("  }\n");
        }
        // What of the host itself (its input) a VE reaches: replies, ping and
        // what its network allows; the rest is refused. Published ports are
        // DNATed before this and go to forward, not here.
        for n in &self.nets {
            let _ = writeln!(
                s,
                "  chain to_host_{} {{\n    ct state established,related accept\n    icmp type echo-request accept",
                n.id
            );
            for a in &n.allow_host {
                match a {
                    HostAccess::All => s.push_str("    accept\n"),
                    HostAccess::Ports { proto, first, last } if first == last => {
                        let _ = writeln!(s, "    {proto} dport {first} accept");
                    }
                    HostAccess::Ports { proto, first, last } => {
                        let _ = writeln!(s, "    {proto} dport {first}-{last} accept");
                    }
                }
            }
            s.push_str("    reject with icmp admin-prohibited\n  }\n");
        }
        s.push_str(
            "  chain host_access {\n    type filter hook input priority filter; policy accept;\n",
        );
        for n in &self.nets {
            let chain = format!("to_host_{}", n.id);
            for i in ve_ingress(n) {
                let _ = writeln!(s, "    iifname \"{i}\" jump {chain}");
            }
            if n.mode == Mode::Bridged {
                for i in lan_ingress(n) {
                    let _ = writeln!(s, "    iifname \"{i}\" ip saddr @lan_ves jump {chain}");
                }
            }
        }
        s.push_str("  }\n");
        s.push_str(
            "  chain isolate {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ct status dnat accept\n",
        );
        for n in &self.nets {
            let br = n.bridge_name();
            if matches!(n.mode, Mode::Nat | Mode::HostOnly) {
                // Traffic within the bridge, where br_netfilter shows it here.
                let _ = writeln!(s, "    iifname \"{br}\" oifname \"{br}\" accept");
            }
            match n.mode {
                Mode::Nat => {
                    let _ = writeln!(
                        s,
                        "    iifname \"{br}\" oifname \"{all}\" drop\n    iifname \"{br}\" accept\n    oifname \"{br}\" drop"
                    );
                }
                Mode::HostOnly => {
                    let _ = writeln!(s, "    iifname \"{br}\" drop\n    oifname \"{br}\" drop");
                }
                Mode::Routed => {
                    let globs = n.port_globs();
                    for a in &globs {
                        for b in &globs {
                            let _ = writeln!(s, "    iifname \"{a}\" oifname \"{b}\" accept");
                        }
                    }
                    for p in &globs {
                        let _ = writeln!(
                            s,
                            "    iifname \"{p}\" oifname \"{all}\" drop\n    oifname \"{p}\" iifname \"{all}\" drop"
                        );
                    }
                }
                Mode::Bridged => {}
            }
        }
        s.push_str("  }\n}\n");

        // --- bridge vectl: a VE sends only from its own MAC and address.
        let bridged: Vec<&NetConfig> = self.nets.iter().filter(|n| n.mode.bridged()).collect();
        if !bridged.is_empty() {
            let _ = writeln!(s, "table bridge {t} {{");
            let _ = writeln!(
                s,
                "  set ve_ips {{ type ifname . ipv4_addr;{} }}",
                elements(&ips)
            );
            let _ = writeln!(
                s,
                "  set ve_macs {{ type ifname . ether_addr;{} }}",
                elements(&macs)
            );
            s.push_str("  chain loopback {\n    type filter hook prerouting priority -300; policy accept;\n");
            for p in bridged.iter().flat_map(|n| n.port_globs()) {
                let _ = writeln!(
                    s,
                    "    iifname \"{p}\" ip daddr 127.0.0.0/8 drop\n    iifname \"{p}\" ip saddr 127.0.0.0/8 drop"
                );
            }
            s.push_str("  }\n");
            s.push_str("  chain antispoof {\n    type filter hook prerouting priority -300; policy accept;\n");
            for p in bridged.iter().flat_map(|n| n.port_globs()) {
                let _ = writeln!(
                    s,
                    "    iifname \"{p}\" iifname . ether saddr != @ve_macs drop\n    iifname \"{p}\" ether type != {{ ip, arp }} drop\n    iifname \"{p}\" ether type ip iifname . ip saddr != @ve_ips drop\n    iifname \"{p}\" ether type arp iifname . arp saddr ip != @ve_ips drop\n    iifname \"{p}\" ether type arp iifname . arp saddr ether != @ve_macs drop"
                );
            }
            s.push_str("  }\n}\n");
        }
        s
    }

    /// Replaces vectl's nftables tables with this ruleset, atomically.
    pub fn apply(&self) -> Result<()> {
        run_nft(&self.script())
    }
}

/// The interfaces (nft patterns) on which packets of a network's VEs, and only
/// theirs, reach the IP layer: a host-only or nat bridge, routed ports. A
/// bridged network's bridge also carries the LAN's packets: see [`lan_ingress`].
fn ve_ingress(n: &NetConfig) -> Vec<String> {
    match n.mode {
        Mode::Nat | Mode::HostOnly => vec![n.bridge_name()],
        Mode::Routed => n.port_globs().to_vec(),
        Mode::Bridged => Vec::new(),
    }
}

/// Where a bridged network's packets reach the IP layer: vectl's bridge, or the
/// operator's bridge given as uplink (without a VLAN).
fn lan_ingress(n: &NetConfig) -> Vec<String> {
    let mut out = vec![n.bridge_name()];
    if n.vlan.is_none()
        && let Some(u) = &n.uplink
    {
        out.push(u.clone());
    }
    out
}

/// Runs an nft script (`nft -f -`), as one transaction.
fn run_nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Firewall(if e.kind() == std::io::ErrorKind::NotFound {
                "the nft program is not installed (apt-get install nftables)".into()
            } else {
                format!("cannot run nft: {e}")
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Firewall(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Firewall(format!("nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("Error"))
            .or_else(|| err.lines().next())
            .unwrap_or("failed")
            .trim()
            .to_string();
        return Err(Error::Firewall(format!("nft refused the ruleset: {first}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rate;

    fn net(name: &str, id: u32, mode: Mode, subnet: &str) -> NetConfig {
        NetConfig {
            name: name.into(),
            id,
            mode,
            subnet: subnet.parse().unwrap(),
            gateway: None,
            uplink: None,
            vlan: None,
            dns: vec![],
            bandwidth: Some(Rate(1_000_000)),
            allow_host: vec![],
            created: String::new(),
            root: None,
        }
    }

    #[test]
    fn the_ruleset_names_every_network_and_nic() {
        let fw = Firewall {
            names: Names::default(),
            nets: vec![
                net("a", 1, Mode::Nat, "10.0.1.0/24"),
                net("b", 2, Mode::Routed, "192.0.2.0/24"),
                net("c", 3, Mode::HostOnly, "10.0.3.0/24"),
            ],
            nics: vec![FwNic {
                port: "vn1p101".into(),
                ip: Ipv4Addr::new(10, 0, 1, 2),
                mac: Mac([2, 0, 0, 0, 0, 101]),
                mode: Mode::Nat,
            }],
            published: vec![FwPort {
                port: "8080:80".parse().unwrap(),
                ip: Ipv4Addr::new(10, 0, 1, 2),
            }],
        };
        let s = fw.script();
        for want in [
            "\"vn1p101\" . 10.0.1.2",
            "\"vn1p101\" . 02:00:00:00:00:65",
            "8080 : 10.0.1.2 . 80",
            "ip saddr 10.0.1.0/24 oifname != \"vn1b\" masquerade",
            "iifname \"vn2p*\" iifname . ip saddr != @ve_ips drop",
            "iifname \"vn2q*\" iifname . ip saddr != @ve_ips drop",
            "iifname \"vn3b\" drop",
            "iifname \"vn1p*\" iifname . ether saddr != @ve_macs drop",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        let ve = VeRules {
            names: Names::default(),
            nics: vec![fw.nics[0].clone()],
            published: fw.published.clone(),
        };
        let add = ve.script("add");
        assert!(
            add.contains("add element bridge vectl ve_macs { \"vn1p101\" . 02:00:00:00:00:65 }"),
            "{add}"
        );
        assert!(
            add.contains("add element ip vectl published_tcp { 8080 : 10.0.1.2 . 80 }"),
            "{add}"
        );
        assert!(
            ve.script("delete")
                .contains("delete element ip vectl published_tcp { 8080 }")
        );
        let empty = Firewall::default().script();
        assert!(!empty.contains('{'), "{empty}");
    }

    #[test]
    fn a_root_with_an_identity_has_its_own_tables_and_touches_no_other_roots_interfaces() {
        let mut a = net("a", 1, Mode::Nat, "10.0.1.0/24");
        a.root = Some("ab".into());
        let mut r = net("r", 2, Mode::Routed, "192.0.2.0/24");
        r.root = Some("ab".into());
        let fw = Firewall {
            names: Names::new(Some("ab")),
            nets: vec![a, r],
            ..Firewall::default()
        };
        let s = fw.script();
        for family in ["ip", "ip6", "bridge"] {
            assert!(
                s.contains(&format!("delete table {family} vectl-ab\n")),
                "{s}"
            );
        }
        assert!(s.contains("table ip vectl-ab {"), "{s}");
        assert!(
            s.contains("iifname \"vab01b\" oifname \"vab*\" drop"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"vab02p*\" oifname \"vab*\" drop"),
            "{s}"
        );
        assert!(s.contains("table ip6 vectl-ab {"), "{s}");
        // Nothing of another root's, nor of a root from before identities.
        assert!(!s.contains("vn") && !s.contains(" vectl "), "{s}");
        let ve = VeRules {
            names: Names::new(Some("ab")),
            nics: vec![FwNic {
                port: "vab01p100".into(),
                ip: Ipv4Addr::new(10, 0, 1, 2),
                mac: Mac([2, 0, 0, 0, 0, 100]),
                mode: Mode::Nat,
            }],
            published: vec![],
        };
        assert_eq!(
            ve.script("add"),
            "add element ip vectl-ab ve_ips { \"vab01p100\" . 10.0.1.2 }\n\
             add element bridge vectl-ab ve_ips { \"vab01p100\" . 10.0.1.2 }\n\
             add element bridge vectl-ab ve_macs { \"vab01p100\" . 02:00:00:00:00:64 }\n"
        );
    }

    /// The chain `name` of the script's table `table` (`ip vectl`), as text.
    fn chain<'a>(s: &'a str, table: &str, name: &str) -> &'a str {
        let t = &s[s.find(&format!("table {table} {{")).unwrap()..];
        let c = &t[t.find(&format!("  chain {name} {{")).unwrap()..];
        &c[..c.find("\n  }").unwrap()]
    }

    fn four_modes() -> Firewall {
        let mut bridged = net("d", 4, Mode::Bridged, "192.0.2.0/24");
        bridged.uplink = Some("br0".into());
        let mut nat = net("a", 1, Mode::Nat, "10.0.1.0/24");
        nat.allow_host = HostAccess::parse_list("tcp:22,udp:53,tcp:8000-8100").unwrap();
        let nic = |port: &str, ip: [u8; 4], mode| FwNic {
            port: port.into(),
            ip: ip.into(),
            mac: Mac([2, 0, 0, 0, 0, ip[3]]),
            mode,
        };
        Firewall {
            names: Names::default(),
            nets: vec![
                nat,
                net("b", 2, Mode::Routed, "198.51.100.0/24"),
                net("c", 3, Mode::HostOnly, "10.0.3.0/24"),
                bridged,
            ],
            nics: vec![
                nic("vn1p101", [10, 0, 1, 2], Mode::Nat),
                nic("vn4p102", [192, 0, 2, 10], Mode::Bridged),
                nic("vn4q102", [192, 0, 2, 10], Mode::Bridged),
            ],
            published: vec![],
        }
    }

    #[test]
    fn nothing_from_a_ve_reaches_the_loopback_range_in_any_mode() {
        let s = four_modes().script();
        let ip = chain(&s, "ip vectl", "loopback");
        assert!(
            ip.contains("type filter hook prerouting priority raw;"),
            "{ip}"
        );
        for i in ["vn1b", "vn2p*", "vn2q*", "vn3b"] {
            for dir in ["daddr", "saddr"] {
                let want = format!("iifname \"{i}\" ip {dir} 127.0.0.0/8 drop");
                assert!(ip.contains(&want), "{want} missing from\n{ip}");
            }
        }
        // A bridged network's bridge carries the LAN too: its VEs are caught by
        // port, in the bridge table, before the frame reaches the IP layer.
        assert!(!ip.contains("vn4b") && !ip.contains("br0"), "{ip}");
        let br = chain(&s, "bridge vectl", "loopback");
        assert!(br.contains("priority -300;"), "{br}");
        for p in ["vn1p*", "vn1q*", "vn3p*", "vn4p*", "vn4q*"] {
            let want = format!("iifname \"{p}\" ip daddr 127.0.0.0/8 drop");
            assert!(br.contains(&want), "{want} missing from\n{br}");
        }
        // Replies to the host's own connections to published ports (127.0.0.1
        // masqueraded to the gateway) are un-NATed after raw: no rule of the
        // source NAT or the loopback chains undoes that.
        assert!(s.contains("ip saddr 127.0.0.0/8 oifname \"vn1b\" ct status dnat masquerade"));
    }

    #[test]
    fn ves_reach_only_what_their_network_allows_of_the_host() {
        let s = four_modes().script();
        let hook = chain(&s, "ip vectl", "host_access");
        assert!(
            hook.contains("type filter hook input priority filter;"),
            "{hook}"
        );
        for want in [
            "iifname \"vn1b\" jump to_host_1",
            "iifname \"vn2p*\" jump to_host_2",
            "iifname \"vn2q*\" jump to_host_2",
            "iifname \"vn3b\" jump to_host_3",
            // Bridged: only the VEs' addresses, not the LAN's, on either bridge.
            "iifname \"vn4b\" ip saddr @lan_ves jump to_host_4",
            "iifname \"br0\" ip saddr @lan_ves jump to_host_4",
        ] {
            assert!(hook.contains(want), "{want} missing from\n{hook}");
        }
        assert!(
            s.contains("set lan_ves { type ipv4_addr; elements = { 192.0.2.10 }; }"),
            "{s}"
        );
        let base = "ct state established,related accept\n    icmp type echo-request accept\n";
        let c3 = chain(&s, "ip vectl", "to_host_3");
        assert!(
            c3.ends_with(&format!("{base}    reject with icmp admin-prohibited")),
            "{c3}"
        );
        let c1 = chain(&s, "ip vectl", "to_host_1");
        assert!(
            c1.ends_with(&format!(
                "{base}    tcp dport 22 accept\n    tcp dport 8000-8100 accept\n    udp dport 53 accept\n    reject with icmp admin-prohibited"
            )),
            "{c1}"
        );
        let mut all = four_modes();
        all.nets[2].allow_host = vec![HostAccess::All];
        let s = all.script();
        assert!(
            chain(&s, "ip vectl", "to_host_3")
                .ends_with("    accept\n    reject with icmp admin-prohibited"),
            "{s}"
        );
        // A VE's own elements: its address among the LAN's VEs, once.
        let ve = VeRules {
            names: Names::default(),
            nics: four_modes().nics[1..].to_vec(),
            published: vec![],
        };
        for verb in ["add", "delete"] {
            let text = ve.script(verb);
            assert_eq!(
                text.matches(&format!("{verb} element ip vectl lan_ves {{ 192.0.2.10 }}"))
                    .count(),
                1,
                "{text}"
            );
        }
    }

    /// The ruleset goes into the kernel as generated (nft checks it without
    /// applying: `nft -c`), when nft is installed.
    #[test]
    fn nft_takes_the_ruleset() {
        let check = Command::new("nft").arg("--version").output();
        if check.is_err() {
            eprintln!("SKIP: nft_takes_the_ruleset: the nft program is not installed");
            return;
        }
        let mut child = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(four_modes().script().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("Operation not permitted") {
            eprintln!("SKIP: nft_takes_the_ruleset: not allowed to talk to nftables");
            return;
        }
        assert!(out.status.success(), "{err}");
    }
}
