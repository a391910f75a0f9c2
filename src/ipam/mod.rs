//! Address management: which addresses an attach gets, and the lease store that
//! remembers who holds them. The store is a trait so the embedded store and a
//! distributed one (etcd) are interchangeable for every caller.

pub mod pool;
pub mod sqlite;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// One address held by one owner on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub network: String,
    pub address: IpAddr,
    /// Prefix length of the subnet the address belongs to.
    pub prefix_len: u8,
    /// Container or pod id.
    pub owner: String,
    /// Interface name inside the owner's netns.
    pub ifname: String,
    /// The owner's netns, `net:[INODE]#COOKIE` (used by `gc`).
    pub netns: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// One network attached to one owner; exists from the reservation until release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub owner: String,
    pub network: String,
    pub ifname: String,
    /// The owner's netns, `net:[INODE]#COOKIE` (see `Netns::identity`).
    pub netns: String,
    pub created: u64,
}

impl Attachment {
    /// The inode and cookie of the owner's netns, from its identity.
    pub fn netns_id(&self) -> Option<(u64, u64)> {
        let (inode, cookie) = self.netns.strip_prefix("net:[")?.split_once("]#")?;
        Some((inode.parse().ok()?, cookie.parse().ok()?))
    }
}

/// One address family's pool of a network: where pooled addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRange {
    /// The subnet (gives the prefix length of handed-out addresses).
    pub subnet: IpNet,
    /// Addresses are taken from here (the subnet, or its ip_range).
    pub range: IpNet,
    /// Never handed out: gateway and aux addresses (network/broadcast are implied).
    pub excluded: Vec<IpAddr>,
}

/// One address an attach needs on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A requested address; fails if someone else holds it.
    Address { address: IpAddr, subnet: IpNet },
    /// Any free address of these ranges (one family, subnets in order).
    Pool { ranges: Vec<PoolRange> },
}

/// What one attach asks of the store for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub network: String,
    pub ifname: String,
    pub wants: Vec<Want>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("address {address} of network {network} is taken by {holder}")]
    Taken {
        network: String,
        address: IpAddr,
        holder: String,
    },
    #[error("no free address in {range} of {network}")]
    Exhausted { network: String, range: String },
    #[error("lease store: {0}")]
    Store(String),
}

/// The lease store. Every method is atomic: it commits whole or not at all.
pub trait LeaseStore {
    /// Records an attachment per claim and leases every wanted address, all in one
    /// transaction. Returns the leases per claim, in the order of the claims and
    /// their wants.
    fn reserve(
        &self,
        owner: &str,
        netns: &str,
        claims: &[Claim],
    ) -> Result<Vec<Vec<Lease>>, IpamError>;

    /// The owner's attachments.
    fn attachments_of(&self, owner: &str) -> Result<Vec<Attachment>, IpamError>;

    /// Every attachment of every owner.
    fn attachments(&self) -> Result<Vec<Attachment>, IpamError>;

    /// Frees the owner's leases and attachments on the given networks (rollback
    /// of one attach); returns the freed leases.
    fn release_networks(&self, owner: &str, networks: &[String]) -> Result<Vec<Lease>, IpamError>;

    /// Frees all of the owner's leases and attachments; returns the freed leases.
    fn release_owner(&self, owner: &str) -> Result<Vec<Lease>, IpamError>;

    /// Frees one address; returns the lease if there was one.
    fn release_address(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError>;

    /// The owner's leases, ordered by network then address.
    fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, IpamError>;

    /// How many owners are attached to `network`.
    fn attachment_count(&self, network: &str) -> Result<usize, IpamError>;

    /// Remembers that netattach created the 802.1Q link `name` (so it may
    /// remove it once nothing uses it).
    fn record_vlan(&self, name: &str) -> Result<(), IpamError>;

    /// Forgets a VLAN link recorded by `record_vlan`.
    fn forget_vlan(&self, name: &str) -> Result<(), IpamError>;

    /// The VLAN links netattach created.
    fn vlans(&self) -> Result<Vec<String>, IpamError>;

    /// Leases, of one network or of all, ordered by network then address.
    fn leases(&self, network: Option<&str>) -> Result<Vec<Lease>, IpamError>;
}
