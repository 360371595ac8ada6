//! Virtual networks on a host (`nets/<name>.toml`) and the NICs of VEs on them.
//!
//! A network's config is the source of truth; its kernel side (bridge, VLAN link,
//! shaper) is made by `net create` and again by the first start after a reboot
//! (a marker `nets/<name>.up` holds the boot it was made in). Addresses are
//! managed from the VE configs themselves under the host lock, so there is no
//! lease file to drift: an address returns when its VE is destroyed. The
//! firewall is regenerated from all configs whenever networks, addresses or
//! published ports change, never on start or stop.
//!
//! This is the orchestration only (state files, locks, which VEs are where): the
//! networking itself (addresses, NICs, per-VE rules, the VE's network files)
//! is `netns`'s.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use netns::alloc::{choose_address, default_subnets, fresh_mac, host_name_servers};
use netns::link::{Attach, Detach};
use netns::model::{self, HostAccess, Mode, Names, NetConfig, Rate, Subnet};
use netns::nft::Firewall;
use netns::nic::ve_ifname;
pub(crate) use netns::nic::{Nic, NicInfo, NicRequest};
use netns::rules::{Bandwidth, shape_for, ve_rules};
use serde::Serialize;

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_file, write_atomic};
use crate::host::Host;
use crate::limits::Limits;
use crate::state;

/// The name of the network `vectl init` makes.
pub const DEFAULT_NET: &str = "default";

/// What `net create` takes.
#[derive(Debug, Clone)]
pub struct NetCreate {
    pub name: String,
    pub mode: Mode,
    pub subnet: Option<Subnet>,
    pub gateway: Option<Ipv4Addr>,
    pub uplink: Option<String>,
    pub vlan: Option<u16>,
    /// `None` = the default (the host's name servers for nat).
    pub dns: Option<Vec<Ipv4Addr>>,
    pub bandwidth: Option<Rate>,
}

/// Settings of a network that can change after `net create` (`net set`); `None`
/// leaves one as it is. At create, the ones given replace the defaults.
#[derive(Debug, Clone, Default)]
pub struct NetUpdate {
    /// Services on the host's own addresses the network's VEs may reach besides
    /// ping (`--allow-host tcp:22,udp:53`; empty: none).
    pub allow_host: Option<Vec<HostAccess>>,
}

/// One VE on a network, for `net show`.
#[derive(Debug, Clone, Serialize)]
pub struct NetMember {
    pub ve: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub port: String,
    pub running: bool,
}

/// A network as `net show` and `net list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct NetDetails {
    #[serde(flatten)]
    pub config: NetConfig,
    /// The bridge VEs join (none for routed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    pub ves: Vec<NetMember>,
    /// Addresses still free for VEs.
    pub free_addresses: u64,
    /// Guarantees of the running VEs on it, bits per second.
    pub guaranteed_bps: u64,
}

fn net_err(net: &str, reason: impl Into<String>) -> Error {
    Error::Net {
        net: net.to_string(),
        reason: reason.into(),
    }
}

fn kernel_err(net: &str, e: netns::Error) -> Error {
    net_err(net, e.to_string())
}

/// An error of netns's address, rule and file code as ve-runtime's: a file's
/// names its path, a network's refusal names the network, the rest is the
/// host's (VE-specific callers map those themselves).
fn from_netns(e: netns::Error) -> Error {
    match e {
        netns::Error::File { path, source } => Error::Io { path, source },
        netns::Error::Net { net, reason } => Error::Net {
            net,
            reason: reason.to_string(),
        },
        e => Error::Netns(e),
    }
}

/// The limits of a VE as its NICs' traffic classes need them.
impl Bandwidth for Limits {
    fn limit_bps(&self) -> Option<u64> {
        self.net_limit.map(|l| l.0)
    }
    /// A share is of the network's bandwidth, or on a network without one, of
    /// the VE's own `--net-limit`.
    fn guarantee_bps(&self, bandwidth: Option<u64>) -> Option<Option<u64>> {
        self.net_guarantee
            .map(|g| g.bps(bandwidth.or(self.limit_bps())))
    }
}

/// What a network's marker holds: the boot its kernel side was made in, and the
/// generation of the firewall made with it (a vectl with a newer firewall makes
/// the ruleset again at the next start of a VE on the network).
fn marker() -> String {
    format!("{} firewall-{}", state::boot_id(), netns::nft::GENERATION)
}

/// Network names follow VE names' rules.
fn validate_net_name(name: &str) -> Result<()> {
    netns::alloc::validate_net_name(name).map_err(from_netns)
}

/// An `--allow-host` list as a network keeps it: sorted, without duplicates.
fn checked_host_access(net: &str, list: &[HostAccess]) -> Result<Vec<HostAccess>> {
    netns::rules::checked_host_access(net, list).map_err(from_netns)
}

impl Host {
    fn nets_dir(&self) -> PathBuf {
        self.root().join("nets")
    }
    fn net_path(&self, name: &str) -> PathBuf {
        self.nets_dir().join(format!("{name}.toml"))
    }
    pub(crate) fn net_marker(&self, name: &str) -> PathBuf {
        self.nets_dir().join(format!("{name}.up"))
    }

