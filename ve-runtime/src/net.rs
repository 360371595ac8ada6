//! Virtual networks on a host (`nets/<name>.toml`) and the NICs of VEs on them.
//!
//! A network's config is the source of truth; its kernel side (bridge, VLAN link,
//! shaper) is made by `net create` and again by the first start after a reboot
//! (a marker `nets/<name>.up` holds the boot it was made in). Addresses are
//! managed from the VE configs themselves under the host lock, so there is no
//! lease file to drift: an address returns when its VE is destroyed. The
//! firewall is regenerated from all configs whenever networks, addresses or
//! published ports change, never on start or stop.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::fstatat;
use nix::unistd::{UnlinkatFlags, unlinkat};

use netns::link::{Attach, Detach, Shape};
use netns::model::{self, HostAccess, Mode, NetConfig, Rate, Subnet};
use netns::nft::{Firewall, FwNic, FwPublish, VeRules};
use netns::tc::ClassRate;
use serde::{Deserialize, Serialize};

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_file, write_atomic};
use crate::host::Host;
use crate::limits::Limits;
use crate::state;

/// The name of the network `vectl init` makes.
pub const DEFAULT_NET: &str = "default";

/// A VE's network interface as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The network.
    pub net: String,
    /// Its address (the prefix is the network's).
    pub ip: Ipv4Addr,
    /// Its MAC, chosen at random at create (unique on the host).
    pub mac: model::Mac,
}

/// A NIC asked for at create: a network and an address (`None` or `auto` = the
/// lowest free one; else `A.B.C.D` or `A.B.C.D/PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRequest {
    pub net: String,
    pub ip: Option<String>,
}

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

/// A NIC's details in `show`.
#[derive(Debug, Clone, Serialize)]
pub struct NicInfo {
    pub ifname: String,
    pub net: String,
    pub mode: Mode,
    pub ip: String,
    pub mac: String,
    pub port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
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

/// What a network's marker holds: the boot its kernel side was made in, and the
/// generation of the firewall made with it (a vectl with a newer firewall makes
/// the ruleset again at the next start of a VE on the network).
fn marker() -> String {
    format!("{} firewall-{}", state::boot_id(), netns::nft::GENERATION)
}

/// An `--allow-host` list as a network keeps it: sorted, without duplicates.
fn checked_host_access(net: &str, list: &[HostAccess]) -> Result<Vec<HostAccess>> {
    let mut l = list.to_vec();
    l.sort();
    l.dedup();
    if l.len() > model::MAX_HOST_ACCESS {
        return Err(net_err(
            net,
            format!(
                "--allow-host: {} entries, at most {}",
                l.len(),
                model::MAX_HOST_ACCESS
            ),
        ));
    }
    Ok(l)
}

/// Network names follow VE names' rules.
fn validate_net_name(name: &str) -> Result<()> {
    crate::config::validate_name(name).map_err(|_| {
        Error::Host(format!(
            "invalid network name {name:?}: use lower-case letters, digits and '-', starting with a letter or digit, not all digits, at most 63 characters"
        ))
    })
}

/// The name servers of the host's /etc/resolv.conf that a VE can reach (not the
/// host's loopback stub resolvers).
fn host_name_servers() -> Vec<Ipv4Addr> {
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
fn default_subnets() -> impl Iterator<Item = Subnet> {
    (0..64u8).map(|i| Subnet {
        addr: Ipv4Addr::new(10, 200 + i / 16, (i % 16) * 16, 0),
        prefix: 20,
    })
}

impl Host {
    fn nets_dir(&self) -> PathBuf {
        self.root().join("nets")
    }
    fn net_path(&self, name: &str) -> PathBuf {
        self.nets_dir().join(format!("{name}.toml"))
    }
    fn net_marker(&self, name: &str) -> PathBuf {
        self.nets_dir().join(format!("{name}.up"))
    }

    /// Every VE's config (no runtime state: cheaper than `list`). Unreadable
    /// ones are skipped; `list` reports them.
    pub(crate) fn configs(&self) -> Result<Vec<VeConfig>> {
        let dir = self.root().join("ves");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let fname = entry.file_name();
            if let Some(name) = fname.to_str().and_then(|f| f.strip_suffix(".toml"))
                && crate::config::validate_name(name).is_ok()
                && let Ok(Some(cfg)) = VeConfig::load(&entry.path())
            {
                out.push(cfg);
            }
        }
        Ok(out)
    }

    /// Every network, by id.
    pub fn nets(&self) -> Result<Vec<NetConfig>> {
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
                out.push(load_net(&entry.path(), name)?);
            }
        }
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// One network's config.
    pub fn net(&self, name: &str) -> Result<NetConfig> {
        validate_net_name(name)?;
        let path = self.net_path(name);
        if !path.exists() {
            return Err(Error::NoSuchNet(name.to_string()));
        }
        load_net(&path, name)
    }

