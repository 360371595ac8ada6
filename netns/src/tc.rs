//! Bandwidth sharing between the VEs of one network, configured over rtnetlink.
//!
//! A network owns two IFB devices. `ifb_up` carries what the VEs send (the ingress of
//! their host-side veth ports), `ifb_down` what they receive (the egress of the ports).
//! Each IFB has an HTB root qdisc `1:` whose class `1:1` holds the network's total
//! bandwidth; every VE has a class `1:MINOR` below it on both IFBs, rate = guarantee,
//! ceil = limit. HTB has no default class, so traffic no filter claims (ARP, IPv6,
//! addresses of no VE) passes through the IFB unshaped.
//!
//! Classification (this kernel has neither `skbedit` nor `matchall`):
//! - on the port, a `clsact` qdisc with one u32 match-all filter per direction whose
//!   only action is `mirred egress redirect` to the IFB;
//! - on each IFB, one u32 filter set at prio 1: a 256-bucket hash table `2:` reached
//!   from the root table by the last byte of the VE address (source on `ifb_up`,
//!   destination on `ifb_down`), and in that bucket one node per VE matching the
//!   whole address with `flowid 1:MINOR`. Nodes are found again by their class id.
//!
//! The typed netlink-packet-route API covers u32 and mirred; HTB options travel as
//! raw attributes (`TCA_HTB_*`) inside `TCA_OPTIONS`.
//!
//! What follows from this design: only IPv4 traffic of a VE's own address is shaped
//! (IPv6 and spoofed sources pass through unshaped); VE classes keep the kernel's default
//! leaf pfifo, whose limit is the IFB's txqueuelen (32 packets); rates are kept in bytes
//! per second, so a rate reads back rounded down to a multiple of 8 bit/s. Class names in
//! errors use tc's hex minors (`1:10` is minor 16).

use std::net::Ipv4Addr;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcHeader, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use nix::errno::Errno;
use rtnetlink::{Handle, LinkIfb, LinkUnspec};

/// A class's rates in bits per second: `rate` guaranteed, `ceil` the cap (ceil >= rate > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRate {
    pub rate: u64,
    pub ceil: u64,
}

/// tc errors; Display = "tc {what}: {reason}", one line.
#[derive(Debug, thiserror::Error)]
#[error("tc {what}: {reason}")]
pub struct TcError {
    pub what: String,
    pub reason: String,
}

/// Major number of the HTB qdisc on both IFBs.
const HTB_MAJOR: u16 = 1;
/// Minor of the class holding the network's total.
const TOTAL_MINOR: u16 = 1;

// HTB attributes and fixed values (include/uapi/linux/pkt_sched.h).
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `struct tc_htb_glob.version` the kernel insists on (HTB_VER >> 16).
const HTB_VERSION: u32 = 3;
/// rate-to-quantum divisor; unused for our classes (they set quantum) but kept at tc's default.
const HTB_R2Q: u32 = 10;
/// Packets the direct (unclassified, unshaped) queue holds; an IFB's txqueuelen is only 32.
const HTB_DIRECT_QLEN: u32 = 1000;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `struct tc_htb_opt`: two 12-byte `tc_ratespec`, buffer, cbuffer, quantum, level, prio.
const HTB_OPT_LEN: usize = 44;
/// Bytes a class may send at once beyond ~1 ms at its rate (tc's own default burst).
const BURST_SLACK: u64 = 1600;
/// Quantum bounds (bytes) the kernel would otherwise warn about.
const QUANTUM_MIN: u64 = 1600;
const QUANTUM_MAX: u64 = 200_000;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
/// Preference of our filters on the IFBs and on the ports.
const FILTER_PRIO: u16 = 1;
/// The u32 hash table `2:` on each IFB holding the per-VE nodes.
const HASH_TABLE: u32 = 0x0020_0000;
const HASH_BUCKETS: u32 = 256;
/// Handle of the port's `clsact` qdisc (ffff:) and its parent (ffff:fff1).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// Which way traffic flows through an IFB.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// From the VEs: classified by IPv4 source.
    Up,
    /// To the VEs: classified by IPv4 destination.
    Down,
}

impl Direction {
    /// Offset of the VE's address in the IPv4 header.
    fn ip_offset(self) -> u16 {
        match self {
            Direction::Up => 12,
            Direction::Down => 16,
        }
    }
}