    /// Every VE's config (no runtime state: cheaper than `list`). Unreadable
    /// ones are skipped; `list` reports them.
    pub(crate) fn configs(&self) -> Result<Vec<VeConfig>> {
        Ok(self
            .config_files()?
            .iter()
            .filter_map(|p| VeConfig::load(p).ok().flatten())
            .collect())
    }

    /// Every network, by id.
    pub(crate) fn net_configs(&self) -> Result<Vec<NetConfig>> {
        let dir = self.nets_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let fname = entry.file_name();
            let Some(name) = fname.to_str().and_then(|f| f.strip_suffix(".toml")) else {
                continue;
            };
            if validate_net_name(name).is_ok() {
                out.push(load_net(
                    &entry.path(),
                    name,
                    self.settings().identity.as_deref(),
                )?);
            }
        }
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// One network's config.
    pub(crate) fn net(&self, name: &str) -> Result<NetConfig> {
        validate_net_name(name)?;
        let path = self.net_path(name);
        if !path.exists() {
            return Err(Error::NoSuchNet(name.to_string()));
        }
        load_net(&path, name, self.settings().identity.as_deref())
    }

    /// Creates a network and its kernel side.
    pub(crate) fn net_create(&self, o: &NetCreate) -> Result<NetConfig> {
        self.net_create_with(o, &NetUpdate::default())
    }

    /// Creates a network with settings beyond [`NetCreate`]'s (`--allow-host`).
    pub(crate) fn net_create_with(&self, o: &NetCreate, more: &NetUpdate) -> Result<NetConfig> {
        let _host = self.lock_host()?;
        self.net_create_locked(o, more)
    }

    /// Changes a network's settings; the firewall follows at once, for running
    /// VEs too. Returns the new config.
    pub(crate) fn net_update(&self, name: &str, u: &NetUpdate) -> Result<NetConfig> {
        let _host = self.lock_host()?;
        let old = self.net(name)?;
        let mut cfg = old.clone();
        if let Some(a) = &u.allow_host {
            cfg.allow_host = checked_host_access(name, a)?;
        }
        if cfg == old {
            return Ok(cfg);
        }
        let path = self.net_path(name);
        store_net(&path, &cfg)?;
        if let Err(e) = self.apply_firewall(None) {
            store_net(&path, &old)?;
            let _ = self.apply_firewall(None);
            return Err(e);
        }
        Ok(cfg)
    }

