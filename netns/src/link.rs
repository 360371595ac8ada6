//! The kernel side of networks and VE NICs over netlink: bridges, VLAN links,
//! veth pairs, addresses, routes, proxy-ARP entries, and traffic shaping (see
//! [`crate::tc`]). Host-side work runs in the caller's network namespace; work in a
//! VE's namespace runs on a thread that joined it (see [`crate::in_netns`]).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::rule::RuleAction;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan, RouteMessageBuilder,
};

use crate::model::{Mode, NetConfig, ROUTED_GATEWAY};
use crate::tc::{self, ClassRate};
use crate::{Error, Result};

/// Traffic shaping of one NIC on its network's shared HTB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub minor: u16,
    pub rate: ClassRate,
}

/// One VE NIC to wire at start.
#[derive(Debug, Clone)]
pub struct Attach {
    pub net: NetConfig,
    /// The two names the host side of the veth pair may take
    /// ([`crate::model::Names::ports`]).
    pub ports: [String; 2],
    /// Name inside the VE (`eth0`).
    pub ifname: String,
    pub mac: crate::model::Mac,
    pub ip: Ipv4Addr,
    pub shape: Option<Shape>,
}

fn err(link: &str, e: impl std::fmt::Display) -> Error {
    Error::Link {
        link: link.to_string(),
        reason: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// The process's netlink runtime: one current-thread tokio runtime, built at the
/// first netlink call and kept. It starts no thread (vectl stays single-threaded
/// for clone3); a thread that calls [`on_host`] drives it for the time of the call.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Runtime)?;
    // Another thread may have set it meanwhile: then this one is dropped.
    let _ = RUNTIME.set(rt);
    RUNTIME
        .get()
        .ok_or_else(|| Error::Runtime(std::io::Error::other("not kept")))
}

/// Runs `work` with a netlink handle in the calling thread's network namespace,
/// on the process's runtime. The connection is opened for the call (a socket
/// belongs to the namespace of the thread that opens it) and closed before
/// this returns.
pub fn on_host<F, Fut, T>(work: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    runtime()?.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        let conn = tokio::spawn(conn);
        let result = work(handle).await;
        conn.abort();
        // The task ends here, so its socket is closed now and not at the next call.
        let _ = conn.await;
        result
    })
}

/// The link called `name`, if it exists.
pub async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(err(name, e)),
    }
}

async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    find_link(h, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| err(name, "no such interface"))
}

fn kind_of(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// What a host interface is, for `net create` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkInfo {
    pub is_bridge: bool,
    /// It is a port of a bridge (or bond).
    pub has_master: bool,
    pub ipv4: Vec<Ipv4Addr>,
}

/// Looks up a host interface; `None` if it does not exist.
pub async fn uplink_info(h: &Handle, name: &str) -> Result<Option<UplinkInfo>> {
    let Some(l) = find_link(h, name).await? else {
        return Ok(None);
    };
    let is_bridge = kind_of(&l) == Some(&InfoKind::Bridge);
    let has_master = l
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Controller(_)));
    let ipv4 = ipv4_of(h, l.header.index).await?;
    Ok(Some(UplinkInfo {
        is_bridge,
        has_master,
        ipv4,
    }))
}

async fn ipv4_of(h: &Handle, index: u32) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| err("addresses", e))? {
        for attr in a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                out.push(v4);
            }
        }
    }
    Ok(out)
}

/// Every IPv4 address of the host.
pub async fn host_addresses(h: &Handle) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| err("addresses", e))? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                out.push(*v4);
            }
        }
    }
    Ok(out)
}

/// Every IPv4 address and route destination of the host, to keep a new subnet
/// clear of them: (address, prefix).
pub async fn host_subnets(h: &Handle) -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(|e| err("addresses", e))? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                out.push((*v4, a.header.prefix_len));
            }
        }
    }
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await.map_err(|e| err("routes", e))? {
        if r.header.destination_prefix_length == 0 {
            continue;
        }
        for attr in &r.attributes {
            if let netlink_packet_route::route::RouteAttribute::Destination(
                netlink_packet_route::route::RouteAddress::Inet(v4),
            ) = attr
            {
                out.push((*v4, r.header.destination_prefix_length));
            }
        }
    }
    Ok(out)
}