/// What a netlink request ended with, before it is given a name.
enum Fail {
    /// The kernel answered with this errno.
    Kernel(Errno),
    /// The request could not be made or answered with nonsense.
    Other(String),
}

impl Fail {
    fn is(&self, errno: Errno) -> bool {
        matches!(self, Fail::Kernel(e) if *e == errno)
    }

    fn named(self, what: impl Into<String>) -> TcError {
        let reason = match self {
            Fail::Kernel(e) => format!("kernel refused: {} ({e:?})", e.desc()),
            Fail::Other(s) => s,
        };
        TcError {
            what: what.into(),
            reason,
        }
    }
}

impl From<rtnetlink::Error> for Fail {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(m) => Fail::Kernel(Errno::from_raw(m.raw_code().abs())),
            other => Fail::Other(other.to_string()),
        }
    }
}

fn err(what: impl Into<String>, reason: impl Into<String>) -> TcError {
    TcError {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Creates the network's IFB devices if missing, sets them up, and gives each an HTB root
/// qdisc (handle 1:, no default class: unclassified traffic passes unshaped) with class 1:1
/// rate = ceil = total. Idempotent; if they exist, class 1:1 is changed to `total`.
pub async fn ensure_shaper(
    h: &Handle,
    ifb_up: &str,
    ifb_down: &str,
    total: u64,
) -> Result<(), TcError> {
    let rate = ClassRate {
        rate: total,
        ceil: total,
    };
    for (dev, dir) in [(ifb_up, Direction::Up), (ifb_down, Direction::Down)] {
        check_rate(&class_name(TOTAL_MINOR, dev), rate)?;
        let index = ensure_ifb(h, dev).await?;
        ensure_htb_root(h, dev, index).await?;
        put_class(
            h,
            dev,
            index,
            TOTAL_MINOR,
            rate,
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await?;
        ensure_hash_table(h, dev, index, dir).await?;
    }
    Ok(())
}

/// Deletes the network's IFB devices (missing ones are fine).
///
/// Unshape the ports first: a port still redirecting to a deleted IFB loses its traffic
/// (mirred drops what it can no longer deliver). A device of that name that is not an IFB
/// is left alone and reported.
pub async fn remove_shaper(h: &Handle, ifb_up: &str, ifb_down: &str) -> Result<(), TcError> {
    for dev in [ifb_up, ifb_down] {
        let Some(link) = find_link(h, dev).await? else {
            continue;
        };
        if !is_ifb(&link) {
            return Err(err(
                format!("link {dev}"),
                "is not an ifb device; not deleting it",
            ));
        }
        match h.link().del(link.header.index).execute().await {
            Ok(()) => {}
            Err(e) => {
                let f = Fail::from(e);
                if !f.is(Errno::ENODEV) {
                    return Err(f.named(format!("link {dev}")));
                }
            }
        }
    }
    Ok(())
}

/// Shapes one VE port: class 1:minor (parent 1:1) on both IFBs, created or changed to `rate`
/// (a leaf fq_codel or the default pfifo is fine), and on `port` a clsact qdisc with the
/// ingress->ifb_up and egress->ifb_down redirect filters. Idempotent (calling again replaces).
pub async fn shape_port(
    h: &Handle,
    port: &str,
    ip: Ipv4Addr,
    ifb_up: &str,
    ifb_down: &str,
    minor: u16,
    rate: ClassRate,
) -> Result<(), TcError> {
    for dev in [ifb_up, ifb_down] {
        check_minor(&class_name(minor, dev), minor)?;
        check_rate(&class_name(minor, dev), rate)?;
    }
    let up = shaper_index(h, ifb_up).await?;
    let down = shaper_index(h, ifb_down).await?;
    let port_index = match find_link(h, port).await? {
        Some(link) => tc_index(port, link.header.index)?,
        None => return Err(err(format!("port {port}"), "no such link")),
    };
    for (dev, index, dir) in [
        (ifb_up, up, Direction::Up),
        (ifb_down, down, Direction::Down),
    ] {
        put_class(h, dev, index, minor, rate, NLM_F_CREATE | NLM_F_REPLACE).await?;
        // Replacing the node leaves the VE unclassified (unshaped) for a moment.
        drop_ve_filters(h, dev, index, minor).await?;
        add_ve_filter(h, dev, index, dir, ip, minor).await?;
    }
    ensure_clsact(h, port, port_index).await?;
    put_redirect(h, port, port_index, TcHandle::MIN_INGRESS, ifb_up, up).await?;
    put_redirect(h, port, port_index, TcHandle::MIN_EGRESS, ifb_down, down).await?;
    Ok(())
}

/// Changes a shaped port's class rates live on both IFBs.
pub async fn set_class(
    h: &Handle,
    ifb_up: &str,
    ifb_down: &str,
    minor: u16,
    rate: ClassRate,
) -> Result<(), TcError> {
    for dev in [ifb_up, ifb_down] {
        check_minor(&class_name(minor, dev), minor)?;
        check_rate(&class_name(minor, dev), rate)?;
    }
    for dev in [ifb_up, ifb_down] {
        let index = shaper_index(h, dev).await?;
        put_class(h, dev, index, minor, rate, 0).await?;
    }
    Ok(())
}

/// Removes a port's shaping: its classes on both IFBs (and the u32 filters if you used them),
/// and the clsact qdisc on `port` if the port still exists. Missing pieces are not errors.
///
/// The IFB filters are found by their class `1:minor`, so `ip` is only used in messages.
pub async fn unshape_port(
    h: &Handle,
    port: Option<&str>,
    ip: Ipv4Addr,
    ifb_up: &str,
    ifb_down: &str,
    minor: u16,
) -> Result<(), TcError> {
    check_minor(&format!("class 1:{minor:x} of {ip}"), minor)?;
    if let Some(port) = port
        && let Some(link) = find_link(h, port).await?
    {
        let index = tc_index(port, link.header.index)?;
        remove_clsact(h, port, index).await?;
    }
    for dev in [ifb_up, ifb_down] {
        let Some(link) = find_link(h, dev).await? else {
            continue;
        };
        let index = tc_index(dev, link.header.index)?;
        drop_ve_filters(h, dev, index, minor).await?;
        let msg = tc_message(index, class_handle(minor), TcHandle::UNSPEC, 0, Vec::new());
        match request(h, RouteNetlinkMessage::DelTrafficClass(msg), NLM_F_ACK).await {
            Ok(_) => {}
            // ENOENT: no such class; EINVAL: no HTB qdisc at all.
            Err(f) if f.is(Errno::ENOENT) || f.is(Errno::EINVAL) => {}
            Err(f) => return Err(f.named(format!("class 1:{minor:x} of {ip} on {dev}"))),
        }
    }
    Ok(())
}

/// The classes' current rates on ifb_up, by minor (for `show` and tests).
///
/// Every HTB class under `1:` is listed, sorted by minor: 1 is the network's total,
/// the others are VE classes.
pub async fn classes(h: &Handle, ifb_up: &str) -> Result<Vec<(u16, ClassRate)>, TcError> {
    let index = shaper_index(h, ifb_up).await?;
    let msg = tc_message(index, TcHandle::UNSPEC, TcHandle::UNSPEC, 0, Vec::new());
    let replies = request(h, RouteNetlinkMessage::GetTrafficClass(msg), NLM_F_DUMP)
        .await
        .map_err(|f| f.named(format!("classes on {ifb_up}")))?;
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficClass(class) = reply else {
            continue;
        };
        if class.header.index != index || class.header.handle.major != HTB_MAJOR {
            continue;
        }
        let minor = class.header.handle.minor;
        if !has_kind(&class.attributes, "htb") {
            continue;
        }
        let rate = htb_class_rate(&class.attributes)
            .ok_or_else(|| err(class_name(minor, ifb_up), "dump carries no HTB parameters"))?;
        out.push((minor, rate));
    }
    out.sort_by_key(|(minor, _)| *minor);
    Ok(out)
}

fn class_name(minor: u16, dev: &str) -> String {
    format!("class 1:{minor:x} on {dev}")
}

fn check_minor(what: &str, minor: u16) -> Result<(), TcError> {
    if (2..=0xfffe).contains(&minor) {
        Ok(())
    } else {
        Err(err(what, format!("minor {minor} is outside 2..=65534")))
    }
}

fn check_rate(what: &str, rate: ClassRate) -> Result<(), TcError> {
    if rate.rate < 8 {
        return Err(err(
            what,
            format!("rate {} bit/s is below 8 bit/s (1 byte/s)", rate.rate),
        ));
    }
    if rate.ceil < rate.rate {
        return Err(err(
            what,
            format!("ceil {} bit/s is below rate {} bit/s", rate.ceil, rate.rate),
        ));
    }
    Ok(())
}

fn class_handle(minor: u16) -> TcHandle {
    TcHandle {
        major: HTB_MAJOR,
        minor,
    }
}

/// `tcm_info` of a filter: preference in the upper half, protocol (network order) below.
fn filter_info(protocol: u16) -> u32 {
    (u32::from(FILTER_PRIO) << 16) | u32::from(protocol.to_be())
}

fn tc_message(
    index: i32,
    handle: TcHandle,
    parent: TcHandle,
    info: u32,
    attributes: Vec<TcAttribute>,
) -> TcMessage {
    TcMessage::from_parts(
        TcHeader {
            index,
            handle,
            parent,
            info,
            ..TcHeader::default()
        },
        attributes,
    )
}

fn tc_index(dev: &str, index: u32) -> Result<i32, TcError> {
    i32::try_from(index).map_err(|_| {
        err(
            format!("link {dev}"),
            format!("ifindex {index} out of range"),
        )
    })
}

/// Sends one request and collects the messages it is answered with.
async fn request(
    h: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, Fail> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | flags;
    let mut handle = h.clone();
    let mut replies = handle.request(req).map_err(Fail::from)?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(Fail::Kernel(Errno::from_raw(e.raw_code().abs())));
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, TcError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) => {
            let f = Fail::from(e);
            if f.is(Errno::ENODEV) {
                Ok(None)
            } else {
                Err(f.named(format!("link {name}")))
            }
        }
    }
}

