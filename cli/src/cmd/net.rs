//! `vectl net ...`: virtual networks.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ve_runtime::{Mode, NetCreate, NetUpdate, Rate, Subnet};

use super::Ctx;
use crate::parse::{self, Checked};
use crate::view::HostAccess;

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Create a network.
    Create(NetCreateArgs),
    /// List networks.
    List,
    /// Show a network and the VEs on it.
    Show {
        #[arg(value_name = "NET")]
        net: String,
    },
    /// Remove a network (refused while a VE has a NIC on it).
    Rm {
        #[arg(value_name = "NET")]
        net: String,
    },
    /// Change a network's settings (the firewall follows at once, running VEs
    /// included).
    Set(NetSetArgs),
}

#[derive(Debug, Args)]
pub struct NetSetArgs {
    #[arg(value_name = "NET")]
    net: String,
    /// The services on the host's own addresses the VEs may reach besides ping,
    /// replacing the list: tcp:22,udp:53,tcp:8000-8100, all, or none.
    #[arg(long, value_name = "PROTO:PORT,...", value_parser = parse::with(HostAccess::parse_list))]
    allow_host: Option<Checked<Vec<HostAccess>>>,
}

#[derive(Debug, Args)]
pub struct NetCreateArgs {
    /// Network name.
    name: String,
    /// bridged (VEs on the LAN through --uplink), host-only (VEs and the host),
    /// nat (host-only plus masquerade and published ports), routed (each VE's
    /// address routed to it, the host answering ARP on --uplink).
    #[arg(long, value_parser = parse::text::<Mode>)]
    mode: Checked<Mode>,
    /// IPv4 subnet of the VEs' addresses (default for nat and host-only: a free
    /// 10.x.y.0/20).
    #[arg(long, value_name = "CIDR", value_parser = parse::text::<Subnet>)]
    subnet: Option<Checked<Subnet>>,
    /// The VEs' default gateway (nat and host-only: the host's address on the
    /// bridge, default the subnet's first address; bridged: the LAN's router).
    #[arg(long, value_name = "IP")]
    gateway: Option<String>,
    /// Host interface to the LAN (bridged: an interface without addresses, or a
    /// bridge such as br0; routed: where the host answers ARP for the VEs).
    #[arg(long, value_name = "IFACE")]
    uplink: Option<String>,
    /// Make the uplink an 802.1Q VLAN of --uplink with this id.
    #[arg(long, value_name = "ID")]
    vlan: Option<u16>,
    /// Name servers for the VEs' /etc/resolv.conf (default for nat: the host's).
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    dns: Option<Vec<String>>,
    /// Total bandwidth, shared by the VEs' --net-guarantee (100mbit, 1gbit).
    #[arg(long, value_name = "RATE", value_parser = parse::text::<Rate>)]
    bandwidth: Option<Checked<Rate>>,
    /// Services on the host's own addresses the VEs may reach besides ping
    /// (default none): tcp:22,udp:53,tcp:8000-8100, or all.
    #[arg(long, value_name = "PROTO:PORT,...", value_parser = parse::with(HostAccess::parse_list))]
    allow_host: Option<Checked<Vec<HostAccess>>>,
}

/// `vectl net ...`.
pub fn run(ctx: &Ctx, cmd: NetCommand) -> Result<ExitCode> {
    let out = &ctx.out;
    match cmd {
        NetCommand::Create(a) => {
            let c = format!("network {}: ", a.name);
            let bad = |flag: &str, e: String| parse::usage(format!("{c}--{flag}: {e}"));
            let mode = a.mode.get(&c, "mode")?;
            let subnet = parse::opt(&a.subnet, &c, "subnet")?;
            let ip = |flag: &str, s: &str| {
                s.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad(flag, format!("{s:?} is not an IPv4 address")))
            };
            let gateway = a.gateway.as_deref().map(|g| ip("gateway", g)).transpose()?;
            let dns = a
                .dns
                .as_ref()
                .map(|l| l.iter().map(|d| ip("dns", d)).collect::<Result<Vec<_>>>())
                .transpose()?;
            let bandwidth = parse::opt(&a.bandwidth, &c, "bandwidth")?;
            let allow_host = parse::opt(&a.allow_host, &c, "allow-host")?;
            let net = ctx.open()?.nets().create_with(
                &NetCreate {
                    name: a.name.clone(),
                    mode,
                    subnet,
                    gateway,
                    uplink: a.uplink.clone(),
                    vlan: a.vlan,
                    dns,
                    bandwidth,
                },
                &NetUpdate { allow_host },
            )?;
            out.net_created(&net);
        }
        NetCommand::Set(a) => {
            let allow_host =
                parse::opt(&a.allow_host, &format!("network {}: ", a.net), "allow-host")?;
            if allow_host.is_none() {
                return Err(parse::usage(format!(
                    "network {}: nothing to change (give --allow-host)",
                    a.net
                )));
            }
            let net = ctx
                .open()?
                .nets()
                .update(&a.net, &NetUpdate { allow_host })?;
            out.net_updated(&net);
        }
        NetCommand::List => {
            let host = ctx.open()?;
            let nets = host
                .nets()
                .list()?
                .iter()
                .map(|n| host.nets().show(&n.name))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.nets(&nets);
        }
        NetCommand::Show { net } => out.net_show(&ctx.open()?.nets().show(&net)?),
        NetCommand::Rm { net } => {
            ctx.open()?.nets().remove(&net)?;
            out.done(&format!("network {net}: removed"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
