//! What a VE's NICs add to the host's network rules: its elements of the
//! firewall ([`ve_rules`]: its ports, addresses and MACs, and the ports it
//! publishes), its traffic class ([`shape_for`]), and a network's `--allow-host`
//! list as it is kept ([`checked_host_access`]).

use std::net::Ipv4Addr;

use crate::link::Shape;
use crate::model::{self, HostAccess, Mode, Names, NetConfig, PortMap};
use crate::nft::{FwNic, FwPort, VeRules};
use crate::nic::Nic;
use crate::tc::ClassRate;
use crate::{Error, Refusal, Result};

/// A VE's bandwidth settings, as its NICs' traffic classes need them (the VE's
/// limits implement this).
pub trait Bandwidth {
    /// The VE's `--net-limit`, bits per second.
    fn limit_bps(&self) -> Option<u64>;
    /// `None` without a `--net-guarantee`; else what it is in bits per second on
    /// a network of `bandwidth` (`Some(None)`: a share of a network without a
    /// bandwidth).
    fn guarantee_bps(&self, bandwidth: Option<u64>) -> Option<Option<u64>>;
}

/// A VE's own elements of the firewall: one per port of each NIC whose network
/// is in `nets`, and its published ports on its first NIC on a nat network.
pub fn ve_rules(
    names: &Names,
    nets: &[NetConfig],
    id: u32,
    nics: &[Nic],
    publish: &[PortMap],
) -> VeRules {
    let mut r = VeRules {
        names: names.clone(),
        ..VeRules::default()
    };
    let net_of = |name: &str| nets.iter().find(|n| n.name == name);
    for nic in nics {
        let Some(net) = net_of(&nic.net) else {
            continue;
        };
        for port in net.port_names(id) {
            r.nics.push(FwNic {
                port,
                ip: nic.ip,
                mac: nic.mac,
                mode: net.mode,
            });
        }
    }
    if let Some(nat) = nics
        .iter()
        .find(|n| net_of(&n.net).is_some_and(|c| c.mode == Mode::Nat))
    {
        r.published.extend(publish.iter().map(|p| FwPort {
            port: *p,
            ip: nat.ip,
        }));
    }
    r
}

/// A NIC's traffic class: when the VE has a limit or guarantee, or its network
/// has a bandwidth to share.
pub fn shape_for(limits: &impl Bandwidth, net: &NetConfig, ip: Ipv4Addr) -> Option<Shape> {
    let limit = limits.limit_bps();
    if limit.is_none() && limits.guarantee_bps(None).is_none() && net.bandwidth.is_none() {
        return None;
    }
    let minor = model::class_minor(net.subnet, ip)?;
    let total = net.total_bps();
    let ceil = limit.map_or(total, |l| l.min(total));
    // Best effort: a small rate, so guarantees come first when the network is full.
    let best_effort = (total / 1000).clamp(10_000, 1_000_000).min(ceil);
    let rate = limits
        .guarantee_bps(net.bandwidth.map(|b| b.0))
        .flatten()
        .unwrap_or(best_effort)
        .clamp(1000, ceil);
    Some(Shape {
        minor,
        rate: ClassRate { rate, ceil },
    })
}

/// An `--allow-host` list of network `net` as the network keeps it: sorted,
/// without duplicates, at most [`model::MAX_HOST_ACCESS`] entries.
pub fn checked_host_access(net: &str, list: &[HostAccess]) -> Result<Vec<HostAccess>> {
    let mut l = list.to_vec();
    l.sort();
    l.dedup();
    if l.len() > model::MAX_HOST_ACCESS {
        return Err(Error::Net {
            net: net.to_string(),
            reason: Refusal::TooManyHostAccess {
                count: l.len(),
                max: model::MAX_HOST_ACCESS,
            },
        });
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetConfig {
        NetConfig {
            name: "n".into(),
            id: 1,
            mode: Mode::Nat,
            subnet: "10.0.3.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 3, 1)),
            uplink: None,
            vlan: None,
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            bandwidth: None,
            allow_host: vec![],
            created: String::new(),
            root: None,
        }
    }

    struct Bw(Option<u64>, Option<u64>);
    impl Bandwidth for Bw {
        fn limit_bps(&self) -> Option<u64> {
            self.0
        }
        fn guarantee_bps(&self, _: Option<u64>) -> Option<Option<u64>> {
            self.1.map(Some)
        }
    }

    #[test]
    fn host_access_is_kept_in_the_network_config() {
        // A config written before `allow_host` existed still loads.
        let old =
            "name = \"n\"\nid = 1\nmode = \"nat\"\nsubnet = \"10.0.3.0/24\"\ncreated = \"\"\n";
        let cfg: NetConfig = toml::from_str(old).unwrap();
        assert!(cfg.allow_host.is_empty());
        let mut cfg = net();
        cfg.allow_host = HostAccess::parse_list("udp:53,tcp:22").unwrap();
        let text = toml::to_string(&cfg).unwrap();
        assert!(
            text.contains("allow_host = [\"tcp:22\", \"udp:53\"]"),
            "{text}"
        );
        assert_eq!(toml::from_str::<NetConfig>(&text).unwrap(), cfg);
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["allow_host"], serde_json::json!(["tcp:22", "udp:53"]));
        assert_eq!(
            serde_json::to_value(net()).unwrap()["allow_host"],
            serde_json::json!([])
        );
        assert!(
            checked_host_access("n", &[HostAccess::All; 2])
                .unwrap()
                .len()
                == 1
        );
    }

    #[test]
    fn a_nic_is_shaped_only_with_a_limit_a_guarantee_or_a_bandwidth() {
        let ip = Ipv4Addr::new(10, 0, 3, 2);
        let mut n = net();
        assert_eq!(shape_for(&Bw(None, None), &n, ip), None);
        let s = shape_for(&Bw(Some(5_000_000), None), &n, ip).unwrap();
        assert_eq!(s.minor, 3);
        assert_eq!(s.rate.ceil, 5_000_000);
        n.bandwidth = Some(model::Rate(100_000_000));
        let s = shape_for(&Bw(None, Some(20_000_000)), &n, ip).unwrap();
        assert_eq!((s.rate.rate, s.rate.ceil), (20_000_000, 100_000_000));
        let s = shape_for(&Bw(None, None), &n, ip).unwrap();
        assert_eq!(s.rate.rate, 100_000);
    }

    #[test]
    fn a_ves_rules_publish_on_its_first_nat_nic() {
        let nic = Nic {
            net: "n".into(),
            ip: Ipv4Addr::new(10, 0, 3, 2),
            mac: model::Mac([2, 0, 0, 0, 0, 1]),
        };
        let publish: Vec<PortMap> = vec!["8080:80".parse().unwrap()];
        let r = ve_rules(
            &Names::default(),
            &[net()],
            101,
            std::slice::from_ref(&nic),
            &publish,
        );
        assert_eq!(r.nics.len(), 2);
        assert_eq!(r.published.len(), 1);
        assert_eq!(r.published[0].ip, nic.ip);
        // A NIC on a network that is gone adds nothing.
        assert!(
            ve_rules(&Names::default(), &[], 101, &[nic], &publish)
                .nics
                .is_empty()
        );
    }
}