fn is_ifb(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Ifb))),
        _ => false,
    })
}

/// The index of an existing IFB of the shaper.
async fn shaper_index(h: &Handle, dev: &str) -> Result<i32, TcError> {
    match find_link(h, dev).await? {
        Some(link) => tc_index(dev, link.header.index),
        None => Err(err(
            format!("link {dev}"),
            "no such link (the network's shaper is not set up)",
        )),
    }
}

/// Creates the IFB `dev` unless it exists, sets it up and returns its index.
async fn ensure_ifb(h: &Handle, dev: &str) -> Result<i32, TcError> {
    let link = match find_link(h, dev).await? {
        Some(link) => link,
        None => {
            match h.link().add(LinkIfb::new(dev).up().build()).execute().await {
                Ok(()) => {}
                Err(e) => {
                    let f = Fail::from(e);
                    // Someone else created it meanwhile: fine, it is checked below.
                    if !f.is(Errno::EEXIST) {
                        return Err(f.named(format!("link {dev}")));
                    }
                }
            }
            find_link(h, dev)
                .await?
                .ok_or_else(|| err(format!("link {dev}"), "vanished right after creation"))?
        }
    };
    if !is_ifb(&link) {
        return Err(err(
            format!("link {dev}"),
            "exists and is not an ifb device",
        ));
    }
    h.link()
        .set(LinkUnspec::new_with_index(link.header.index).up().build())
        .execute()
        .await
        .map_err(|e| Fail::from(e).named(format!("link {dev}")))?;
    tc_index(dev, link.header.index)
}