    pub(crate) fn net_create_locked(&self, o: &NetCreate, more: &NetUpdate) -> Result<NetConfig> {
        let name = o.name.as_str();
        validate_net_name(name)?;
        if self.net_path(name).exists() {
            return Err(net_err(name, "already exists"));
        }
        let nets = self.net_configs()?;
        let id = (1..=model::MAX_NET_ID)
            .find(|i| !nets.iter().any(|n| n.id == *i))
            .ok_or_else(|| net_err(name, "no free network id (at most 999 networks)"))?;
        let bad = |r: String| Err(net_err(name, r));
        let bridged_or_routed = matches!(o.mode, Mode::Bridged | Mode::Routed);
        if o.uplink.is_some() && !bridged_or_routed {
            return bad(format!(
                "--uplink is for bridged and routed networks, not {}",
                o.mode
            ));
        }
        if o.mode == Mode::Bridged && o.uplink.is_none() {
            return bad(
                "a bridged network needs --uplink (the host interface or bridge on the LAN)".into(),
            );
        }
        if let Some(v) = o.vlan {
            if o.mode != Mode::Bridged {
                return bad(format!(
                    "--vlan is for bridged networks, not {} (tag the uplink yourself and give the VLAN interface as --uplink)",
                    o.mode
                ));
            }
            if !(1..=4094).contains(&v) {
                return bad(format!("--vlan {v}: VLAN ids run from 1 to 4094"));
            }
            if o.uplink.is_none() {
                return bad("--vlan needs --uplink (the interface that carries the VLAN)".into());
            }
        }
        if let Some(u) = &o.uplink {
            if !model::valid_ifname(u) {
                return bad(format!("--uplink {u:?} is not a valid interface name"));
            }
            let mut prefixes = vec!["vn".to_string(), self.names().prefix()];
            prefixes.extend(
                self.others()
                    .iter()
                    .map(|o| Names::new(o.settings.identity.as_deref()).prefix()),
            );
            if let Some(p) = prefixes.iter().find(|p| u.starts_with(p.as_str())) {
                return bad(format!(
                    "--uplink {u}: interfaces named {p}* are vectl's own"
                ));
            }
            if u.contains(['"', '\\', '*']) {
                return bad(format!(
                    "--uplink {u:?}: vectl's firewall cannot name an interface with '\"', '\\' or '*'"
                ));
            }
        }
        if o.mode == Mode::Routed && o.gateway.is_some() {
            return bad(format!(
                "--gateway is not for routed networks (VEs route through the host at {})",
                model::ROUTED_GATEWAY
            ));
        }
        // What the host has: the uplink, and addresses a new subnet must not take.
        let uplink_name = o.uplink.clone();
        let (uplink, host_nets) = netns::link::on_host(|h| async move {
            let up = match &uplink_name {
                Some(u) => netns::link::uplink_info(&h, u).await?,
                None => None,
            };
            Ok((up, netns::link::host_subnets(&h).await?))
        })
        .map_err(|e| kernel_err(name, e))?;
        if let Some(u) = &o.uplink {
            let Some(info) = &uplink else {
                return bad(format!("--uplink {u}: no such interface on this host"));
            };
            if o.mode == Mode::Bridged
                && let Some(other) = nets.iter().find(|n| {
                    n.mode == Mode::Bridged && n.uplink.as_ref() == Some(u) && n.vlan == o.vlan
                })
            {
                return bad(format!(
                    "--uplink {u}{} is network {}'s already",
                    o.vlan.map_or(String::new(), |v| format!(" (VLAN {v})")),
                    other.name
                ));
            }
            if o.mode == Mode::Bridged && !info.is_bridge && o.vlan.is_none() && info.has_master {
                return bad(format!(
                    "--uplink {u} is a port of another bridge: give that bridge as --uplink"
                ));
            }
            if o.mode == Mode::Bridged
                && !info.is_bridge
                && o.vlan.is_none()
                && !info.ipv4.is_empty()
            {
                return bad(format!(
                    "--uplink {u} holds the host's address {}: putting it in a bridge would cut the host off; give a bridge that holds the address (such as br0) as --uplink",
                    info.ipv4
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let ours = |sn: Subnet| nets.iter().find(|n| n.subnet.overlaps(sn));
        // Other roots' networks, made or not (their bridges may be down).
        let theirs: Vec<(PathBuf, NetConfig)> = self
            .others()
            .into_iter()
            .flat_map(|o| o.nets().into_iter().map(move |n| (o.root.clone(), n)))
            .collect();
        let other_root = |sn: Subnet| theirs.iter().find(|(_, n)| n.subnet.overlaps(sn));
        let host_has = |sn: Subnet| {
            host_nets.iter().find(|(a, p)| {
                sn.overlaps(Subnet {
                    addr: *a,
                    prefix: (*p).min(32),
                })
            })
        };
        let allow_host = checked_host_access(name, more.allow_host.as_deref().unwrap_or(&[]))?;
        let subnet = match o.subnet {
            Some(sn) => {
                if let Some(what) = sn.special_use() {
                    return bad(format!("subnet {sn} overlaps {what}"));
                }
                if let Some(other) = ours(sn) {
                    return bad(format!(
                        "subnet {sn} overlaps network {}'s {}",
                        other.name, other.subnet
                    ));
                }
                if let Some((root, other)) = other_root(sn) {
                    return bad(format!(
                        "subnet {sn} overlaps network {}'s {} of root {}",
                        other.name,
                        other.subnet,
                        root.display()
                    ));
                }
                if matches!(o.mode, Mode::Nat | Mode::HostOnly)
                    && let Some((a, p)) = host_has(sn)
                {
                    return bad(format!(
                        "subnet {sn} overlaps the host's {a}/{p} (pick another --subnet)"
                    ));
                }
                sn
            }
            None if bridged_or_routed => {
                return bad(format!(
                    "a {} network needs --subnet (the addresses its VEs have on the LAN)",
                    o.mode
                ));
            }
            None => default_subnets()
                .find(|sn| {
                    ours(*sn).is_none() && other_root(*sn).is_none() && host_has(*sn).is_none()
                })
                .ok_or_else(|| net_err(name, "no free default subnet: give --subnet"))?,
        };
        let gateway = match (o.mode, o.gateway) {
            (_, Some(g)) => {
                if !subnet.is_host(g) {
                    return bad(format!("--gateway {g} is not a host address of {subnet}"));
                }
                Some(g)
            }
            (Mode::Nat | Mode::HostOnly, None) => Some(subnet.first_host()),
            _ => None,
        };
        let dns = match &o.dns {
            Some(d) => d.clone(),
            None if o.mode == Mode::Nat => host_name_servers(),
            None => Vec::new(),
        };
        let cfg = NetConfig {
            name: name.to_string(),
            id,
            mode: o.mode,
            subnet,
            gateway,
            uplink: o.uplink.clone(),
            vlan: o.vlan,
            dns,
            bandwidth: o.bandwidth,
            allow_host,
            created: crate::state::now_rfc3339(),
            root: self.settings().identity.clone(),
        };
        let dir = self.nets_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        store_net(&self.net_path(name), &cfg)?;
        let made = self.bring_up(&cfg).and_then(|()| self.apply_firewall(None));
        if let Err(e) = made {
            let _ = netns::link::on_host(|h| async move { netns::link::net_down(&h, &cfg).await });
            let _ = remove_file(&self.net_path(name));
            let _ = remove_file(&self.net_marker(name));
            let _ = self.apply_firewall(None);
            return Err(e);
        }
        Ok(cfg)
    }

    /// Makes the network's kernel side and records the boot it was made in.
    fn bring_up(&self, net: &NetConfig) -> Result<()> {
        let n = net.clone();
        netns::link::on_host(|h| async move { netns::link::net_up(&h, &n).await })
            .map_err(|e| kernel_err(&net.name, e))?;
        write_atomic(&self.net_marker(&net.name), marker().as_bytes(), false)
    }

    /// Makes sure the kernel sides of a VE's networks exist in this boot: after a
    /// reboot they are made again, and the firewall with them. Called by `start`
    /// before it takes the VE's lock (the host lock comes first).
    pub(crate) fn ensure_nets_up(&self, ve: &str) -> Result<()> {
        let Some(cfg) = VeConfig::load(&self.config_path(ve))? else {
            return Ok(());
        };
        if cfg.nics.is_empty() {
            return Ok(());
        }
        let now = marker();
        let marked = |n: &str| fs::read_to_string(self.net_marker(n)).is_ok_and(|b| b == now);
        let nets = self.nets_of(&cfg)?;
        // Made in this boot, and their bridges still there (one netlink query each).
        let bridges: Vec<String> = nets
            .iter()
            .filter(|n| n.mode != Mode::Bridged || n.vlan.is_some())
            .filter_map(|n| n.bridge(false))
            .collect();
        let present = netns::link::on_host(|h| async move {
            let mut all = true;
            for b in &bridges {
                all &= netns::link::find_link(&h, b).await?.is_some();
            }
            Ok(all)
        })
        .map_err(|source| Error::Network {
            ve: ve.to_string(),
            source,
        })?;
        if present && nets.iter().all(|n| marked(&n.name)) {
            return Ok(());
        }
        let _host = self.lock_host()?;
        for net in &nets {
            self.bring_up(net)?;
        }
        self.apply_firewall(None).map_err(|e| for_ve(ve, e))
    }

    /// Removes a network; refused while a VE has a NIC on it.
    pub(crate) fn net_rm(&self, name: &str) -> Result<()> {
        let net = self.net(name)?;
        let _host = self.lock_host()?;
        let users: Vec<String> = self
            .configs()?
            .iter()
            .filter(|v| v.nics.iter().any(|n| n.net == name))
            .map(|v| v.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(net_err(
                name,
                format!(
                    "in use by VE {} (destroy them or move them to another network first)",
                    users.join(", ")
                ),
            ));
        }
        let n = net.clone();
        netns::link::on_host(|h| async move { netns::link::net_down(&h, &n).await })
            .map_err(|e| kernel_err(name, e))?;
        remove_file(&self.net_path(name))?;
        remove_file(&self.net_marker(name))?;
        let claims = self.root().join("ips").join(name);
        match fs::remove_dir_all(&claims) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&claims)(e)),
        }
        self.apply_firewall(None)
    }

    /// A network with the VEs on it.
    pub(crate) fn net_show(&self, name: &str) -> Result<NetDetails> {
        let net = self.net(name)?;
        let (ves, _) = self.list()?;
        let mut members = Vec::new();
        let mut used = BTreeSet::new();
        let mut guaranteed = 0;
        for v in &ves {
            let recorded = crate::state::RunState::load(&self.run_path(&v.name))
                .ok()
                .flatten()
                .filter(|rs| rs.is_alive())
                .map(|rs| rs.ports)
                .unwrap_or_default();
            for (i, nic) in v.nics.iter().enumerate().filter(|(_, n)| n.net == name) {
                used.insert(nic.ip);
                let running = v.status == crate::state::Status::Running;
                if running {
                    guaranteed += v
                        .limits
                        .net_guarantee
                        .and_then(|g| g.bps(net.bandwidth.map(|b| b.0)))
                        .unwrap_or(0);
                }
                members.push(NetMember {
                    ve: v.name.clone(),
                    ip: nic.ip,
                    mac: nic.mac.to_string(),
                    port: recorded
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| net.port_name(v.id)),
                    running,
                });
            }
        }
        let hosts = (1u64 << (32 - u32::from(net.subnet.prefix))).saturating_sub(2);
        let reserved = net.reserved().len() as u64 - 2;
        let uplink_bridge = net.mode == Mode::Bridged
            && net.vlan.is_none()
            && net
                .uplink
                .as_deref()
                .is_some_and(|u| Path::new(&format!("/sys/class/net/{u}/bridge")).exists());
        Ok(NetDetails {
            bridge: net.bridge(uplink_bridge),
            free_addresses: hosts.saturating_sub(reserved + used.len() as u64),
            guaranteed_bps: guaranteed,
            ves: members,
            config: net,
        })
    }