/// Writes a sysctl of the calling thread's network namespace.
fn sysctl(path: &str, value: &str) -> Result<()> {
    let full = format!("/proc/sys/net/{path}");
    match std::fs::read_to_string(&full) {
        Ok(v) if v.trim() == value => return Ok(()),
        _ => {}
    }
    std::fs::write(&full, value).map_err(|e| err(&full, e))
}

/// The MAC of a network's own bridge: fixed, so the VEs' ARP caches stay right
/// while ports come and go (a bridge otherwise takes its lowest port's MAC).
fn bridge_mac(id: u32) -> Vec<u8> {
    let b = id.to_be_bytes();
    vec![0x02, 0xfe, 0x00, b[1], b[2], b[3]]
}

/// The MAC address of link `index`.
async fn mac_of(h: &Handle, index: u32) -> Result<Option<Vec<u8>>> {
    let mut links = h.link().get().match_index(index).execute();
    let l = links.try_next().await.map_err(|e| err("uplink", e))?;
    Ok(l.and_then(|l| {
        l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m),
            _ => None,
        })
    }))
}

/// Makes sure the network's host side exists: its bridge (with the host address
/// for host-only and nat), its VLAN link, the uplink in the bridge (bridged),
/// forwarding (nat, routed), and the shaper when it has a bandwidth. Idempotent.
pub async fn net_up(h: &Handle, net: &NetConfig) -> Result<()> {
    let uplink_is_bridge = is_operator_bridge(h, net).await?;
    let uplink = match &net.uplink {
        Some(u) => Some(index_of(h, u).await?),
        None => None,
    };
    let mut upstream = uplink;
    if let (Some(vid), Some(parent)) = (net.vlan, uplink) {
        let name = net.vlan_name();
        // The tagged frames leave through the parent: it must be up.
        h.link()
            .set(LinkUnspec::new_with_index(parent).up().build())
            .execute()
            .await
            .map_err(|e| err(net.uplink.as_deref().unwrap_or("uplink"), e))?;
        let idx = match find_link(h, &name).await? {
            Some(l) => l.header.index,
            None => {
                h.link()
                    .add(LinkVlan::new(&name, parent, vid).up().build())
                    .execute()
                    .await
                    .map_err(|e| err(&name, format!("cannot make VLAN {vid}: {e}")))?;
                index_of(h, &name).await?
            }
        };
        upstream = Some(idx);
    }
    // With the operator's own bridge as uplink, the VEs join it: nothing to make.
    if let Some(br) = net.bridge(uplink_is_bridge).filter(|_| !uplink_is_bridge) {
        // A bridge on the LAN shows its uplink's MAC there (as bridges usually
        // do); a host-only or nat one gets a fixed MAC of its own.
        let mac = match upstream {
            Some(up) if net.mode == Mode::Bridged => mac_of(h, up).await?,
            _ => None,
        }
        .unwrap_or_else(|| bridge_mac(net.id));
        let idx = match find_link(h, &br).await? {
            Some(l) => l.header.index,
            None => {
                h.link()
                    .add(LinkBridge::new(&br).address(mac).up().build())
                    .execute()
                    .await
                    .map_err(|e| err(&br, e))?;
                index_of(h, &br).await?
            }
        };
        if let Some(addr) = net.host_address()
            && !ipv4_of(h, idx).await?.contains(&addr)
        {
            h.address()
                .add(idx, IpAddr::V4(addr), net.subnet.prefix)
                .execute()
                .await
                .map_err(|e| err(&br, e))?;
        }
        if net.mode == Mode::Bridged
            && let Some(up) = upstream
        {
            h.link()
                .set(LinkUnspec::new_with_index(up).controller(idx).up().build())
                .execute()
                .await
                .map_err(|e| err(&br, format!("cannot add the uplink: {e}")))?;
        }
        if net.mode == Mode::Nat {
            // Published ports answer on 127.0.0.1 too. This would also deliver
            // what a VE sends to 127.0.0.0/8 through its gateway to the host's
            // loopback: the firewall drops that before routing (nft.rs).
            sysctl(&format!("ipv4/conf/{br}/route_localnet"), "1")?;
        }
    }
    if matches!(net.mode, Mode::Nat | Mode::Routed) {
        sysctl("ipv4/ip_forward", "1")?;
    }
    // The shaper is made with the network (under the host lock), so starts that
    // shape ports only add classes to it.
    let (up, down) = net.ifb_names();
    tc::ensure_shaper(h, &up, &down, net.total_bps()).await?;
    Ok(())
}

