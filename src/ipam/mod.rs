//! Address management: which addresses an attach gets, and the lease store that
//! remembers who holds them. The store is a trait so the embedded store and a
//! distributed one (etcd) are interchangeable for every caller.

pub mod lending;
pub mod pool;
pub mod rejoin;
pub mod shared;
pub mod sqlite;
pub mod store;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::request::MacAddr;
use crate::sharing::LinkSpec;

/// One address held by one owner on one network. Addresses are unique per
/// layer-2 segment (see [`crate::config::Network::segment`]), whatever
/// networks share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub network: String,
    /// The layer-2 segment (parent) the address is unique on.
    pub segment: String,
    pub address: IpAddr,
    /// Prefix length of the subnet the address belongs to.
    pub prefix_len: u8,
    /// Container or pod id.
    pub owner: String,
    /// Interface name inside the owner's netns.
    pub ifname: String,
    /// The owner's netns, `net:[INODE]#COOKIE` (used by `gc`).
    pub netns: String,
    /// The MAC of the owner's interface, when netattach chose or set it.
    pub mac: Option<MacAddr>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// One network attached to one owner; exists from the reservation until release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub owner: String,
    pub network: String,
    pub ifname: String,
    /// The owner's netns, `net:[INODE]#COOKIE` (see `Netns::identity`);
    /// empty for an owner that is not a container (`lease reserve`).
    pub netns: String,
    pub created: u64,
    /// The layer-2 segment (parent) of the link.
    pub segment: String,
    /// The kind of link on the parent; `None` for a reservation (no link).
    pub link: Option<LinkSpec>,
    /// The link's MAC, when netattach chose or set it (unique per segment).
    pub mac: Option<MacAddr>,
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

/// The MAC one attach needs for one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacWant {
    /// The link has no MAC of its own (ipvlan, passthru) or is no link at all.
    None,
    /// This one; fails if another owner on the segment has it.
    Requested(MacAddr),
    /// A random locally administered one that nobody on the segment has.
    Random,
    /// `02:42:` and the claim's first IPv4 address, once it is chosen; fails
    /// if another owner on the segment has it.
    FromIpv4,
}

/// What one attach asks of the store for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub network: String,
    /// The layer-2 segment addresses and MACs must be unique on.
    pub segment: String,
    pub ifname: String,
    /// The kind of link to be made; `None` for a reservation.
    pub link: Option<LinkSpec>,
    pub mac: MacWant,
    pub wants: Vec<Want>,
    /// The network is shared through etcd: pooled addresses come only from
    /// this host's private blocks (docs/multi-host.md).
    pub shared: bool,
    /// The owner's identity on a network with sticky addresses: a pooled
    /// want takes the address this identity held last, while it is free.
    pub sticky: Option<String>,
}

/// What `reserve` handed out.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    /// Per claim, the leases in the order of its wants.
    pub leases: Vec<Vec<Lease>>,
    /// Per claim, the MAC to give the link.
    pub macs: Vec<Option<MacAddr>>,
    /// Attachments of owners found dead while checking conflicts, freed on the way.
    pub dropped: Vec<Attachment>,
}

/// Who holds an address, a MAC or a parent, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub ifname: String,
    pub network: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, network {})",
            self.owner, self.ifname, self.network
        )
    }
}

/// Answers whether an attachment's owner is still alive; asked only before a
/// conflict would refuse an attach, inside the store's transaction.
pub type Liveness<'a> = &'a mut dyn FnMut(&Attachment) -> bool;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("address {address} is taken on parent {segment} by {holder}")]
    Taken {
        segment: String,
        address: IpAddr,
        holder: Holder,
    },
    #[error("MAC {mac} is in use on parent {segment} by {holder}")]
    MacTaken {
        segment: String,
        mac: MacAddr,
        holder: Holder,
    },
    #[error("network {network}: parent {segment} carries a {theirs} link of {holder}; {rule}")]
    Clash {
        network: String,
        segment: String,
        theirs: LinkSpec,
        holder: Box<Holder>,
        rule: &'static str,
    },
    #[error("no free address in {range} of {network}")]
    Exhausted { network: String, range: String },
    /// A shared network's private blocks on this host have no free address
    /// for these ranges: the caller claims a block through etcd and retries
    /// (outside the store's transaction). Never shown to a user.
    #[error("network {network}: this host's blocks in {} are full", pool::ranges_label(.ranges))]
    NeedsBlock {
        network: String,
        ranges: Vec<PoolRange>,
    },
    /// A shared network's fence has ended: no local allocation until a
    /// heartbeat reaches etcd.
    #[error("network {network}: {why}; allocation is paused so that no other host can be given this host's blocks")]
    Fenced { network: String, why: String },
    /// A shared network's etcd side failed; the message is the whole line.
    #[error("{0}")]
    Shared(String),
    #[error("lease store: {0}")]
    Store(String),
    /// A wait reached its deadline: what was waited for, and who holds it.
    #[error("gave up after {waited_ms} ms waiting for {what}{held_by}")]
    Waited {
        what: String,
        waited_ms: u128,
        /// ", held by pid N (command)" or empty when unknown.
        held_by: String,
    },
}

/// The lease store. Every method is atomic: it commits whole or not at all.
pub trait LeaseStore {
    /// Records an attachment per claim, checks the parent-sharing rules
    /// against the other attachments of its segment, leases every wanted
    /// address and picks the MAC, all in one transaction. An owner that a
    /// conflict would refuse is first asked about with `alive`; a dead one is
    /// freed and no longer in the way.
    fn reserve(
        &self,
        owner: &str,
        netns: &str,
        claims: &[Claim],
        alive: Liveness<'_>,
    ) -> Result<Reservation, IpamError>;

    /// Records `address`, which a DHCP server gave the owner's attachment to
    /// `network`, as its lease: unique on the segment like any other (an
    /// owner in the way is first asked about with `alive`). Fails if the
    /// owner is not attached to `network`.
    fn record_lease(
        &self,
        owner: &str,
        network: &str,
        address: IpAddr,
        prefix_len: u8,
        alive: Liveness<'_>,
    ) -> Result<Lease, IpamError>;

    /// The state directory this store keeps its files in, if it has one.
    fn state_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

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

    /// The lease of `address` on `network`, if any.
    fn lease_of(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError>;

    /// The owner's leases, ordered by network then address.
    fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, IpamError>;

    /// Remembers that netattach created the 802.1Q link `name` (so it may
    /// remove it once nothing uses it).
    fn record_vlan(&self, name: &str) -> Result<(), IpamError>;

    /// Forgets a VLAN link recorded by `record_vlan`.
    fn forget_vlan(&self, name: &str) -> Result<(), IpamError>;

    /// The VLAN links netattach created.
    fn vlans(&self) -> Result<Vec<String>, IpamError>;

    /// When the waits of the operation under way must end (the store's own
    /// waits end then too; the engine's other waits borrow it).
    fn deadline(&self) -> crate::deadline::Deadline {
        crate::deadline::Deadline::default_wait()
    }

    /// Leases, of one network or of all, ordered by network then address.
    fn leases(&self, network: Option<&str>) -> Result<Vec<Lease>, IpamError>;
}
