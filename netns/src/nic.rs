//! A VE's network interfaces as data: the NIC a VE's config keeps ([`Nic`]), the
//! one asked for at create ([`NicRequest`]), the one `show` prints ([`NicInfo`]),
//! and the name a NIC has inside its VE.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Mac, Mode};

/// A VE's network interface as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The network.
    pub net: String,
    /// Its address (the prefix is the network's).
    pub ip: Ipv4Addr,
    /// Its MAC, chosen at random at create (unique on the host).
    pub mac: Mac,
}

/// A NIC asked for at create: a network and an address (`None` or `auto` = the
/// lowest free one; else `A.B.C.D` or `A.B.C.D/PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRequest {
    pub net: String,
    pub ip: Option<String>,
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

/// The name of a VE's `index`th NIC inside the VE (`eth0` first).
pub fn ve_ifname(index: usize) -> String {
    format!("eth{index}")
}