    /// Creates a network and its kernel side.
    pub fn net_create(&self, o: &NetCreate) -> Result<NetConfig> {
        self.net_create_with(o, &NetUpdate::default())
    }

    /// Creates a network with settings beyond [`NetCreate`]'s (`--allow-host`).
    pub fn net_create_with(&self, o: &NetCreate, more: &NetUpdate) -> Result<NetConfig> {
        let _host = self.lock_host()?;
        self.net_create_locked(o, more)
    }

    /// Changes a network's settings; the firewall follows at once, for running
    /// VEs too. Returns the new config.
    pub fn net_update(&self, name: &str, u: &NetUpdate) -> Result<NetConfig> {
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
        let nets = self.nets()?;
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
            if u.starts_with("vn") {
                return bad(format!(
                    "--uplink {u}: interfaces named vn* are vectl's own"
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
                .find(|sn| ours(*sn).is_none() && host_has(*sn).is_none())
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
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
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
    pub fn net_rm(&self, name: &str) -> Result<()> {
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
        self.apply_firewall(None)
    }

    /// A network with the VEs on it.
    pub fn net_show(&self, name: &str) -> Result<NetDetails> {
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
                        .unwrap_or_else(|| model::port_name(net.id, v.id)),
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
        let nets = self.nets()?;
        let mut fw = Firewall::default();
        let mut all: Vec<(u32, Vec<Nic>, Vec<model::Publish>)> = self
            .configs()?
            .into_iter()
            .filter(|v| extra.is_none_or(|e| e.name != v.name))
            .map(|v| (v.id, v.nics, v.publish))
            .collect();
        if let Some(e) = extra {
            all.push((e.id, e.nics.clone(), e.publish.clone()));
        }
        for (id, nics, publish) in all {
            let rules = ve_rules(&nets, id, &nics, &publish);
            fw.nics.extend(rules.nics);
            fw.published.extend(rules.published);
        }
        fw.nets = nets;
        Ok(fw)
    }

    /// Adds (`add`) or deletes a VE's own elements of the firewall; if the
    /// ruleset in force does not take that (it was changed by hand, say), the
    /// whole ruleset is made again from the configs (counting `cfg` in when
    /// adding). The caller holds the host lock.
    pub(crate) fn firewall_ve(&self, cfg: &VeConfig, add: bool) -> Result<()> {
        if cfg.nics.is_empty() {
            return Ok(());
        }
        let rules = ve_rules(&self.nets()?, cfg.id, &cfg.nics, &cfg.publish);
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
        self.firewall(extra)?
            .apply()
            .map_err(|e| Error::Host(e.to_string()))
    }

    /// The addresses in use on `net` by VEs other than `except`.
    fn used_addresses(&self, net: &str, except: &str) -> Result<BTreeSet<Ipv4Addr>> {
        let ves = self.configs()?;
        Ok(ves
            .iter()
            .filter(|v| v.name != except)
            .flat_map(|v| v.nics.iter())
            .filter(|n| n.net == net)
            .map(|n| n.ip)
            .collect())
    }

    /// The NICs of a VE being created (the caller holds the host lock):
    /// addresses checked or allocated without duplicates.
    pub(crate) fn allocate_nics(&self, ve: &str, reqs: &[NicRequest]) -> Result<Vec<Nic>> {
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
            let mut used = self.used_addresses(&net.name, ve)?;
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
            let ip = match r.ip.as_deref() {
                None | Some("auto") => net.allocate(&used).ok_or_else(|| {
                    net_err(&net.name, format!("no free address left in {}", net.subnet))
                })?,
                Some(text) => {
                    let ip = parse_ip_for(&net, text).map_err(|reason| Error::BadLimit {
                        ve: ve.to_string(),
                        reason,
                    })?;
                    net.check_address(ip, &used)
                        .map_err(|reason| Error::BadLimit {
                            ve: ve.to_string(),
                            reason: format!("--ip {text}: {reason}"),
                        })?;
                    ip
                }
            };
            let taken: BTreeSet<model::Mac> = self
                .configs()?
                .iter()
                .filter(|c| c.name != ve)
                .flat_map(|c| c.nics.iter().map(|n| n.mac))
                .chain(out.iter().map(|n| n.mac))
                .collect();
            let mac = loop {
                let m = model::Mac::random().map_err(io_err(Path::new("/dev/urandom")))?;
                if !taken.contains(&m) {
                    break m;
                }
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
                ports: model::port_names(net.id, cfg.id),
                ifname: format!("eth{i}"),
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
        let nets = self.nets()?;
        let d: Vec<Detach> = cfg
            .nics
            .iter()
            .filter_map(|nic| {
                let net = nets.iter().find(|n| n.name == nic.net)?;
                Some(Detach {
                    net: net.clone(),
                    port: model::port_name(net.id, cfg.id),
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
        recorded.unwrap_or_else(|| {
            nets.iter()
                .map(|n| model::port_name(n.id, cfg.id))
                .collect()
        })
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
            if let crate::limits::NetShare::Percent(p) = g
                && !(p.0 > 0.0 && p.0 <= 100.0)
            {
                return Err(bad(format!(
                    "--net-guarantee {p} is not between 0% and 100%"
                )));
            }
            for net in &nets {
                let Some(bw) = net.bandwidth else {
                    return Err(bad(format!(
                        "--net-guarantee: network {} has no --bandwidth to guarantee a share of",
                        net.name
                    )));
                };
                let want = g.bps(Some(bw.0)).unwrap_or(0);
                if want > bw.0 {
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
        if !cfg.publish.is_empty() {
            for (i, p) in cfg.publish.iter().enumerate() {
                if let Some(q) = cfg.publish[..i]
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
            for p in &cfg.publish {
                if let Some(other) = ves.iter().filter(|v| v.name != cfg.name).find(|v| {
                    v.publish
                        .iter()
                        .any(|q| q.host_port == p.host_port && q.proto == p.proto)
                }) {
                    return Err(bad(format!(
                        "--publish {p}: host port {}/{} is published by VE {} already",
                        p.host_port, p.proto, other.name
                    )));
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
                    ifname: format!("eth{i}"),
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

/// A host-level error (the firewall's) as one about VE `ve`.
pub(crate) fn for_ve(ve: &str, e: Error) -> Error {
    match e {
        Error::Host(reason) => Error::BadLimit {
            ve: ve.to_string(),
            reason,
        },
        e => e,
    }
}

/// A VE's own elements of the firewall.
fn ve_rules(nets: &[NetConfig], id: u32, nics: &[Nic], publish: &[model::Publish]) -> VeRules {
    let mut r = VeRules::default();
    let net_of = |name: &str| nets.iter().find(|n| n.name == name);
    for nic in nics {
        let Some(net) = net_of(&nic.net) else {
            continue;
        };
        for port in model::port_names(net.id, id) {
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
        r.published.extend(publish.iter().map(|p| FwPublish {
            publish: *p,
            ip: nat.ip,
        }));
    }
    r
}

/// A NIC's traffic class: when the VE has a limit or guarantee, or its network
/// has a bandwidth to share.
fn shape_for(limits: &Limits, net: &NetConfig, ip: Ipv4Addr) -> Option<Shape> {
    if limits.net_limit.is_none() && limits.net_guarantee.is_none() && net.bandwidth.is_none() {
        return None;
    }
    let minor = model::class_minor(net.subnet, ip)?;
    let total = net.total_bps();
    let ceil = limits.net_limit.map_or(total, |l| l.0.min(total));
    // Best effort: a small rate, so guarantees come first when the network is full.
    let best_effort = (total / 1000).clamp(10_000, 1_000_000).min(ceil);
    let rate = limits
        .net_guarantee
        .and_then(|g| g.bps(net.bandwidth.map(|b| b.0)))
        .unwrap_or(best_effort)
        .clamp(1000, ceil);
    Some(Shape {
        minor,
        rate: ClassRate { rate, ceil },
    })
}

/// Parses `--ip` for a network: an address, or an address with the network's
/// prefix.
fn parse_ip_for(net: &NetConfig, text: &str) -> std::result::Result<Ipv4Addr, String> {
    let (a, p) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("--ip {text:?}: expected an IPv4 address, CIDR or auto"))?;
    if let Some(p) = p {
        let p: u8 = p
            .parse()
            .map_err(|_| format!("--ip {text:?}: bad prefix"))?;
        if p != net.subnet.prefix && !(net.mode == Mode::Routed && p == 32) {
            return Err(format!(
                "--ip {text}: network {} is {} (prefix /{})",
                net.name, net.subnet, net.subnet.prefix
            ));
        }
    }
    Ok(ip)
}

fn load_net(path: &Path, name: &str) -> Result<NetConfig> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let cfg: NetConfig = toml::from_str(&text).map_err(|e| Error::Corrupt {
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

/// The most of a VE's /etc/hosts vectl reads (it rewrites the file at each
/// start): a VE's root could otherwise make the host read gigabytes.
pub(crate) const HOSTS_MAX: u64 = 8 << 20;

/// What a name in a layer's /etc is, without following a symlink.
enum Entry {
    Missing,
    /// A regular file of UTF-8 text, read whole.
    File(String),
    /// A regular file longer than the cap it was read with.
    TooLarge,
    /// A symlink, a whiteout, a FIFO, a directory, a file that is not text...:
    /// nothing vectl reads through.
    Other,
}

/// A layer's /etc (a VE's own layer, or the template tree under it) as a
/// directory fd opened without following a symlink: every file in it is looked
/// at, read, written and removed relative to that fd, never through a symlink,
/// and opened non-blocking (a FIFO cannot hang vectl) only once it is known to
/// be a regular file; reads are capped.
struct Etc {
    fd: OwnedFd,
    path: PathBuf,
}

impl Etc {
    /// `layer/etc`, or `None` when it is missing or not a plain directory (a
    /// symlink to anywhere, say).
    fn open(layer: &Path) -> Result<Option<Etc>> {
        let path = layer.join("etc");
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => Ok(Some(Etc { fd, path })),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
            Err(e) => Err(io_err(&path)(e.into())),
        }
    }

    fn file_type(&self, name: &str) -> std::result::Result<libc::mode_t, Errno> {
        let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(st.st_mode & libc::S_IFMT)
    }

    /// What `name` is; a regular file is read if it holds at most `max` bytes.
    fn entry(&self, name: &str, max: u64) -> Entry {
        match self.file_type(name) {
            Ok(libc::S_IFREG) => {}
            Ok(_) => return Entry::Other,
            Err(Errno::ENOENT) => return Entry::Missing,
            Err(_) => return Entry::Other,
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let f = match openat(&self.fd, name, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => fs::File::from(fd),
            Err(Errno::ENOENT) => return Entry::Missing,
            Err(_) => return Entry::Other,
        };
        // What was opened, not what was looked at a moment before.
        if !f.metadata().is_ok_and(|m| m.file_type().is_file()) {
            return Entry::Other;
        }
        match ve_templates::read_capped(f, max) {
            Ok(bytes) => String::from_utf8(bytes).map_or(Entry::Other, Entry::File),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => Entry::TooLarge,
            Err(_) => Entry::Other,
        }
    }

    /// Writes `text` to `name` unless it holds that already. Something other
    /// than a regular file there (a symlink, a FIFO...) is replaced; a
    /// directory is left alone.
    fn write(&self, name: &str, text: &str) -> Result<()> {
        match self.entry(name, text.len() as u64) {
            Entry::File(old) if old == text => return Ok(()),
            Entry::File(_) | Entry::Missing | Entry::TooLarge => {}
            Entry::Other => {
                if self.file_type(name) == Ok(libc::S_IFDIR) {
                    return Ok(());
                }
                self.remove(name)?;
            }
        }
        self.put(name, text)
    }

    /// Writes `text` to the regular file `name` (made if missing, mode 0644),
    /// never through a symlink.
    fn put(&self, name: &str, text: &str) -> Result<()> {
        use std::io::Write;
        let path = self.path.join(name);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
        let fd = openat(&self.fd, name, flags, mode).map_err(|e| io_err(&path)(e.into()))?;
        let mut f = fs::File::from(fd);
        if !f.metadata().map_err(io_err(&path))?.file_type().is_file() {
            return Err(io_err(&path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        f.write_all(text.as_bytes()).map_err(io_err(&path))
    }

    /// Removes `name` (not a directory); a missing one is fine.
    fn remove(&self, name: &str) -> Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(&self.path.join(name))(e.into())),
        }
    }

    /// [`Etc::entry`] of /etc/hosts, whose being too large to read is an error
    /// (naming the file) rather than a reason to replace the VE's own lines.
    fn hosts(&self) -> Result<Entry> {
        match self.entry("hosts", HOSTS_MAX) {
            Entry::TooLarge => Err(io_err(&self.path.join("hosts"))(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "larger than {} MiB, more than vectl reads of the file it rewrites at each start (make it smaller or remove it)",
                    HOSTS_MAX >> 20
                ),
            ))),
            e => Ok(e),
        }
    }
}

/// Writes the VE's identity into its private layer, before its root is mounted
/// (no process of the VE runs): /etc/hostname (where the tree has one: a
/// system's init sets the host name from it), its /etc/hosts entry and, when its
/// first network has name servers, /etc/resolv.conf. Lines vectl owns in
/// /etc/hosts end in `# vectl`; the rest is the VE's own. Nothing is followed
/// through a symlink and every file is reached through an fd of its /etc (see
/// [`Etc`]): a VE whose /etc is not a plain directory is left alone, and a
/// symlink, FIFO or other non-regular file in place of one of these files is
/// replaced. An /etc/hosts (the VE's or its template's) larger than
/// [`HOSTS_MAX`] is not read: the start fails, naming the file.
pub(crate) fn write_net_files(
    upper: &Path,
    lower: &Path,
    hostname: &str,
    nics: &[Nic],
    nets: &[NetConfig],
) -> Result<()> {
    let upper_etc = Etc::open(upper)?;
    let lower_etc = Etc::open(lower)?;
    let upper_etc_missing = upper_etc.is_none() && upper.join("etc").symlink_metadata().is_err();
    // Only whether it is a regular file counts here: read nothing of it.
    let is_file = |etc: &Option<Etc>, name: &str| {
        etc.as_ref().map(|e| e.file_type(name)).map(|t| match t {
            Ok(libc::S_IFREG) => Some(true),
            Err(Errno::ENOENT) => None,
            _ => Some(false),
        })
    };
    let has_hostname = match is_file(&upper_etc, "hostname") {
        Some(Some(f)) => f,
        Some(None) => is_file(&lower_etc, "hostname") == Some(Some(true)),
        None => upper_etc_missing && is_file(&lower_etc, "hostname") == Some(Some(true)),
    };
    if nics.is_empty() && !has_hostname {
        return Ok(());
    }
    let etc = match upper_etc {
        Some(e) => e,
        None if !upper_etc_missing => return Ok(()),
        None => {
            let Some(base) = lower
                .join("etc")
                .symlink_metadata()
                .ok()
                .filter(|m| m.file_type().is_dir())
            else {
                return Ok(());
            };
            // As overlayfs would copy it up: the template's owner and mode (a
            // build publishes this directory's metadata).
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let dir = upper.join("etc");
            fs::create_dir(&dir).map_err(io_err(&dir))?;
            std::os::unix::fs::lchown(&dir, Some(base.uid()), Some(base.gid()))
                .map_err(io_err(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(base.mode() & 0o7777))
                .map_err(io_err(&dir))?;
            match Etc::open(upper)? {
                Some(e) => e,
                None => return Ok(()),
            }
        }
    };
    if has_hostname {
        etc.write("hostname", &format!("{hostname}\n"))?;
    }
    let Some(first) = nics.first() else {
        return Ok(());
    };
    // The file as the VE sees it: its own layer's, else the template's.
    let old = match etc.hosts()? {
        Entry::File(t) => t,
        Entry::Missing => match lower_etc.as_ref().map(Etc::hosts).transpose()? {
            Some(Entry::File(t)) => t,
            _ => String::new(),
        },
        Entry::TooLarge | Entry::Other => String::new(),
    };
    let mut hosts: String = old
        .lines()
        .filter(|l| !l.ends_with("# vectl"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost"))
    {
        hosts.push_str("127.0.0.1\tlocalhost # vectl\n");
    }
    let short = hostname.split('.').next().unwrap_or(hostname);
    if short == hostname {
        hosts.push_str(&format!("{}\t{hostname} # vectl\n", first.ip));
    } else {
        hosts.push_str(&format!("{}\t{hostname} {short} # vectl\n", first.ip));
    }
    etc.write("hosts", &hosts)?;
    if let Some(net) = nets.first()
        && !net.dns.is_empty()
    {
        let mut text = format!("# written by vectl from network {}\n", net.name);
        for d in &net.dns {
            text.push_str(&format!("nameserver {d}\n"));
        }
        etc.write("resolv.conf", &text)?;
    }
    Ok(())
}

/// What vectl itself wrote into a VE's private layer `layer` (over the
/// template tree `lower`) at its starts, and nothing else changed: /etc/hostname
/// holding the VE's host name, /etc/hosts whose lines but vectl's (`# vectl`)
/// are the template's, /etc/resolv.conf as vectl writes it. Unless `dry_run`,
/// they are taken out of the layer (and vectl's lines out of an /etc/hosts the
/// VE changed too), so the template's files show through again: for a build,
/// whose layer becomes a template version, and for an upgrade, after which the
/// next start writes them anew over the new version's. Returns their paths
/// (`/etc/hosts`). Nothing is followed through a symlink, and a file too large
/// to be vectl's is left alone.
pub(crate) fn forget_vectl_files(
    layer: &Path,
    lower: &Path,
    hostname: &str,
    dry_run: bool,
) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    let Some(etc) = Etc::open(layer)? else {
        return Ok(out);
    };
    let lower_etc = Etc::open(lower)?;
    let lower_file = |name: &str| match lower_etc.as_ref().map(|e| e.entry(name, HOSTS_MAX)) {
        Some(Entry::File(t)) => t,
        _ => String::new(),
    };
    let own_name = format!("{hostname}\n");
    if matches!(etc.entry("hostname", own_name.len() as u64), Entry::File(t) if t == own_name) {
        out.push("/etc/hostname");
        if !dry_run {
            etc.remove("hostname")?;
        }
    }
    if let Entry::File(text) = etc.entry("hosts", HOSTS_MAX) {
        let own: String = text
            .lines()
            .filter(|l| !l.ends_with("# vectl"))
            .map(|l| format!("{l}\n"))
            .collect();
        if own == lower_file("hosts") {
            out.push("/etc/hosts");
            if !dry_run {
                etc.remove("hosts")?;
            }
        } else if own != text && !dry_run {
            etc.put("hosts", &own)?;
        }
    }
    // vectl's resolv.conf: a comment and a few name servers.
    if matches!(etc.entry("resolv.conf", 64 << 10), Entry::File(t) if t.starts_with("# written by vectl"))
    {
        out.push("/etc/resolv.conf");
        if !dry_run {
            etc.remove("resolv.conf")?;
        }
    }
    Ok(out)
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
        }
    }

    fn nic() -> Nic {
        Nic {
            net: "n".into(),
            ip: Ipv4Addr::new(10, 0, 3, 2),
            mac: model::Mac([2, 0, 0, 0, 0, 1]),
        }
    }

    #[test]
    fn net_files_keep_the_ves_lines_and_follow_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower, outside) = (
            tmp.path().join("upper"),
            tmp.path().join("lower"),
            tmp.path().join("outside"),
        );
        for d in [&upper, &lower.join("etc"), &outside] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(
            lower.join("etc/hosts"),
            "127.0.0.1 localhost\n10.9.9.9 db\n",
        )
        .unwrap();
        write_net_files(&upper, &lower, "web.example.com", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n10.9.9.9 db\n10.0.3.2\tweb.example.com web # vectl\n"
        );
        assert!(
            fs::read_to_string(upper.join("etc/resolv.conf"))
                .unwrap()
                .contains("nameserver 192.0.2.53")
        );
        // A symlinked file is neither read nor written through: it is replaced.
        fs::write(outside.join("secret"), "secret\n").unwrap();
        fs::remove_file(upper.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), upper.join("etc/hosts")).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret\n"
        );
        let hosts = fs::read_to_string(upper.join("etc/hosts")).unwrap();
        assert!(
            !hosts.contains("secret") && hosts.contains("10.0.3.2\tweb # vectl"),
            "{hosts}"
        );
        // No /etc/hostname in the tree: none is made.
        assert!(!upper.join("etc/hostname").exists());
        // An /etc that is a symlink is left alone.
        fs::remove_dir_all(upper.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("etc")).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        assert!(!outside.join("hosts").exists() && !outside.join("resolv.conf").exists());
    }

    #[test]
    fn fifos_and_huge_files_in_a_layer_neither_hang_nor_get_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        for d in [&upper.join("etc"), &lower.join("etc")] {
            fs::create_dir_all(d).unwrap();
        }
        let fifo = |p: &Path| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        };
        // FIFOs where the files are, in the VE's layer and in the template: the
        // template's is not read, the layer's are replaced by regular files.
        fifo(&upper.join("etc/hosts"));
        fifo(&upper.join("etc/hostname"));
        fifo(&upper.join("etc/resolv.conf"));
        fifo(&lower.join("etc/hosts"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (u, l) = (upper.clone(), lower.clone());
        std::thread::spawn(move || {
            let _ = tx.send(
                write_net_files(&u, &l, "web", &[nic()], &[net()]).map_err(|e| e.to_string()),
            );
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("write_net_files hung on a FIFO");
        r.unwrap();
        for f in ["hosts", "resolv.conf"] {
            assert!(
                fs::symlink_metadata(upper.join("etc").join(f))
                    .unwrap()
                    .is_file(),
                "{f}"
            );
        }
        // /etc/hostname is written only where the tree has a regular one.
        assert!(
            !fs::symlink_metadata(upper.join("etc/hostname"))
                .unwrap()
                .is_file()
        );
        assert_eq!(
            fs::read_to_string(upper.join("etc/hosts")).unwrap(),
            "127.0.0.1\tlocalhost # vectl\n10.0.3.2\tweb # vectl\n"
        );
        // A huge sparse /etc/hosts is not read: one error naming the file, and
        // the file as it was.
        let huge = upper.join("etc/hosts");
        fs::remove_file(&huge).unwrap();
        let f = fs::File::create(&huge).unwrap();
        f.set_len(64 << 30).unwrap();
        let e = write_net_files(&upper, &lower, "web", &[nic()], &[net()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&huge.display().to_string()) && e.contains("larger than 8 MiB"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(fs::metadata(&huge).unwrap().len(), 64 << 30);
        // Just under the cap: read, and the VE's lines kept.
        let mut text = "10.9.9.9 db\n".to_string();
        text.push_str(&"#\n".repeat(((HOSTS_MAX as usize) - text.len() - 40) / 2));
        fs::write(&huge, &text).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        let now = fs::read_to_string(&huge).unwrap();
        assert!(now.starts_with("10.9.9.9 db\n") && now.ends_with("10.0.3.2\tweb # vectl\n"));
        // A build or upgrade leaves a huge file alone, FIFOs too.
        fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
        fs::remove_file(upper.join("etc/resolv.conf")).unwrap();
        fifo(&upper.join("etc/resolv.conf"));
        assert!(
            forget_vectl_files(&upper, &lower, "web", false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(fs::metadata(&huge).unwrap().len(), 64 << 30);
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
    fn the_hostname_file_gets_the_ves_name_with_or_without_nics() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        for d in [&upper, &lower.join("etc")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(lower.join("etc/hostname"), "localhost\n").unwrap();
        write_net_files(&upper, &lower, "web1", &[], &[]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hostname")).unwrap(),
            "web1\n"
        );
        assert!(!upper.join("etc/hosts").exists());
        // A clone's new name replaces the old one.
        write_net_files(&upper, &lower, "web2", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hostname")).unwrap(),
            "web2\n"
        );
    }
}
