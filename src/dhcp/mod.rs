//! Addresses from the LAN's own DHCP server (`ipam: dhcp`, docs/dhcp.md).
//!
//! The engine makes the link as for any network, then asks an [`Agent`] to
//! acquire a lease through it; the agent keeps renewing it until the owner
//! releases it. Under NRI the agent is the plugin process itself; for hooks
//! it is `netattach dhcp`, a resident service the hook reaches over
//! `STATE_DIR/dhcp.sock` (`remote.rs`). Both run `service.rs`.
//!
//! - `machine.rs`: the RFC 2131 client state machine, without I/O.
//! - `message.rs`: its messages as bytes (`dhcproto`).
//! - `exchange.rs`: the machine over a UDP socket in the container's netns.
//! - `record.rs`: a lease as persisted in `STATE_DIR/dhcp/`.
//! - `service.rs`: acquisition, renewal threads, release, restart.
//! - `remote.rs`: the hook's side of the socket.
//!
//! A network that does not use DHCP never reaches this module.

pub mod exchange;
pub mod machine;
pub mod message;
pub mod record;
pub mod remote;
pub mod service;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// What the engine asks for: a lease for one link it just made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acquire {
    pub owner: String,
    pub network: String,
    /// The parent on the host: a release after the container's netns is
    /// gone is sent from there.
    pub parent: String,
    /// A path that opens the container's netns now.
    pub netns_path: PathBuf,
    /// Its identity (`net:[INODE]#COOKIE`): renewals find it by that.
    pub netns: String,
    pub ifname: String,
    pub mac: [u8; 6],
    /// The owner's stable identity, else its id: the client identifier.
    pub identity: String,
    pub hostname: Option<String>,
    /// How long the acquisition may take.
    pub wait_ms: u64,
}

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// Seconds since the epoch.
    pub expiry: u64,
}

/// Who runs the DHCP client.
pub trait Agent: Send + Sync {
    /// Acquires a lease through the link `request` names, or fails with one
    /// line within `request.wait_ms`. The lease is renewed from then on.
    fn acquire(&self, request: &Acquire) -> Result<Granted>;
    /// Sends DHCPRELEASE for the owner's lease on `network` and forgets it;
    /// nothing to do is no error.
    fn release(&self, owner: &str, network: &str) -> Result<()>;
}

static IN_PROCESS: OnceLock<Arc<service::Service>> = OnceLock::new();

/// Makes this process its own agent (the NRI plugin, the `dhcp` service).
pub fn run_in_process(service: Arc<service::Service>) {
    let _ = IN_PROCESS.set(service);
}

/// The agent for leases of the state directory `state_dir`: this process if
/// it runs one, else the resident service.
pub fn agent(state_dir: &Path) -> Box<dyn Agent> {
    match IN_PROCESS.get() {
        Some(s) => Box::new(s.clone()),
        None => Box::new(remote::Remote::new(state_dir)),
    }
}

/// The service's socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("dhcp.sock")
}

/// Where leases are persisted in a state directory.
pub fn lease_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("dhcp")
}