/// Removes what [`net_up`] made: the bridge (releasing the uplink, and taking
/// the VEs' ports with it), the VLAN link and the shaper. Missing pieces are fine.
pub async fn net_down(h: &Handle, net: &NetConfig) -> Result<()> {
    for name in [net.bridge_name(), net.vlan_name()] {
        delete_link(h, &name).await?;
    }
    let (up, down) = net.ifb_names();
    if find_link(h, &up).await?.is_some() || find_link(h, &down).await?.is_some() {
        tc::remove_shaper(h, &up, &down).await?;
    }
    Ok(())
}

/// Deletes a link by name if it exists (deleting one end of a veth pair deletes
/// both).
pub async fn delete_link(h: &Handle, name: &str) -> Result<()> {
    if let Some(l) = find_link(h, name).await? {
        match h.link().del(l.header.index).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODEV) => {}
            Err(e) => return Err(err(name, e)),
        }
    }
    Ok(())
}

/// Wires a VE's NICs: for each, a veth pair whose VE end is made directly in the
/// VE's namespace `ve_ns` with its name and MAC; the host end joins the bridge (or,
/// routed, gets the next-hop address, a /32 route to the VE and a proxy-ARP entry
/// on the uplink); then, inside the VE, the address, link and routes.
/// Returns the name each port got.
pub fn attach(ve_ns: BorrowedFd<'_>, nics: &[Attach]) -> Result<Vec<String>> {
    if nics.is_empty() {
        return Ok(Vec::new());
    }
    let ports = on_host(|h| async move {
        let mut ports = Vec::new();
        for n in nics {
            ports.push(attach_host(&h, ve_ns, n).await?);
        }
        Ok(ports)
    })?;
    let owned: OwnedFd = ve_ns
        .try_clone_to_owned()
        .map_err(|e| Error::Thread(e.to_string()))?;
    let nics = nics.to_vec();
    crate::in_netns(owned, move |h| async move {
        let lo = index_of(&h, "lo").await?;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(|e| err("lo", e))?;
        for n in &nics {
            attach_ve(&h, n).await?;
        }
        // The main table's default route is the first gateway NIC's. Every
        // further NIC with a gateway gets a table of its own, for what is sent
        // from its address: replies to connections that came in through it (a
        // port the host publishes to a nat eth1 beside a bridged eth0) leave
        // the way they came, not by eth0's default route.
        let gatewayed: Vec<&Attach> = nics
            .iter()
            .filter(|n| n.net.ve_gateway().is_some())
            .collect();
        for (i, n) in gatewayed.iter().enumerate().skip(1) {
            let slot = u32::try_from(i).unwrap_or(u32::MAX - SOURCE_TABLES);
            source_route(&h, n, SOURCE_TABLES + slot).await?;
        }
        Ok(())
    })?;
    Ok(ports)
}

/// Routing tables (and rule priorities) vectl gives a VE's further NICs with a
/// gateway: this plus the NIC's rank among them.
const SOURCE_TABLES: u32 = 100;

/// Routes what NIC `n` sends from its address through its own gateway (table
/// and rule priority `table`): its subnet directly, the rest via the gateway.
async fn source_route(h: &Handle, n: &Attach, table: u32) -> Result<()> {
    let Some(gw) = n.net.ve_gateway() else {
        return Ok(());
    };
    let idx = index_of(h, &n.ifname).await?;
    let link_route = |dest: Ipv4Addr, prefix: u8| {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(idx)
            .scope(RouteScope::Link)
            .table_id(table)
            .build()
    };
    let mut routes = vec![if n.net.mode == Mode::Routed {
        link_route(ROUTED_GATEWAY, 32)
    } else {
        link_route(n.net.subnet.addr, n.net.subnet.prefix)
    }];
    routes.push(
        RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(idx)
            .table_id(table)
            .build(),
    );
    for r in routes {
        h.route()
            .add(r)
            .execute()
            .await
            .map_err(|e| err(&n.ifname, format!("routes of table {table}: {e}")))?;
    }
    h.rule()
        .add()
        .v4()
        .source_prefix(n.ip, 32)
        .table_id(table)
        .action(RuleAction::ToTable)
        .priority(table)
        .execute()
        .await
        .map_err(|e| err(&n.ifname, format!("rule from {} lookup {table}: {e}", n.ip)))
}