    /// The firewall of all networks, VE addresses and published ports, with
    /// `extra` (a VE being created or changed) counted in.
    fn firewall(&self, extra: Option<&VeConfig>) -> Result<Firewall> {
        let nets = self.net_configs()?;
        let mut fw = Firewall {
            names: self.names(),
            ..Firewall::default()
        };
        let mut all: Vec<(u32, Vec<Nic>, Vec<model::PortMap>)> = self
            .configs()?
            .into_iter()
            .filter(|v| extra.is_none_or(|e| e.name != v.name))
            .map(|v| (v.id, v.nics, v.ports))
            .collect();
        if let Some(e) = extra {
            all.push((e.id, e.nics.clone(), e.ports.clone()));
        }
        for (id, nics, publish) in all {
            let rules = ve_rules(&fw.names, &nets, id, &nics, &publish);
            fw.nics.extend(rules.nics);
            fw.published.extend(rules.published);
        }
        fw.nets = nets;
        Ok(fw)
    }

    /// Marks a change of a VE's firewall elements in flight
    /// (`run/firewall.pending`): a create or destroy killed before its config
    /// says what it did leaves elements no config accounts for (an anti-spoofing
    /// hole for the next VE with its id), so the next command makes the
    /// ruleset again from the configs. Runtime state: a reboot clears the
    /// ruleset too.
    pub(crate) fn firewall_marker(&self) -> PathBuf {
        self.root().join("run").join("firewall.pending")
    }

