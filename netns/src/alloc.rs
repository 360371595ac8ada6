//! Names and addresses handed out on a host: network names, the subnets a new
//! network may take by default, the name servers a nat network gets, a VE NIC's
//! address (the lowest free one, or the one asked for with `--ip`) and its MAC.
//! Nothing here reads vectl's state: the caller passes what is in use.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::model::{Mac, Mode, NetConfig, Subnet};
use crate::{Error, Refusal, Result};

/// The rule VE and network names share: lower-case letters, digits and '-',
/// starting with a letter or digit, not all digits (those are ids), at most 63
/// characters (a VE's name is its default hostname).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a network name ([`is_valid_name`]).
pub fn validate_net_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidNetName(name.to_string()))
    }
}

/// The name servers of the host's /etc/resolv.conf that a VE can reach (not the
/// host's loopback stub resolvers).
pub fn host_name_servers() -> Vec<Ipv4Addr> {
    let read = |path: &str| -> Vec<Ipv4Addr> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_loopback() && !a.is_unspecified())
            .collect()
    };
    let servers = read("/etc/resolv.conf");
    if servers.is_empty() {
        // systemd-resolved: the host asks its stub at 127.0.0.53, which a VE
        // cannot reach; the servers behind it are listed here.
        return read("/run/systemd/resolve/resolv.conf");
    }
    servers
}

/// Subnets tried for a nat or host-only network without `--subnet`.
pub fn default_subnets() -> impl Iterator<Item = Subnet> {
    (0..64u8).map(|i| Subnet {
        addr: Ipv4Addr::new(10, 200 + i / 16, (i % 16) * 16, 0),
        prefix: 20,
    })
}

/// Parses `--ip` for a network: an address, or an address with the network's
/// prefix (or /32 on a routed network).
pub fn parse_ip_for(net: &NetConfig, text: &str) -> Result<Ipv4Addr> {
    let (a, p) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: Ipv4Addr = a.parse().map_err(|_| Error::IpSyntax {
        text: text.to_string(),
    })?;
    if let Some(p) = p {
        let p: u8 = p.parse().map_err(|_| Error::IpPrefix {
            text: text.to_string(),
        })?;
        if p != net.subnet.prefix && !(net.mode == Mode::Routed && p == 32) {
            return Err(Error::IpWrongPrefix {
                text: text.to_string(),
                net: net.name.clone(),
                subnet: net.subnet,
            });
        }
    }
    Ok(ip)
}

/// A new NIC's address on `net`: the lowest free one for `None` or `auto`, else
/// the `--ip` given, checked. `used` holds the addresses that are not free (the
/// other VEs', and the host's own on a LAN).
pub fn choose_address(
    net: &NetConfig,
    ip: Option<&str>,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    match ip {
        None | Some("auto") => net.allocate(used).ok_or_else(|| Error::Net {
            net: net.name.clone(),
            reason: Refusal::NoFreeAddress(net.subnet),
        }),
        Some(text) => {
            let ip = parse_ip_for(net, text)?;
            net.check_address(ip, used)
                .map_err(|reason| Error::IpRefused {
                    text: text.to_string(),
                    reason,
                })?;
            Ok(ip)
        }
    }
}

/// A random MAC for a new NIC, none of `taken`.
pub fn fresh_mac(taken: &BTreeSet<Mac>) -> Result<Mac> {
    loop {
        let m = Mac::random().map_err(|source| Error::File {
            path: Path::new("/dev/urandom").to_path_buf(),
            source,
        })?;
        if !taken.contains(&m) {
            return Ok(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(mode: Mode) -> NetConfig {
        NetConfig {
            name: "n".into(),
            id: 1,
            mode,
            subnet: "10.0.3.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 3, 1)),
            uplink: None,
            vlan: None,
            dns: vec![],
            bandwidth: None,
            allow_host: vec![],
            created: String::new(),
            root: None,
        }
    }

    #[test]
    fn net_names_follow_ve_names_rules() {
        for ok in ["default", "lan-1", "a", "1a"] {
            assert!(validate_net_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "123", "A", "a_b", &"a".repeat(64)] {
            let e = validate_net_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid network name"), "{e}");
        }
    }

    #[test]
    fn addresses_are_the_lowest_free_or_the_one_asked_for() {
        let n = net(Mode::Nat);
        let mut used = BTreeSet::new();
        assert_eq!(
            choose_address(&n, None, &used).unwrap(),
            Ipv4Addr::new(10, 0, 3, 2)
        );
        used.insert(Ipv4Addr::new(10, 0, 3, 2));
        assert_eq!(
            choose_address(&n, Some("auto"), &used).unwrap(),
            Ipv4Addr::new(10, 0, 3, 3)
        );
        assert_eq!(
            choose_address(&n, Some("10.0.3.9/24"), &used).unwrap(),
            Ipv4Addr::new(10, 0, 3, 9)
        );
        let e = |t: &str| choose_address(&n, Some(t), &used).unwrap_err().to_string();
        assert_eq!(e("x"), "--ip \"x\": expected an IPv4 address, CIDR or auto");
        assert_eq!(e("10.0.3.9/x"), "--ip \"10.0.3.9/x\": bad prefix");
        assert_eq!(
            e("10.0.3.9/16"),
            "--ip 10.0.3.9/16: network n is 10.0.3.0/24 (prefix /24)"
        );
        assert_eq!(
            e("10.0.3.2"),
            "--ip 10.0.3.2: address 10.0.3.2 is in use on network n"
        );
        // /32 is a routed network's too.
        assert!(parse_ip_for(&net(Mode::Routed), "10.0.3.9/32").is_ok());
        let full: BTreeSet<Ipv4Addr> = (2..=254).map(|i| Ipv4Addr::new(10, 0, 3, i)).collect();
        assert_eq!(
            choose_address(&n, None, &full).unwrap_err().to_string(),
            "network n: no free address left in 10.0.3.0/24"
        );
    }

    #[test]
    fn a_fresh_mac_is_none_of_the_taken_ones() {
        let taken: BTreeSet<Mac> = (0..8).map(|_| Mac::random().unwrap()).collect();
        let m = fresh_mac(&taken).unwrap();
        assert!(!taken.contains(&m) && m.0[0] & 0x03 == 0x02);
    }

    #[test]
    fn default_subnets_are_distinct_twenties() {
        let all: BTreeSet<String> = default_subnets().map(|s| s.to_string()).collect();
        assert_eq!(all.len(), 64);
        assert!(all.contains("10.200.0.0/20") && all.contains("10.203.240.0/20"));
    }
}
