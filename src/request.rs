//! The annotation grammar (SPEC §3): `netattach/networks` in its short form
//! (`lan`, `lan@eth1`, `lan,storage@st0`) and its JSON form (the Kubernetes
//! network-selection list). The value is untrusted: everything is bounded and
//! checked here, before it meets a network definition.

use std::fmt;
use std::net::IpAddr;

/// The annotation key that carries the request.
pub const ANNOTATION: &str = "netattach/networks";
/// Upper bound of the annotation value, in bytes.
pub const MAX_BYTES: usize = 64 * 1024;
/// Upper bound of networks in one request.
pub const MAX_NETWORKS: usize = 32;

/// One network the container asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkRequest {
    /// An administrator-defined network name.
    pub name: String,
    /// Interface name inside the container; `None` picks the first free `ethN`.
    pub interface: Option<String>,
    /// Requested addresses (static addressing).
    pub ips: Vec<RequestedIp>,
    /// Requested MAC address (macvlan only).
    pub mac: Option<MacAddr>,
    /// `Some` when the request marks this network as the default route; the list
    /// holds the gateways to use (empty: the network's own gateways).
    pub default_route: Option<Vec<IpAddr>>,
}

/// An address as written in the request: `192.168.32.140` or `192.168.32.140/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedIp {
    pub addr: IpAddr,
    pub prefix_len: Option<u8>,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for RequestedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            Some(p) => write!(f, "{}/{}", self.addr, p),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Why a request was refused; the message names the byte position or the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ANNOTATION}: {0}")]
pub struct RequestError(pub String);