    /// Sets the marker ([`Host::firewall_marker`]); the caller holds the host lock.
    pub(crate) fn mark_firewall(&self) -> Result<()> {
        crate::fsutil::write_atomic(&self.firewall_marker(), b"", false)
    }

    /// Makes the ruleset again from the configs if a firewall change was left
    /// half-done, then clears the marker. The caller holds the host lock.
    pub(crate) fn finish_firewall(&self) -> Result<()> {
        let marker = self.firewall_marker();
        if !marker.exists() {
            return Ok(());
        }
        if !self.net_configs()?.is_empty() {
            self.apply_firewall(None)?;
        }
        crate::fsutil::remove_file(&marker)
    }

    /// Adds (`add`) or deletes a VE's own elements of the firewall; if the
    /// ruleset in force does not take that (it was changed by hand, say), the
    /// whole ruleset is made again from the configs (counting `cfg` in when
    /// adding). The caller holds the host lock.
    pub(crate) fn firewall_ve(&self, cfg: &VeConfig, add: bool) -> Result<()> {
        if cfg.nics.is_empty() {
            return Ok(());
        }
        let rules = ve_rules(
            &self.names(),
            &self.net_configs()?,
            cfg.id,
            &cfg.nics,
            &cfg.ports,
        );
        let done = if add { rules.add() } else { rules.delete() };
        match done {
            Ok(()) => Ok(()),
            Err(_) => self
                .apply_firewall(add.then_some(cfg))
                .map_err(|e| for_ve(&cfg.name, e)),
        }
    }

    /// Regenerates and applies the firewall (the caller holds the host lock).
    pub(crate) fn apply_firewall(&self, extra: Option<&VeConfig>) -> Result<()> {
        self.firewall(extra)?.apply().map_err(Error::Netns)
    }

    /// The addresses in use on `net` by VEs other than `except`: the claimed
    /// ones, less those whose claim is `except`'s or stale (`all`: every
    /// claim is read; else only those of `wanted`); without claims, those in
    /// the configs.
    fn used_addresses(
        &self,
        net: &str,
        except: &str,
        wanted: &[Ipv4Addr],
        all: bool,
    ) -> Result<BTreeSet<Ipv4Addr>> {
        let claims = self.address_claims_as_is(net);
        if !claims.built() {
            return Ok(self
                .configs()?
                .iter()
                .filter(|v| v.name != except)
                .flat_map(|v| v.nics.iter())
                .filter(|n| n.net == net)
                .map(|n| n.ip)
                .collect());
        }
        let mut used: BTreeSet<Ipv4Addr> = claims
            .keys()?
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect();
        let check: Vec<Ipv4Addr> = if all {
            used.iter().copied().collect()
        } else {
            wanted
                .iter()
                .filter(|ip| used.contains(ip))
                .copied()
                .collect()
        };
        for ip in check {
            let key = ip.to_string();
            let has = |c: &VeConfig| c.nics.iter().any(|n| n.net == net && n.ip == ip);
            if self.claim_blocks(&claims, &key, except, has).is_none() {
                used.remove(&ip);
            }
        }
        Ok(used)
    }

    /// The NICs of a VE being created (the caller holds the host lock):
    /// addresses checked or allocated without duplicates.
    pub(crate) fn allocate_nics(&self, ve: &str, reqs: &[NicRequest]) -> Result<Vec<Nic>> {
        self.allocate_nics_preferring(ve, reqs, &[])
    }

