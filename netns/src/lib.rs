//! Networking for vectl VEs. A VE has its own network namespace; this crate
//! configures it over netlink (rtnetlink), never by running `ip`.
//!
//! A network (`model`) is bridged, host-only, NAT or routed; `link` makes its host
//! side and a VE's veth pairs, `nft` its firewall (NAT, published ports, isolation,
//! anti-spoofing), `tc` its traffic shaping.
//!
//! A netlink socket belongs to the namespace it was opened in, so work inside a VE's
//! namespace runs on a short-lived thread that first joins that namespace and then
//! opens its own connection there; the calling thread's namespaces are untouched.

pub mod link;
pub mod model;
pub mod nft;
pub mod tc;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