/// The qdisc attached at `parent` (root or clsact/ingress) of link `index`, if one with a
/// handle is there. A single get is answered only with NLM_F_ECHO, and not at all for the
/// kernel's built-in placeholders (noop, noqueue): NLM_F_ACK makes every get end.
async fn qdisc_at(h: &Handle, index: i32, parent: TcHandle) -> Result<Option<TcMessage>, Fail> {
    let get = tc_message(index, TcHandle::UNSPEC, parent, 0, Vec::new());
    match request(
        h,
        RouteNetlinkMessage::GetQueueDiscipline(get),
        NLM_F_ECHO | NLM_F_ACK,
    )
    .await
    {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index => Some(q),
            _ => None,
        })),
        Err(f) if f.is(Errno::ENOENT) || f.is(Errno::EINVAL) => Ok(None),
        Err(f) => Err(f),
    }
}

fn has_kind(attributes: &[TcAttribute], kind: &str) -> bool {
    attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == kind))
}

/// Gives `dev` the HTB root qdisc 1: unless it already has it (HTB cannot be "changed").
async fn ensure_htb_root(h: &Handle, dev: &str, index: i32) -> Result<(), TcError> {
    let what = || format!("qdisc htb 1: on {dev}");
    let present = match qdisc_at(h, index, TcHandle::ROOT)
        .await
        .map_err(|f| f.named(what()))?
    {
        Some(q) => q.header.handle == class_handle(0) && has_kind(&q.attributes, "htb"),
        None => false,
    };
    if present {
        return Ok(());
    }
    let mut glob = Vec::with_capacity(20);
    for field in [HTB_VERSION, HTB_R2Q, 0, 0, 0] {
        // version, rate2quantum, defcls (none), debug, direct_pkts
        glob.extend_from_slice(&field.to_ne_bytes());
    }
    let options = vec![
        TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob)),
        TcOption::Other(DefaultNla::new(
            TCA_HTB_DIRECT_QLEN,
            HTB_DIRECT_QLEN.to_ne_bytes().to_vec(),
        )),
    ];
    let msg = tc_message(
        index,
        class_handle(0),
        TcHandle::ROOT,
        0,
        vec![
            TcAttribute::Kind("htb".into()),
            TcAttribute::Options(options),
        ],
    );
    request(
        h,
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(|f| f.named(what()))?;
    Ok(())
}