    /// [`Host::allocate_nics`], keeping the address and MAC that `prefer` has
    /// on a network where they are free (a restored VE's).
    pub(crate) fn allocate_nics_preferring(
        &self,
        ve: &str,
        reqs: &[NicRequest],
        prefer: &[Nic],
    ) -> Result<Vec<Nic>> {
        let mut out: Vec<Nic> = Vec::new();
        // On a LAN (bridged, routed) the host's own addresses are not free.
        let mut host_addrs: Option<BTreeSet<Ipv4Addr>> = None;
        for r in reqs {
            let net = self.net(&r.net).map_err(|e| match e {
                Error::NoSuchNet(n) => Error::BadLimit {
                    ve: ve.to_string(),
                    reason: format!("--net {n}: no such network (see `vectl net list`)"),
                },
                e => e,
            })?;
            if out.iter().any(|n| n.net == net.name) {
                return Err(Error::BadLimit {
                    ve: ve.to_string(),
                    reason: format!("--net {}: given twice (one NIC per network)", net.name),
                });
            }
            let old = prefer.iter().find(|n| n.net == net.name);
            let wanted: Vec<Ipv4Addr> =
                r.ip.as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .into_iter()
                    .chain(old.map(|o| o.ip))
                    .collect();
            let mut used = self.used_addresses(&net.name, ve, &wanted, false)?;
            if matches!(r.ip.as_deref(), None | Some("auto"))
                && choose_address(&net, None, &used).is_err()
            {
                // Full: claims a killed command left are freed.
                used = self.used_addresses(&net.name, ve, &wanted, true)?;
            }
            if matches!(net.mode, Mode::Bridged | Mode::Routed) {
                if host_addrs.is_none() {
                    let addrs =
                        netns::link::on_host(
                            |h| async move { netns::link::host_addresses(&h).await },
                        )
                        .map_err(|source| Error::Network {
                            ve: ve.to_string(),
                            source,
                        })?;
                    host_addrs = Some(addrs.into_iter().collect());
                }
                used.extend(host_addrs.iter().flatten().copied());
            }
            let kept = old
                .filter(|_| r.ip.is_none())
                .and_then(|o| choose_address(&net, Some(&o.ip.to_string()), &used).ok());
            let ip = match kept {
                Some(ip) => Ok(ip),
                None => choose_address(&net, r.ip.as_deref(), &used),
            };
            let ip = ip.map_err(|e| match e {
                e @ (netns::Error::Net { .. } | netns::Error::File { .. }) => from_netns(e),
                e => Error::BadLimit {
                    ve: ve.to_string(),
                    reason: e.to_string(),
                },
            })?;
            // A fresh MAC has 46 random bits: among a thousand VEs two alike
            // are a chance of 1 in 10^8, so only a kept one (a restored VE's,
            // whose original may still be here) is checked against the others.
            let mut taken: BTreeSet<model::Mac> = out.iter().map(|n| n.mac).collect();
            if old.is_some() {
                taken.extend(
                    self.configs()?
                        .iter()
                        .filter(|c| c.name != ve)
                        .flat_map(|c| c.nics.iter().map(|n| n.mac)),
                );
            }
            let mac = match old.filter(|o| !taken.contains(&o.mac)) {
                Some(o) => o.mac,
                None => fresh_mac(&taken).map_err(from_netns)?,
            };
            out.push(Nic {
                net: net.name,
                ip,
                mac,
            });
        }
        Ok(out)
    }

    /// The networks of a VE's NICs.
    pub(crate) fn nets_of(&self, cfg: &VeConfig) -> Result<Vec<NetConfig>> {
        cfg.nics
            .iter()
            .map(|n| {
                self.net(&n.net).map_err(|e| Error::Start {
                    ve: cfg.name.clone(),
                    reason: format!("its network: {e}"),
                })
            })
            .collect()
    }

    /// What to wire at start.
    pub(crate) fn attachments(&self, cfg: &VeConfig, nets: &[NetConfig]) -> Vec<Attach> {
        cfg.nics
            .iter()
            .zip(nets)
            .enumerate()
            .map(|(i, (nic, net))| Attach {
                net: net.clone(),
                ports: net.port_names(cfg.id),
                ifname: ve_ifname(i),
                mac: nic.mac,
                ip: nic.ip,
                shape: shape_for(&cfg.limits, net, nic.ip),
            })
            .collect()
    }

    /// What to take down after a VE stopped (networks that are gone are skipped:
    /// their ports went with them). Traffic classes are deleted where the VE's
    /// limits give one (`set` keeps them in step on a running VE), or all of
    /// them with `all_classes` (destroy: the address may go to another VE), so a
    /// stop or start of an unshaped VE on a nat network talks no netlink here.
    pub(crate) fn detach_nics(&self, cfg: &VeConfig, all_classes: bool) -> Result<()> {
        let nets = self.net_configs()?;
        let d: Vec<Detach> = cfg
            .nics
            .iter()
            .filter_map(|nic| {
                let net = nets.iter().find(|n| n.name == nic.net)?;
                Some(Detach {
                    net: net.clone(),
                    port: net.port_name(cfg.id),
                    ip: nic.ip,
                    minor: if all_classes {
                        model::class_minor(net.subnet, nic.ip)
                    } else {
                        shape_for(&cfg.limits, net, nic.ip).map(|s| s.minor)
                    },
                })
            })
            .collect();
        netns::link::detach(&d).map_err(|source| Error::Network {
            ve: cfg.name.clone(),
            source,
        })
    }