/// Makes the veth pair `name` (host) / `n.ifname` (in the VE's namespace).
async fn add_veth(
    h: &Handle,
    ve_ns: BorrowedFd<'_>,
    n: &Attach,
    name: &str,
) -> std::result::Result<(), rtnetlink::Error> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(n.ifname.clone())
        .address(n.mac.0.to_vec())
        .setns_by_fd(ve_ns.as_raw_fd())
        .build();
    let mut msg = LinkVeth::new(name, &n.ifname).build();
    for attr in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for i in infos.iter_mut() {
                if let LinkInfo::Data(d) = i {
                    *d = InfoData::Veth(InfoVeth::Peer(peer.clone()));
                }
            }
        }
    }
    h.link().add(msg).execute().await
}

async fn attach_host(h: &Handle, ve_ns: BorrowedFd<'_>, n: &Attach) -> Result<String> {
    // A name may still be held by the port of the VE's previous run, which the
    // kernel removes with that run's namespace: the other slot is free then.
    let mut chosen = None;
    for name in &n.ports {
        match add_veth(h, ve_ns, n, name).await {
            Ok(()) => {
                chosen = Some(name.clone());
                break;
            }
            Err(e) if is_errno(&e, libc::EEXIST) => continue,
            Err(e) => return Err(err(name, e)),
        }
    }
    let name = match chosen {
        Some(c) => c,
        None => {
            // Both held (two restarts in a row): wait the first one out.
            let first = n.ports[0].clone();
            delete_link(h, &first).await?;
            add_veth(h, ve_ns, n, &first)
                .await
                .map_err(|e| err(&first, e))?;
            first
        }
    };
    wire_port(h, &name, n).await?;
    Ok(name)
}

/// Wires host ports made by someone else (CRIU restoring a VE's veth pairs,
/// `vectl migrate --live`): `ports[i]` for `nics[i]`, as [`attach`] wires the
/// ones it makes (bridge or routes, proxy ARP, shaping).
pub fn wire(nics: &[Attach], ports: &[String]) -> Result<()> {
    on_host(|h| async move {
        for (n, port) in nics.iter().zip(ports) {
            wire_port(&h, port, n).await?;
        }
        Ok(())
    })
}

/// The host side of NIC `n` whose port `name` exists: on its bridge (or
/// routed to), up, shaped.
async fn wire_port(h: &Handle, name: &str, n: &Attach) -> Result<()> {
    let name = name.to_string();
    let port = index_of(h, &name).await?;
    match n.net.mode {
        Mode::Routed => {
            h.link()
                .set(LinkUnspec::new_with_index(port).up().build())
                .execute()
                .await
                .map_err(|e| err(&name, e))?;
            h.address()
                .add(port, IpAddr::V4(ROUTED_GATEWAY), 32)
                .execute()
                .await
                .map_err(|e| err(&name, e))?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(n.ip, 32)
                        .output_interface(port)
                        .scope(RouteScope::Link)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(|e| err(&name, format!("route to {}: {e}", n.ip)))?;
            if let Some(up) = n.net.effective_uplink() {
                let upi = index_of(h, &up).await?;
                h.neighbours()
                    .add(upi, IpAddr::V4(n.ip))
                    .flags(NeighbourFlags::Proxy)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| err(&up, format!("proxy ARP for {}: {e}", n.ip)))?;
            }
        }
        _ => {
            let br = n
                .net
                .bridge(is_operator_bridge(h, &n.net).await?)
                .unwrap_or_else(|| n.net.bridge_name());
            let bri = index_of(h, &br)
                .await
                .map_err(|_| err(&br, format!("network {}'s bridge is missing", n.net.name)))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(port)
                        .controller(bri)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| err(&name, e))?;
        }
    }
    if let Some(s) = &n.shape {
        let (up, down) = n.net.ifb_names();
        tc::shape_port(h, &name, n.ip, &up, &down, s.minor, s.rate).await?;
    }
    Ok(())
}