/// A `struct tc_ratespec` for `bytes_per_s`, capped at what its 32-bit field holds.
fn ratespec(bytes_per_s: u64) -> [u8; 12] {
    let mut spec = [0u8; 12];
    spec[1] = TC_LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(bytes_per_s).unwrap_or(u32::MAX);
    spec[8..12].copy_from_slice(&rate32.to_ne_bytes());
    spec
}

/// Time (in the 64 ns ticks HTB's buffer fields use) to send ~1 ms of `bytes_per_s` plus
/// `BURST_SLACK` bytes at that rate.
fn burst_ticks(bytes_per_s: u64) -> u32 {
    let burst = u128::from(bytes_per_s / 1000 + BURST_SLACK);
    let ticks = burst * 1_000_000_000 / 64 / u128::from(bytes_per_s.max(1));
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// DRR quantum: tc's default rate / r2q, kept within the bounds the kernel accepts silently.
fn quantum(bytes_per_s: u64) -> u32 {
    let q = (bytes_per_s / u64::from(HTB_R2Q)).clamp(QUANTUM_MIN, QUANTUM_MAX);
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// The HTB class options (`TCA_HTB_PARMS`, and the 64-bit rates where 32 bits do not do).
fn htb_class_options(rate: ClassRate) -> Vec<TcOption> {
    let rate_bytes = rate.rate / 8;
    let ceil_bytes = rate.ceil / 8;
    let mut parms = Vec::with_capacity(HTB_OPT_LEN);
    parms.extend_from_slice(&ratespec(rate_bytes));
    parms.extend_from_slice(&ratespec(ceil_bytes));
    parms.extend_from_slice(&burst_ticks(rate_bytes).to_ne_bytes());
    parms.extend_from_slice(&burst_ticks(ceil_bytes).to_ne_bytes());
    parms.extend_from_slice(&quantum(rate_bytes).to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes()); // level: computed by the kernel
    parms.extend_from_slice(&0u32.to_ne_bytes()); // prio
    let mut options = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, parms))];
    if u32::try_from(rate_bytes).is_err() {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_RATE64,
            rate_bytes.to_ne_bytes().to_vec(),
        )));
    }
    if u32::try_from(ceil_bytes).is_err() {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_CEIL64,
            ceil_bytes.to_ne_bytes().to_vec(),
        )));
    }
    options
}

/// Creates or changes (`flags` with NLM_F_CREATE) or only changes (no flags) class 1:minor.
async fn put_class(
    h: &Handle,
    dev: &str,
    index: i32,
    minor: u16,
    rate: ClassRate,
    flags: u16,
) -> Result<(), TcError> {
    let parent = if minor == TOTAL_MINOR {
        class_handle(0)
    } else {
        class_handle(TOTAL_MINOR)
    };
    let msg = tc_message(
        index,
        class_handle(minor),
        parent,
        0,
        vec![
            TcAttribute::Kind("htb".into()),
            TcAttribute::Options(htb_class_options(rate)),
        ],
    );
    request(
        h,
        RouteNetlinkMessage::NewTrafficClass(msg),
        NLM_F_ACK | flags,
    )
    .await
    .map_err(|f| {
        let mut e = f.named(class_name(minor, dev));
        e.reason = format!(
            "{} (rate {} bit/s, ceil {} bit/s)",
            e.reason, rate.rate, rate.ceil
        );
        e
    })?;
    Ok(())
}

