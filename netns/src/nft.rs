//! The firewall of vectl's networks: masquerade, published ports, isolation between
//! networks and anti-spoofing, as nftables tables of vectl's own (`ip vectl` and
//! `bridge vectl`). The whole ruleset is generated from the configs and replaced
//! in one atomic `nft -f` transaction whenever networks, VE addresses or published
//! ports change: never on a VE's start or stop, which only create and delete
//! links (the rules match interface names, so they hold for a port the moment it
//! exists).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::model::{Mac, Mode, NetConfig, Proto, Publish, bridge_name, port_globs};
use crate::{Error, Result};

/// One VE NIC as the firewall needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNic {
    /// The host side of its veth pair.
    pub port: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A published port, forwarded to `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwPublish {
    pub publish: Publish,
    pub ip: Ipv4Addr,
}

/// One VE's own elements of the ruleset: its NICs' addresses and MACs (`bridged`:
/// also in the bridge table) and its published ports. Added and deleted on their
/// own when the VE is created or destroyed (one small nft transaction instead of
/// the whole ruleset).
#[derive(Debug, Clone, Default)]
pub struct VeRules {
    pub nics: Vec<(FwNic, bool)>,
    pub published: Vec<FwPublish>,
}

impl VeRules {
    fn script(&self, verb: &str) -> String {
        let mut s = String::new();
        for (n, bridged) in &self.nics {
            let _ = writeln!(
                s,
                "{verb} element ip vectl ve_ips {{ \"{}\" . {} }}",
                n.port, n.ip
            );
            if *bridged {
                let _ = writeln!(
                    s,
                    "{verb} element bridge vectl ve_ips {{ \"{}\" . {} }}\n{verb} element bridge vectl ve_macs {{ \"{}\" . {} }}",
                    n.port, n.ip, n.port, n.mac
                );
            }
        }
        for p in &self.published {
            let proto = p.publish.proto;
            if verb == "add" {
                let _ = writeln!(
                    s,
                    "add element ip vectl published_{proto} {{ {} : {} . {} }}",
                    p.publish.host_port, p.ip, p.publish.ve_port
                );
            } else {
                let _ = writeln!(
                    s,
                    "delete element ip vectl published_{proto} {{ {} }}",
                    p.publish.host_port
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
    pub nets: Vec<NetConfig>,
    pub nics: Vec<FwNic>,
    pub published: Vec<FwPublish>,
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
        let mut s = String::new();
        // Creating then deleting makes the delete safe when the table is absent.
        s.push_str("table ip vectl\ndelete table ip vectl\n");
        s.push_str("table bridge vectl\ndelete table bridge vectl\n");
        s.push_str("table ip6 vectl\ndelete table ip6 vectl\n");
        if self.nets.is_empty() {
            return s;
        }
        // VEs are IPv4 only: nothing IPv6 from their ports or bridges reaches the
        // host or goes further (bridged ports are also held to IPv4 and ARP below).
        s.push_str("table ip6 vectl {\n  chain ipv4_only {\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"vn*\" drop\n  }\n}\n");
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
        let map = |proto: Proto| -> Vec<String> {
            self.published
                .iter()
                .filter(|p| p.publish.proto == proto)
                .map(|p| format!("{} : {} . {}", p.publish.host_port, p.ip, p.publish.ve_port))
                .collect()
        };

        // --- ip vectl: NAT, published ports, forwarding policy, routed anti-spoofing.
        s.push_str("table ip vectl {\n");
        let _ = writeln!(
            s,
            "  set ve_ips {{ type ifname . ipv4_addr;{} }}",
            elements(&ips)
        );
        for proto in [Proto::Tcp, Proto::Udp] {
            let _ = writeln!(
                s,
                "  map published_{proto} {{ type inet_service : ipv4_addr . inet_service;{} }}",
                elements(&map(proto))
            );
        }
        s.push_str(
            "  chain antispoof {\n    type filter hook prerouting priority raw; policy accept;\n",
        );
        for n in self.nets.iter().filter(|n| n.mode == Mode::Routed) {
            for g in port_globs(n.id) {
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
                            port_globs(n.id).to_vec()
                        } else {
                            vec![bridge_name(n.id)]
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
                let br = bridge_name(n.id);
                let _ = writeln!(
                    s,
                    "    ip saddr {sn} oifname != \"{br}\" masquerade\n    ip saddr {sn} oifname \"{br}\" ct status dnat masquerade\n    ip saddr 127.0.0.0/8 oifname \"{br}\" ct status dnat masquerade",
                    sn = n.subnet
                );
            }
            s.push_str("  }\n");
        }
        s.push_str(
            "  chain isolate {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ct status dnat accept\n",
        );
        for n in &self.nets {
            let br = bridge_name(n.id);
            if matches!(n.mode, Mode::Nat | Mode::HostOnly) {
                // Traffic within the bridge, where br_netfilter shows it here.
                let _ = writeln!(s, "    iifname \"{br}\" oifname \"{br}\" accept");
            }
            match n.mode {
                Mode::Nat => {
                    let _ = writeln!(
                        s,
                        "    iifname \"{br}\" oifname \"vn*\" drop\n    iifname \"{br}\" accept\n    oifname \"{br}\" drop"
                    );
                }
                Mode::HostOnly => {
                    let _ = writeln!(s, "    iifname \"{br}\" drop\n    oifname \"{br}\" drop");
                }
                Mode::Routed => {
                    let globs = port_globs(n.id);
                    for a in &globs {
                        for b in &globs {
                            let _ = writeln!(s, "    iifname \"{a}\" oifname \"{b}\" accept");
                        }
                    }
                    for p in &globs {
                        let _ = writeln!(
                            s,
                            "    iifname \"{p}\" oifname \"vn*\" drop\n    oifname \"{p}\" iifname \"vn*\" drop"
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
            s.push_str("table bridge vectl {\n");
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
            s.push_str("  chain antispoof {\n    type filter hook prerouting priority -300; policy accept;\n");
            for p in bridged.iter().flat_map(|n| port_globs(n.id)) {
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
            created: String::new(),
        }
    }

    #[test]
    fn the_ruleset_names_every_network_and_nic() {
        let fw = Firewall {
            nets: vec![
                net("a", 1, Mode::Nat, "10.0.1.0/24"),
                net("b", 2, Mode::Routed, "192.0.2.0/24"),
                net("c", 3, Mode::HostOnly, "10.0.3.0/24"),
            ],
            nics: vec![FwNic {
                port: "vn1p101".into(),
                ip: Ipv4Addr::new(10, 0, 1, 2),
                mac: Mac([2, 0, 0, 0, 0, 101]),
            }],
            published: vec![FwPublish {
                publish: "8080:80".parse().unwrap(),
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
            nics: vec![(fw.nics[0].clone(), true)],
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
}
