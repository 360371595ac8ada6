//! All of vectl's networking: what a network is, what a VE's NICs are, and the
//! kernel side of both. A VE has its own network namespace; this crate
//! configures it over netlink (`netlink-packet-route` messages sent with
//! rtnetlink), never by running `ip`.
//!
//! - `model`: a network (bridged, host-only, NAT or routed), its subnet, rates,
//!   published ports, interface and port names.
//! - `nic`: a VE's NICs as data (configured, requested, shown).
//! - `alloc`: network names, default subnets and name servers, a NIC's address
//!   and MAC.
//! - `rules`: a VE's elements of the firewall and its traffic class.
//! - `etc`: the network files in a VE's private layer (hostname, hosts,
//!   resolv.conf), reached only through handles that follow no symlink.
//! - `link`: a network's host side and a VE's veth pairs; `nft` the firewall (NAT,
//!   published ports, isolation, anti-spoofing); `tc` traffic shaping.
//!
//! What it does not own: vectl's state (network and VE configs, locks, markers),
//! which ve-runtime keeps and passes in.
//!
//! Netlink work runs on one tokio current-thread runtime per process, built at
//! first use. A netlink socket belongs to the namespace it was opened in, so work
//! inside a VE's namespace runs on a short-lived thread that first joins that
//! namespace and then opens its own connection there; the calling thread's
//! namespaces are untouched.

pub mod alloc;
pub mod etc;
pub mod link;
pub mod model;
pub mod nft;
pub mod nic;
pub mod rules;
pub mod tc;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::LinkUnspec;

/// Errors from network setup; each names the interface or namespace it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Joining the VE's network namespace failed.
    #[error("cannot enter the VE's network namespace: {0}")]
    Setns(nix::Error),
    /// Opening a netlink connection failed.
    #[error("netlink: {0}")]
    Connect(std::io::Error),
    /// A netlink request about an interface failed.
    #[error("interface {link}: {reason}")]
    Link { link: String, reason: String },
    /// nftables refused or could not be run.
    #[error("firewall: {0}")]
    Firewall(String),
    /// Traffic shaping failed.
    #[error(transparent)]
    Tc(#[from] tc::TcError),
    /// The worker thread could not be started or died.
    #[error("network setup thread: {0}")]
    Thread(String),
    /// The netlink runtime could not be built.
    #[error("netlink runtime: {0}")]
    Runtime(std::io::Error),
    /// An I/O error on a file (a VE's network files, /dev/urandom).
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A network name vectl does not accept.
    #[error(
        "invalid network name {0:?}: use lower-case letters, digits and '-', starting with a letter or digit, not all digits, at most 63 characters"
    )]
    InvalidNetName(String),
    /// Network `net` refuses a request or setting.
    #[error("network {net}: {reason}")]
    Net { net: String, reason: Refusal },
    /// An `--ip` that is not an address.
    #[error("--ip {text:?}: expected an IPv4 address, CIDR or auto")]
    IpSyntax { text: String },
    /// An `--ip` whose prefix is not a number.
    #[error("--ip {text:?}: bad prefix")]
    IpPrefix { text: String },
    /// An `--ip` whose prefix is not its network's.
    #[error("--ip {text}: network {net} is {subnet} (prefix /{prefix})", prefix = subnet.prefix)]
    IpWrongPrefix {
        text: String,
        net: String,
        subnet: model::Subnet,
    },
    /// An `--ip` its network cannot give (taken, the gateway, outside it...).
    #[error("--ip {text}: {reason}")]
    IpRefused {
        text: String,
        reason: model::AddressRefused,
    },
}

/// Why a network refuses something (the network is named by [`Error::Net`]).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// More `--allow-host` entries than a network keeps.
    #[error("--allow-host: {count} entries, at most {max}")]
    TooManyHostAccess { count: usize, max: usize },
    /// Every address of the subnet is taken.
    #[error("no free address left in {0}")]
    NoFreeAddress(model::Subnet),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Brings up the loopback interface inside the network namespace `netns`
/// (an open `/proc/<pid>/ns/net`).
pub fn bring_up_loopback(netns: BorrowedFd<'_>) -> Result<()> {
    let fd: OwnedFd = netns
        .try_clone_to_owned()
        .map_err(|e| Error::Thread(e.to_string()))?;
    in_netns(fd, |handle| async move {
        let mut links = handle.link().get().match_name("lo".to_string()).execute();
        let lo = links
            .try_next()
            .await
            .map_err(|e| link_err("lo", e))?
            .ok_or_else(|| Error::Link {
                link: "lo".into(),
                reason: "not found".into(),
            })?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| link_err("lo", e))
    })
}

fn link_err(link: &str, e: rtnetlink::Error) -> Error {
    Error::Link {
        link: link.to_string(),
        reason: e.to_string(),
    }
}

/// Runs `work` with a netlink handle opened inside the namespace `netns`, on a
/// thread of its own (namespace membership is per thread).
pub(crate) fn in_netns<F, Fut>(netns: OwnedFd, work: F) -> Result<()>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    let worker = std::thread::Builder::new()
        .name("vectl-netns".into())
        .spawn(move || -> Result<()> {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Setns)?;
            link::on_host(work)
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
    worker
        .join()
        .map_err(|_| Error::Thread("panicked".into()))?
}