/// Reads rate and ceil back from a dumped HTB class.
fn htb_class_rate(attributes: &[TcAttribute]) -> Option<ClassRate> {
    let mut rate = None;
    let mut ceil = None;
    let mut rate64 = None;
    let mut ceil64 = None;
    for attr in attributes {
        let TcAttribute::Options(options) = attr else {
            continue;
        };
        for option in options {
            // HTB is unknown to netlink-packet-route: the whole TCA_OPTIONS arrives as one
            // raw attribute whose value is the nested TCA_HTB_* list.
            let TcOption::Other(nla) = option else {
                continue;
            };
            let mut nested = vec![0u8; nla.value_len()];
            nla.emit_value(&mut nested);
            for inner in NlasIterator::new(&nested[..]) {
                let Ok(inner) = inner else { continue };
                read_htb_attr(&inner, &mut rate, &mut ceil, &mut rate64, &mut ceil64);
            }
        }
    }
    let rate = rate64.or(rate)?;
    let ceil = ceil64.or(ceil)?;
    Some(ClassRate {
        rate: rate.saturating_mul(8),
        ceil: ceil.saturating_mul(8),
    })
}

fn read_htb_attr(
    nla: &NlaBuffer<&[u8]>,
    rate: &mut Option<u64>,
    ceil: &mut Option<u64>,
    rate64: &mut Option<u64>,
    ceil64: &mut Option<u64>,
) {
    let value = nla.value();
    let u32_at = |at: usize| -> Option<u64> {
        let bytes: [u8; 4] = value.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(u32::from_ne_bytes(bytes)))
    };
    let as_u64 = || -> Option<u64> {
        let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
        Some(u64::from_ne_bytes(bytes))
    };
    match nla.kind() {
        TCA_HTB_PARMS => {
            *rate = u32_at(8);
            *ceil = u32_at(20);
        }
        TCA_HTB_RATE64 => *rate64 = as_u64(),
        TCA_HTB_CEIL64 => *ceil64 = as_u64(),
        _ => {}
    }
}

/// The u32 filters (prio 1, IPv4) on the IFB `index`, as dumped.
async fn ifb_filters(h: &Handle, dev: &str, index: i32) -> Result<Vec<TcMessage>, TcError> {
    let msg = tc_message(index, TcHandle::UNSPEC, class_handle(0), 0, Vec::new());
    let replies = request(h, RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP)
        .await
        .map_err(|f| f.named(format!("filters on {dev}")))?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f)
                if f.header.index == index && has_kind(&f.attributes, "u32") =>
            {
                Some(f)
            }
            _ => None,
        })
        .collect())
}