/// Whether a bridged network uses the operator's bridge as is.
async fn is_operator_bridge(h: &Handle, net: &NetConfig) -> Result<bool> {
    if net.mode != Mode::Bridged || net.vlan.is_some() {
        return Ok(false);
    }
    match &net.uplink {
        Some(u) => Ok(find_link(h, u)
            .await?
            .is_some_and(|l| kind_of(&l) == Some(&InfoKind::Bridge))),
        None => Ok(false),
    }
}

async fn attach_ve(h: &Handle, n: &Attach) -> Result<()> {
    let idx = index_of(h, &n.ifname).await?;
    h.address()
        .add(idx, IpAddr::V4(n.ip), n.net.ve_prefix())
        .execute()
        .await
        .map_err(|e| err(&n.ifname, e))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| err(&n.ifname, e))?;
    if n.net.mode == Mode::Routed {
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(ROUTED_GATEWAY, 32)
                    .output_interface(idx)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(&n.ifname, e))?;
    }
    if let Some(gw) = n.net.ve_gateway() {
        let added = h
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(idx)
                    .build(),
            )
            .execute()
            .await;
        match added {
            Ok(()) => {}
            // A second NIC with a gateway: the first one's default route stays.
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(err(&n.ifname, format!("default route via {gw}: {e}"))),
        }
    }
    Ok(())
}

/// One NIC to take down at stop (its port may already be gone).
#[derive(Debug, Clone)]
pub struct Detach {
    pub net: NetConfig,
    pub port: String,
    pub ip: Ipv4Addr,
    pub minor: Option<u16>,
}

/// Removes what [`attach`] made on the host for NICs of a VE that stopped: the
/// proxy-ARP entry and the traffic classes. Idempotent. The port itself goes
/// with the VE's network namespace, which the kernel tears down a moment after
/// the VE's last process: deleting it here would cost a stop one RCU grace
/// period (~15 ms) per NIC, and a start that finds it still there deletes it.
pub fn detach(nics: &[Detach]) -> Result<()> {
    if nics
        .iter()
        .all(|n| n.net.mode != Mode::Routed && n.minor.is_none())
    {
        return Ok(());
    }
    on_host(|h| async move {
        for n in nics {
            if n.net.mode == Mode::Routed {
                // The VE's /32 (it would go with the port, a moment later).
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(n.ip, 32)
                    .scope(RouteScope::Link)
                    .build();
                match h.route().del(route).execute().await {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => {}
                    Err(e) => return Err(err(&n.port, format!("route to {}: {e}", n.ip))),
                }
            }
            if n.net.mode == Mode::Routed
                && let Some(up) = n.net.effective_uplink()
                && let Some(l) = find_link(&h, &up).await?
            {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.ifindex = l.header.index;
                msg.header.flags = NeighbourFlags::Proxy;
                msg.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        n.ip,
                    )));
                match h.neighbours().del(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ENOENT) => {}
                    Err(e) => return Err(err(&up, format!("proxy ARP for {}: {e}", n.ip))),
                }
            }
            if let Some(minor) = n.minor {
                let (up, down) = n.net.ifb_names();
                if find_link(&h, &up).await?.is_some() {
                    tc::unshape_port(&h, None, n.ip, &up, &down, minor).await?;
                }
            }
        }
        Ok(())
    })
}

/// Changes a running NIC's traffic class (live `set`).
pub fn reshape(
    net: &NetConfig,
    port: &str,
    ip: Ipv4Addr,
    shape: Option<&Shape>,
    old_minor: Option<u16>,
) -> Result<()> {
    let net = net.clone();
    let port = port.to_string();
    let shape = shape.cloned();
    on_host(|h| async move {
        let (up, down) = net.ifb_names();
        match (&shape, old_minor) {
            (Some(s), _) => {
                tc::shape_port(&h, &port, ip, &up, &down, s.minor, s.rate).await?;
            }
            (None, Some(m)) => {
                tc::unshape_port(&h, Some(&port), ip, &up, &down, m).await?;
            }
            (None, None) => {}
        }
        Ok(())
    })
}