    /// The host-side names of a VE's ports: as its running instance recorded
    /// them, else the first slot's.
    fn ports_of(&self, cfg: &VeConfig, nets: &[NetConfig]) -> Vec<String> {
        let recorded = crate::state::RunState::load(&self.run_path(&cfg.name))
            .ok()
            .flatten()
            .filter(|rs| rs.is_alive() && rs.ports.len() == cfg.nics.len())
            .map(|rs| rs.ports);
        recorded.unwrap_or_else(|| nets.iter().map(|n| n.port_name(cfg.id)).collect())
    }

    /// Applies changed bandwidth settings to a running VE's NICs.
    pub(crate) fn reshape_nics(&self, cfg: &VeConfig, limits: &Limits) -> Result<()> {
        let nets = self.nets_of(cfg)?;
        let ports = self.ports_of(cfg, &nets);
        for ((nic, net), port) in cfg.nics.iter().zip(&nets).zip(&ports) {
            let shape = shape_for(limits, net, nic.ip);
            let old = shape_for(&cfg.limits, net, nic.ip).map(|s| s.minor);
            netns::link::reshape(net, port, nic.ip, shape.as_ref(), old).map_err(|source| {
                Error::Network {
                    ve: cfg.name.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Checks a VE's network settings: bandwidth knobs against its networks,
    /// published ports against the other VEs'.
    pub(crate) fn check_net_settings(&self, cfg: &VeConfig) -> Result<()> {
        let bad = |reason: String| Error::BadLimit {
            ve: cfg.name.clone(),
            reason,
        };
        let nets: Vec<NetConfig> = cfg
            .nics
            .iter()
            .map(|n| self.net(&n.net))
            .collect::<Result<_>>()?;
        if let Some(g) = cfg.limits.net_guarantee {
            if cfg.nics.is_empty() {
                return Err(bad(
                    "--net-guarantee: the VE has no network interface".into()
                ));
            }
            if let crate::units::NetShare::Percent(p) = g
                && !(p.0 > 0.0 && p.0 <= 100.0)
            {
                return Err(bad(format!(
                    "--net-guarantee {p} is not between 0% and 100%"
                )));
            }
            for net in &nets {
                // A rate needs nothing more; a share is of the network's
                // bandwidth, or without one, of the VE's own limit.
                let Some(want) = cfg
                    .limits
                    .guarantee_bps(net.bandwidth.map(|b| b.0))
                    .flatten()
                else {
                    return Err(bad(format!(
                        "--net-guarantee {g}: network {} has no --bandwidth and the VE no --net-limit to take a share of",
                        net.name
                    )));
                };
                if let Some(bw) = net.bandwidth
                    && want > bw.0
                {
                    return Err(bad(format!(
                        "--net-guarantee {g} is more than network {}'s bandwidth {bw}",
                        net.name
                    )));
                }
                if let Some(l) = cfg.limits.net_limit
                    && want > l.0
                {
                    return Err(bad(format!("--net-guarantee {g} is above --net-limit {l}")));
                }
            }
        }
        if cfg.limits.net_limit.is_some() && cfg.nics.is_empty() {
            return Err(bad("--net-limit: the VE has no network interface".into()));
        }
        if !cfg.ports.is_empty() {
            for (i, p) in cfg.ports.iter().enumerate() {
                if let Some(q) = cfg.ports[..i]
                    .iter()
                    .find(|q| q.host_port == p.host_port && q.proto == p.proto)
                {
                    return Err(bad(format!(
                        "--publish {p}: host port {}/{} is given twice ({q} too)",
                        p.host_port, p.proto
                    )));
                }
            }
            if !nets.iter().any(|n| n.mode == Mode::Nat) {
                return Err(bad(
                    "--publish: the VE has no NIC on a nat network (ports are published from NAT networks)".into(),
                ));
            }
            let ves = self.configs()?;
            for p in &cfg.ports {
                if let Some(other) = ves.iter().filter(|v| v.name != cfg.name).find(|v| {
                    v.ports
                        .iter()
                        .any(|q| q.host_port == p.host_port && q.proto == p.proto)
                }) {
                    return Err(bad(format!(
                        "--publish {p}: host port {}/{} is published by VE {} already",
                        p.host_port, p.proto, other.name
                    )));
                }
            }
            // The host's ports are one space for all roots.
            for o in self.others() {
                for v in o.ves() {
                    if let Some(p) = cfg.ports.iter().find(|p| {
                        v.ports
                            .iter()
                            .any(|q| q.host_port == p.host_port && q.proto == p.proto)
                    }) {
                        return Err(bad(format!(
                            "--publish {p}: host port {}/{} is published by VE {} of root {} already",
                            p.host_port,
                            p.proto,
                            v.name,
                            o.root.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Network guarantees a VE would hold, checked against its networks'
    /// bandwidth beside the running VEs' (admission control).
    pub(crate) fn admit_net(&self, cfg: &VeConfig, limits: &Limits) -> Result<()> {
        let Some(g) = limits.net_guarantee else {
            return Ok(());
        };
        let (ves, _) = self.list()?;
        for nic in &cfg.nics {
            let net = self.net(&nic.net)?;
            let Some(bw) = net.bandwidth else { continue };
            let mine = g.bps(Some(bw.0)).unwrap_or(0);
            let mut parts = Vec::new();
            let mut others = 0;
            for v in ves.iter().filter(|v| {
                v.name != cfg.name
                    && v.status == crate::state::Status::Running
                    && v.nics.iter().any(|n| n.net == net.name)
            }) {
                if let Some(b) = v.limits.net_guarantee.and_then(|g| g.bps(Some(bw.0))) {
                    others += b;
                    parts.push(format!("{} {}", v.name, Rate(b)));
                }
            }
            if mine + others > bw.0 {
                if parts.is_empty() {
                    parts.push("none".into());
                }
                return Err(Error::Admission {
                    ve: cfg.name.clone(),
                    reason: format!(
                        "network guarantees on {} would total {} of its {bw}: running VEs {}; this VE {}",
                        net.name,
                        Rate(mine + others),
                        parts.join(", "),
                        Rate(mine)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Details of a VE's NICs for `show`.
    pub(crate) fn nic_infos(&self, cfg: &VeConfig) -> Vec<NicInfo> {
        let ports = self
            .nets_of(cfg)
            .map(|nets| self.ports_of(cfg, &nets))
            .unwrap_or_default();
        cfg.nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let net = self.net(&nic.net).ok();
                NicInfo {
                    ifname: ve_ifname(i),
                    net: nic.net.clone(),
                    mode: net.as_ref().map_or(Mode::Nat, |n| n.mode),
                    ip: match &net {
                        Some(n) => format!("{}/{}", nic.ip, n.ve_prefix()),
                        None => nic.ip.to_string(),
                    },
                    mac: nic.mac.to_string(),
                    port: ports.get(i).cloned().unwrap_or_default(),
                    gateway: net.as_ref().and_then(NetConfig::ve_gateway),
                }
            })
            .collect()
    }

    /// Creates the default nat network of a new host.
    pub(crate) fn create_default_net(&self) -> Result<NetConfig> {
        self.net_create_locked(
            &NetCreate {
                name: DEFAULT_NET.into(),
                mode: Mode::Nat,
                subnet: None,
                gateway: None,
                uplink: None,
                vlan: None,
                dns: None,
                bandwidth: None,
            },
            &NetUpdate::default(),
        )
    }
}

/// A host-level network error (the firewall's) as one about VE `ve`.
pub(crate) fn for_ve(ve: &str, e: Error) -> Error {
    match e {
        Error::Netns(e) => Error::ve(ve, e.to_string()),
        e => e,
    }
}

/// Loads network `name`'s config, for the root with `identity`.
fn load_net(path: &Path, name: &str, identity: Option<&str>) -> Result<NetConfig> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let mut cfg: NetConfig = toml::from_str(&text).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: "network config",
        reason: e.message().replace('\n', " "),
    })?;
    if cfg.name != name {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: "network config",
            reason: format!("it names network {:?}", cfg.name),
        });
    }
    cfg.root = identity.map(str::to_string);
    Ok(cfg)
}

fn store_net(path: &Path, cfg: &NetConfig) -> Result<()> {
    let text = toml::to_string(cfg).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: "network config",
        reason: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes(), true)
}

/// Writes the VE's identity into its private layer before its root is mounted
/// (see [`netns::etc::write_net_files`]).
pub(crate) fn write_net_files(
    upper: &Path,
    lower: &Path,
    hostname: &str,
    nics: &[Nic],
    nets: &[NetConfig],
) -> Result<()> {
    netns::etc::write_net_files(upper, lower, hostname, nics, nets).map_err(from_netns)
}

/// What vectl itself wrote into a VE's private layer, taken out unless
/// `dry_run` (see [`netns::etc::forget_vectl_files`]).
pub(crate) fn forget_vectl_files(
    layer: &Path,
    lower: &Path,
    hostname: &str,
    dry_run: bool,
) -> Result<Vec<&'static str>> {
    netns::etc::forget_vectl_files(layer, lower, hostname, dry_run).map_err(from_netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_errors_keep_their_messages_and_kinds() {
        let e = from_netns(netns::Error::File {
            path: PathBuf::from("/x/etc/hosts"),
            source: io::Error::new(io::ErrorKind::FileTooLarge, "larger than 8 MiB"),
        });
        assert!(matches!(e, Error::Io { .. }));
        assert_eq!(e.to_string(), "/x/etc/hosts: larger than 8 MiB");
        let e = checked_host_access("n", &[HostAccess::All; 2]).map(|l| l.len());
        assert_eq!(e.ok(), Some(1));
        let e = validate_net_name("Bad").unwrap_err();
        assert!(matches!(e, Error::Netns(netns::Error::InvalidNetName(_))));
        assert!(
            e.to_string()
                .starts_with("invalid network name \"Bad\": use lower-case")
        );
    }
}