fn u32_options(filter: &TcMessage) -> impl Iterator<Item = &TcFilterU32Option> {
    filter.attributes.iter().flat_map(|a| match a {
        TcAttribute::Options(options) => options
            .iter()
            .filter_map(|o| match o {
                TcOption::U32(u) => Some(u),
                _ => None,
            })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

fn ipv4_filter(index: i32, handle: TcHandle, options: Vec<TcFilterU32Option>) -> TcMessage {
    tc_message(
        index,
        handle,
        class_handle(0),
        filter_info(ETH_P_IP),
        vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(options.into_iter().map(TcOption::U32).collect()),
        ],
    )
}

/// Makes sure the IFB has the 256-bucket hash table 2: and the root node linking to it,
/// hashed on the last byte of the VE's address.
async fn ensure_hash_table(
    h: &Handle,
    dev: &str,
    index: i32,
    dir: Direction,
) -> Result<(), TcError> {
    let what = || format!("u32 hash table on {dev}");
    let filters = ifb_filters(h, dev, index).await?;
    let has_table = filters
        .iter()
        .any(|f| u32::from(f.header.handle) == HASH_TABLE);
    let has_link = filters.iter().any(|f| {
        u32_options(f).any(|o| matches!(o, TcFilterU32Option::Link(l) if *l == HASH_TABLE))
    });
    if !has_table {
        let msg = ipv4_filter(
            index,
            TcHandle::from(HASH_TABLE),
            vec![TcFilterU32Option::Divisor(HASH_BUCKETS)],
        );
        match request(
            h,
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        {
            Ok(_) => {}
            // A concurrent ensure_shaper made it meanwhile.
            Err(f) if f.is(Errno::EEXIST) => {}
            Err(f) => return Err(f.named(what())),
        }
    }
    if !has_link {
        let off = dir.ip_offset();
        let mut key = TcU32Key::default();
        key.off = i32::from(off);
        let mut sel = TcU32Selector::default();
        sel.nkeys = 1;
        sel.keys = vec![key];
        sel.hmask = 0x0000_00ff;
        sel.hoff = i16::try_from(off).unwrap_or(0);
        let msg = ipv4_filter(
            index,
            TcHandle::UNSPEC,
            vec![
                TcFilterU32Option::Link(HASH_TABLE),
                TcFilterU32Option::Selector(sel),
            ],
        );
        request(
            h,
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(|f| f.named(what()))?;
    }
    Ok(())
}

/// Deletes every IFB filter node that classifies into 1:minor.
async fn drop_ve_filters(h: &Handle, dev: &str, index: i32, minor: u16) -> Result<(), TcError> {
    for filter in ifb_filters(h, dev, index).await? {
        let ours = u32_options(&filter)
            .any(|o| matches!(o, TcFilterU32Option::ClassId(c) if *c == class_handle(minor)));
        if !ours {
            continue;
        }
        let msg = tc_message(
            index,
            filter.header.handle,
            class_handle(0),
            filter_info(ETH_P_IP),
            vec![TcAttribute::Kind("u32".into())],
        );
        match request(h, RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).await {
            Ok(_) => {}
            Err(f) if f.is(Errno::ENOENT) => {}
            Err(f) => {
                return Err(f.named(format!(
                    "filter {:x} for class 1:{minor:x} on {dev}",
                    u32::from(filter.header.handle)
                )));
            }
        }
    }
    Ok(())
}

/// Adds the node sending the VE's address to class 1:minor, in the bucket of its last byte.
async fn add_ve_filter(
    h: &Handle,
    dev: &str,
    index: i32,
    dir: Direction,
    ip: Ipv4Addr,
    minor: u16,
) -> Result<(), TcError> {
    let mut key = TcU32Key::default();
    key.mask = u32::MAX;
    key.val = u32::from(ip);
    key.off = i32::from(dir.ip_offset());
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];
    let bucket = u32::from(ip.octets()[3]);
    let msg = ipv4_filter(
        index,
        TcHandle::UNSPEC,
        vec![
            TcFilterU32Option::Hash(HASH_TABLE | (bucket << 12)),
            TcFilterU32Option::ClassId(class_handle(minor)),
            TcFilterU32Option::Selector(sel),
        ],
    );
    request(
        h,
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|f| f.named(format!("filter {ip} -> class 1:{minor:x} on {dev}")))?;
    Ok(())
}

/// Whether `port` has a clsact qdisc.
async fn has_clsact(h: &Handle, port: &str, index: i32) -> Result<bool, TcError> {
    match qdisc_at(h, index, TcHandle::CLSACT).await {
        Ok(q) => Ok(q.is_some_and(|q| has_kind(&q.attributes, "clsact"))),
        Err(f) => Err(f.named(format!("qdisc clsact on {port}"))),
    }
}

async fn ensure_clsact(h: &Handle, port: &str, index: i32) -> Result<(), TcError> {
    if has_clsact(h, port, index).await? {
        return Ok(());
    }
    let msg = tc_message(
        index,
        CLSACT_HANDLE,
        TcHandle::CLSACT,
        0,
        vec![TcAttribute::Kind("clsact".into())],
    );
    request(
        h,
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|f| f.named(format!("qdisc clsact on {port}")))?;
    Ok(())
}

async fn remove_clsact(h: &Handle, port: &str, index: i32) -> Result<(), TcError> {
    if !has_clsact(h, port, index).await? {
        return Ok(());
    }
    let msg = tc_message(index, CLSACT_HANDLE, TcHandle::CLSACT, 0, Vec::new());
    match request(h, RouteNetlinkMessage::DelQueueDiscipline(msg), NLM_F_ACK).await {
        Ok(_) => Ok(()),
        Err(f) if f.is(Errno::ENOENT) || f.is(Errno::ENODEV) => Ok(()),
        Err(f) => Err(f.named(format!("qdisc clsact on {port}"))),
    }
}

/// (Re)places the filter on the port's clsact `hook` (ingress or egress minor) that redirects
/// every packet to the IFB `target`.
async fn put_redirect(
    h: &Handle,
    port: &str,
    index: i32,
    hook: u16,
    target_name: &str,
    target: i32,
) -> Result<(), TcError> {
    let side = if hook == TcHandle::MIN_INGRESS {
        "ingress"
    } else {
        "egress"
    };
    let what = || format!("{side} redirect {port} -> {target_name}");
    let parent = TcHandle {
        major: 0xffff,
        minor: hook,
    };
    let old = tc_message(
        index,
        TcHandle::UNSPEC,
        parent,
        filter_info(ETH_P_ALL),
        vec![TcAttribute::Kind("u32".into())],
    );
    match request(h, RouteNetlinkMessage::DelTrafficFilter(old), NLM_F_ACK).await {
        Ok(_) => {}
        Err(f) if f.is(Errno::ENOENT) => {}
        Err(f) => return Err(f.named(what())),
    }

    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = u32::try_from(target).map_err(|_| err(what(), "bad ifindex"))?;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()]; // mask 0: matches every packet
    let msg = tc_message(
        index,
        TcHandle::UNSPEC,
        parent,
        filter_info(ETH_P_ALL),
        vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(sel)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ],
    );
    request(
        h,
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|f| f.named(what()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn rates_above_32_bits_use_rate64() {
        let options = htb_class_options(ClassRate {
            rate: 100_000_000_000,
            ceil: 100_000_000_000,
        });
        let kinds: Vec<u16> = options.iter().map(|o| o.kind()).collect();
        assert_eq!(kinds, vec![TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_CEIL64]);
        let small = htb_class_options(ClassRate {
            rate: 10_000_000,
            ceil: 20_000_000,
        });
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].value_len(), HTB_OPT_LEN);
    }

    #[test]
    fn parms_read_back() {
        let rate = ClassRate {
            rate: 8_000_000,
            ceil: 100_000_000_000,
        };
        let attrs = vec![
            TcAttribute::Kind("htb".into()),
            TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(2, {
                let options = htb_class_options(rate);
                let mut buf = vec![0u8; options.as_slice().buffer_len()];
                options.as_slice().emit(&mut buf);
                buf
            }))]),
        ];
        assert_eq!(htb_class_rate(&attrs), Some(rate));
    }

    #[test]
    fn burst_and_quantum_are_sane() {
        // 10 Mbit/s: 1250 + 1600 bytes at 1.25 MB/s = 2.28 ms = 35 625 ticks.
        assert_eq!(burst_ticks(1_250_000), 35_625);
        // 1 byte/s would need 1600 s of buffer: capped.
        assert_eq!(burst_ticks(1), u32::MAX);
        // 100 Gbit/s: about 1 ms.
        let t = burst_ticks(12_500_000_000);
        assert!((15_625..16_000).contains(&t), "{t}");
        assert_eq!(quantum(125), 1600);
        assert_eq!(quantum(1_250_000), 125_000);
        assert_eq!(quantum(12_500_000_000), 200_000);
    }

    #[test]
    fn limits_are_checked() {
        let ok = ClassRate { rate: 8, ceil: 8 };
        assert!(check_rate("x", ok).is_ok());
        let e = check_rate("class 1:5 on ifb0", ClassRate { rate: 10, ceil: 9 })
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("tc class 1:5 on ifb0: ceil 9 bit/s is below rate 10 bit/s")
        );
        assert!(check_rate("x", ClassRate { rate: 0, ceil: 0 }).is_err());
        assert!(check_minor("x", 1).is_err());
        assert!(check_minor("x", 0xffff).is_err());
        assert!(check_minor("x", 2).is_ok());
    }

    #[test]
    fn filter_info_is_prio_and_network_order_protocol() {
        assert_eq!(
            filter_info(ETH_P_IP),
            0x0001_0000 | u32::from(0x0800u16.to_be())
        );
    }
}
