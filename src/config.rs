//! Network definitions written by the administrator (SPEC §2): the types, their
//! validation, and the directory of JSON files they live in.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Default directory of network definitions.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/netattach/networks.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Macvlan,
    Ipvlan,
}

/// Link mode. macvlan uses bridge/vepa/private/passthru/source, ipvlan l2/l3/l3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bridge,
    Vepa,
    Private,
    Passthru,
    Source,
    L2,
    L3,
    L3s,
}

/// ipvlan flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanFlag {
    Bridge,
    Private,
    Vepa,
}

/// Where a container's MAC comes from (macvlan links that carry their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacPolicy {
    /// A random locally administered MAC, new for each attach.
    #[default]
    Random,
    /// `02:42:` and the four bytes of the link's IPv4 address (Docker's classic).
    Ipv4,
    /// Derived from the owner's identity and the network: a recreated
    /// container or pod comes back with the same MAC.
    Stable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpamMode {
    /// Addresses handed out from the subnet or its ip_range.
    #[default]
    Pool,
    /// Only addresses named by the request.
    Static,
    /// IPv4 from the LAN's own DHCP server, through the container's link
    /// (src/dhcp/); subnets, if given, only bound what the server may give.
    Dhcp,
}

/// A subnet's gateway as written: an address, or `"none"` for a LAN without a
/// router. Absent from a definition it means the subnet's first usable address
/// (see [`Subnet::gateway`]), as Docker assumes: on real LANs that is usually
/// the router, and no container may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    Address(IpAddr),
    None,
}

impl Serialize for Gateway {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Gateway::Address(a) => s.collect_str(a),
            Gateway::None => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for Gateway {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e: String| serde::de::Error::custom(e))
    }
}

impl std::str::FromStr for Gateway {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Gateway::None);
        }
        s.parse()
            .map(Gateway::Address)
            .map_err(|_| format!("{s:?} is neither an IP address nor \"none\""))
    }
}

/// What requests (annotations, `attach`) may ask of a network; the
/// administrator's policy, since a pod author is not trusted (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPolicy {
    /// Where requested addresses may lie.
    #[serde(default, skip_serializing_if = "RequestedIps::is_any")]
    pub ips: RequestedIps,
    /// Whether a request may name the MAC address.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub mac: bool,
    /// At most this many requested addresses per network in one request.
    #[serde(
        default = "default_max_ips",
        skip_serializing_if = "is_default_max_ips"
    )]
    pub max_ips: usize,
}

/// Default cap on the addresses one request names for one network.
pub const DEFAULT_MAX_REQUESTED_IPS: usize = 16;
/// The highest cap an administrator may set (each address is a store write).
pub const LIMIT_MAX_REQUESTED_IPS: usize = 256;

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_max_ips() -> usize {
    DEFAULT_MAX_REQUESTED_IPS
}

fn is_default_max_ips(n: &usize) -> bool {
    *n == DEFAULT_MAX_REQUESTED_IPS
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            ips: RequestedIps::Any,
            mac: true,
            max_ips: DEFAULT_MAX_REQUESTED_IPS,
        }
    }
}

impl RequestPolicy {
    pub fn is_default(&self) -> bool {
        *self == RequestPolicy::default()
    }
}

/// Where requested addresses may lie: `"any"` address of the subnets (Docker's
/// behaviour, the default), only inside the subnets' `"ip_range"`, `"none"`
/// (pooled addresses only), or a list of CIDR ranges.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RequestedIpsRepr", into = "RequestedIpsRepr")]
pub enum RequestedIps {
    #[default]
    Any,
    IpRange,
    None,
    Ranges(Vec<IpNet>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RequestedIpsRepr {
    Word(String),
    Ranges(Vec<IpNet>),
}

impl TryFrom<RequestedIpsRepr> for RequestedIps {
    type Error = String;

    fn try_from(r: RequestedIpsRepr) -> Result<Self, String> {
        match r {
            RequestedIpsRepr::Ranges(v) => Ok(RequestedIps::Ranges(v)),
            RequestedIpsRepr::Word(w) => w.parse(),
        }
    }
}

impl From<RequestedIps> for RequestedIpsRepr {
    fn from(r: RequestedIps) -> Self {
        match r {
            RequestedIps::Any => RequestedIpsRepr::Word("any".into()),
            RequestedIps::IpRange => RequestedIpsRepr::Word("ip_range".into()),
            RequestedIps::None => RequestedIpsRepr::Word("none".into()),
            RequestedIps::Ranges(v) => RequestedIpsRepr::Ranges(v),
        }
    }
}

/// `any`, `ip_range`, `none`, or comma-separated CIDR ranges.
impl std::str::FromStr for RequestedIps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(RequestedIps::Any),
            "ip_range" | "ip-range" => Ok(RequestedIps::IpRange),
            "none" => Ok(RequestedIps::None),
            _ => s
                .split(',')
                .map(|r| {
                    r.trim().parse::<IpNet>().map_err(|_| {
                        format!("{r:?} is not a CIDR range (expected any, ip_range, none or CIDR[,CIDR...])")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(RequestedIps::Ranges),
        }
    }
}

impl RequestedIps {
    fn is_any(&self) -> bool {
        *self == RequestedIps::Any
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub subnet: IpNet,
    /// Absent: the first usable address (see [`Subnet::gateway`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub driver: Driver,
    pub parent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<IpvlanFlag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub ipam: IpamMode,
    /// What requests may ask for (addresses, MAC, how many).
    #[serde(default, skip_serializing_if = "RequestPolicy::is_default")]
    pub requests: RequestPolicy,
    /// Set when the network is shared by several hosts through etcd
    /// (docs/multi-host.md); absent for a network of this host alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Shared>,
    /// This host's own addresses on the network (at most one per family):
    /// netattach keeps a link of the host on the parent with them, through
    /// which the host reaches its containers (src/hostlink.rs). Each is
    /// also an aux address, so it is never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_addresses: Vec<IpAddr>,
    /// macvlan source mode: the stations whose frames the containers' links
    /// receive (the kernel's allowed source MACs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macvlan_sources: Vec<crate::request::MacAddr>,
    /// How many times a new link's addresses are announced (gratuitous ARP,
    /// unsolicited NA), a second apart; `None`: the default (src/announce.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<u32>,
    /// Where containers' MACs come from; `None`: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_policy: Option<MacPolicy>,
    /// A pooled address goes back to the identity that held it last, while
    /// it is free (the identity as for `mac_policy=stable`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky_ips: bool,
    /// ipam dhcp: how long an attach waits for the server's lease, in
    /// seconds; `None`: [`DHCP_TIMEOUT_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_timeout: Option<u32>,
}

/// How long an attach waits for a DHCP lease by default. A server that
/// checks an address is free before offering it (dnsmasq pings it for up
/// to 3 s) must fit in.
pub const DHCP_TIMEOUT_S: u32 = 5;

/// The longest a DHCP network may make a container's start wait.
pub const DHCP_TIMEOUT_MAX_S: u32 = 120;

/// How a shared network reaches etcd, and how it is cut into blocks. The
/// endpoints are this host's; `hold` and `block_prefix` come from the
/// network's definition in etcd, the same on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    /// etcd endpoints, `http://HOST:PORT`, tried in order.
    pub etcd: Vec<String>,
    /// Seconds a host keeps allocating in its blocks without a heartbeat
    /// accepted by etcd.
    pub hold: u64,
    /// Per pool range (as written: the ip_range, else the subnet), the
    /// prefix length of its blocks.
    pub block_prefix: BTreeMap<String, u8>,
}

/// Default `hold` of a shared network, in seconds.
pub const DEFAULT_HOLD_S: u64 = 3600;

/// The most blocks one range may be cut into (a host looks at all of them
/// to find a free one).
pub const MAX_BLOCKS_PER_RANGE: u32 = 4096;

/// A definition that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network definition: {field}: {reason}")]
pub struct InvalidNetwork {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidNetwork {
    InvalidNetwork {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: also safe as a file name.
pub fn valid_network_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Linux interface names: 1..=15 bytes of printable ASCII, no '/', ':' or whitespace,
/// not "." or "..". Also no '%': the kernel reads `eth%d` as a pattern and picks the
/// name itself (or refuses), so such a name never means what it says.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'/' | b':' | b'%'))
}

/// A dotted parent `eth0.50` names 802.1Q VLAN 50 on `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanParent {
    pub base: String,
    pub vid: u16,
}

/// Splits a dotted parent into base interface and VLAN id. `Ok(None)` for a plain parent.
pub fn parse_vlan_parent(parent: &str) -> Result<Option<VlanParent>, InvalidNetwork> {
    let Some((base, vid)) = parent.rsplit_once('.') else {
        return Ok(None);
    };
    if vid.is_empty() || !vid.bytes().all(|c| c.is_ascii_digit()) {
        return Ok(None);
    }
    if !valid_ifname(base) {
        return Err(invalid(
            "parent",
            format!("{base:?} in {parent:?} is not a valid interface name for a VLAN base"),
        ));
    }
    let vid = match vid.parse::<u32>() {
        Ok(v) if (1..=4094).contains(&v) => v,
        _ => {
            return Err(invalid(
                "parent",
                format!("VLAN id {vid} in {parent:?} is outside 1-4094"),
            ))
        }
    };
    Ok(Some(VlanParent {
        base: base.to_string(),
        vid: vid as u16,
    }))
}

impl Network {
    /// The effective link mode (the driver's default when not set).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(match self.driver {
            Driver::Macvlan => Mode::Bridge,
            Driver::Ipvlan => Mode::L2,
        })
    }

    /// How long an attach waits for a DHCP lease.
    pub fn dhcp_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dhcp_timeout.unwrap_or(DHCP_TIMEOUT_S).into())
    }

    /// How many times a new link's addresses are announced.
    pub fn announce(&self) -> u32 {
        self.announce.unwrap_or(crate::announce::DEFAULT_COUNT)
    }

    /// The effective ipvlan flag.
    pub fn flag(&self) -> IpvlanFlag {
        self.flag.unwrap_or(IpvlanFlag::Bridge)
    }

    /// The layer-2 segment the network's links appear on: its parent, with a
    /// dotted VLAN parent written canonically (`eth0.050` is `eth0.50`). All
    /// networks on one segment share one address space and one MAC space.
    pub fn segment(&self) -> String {
        match parse_vlan_parent(&self.parent) {
            Ok(Some(v)) => format!("{}.{}", v.base, v.vid),
            _ => self.parent.clone(),
        }
    }

    /// Checks every rule of SPEC §2 that can be checked without the host.
    pub fn validate(&self) -> Result<(), InvalidNetwork> {
        if !valid_network_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}",
                    self.name
                ),
            ));
        }
        if !valid_ifname(&self.parent) {
            return Err(invalid(
                "parent",
                format!("{:?} is not a valid interface name", self.parent),
            ));
        }
        parse_vlan_parent(&self.parent)?;
        let mode = self.mode();
        match self.driver {
            Driver::Macvlan => {
                if matches!(mode, Mode::L2 | Mode::L3 | Mode::L3s) {
                    return Err(invalid(
                        "mode",
                        format!("{} is an ipvlan mode; macvlan takes bridge, vepa, private, passthru or source", mode),
                    ));
                }
                if self.flag.is_some() {
                    return Err(invalid("flag", "ipvlan_flag applies to ipvlan only"));
                }
            }
            Driver::Ipvlan => {
                if !matches!(mode, Mode::L2 | Mode::L3 | Mode::L3s) {
                    return Err(invalid(
                        "mode",
                        format!("{mode} is a macvlan mode; ipvlan takes l2, l3 or l3s"),
                    ));
                }
            }
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid("mtu", format!("{mtu} is outside 68-65535")));
            }
            // Below 1280 the kernel disables IPv6 on the link and the address add fails.
            if mtu < 1280 {
                if let Some(i) = self
                    .subnets
                    .iter()
                    .position(|s| s.subnet.network().is_ipv6())
                {
                    return Err(invalid(
                        "mtu",
                        format!("{mtu} is below 1280, the IPv6 minimum, and subnets[{i}] is IPv6"),
                    ));
                }
            }
        }
        if self.ipam == IpamMode::Pool && self.subnets.is_empty() {
            // A pool with nothing in it would fail every attach; say so now.
            return Err(invalid(
                "subnets",
                "ipam pool needs at least one subnet (or set ipam to static)",
            ));
        }
        if self.ipam == IpamMode::Dhcp {
            self.validate_dhcp()?;
        } else if self.dhcp_timeout.is_some() {
            return Err(invalid("dhcp_timeout", "only for ipam dhcp"));
        }
        self.validate_request_policy()?;
        if let Some(shared) = &self.shared {
            self.validate_shared(shared)?;
        }
        self.validate_host_addresses()?;
        if self.sticky_ips && self.shared.is_some() {
            return Err(invalid(
                "sticky_ips",
                "not supported on shared networks yet (an address is only this host's while its block is)",
            ));
        }
        match self.mac_policy.unwrap_or_default() {
            MacPolicy::Random => {}
            _ if self.driver == Driver::Ipvlan || self.mode() == Mode::Passthru => {
                return Err(invalid(
                    "mac_policy",
                    "ipvlan and passthru links carry the parent's MAC: only random applies",
                ))
            }
            MacPolicy::Ipv4 if !self.subnets.iter().any(|s| s.subnet.network().is_ipv4()) => {
                return Err(invalid("mac_policy", "ipv4 needs an IPv4 subnet"))
            }
            _ => {}
        }
        if self
            .announce
            .is_some_and(|n| n > crate::announce::MAX_COUNT)
        {
            return Err(invalid(
                "announce",
                format!("at most {} announcements", crate::announce::MAX_COUNT),
            ));
        }
        match (self.driver, self.mode(), self.macvlan_sources.is_empty()) {
            (Driver::Macvlan, Mode::Source, true) => return Err(invalid(
                "macvlan_sources",
                "macvlan source mode receives only frames from the stations it lists: give them \
                     with -o macvlan_source=MAC[,MAC...]",
            )),
            (Driver::Macvlan, Mode::Source, false) | (_, _, true) => {}
            _ => {
                return Err(invalid(
                    "macvlan_sources",
                    "applies to macvlan source mode only (-o macvlan_mode=source)",
                ))
            }
        }
        for (i, s) in self.subnets.iter().enumerate() {
            s.validate(&format!("subnets[{i}]"))?;
            for (j, other) in self.subnets.iter().enumerate().skip(i + 1) {
                if s.subnet.contains(&other.subnet.network())
                    || other.subnet.contains(&s.subnet.network())
                {
                    return Err(invalid(
                        format!("subnets[{j}]"),
                        format!("{} overlaps {}", other.subnet, s.subnet),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The host's own addresses: in a subnet, reserved as aux addresses, one
    /// per family, and on a kind of link that can talk to its siblings
    /// (macvlan bridge, ipvlan l2 without the private or vepa flag).
    fn validate_host_addresses(&self) -> Result<(), InvalidNetwork> {
        if self.host_addresses.is_empty() {
            return Ok(());
        }
        let field = "host_addresses";
        if self.shared.is_some() {
            return Err(invalid(
                field,
                "a shared network's definition is the same on every host, a host address is not: \
                 not supported on shared networks yet",
            ));
        }
        match (self.driver, self.mode(), self.flag()) {
            (Driver::Macvlan, Mode::Bridge, _) | (Driver::Ipvlan, Mode::L2, IpvlanFlag::Bridge) => {
            }
            (driver, mode, _) => {
                return Err(invalid(
                    field,
                    format!(
                        "the host reaches its containers only through macvlan bridge or ipvlan l2 \
                         (bridge flag) links, not {driver} {mode}"
                    ),
                ))
            }
        }
        for (i, a) in self.host_addresses.iter().enumerate() {
            let Some(s) = self.subnets.iter().find(|s| s.subnet.contains(a)) else {
                return Err(invalid(
                    field,
                    format!("{a} is in no subnet of the network"),
                ));
            };
            if s.gateway() == Some(*a) {
                return Err(invalid(
                    field,
                    format!("{a} is the gateway of {}", s.subnet),
                ));
            }
            if !s.aux_addresses.values().any(|x| x == a) {
                return Err(invalid(
                    field,
                    format!(
                        "{a} must also be an aux address of {}, so that it is never handed out \
                         (network create --host-address adds it)",
                        s.subnet
                    ),
                ));
            }
            if self.host_addresses[..i]
                .iter()
                .any(|b| b.is_ipv4() == a.is_ipv4())
            {
                return Err(invalid(field, "at most one address per family"));
            }
        }
        Ok(())
    }

    /// A DHCP network asks the LAN's server for one IPv4 address per link:
    /// it needs broadcasts to reach the server (not ipvlan l3/l3s), and
    /// nothing netattach would have to know before the server answers.
    fn validate_dhcp(&self) -> Result<(), InvalidNetwork> {
        if matches!(self.mode(), Mode::L3 | Mode::L3s) {
            return Err(invalid(
                "ipam",
                "dhcp needs broadcasts, which ipvlan l3 and l3s do not pass (use mode l2)",
            ));
        }
        if let Some(s) = self.subnets.iter().find(|s| s.subnet.addr().is_ipv6()) {
            return Err(invalid(
                "subnets",
                format!("ipam dhcp is IPv4 only; {} is IPv6", s.subnet),
            ));
        }
        if let Some(s) = self.subnets.iter().find(|s| s.ip_range.is_some()) {
            return Err(invalid(
                "ip_range",
                format!(
                    "the DHCP server chooses addresses; drop the ip range of {}",
                    s.subnet
                ),
            ));
        }
        if self
            .dhcp_timeout
            .is_some_and(|t| t == 0 || t > DHCP_TIMEOUT_MAX_S)
        {
            return Err(invalid(
                "dhcp_timeout",
                format!("must be 1 to {DHCP_TIMEOUT_MAX_S} s"),
            ));
        }
        let refused = [
            ("shared", self.shared.is_some()),
            ("host_address", !self.host_addresses.is_empty()),
            ("sticky_ips", self.sticky_ips),
            ("mac_policy=ipv4", self.mac_policy == Some(MacPolicy::Ipv4)),
        ];
        if let Some((what, _)) = refused.iter().find(|(_, on)| *on) {
            return Err(invalid(
                "ipam",
                format!("dhcp cannot be combined with {what}"),
            ));
        }
        Ok(())
    }

    /// A shared network hands out pooled addresses block by block: every
    /// pool range needs a block size that cuts it into a bounded number of
    /// blocks, and there must be an endpoint to reach etcd.
    fn validate_shared(&self, shared: &Shared) -> Result<(), InvalidNetwork> {
        if shared.etcd.is_empty() {
            return Err(invalid("shared.etcd", "needs at least one endpoint"));
        }
        if shared.hold == 0 {
            return Err(invalid("shared.hold", "must be at least 1 s"));
        }
        if self.ipam != IpamMode::Pool {
            return Err(invalid(
                "shared",
                "a shared network hands out pooled addresses: ipam must be pool",
            ));
        }
        for s in &self.subnets {
            let range = s.ip_range.unwrap_or(s.subnet);
            let Some(&b) = shared.block_prefix.get(&range.to_string()) else {
                return Err(invalid(
                    "shared.block_prefix",
                    format!("no block size for range {range}"),
                ));
            };
            if b < range.prefix_len() || b > range.max_prefix_len() {
                return Err(invalid(
                    "shared.block_prefix",
                    format!(
                        "/{b} does not cut range {range} (needs /{} to /{})",
                        range.prefix_len(),
                        range.max_prefix_len()
                    ),
                ));
            }
            if (b - range.prefix_len()) as u32 > MAX_BLOCKS_PER_RANGE.ilog2() {
                return Err(invalid(
                    "shared.block_prefix",
                    format!("/{b} cuts range {range} into more than {MAX_BLOCKS_PER_RANGE} blocks"),
                ));
            }
        }
        Ok(())
    }

    fn validate_request_policy(&self) -> Result<(), InvalidNetwork> {
        let p = &self.requests;
        if !(1..=LIMIT_MAX_REQUESTED_IPS).contains(&p.max_ips) {
            return Err(invalid(
                "requests.max_ips",
                format!(
                    "{} is outside 1-{LIMIT_MAX_REQUESTED_IPS} (use requests.ips \"none\" to allow no requested address)",
                    p.max_ips
                ),
            ));
        }
        match &p.ips {
            RequestedIps::IpRange if !self.subnets.iter().any(|s| s.ip_range.is_some()) => {
                Err(invalid(
                    "requests.ips",
                    "ip_range allows addresses inside the subnets' ip_range, but no subnet has one",
                ))
            }
            RequestedIps::Ranges(ranges) if ranges.is_empty() => Err(invalid(
                "requests.ips",
                "an empty list allows nothing: write \"none\"",
            )),
            RequestedIps::Ranges(ranges) => {
                for r in ranges {
                    if *r != r.trunc() {
                        return Err(invalid("requests.ips", format!("{r} has host bits set")));
                    }
                    if !self.subnets.iter().any(|s| s.subnet.contains(r)) {
                        return Err(invalid(
                            "requests.ips",
                            format!("{r} is not inside a subnet of the network"),
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether the policy lets a request name `addr` (already known to lie in
    /// a subnet of this network); `Err` says what is allowed instead.
    pub fn may_request(&self, addr: IpAddr) -> Result<(), String> {
        let allowed = match &self.requests.ips {
            RequestedIps::Any => return Ok(()),
            RequestedIps::None => {
                return Err("requests may not name addresses on it (request_ips=none); leave \"ips\" out to get a pooled one".into())
            }
            RequestedIps::IpRange => self
                .subnets
                .iter()
                .filter_map(|s| s.ip_range)
                .collect::<Vec<_>>(),
            RequestedIps::Ranges(r) => r.clone(),
        };
        if allowed.iter().any(|r| r.contains(&addr)) {
            return Ok(());
        }
        let list: Vec<String> = allowed.iter().map(|r| r.to_string()).collect();
        Err(format!(
            "requested addresses must lie in {} (request_ips policy)",
            list.join(", ")
        ))
    }

    /// The subnet of this network that holds `addr`.
    pub fn subnet_of(&self, addr: IpAddr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.subnet.contains(&addr))
    }
}

impl Subnet {
    fn validate(&self, at: &str) -> Result<(), InvalidNetwork> {
        let net = self.subnet;
        if net != net.trunc() {
            return Err(invalid(
                format!("{at}.subnet"),
                format!("{net} has host bits set (did you mean {}?)", net.trunc()),
            ));
        }
        // IPv4 /31 too: its two addresses are the network and broadcast ones, which
        // no host gets here (see reserved_reason), so nothing could ever be attached.
        let host_bits = net.max_prefix_len() - net.prefix_len();
        if host_bits == 0 || (net.network().is_ipv4() && host_bits == 1) {
            return Err(invalid(
                format!("{at}.subnet"),
                format!("{net} has no room for hosts"),
            ));
        }
        if let Some(Gateway::Address(gw)) = self.gateway {
            self.check_host(&format!("{at}.gateway"), gw)?;
        }
        if let Some(range) = self.ip_range {
            if range != range.trunc() {
                return Err(invalid(
                    format!("{at}.ip_range"),
                    format!("{range} has host bits set"),
                ));
            }
            if !net.contains(&range) {
                return Err(invalid(
                    format!("{at}.ip_range"),
                    format!("{range} is not inside {net}"),
                ));
            }
        }
        for (name, addr) in &self.aux_addresses {
            if name.is_empty() || name.len() > 64 {
                return Err(invalid(
                    format!("{at}.aux_addresses"),
                    format!("name {name:?} must be 1-64 bytes"),
                ));
            }
            self.check_host(&format!("{at}.aux_addresses.{name}"), *addr)?;
        }
        Ok(())
    }

    /// An address usable by a host: inside the subnet, not its network or broadcast address.
    fn check_host(&self, field: &str, addr: IpAddr) -> Result<(), InvalidNetwork> {
        if !self.subnet.contains(&addr) {
            return Err(invalid(
                field,
                format!("{addr} is not inside {}", self.subnet),
            ));
        }
        if let Some(why) = self.reserved_reason(addr) {
            return Err(invalid(field, format!("{addr} is {why}")));
        }
        Ok(())
    }

    /// The gateway in effect: the one written, none for `"none"`, else the
    /// subnet's first usable address.
    pub fn gateway(&self) -> Option<IpAddr> {
        match self.gateway {
            Some(Gateway::Address(a)) => Some(a),
            Some(Gateway::None) => None,
            None => first_usable(self.subnet),
        }
    }

    /// Addresses of this subnet that no host may take: the gateway and the
    /// aux addresses, each with what it is.
    pub fn reserved_addresses(&self) -> impl Iterator<Item = (IpAddr, String)> + '_ {
        let gateway = self
            .gateway()
            .map(|g| (g, format!("the gateway of {}", self.subnet)));
        gateway.into_iter().chain(
            self.aux_addresses
                .iter()
                .map(|(name, a)| (*a, format!("the aux address {name:?}"))),
        )
    }

    /// Why an address of this subnet can never be given to a host, if it cannot.
    pub fn reserved_reason(&self, addr: IpAddr) -> Option<&'static str> {
        if addr == self.subnet.network() {
            return Some("the network address");
        }
        if addr.is_ipv4() && addr == self.subnet.broadcast() {
            return Some("the broadcast address");
        }
        None
    }

    /// Why a request may not take `addr`, if it may not (network, broadcast, gateway, aux).
    pub fn unavailable_reason(&self, addr: IpAddr) -> Option<String> {
        if let Some(why) = self.reserved_reason(addr) {
            return Some(format!("{why} of {}", self.subnet));
        }
        self.reserved_addresses()
            .find(|(a, _)| *a == addr)
            .map(|(_, why)| why)
    }
}

/// The first address after the network address, if the subnet has room for it.
pub fn first_usable(subnet: IpNet) -> Option<IpAddr> {
    let (lo, _) = crate::ipam::pool::usable_bounds(subnet, subnet)?;
    crate::ipam::pool::u128_to_addr(lo, subnet.addr().is_ipv6())
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Macvlan => "macvlan",
            Driver::Ipvlan => "ipvlan",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Bridge => "bridge",
            Mode::Vepa => "vepa",
            Mode::Private => "private",
            Mode::Passthru => "passthru",
            Mode::Source => "source",
            Mode::L2 => "l2",
            Mode::L3 => "l3",
            Mode::L3s => "l3s",
        })
    }
}

impl fmt::Display for IpvlanFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpvlanFlag::Bridge => "bridge",
            IpvlanFlag::Private => "private",
            IpvlanFlag::Vepa => "vepa",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network {0:?} is not defined")]
    NotFound(String),
    #[error("network {0:?} already exists")]
    Exists(String),
    // The causes are part of the message and deliberately not `#[source]`s:
    // an error chain printed with `{:#}` would repeat them otherwise.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {error}")]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: {error}")]
    Invalid {
        path: PathBuf,
        error: InvalidNetwork,
    },
    #[error(transparent)]
    Definition(#[from] InvalidNetwork),
}

/// The loadable networks of a directory and the files that are not.
#[derive(Debug, Default)]
pub struct Definitions {
    pub networks: Vec<Network>,
    pub broken: Vec<BrokenDefinition>,
}

/// A definition file that does not load, with the reason.
#[derive(Debug)]
pub struct BrokenDefinition {
    /// The network name its file name gives.
    pub name: String,
    pub error: ConfigError,
}

impl fmt::Display for BrokenDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "network {} is broken: {} (`netattach network rm {}` removes it)",
            self.name, self.error, self.name
        )
    }
}

impl Definitions {
    /// One line per broken file, for a face to print or log.
    pub fn warnings(&self) -> Vec<String> {
        self.broken
            .iter()
            .map(|b| format!("skipped: {b}"))
            .collect()
    }
}

/// The bytes of a definition file. Only a regular file is read, and its
/// open does not block: a FIFO (whose open waits for a writer) or a device
/// (`/dev/zero` reads forever) in the directory is a broken definition of its
/// own network, not a hang of every attach that lists the directory.
fn read_definition(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The directory of network definitions, one `<name>.json` per network.
#[derive(Debug, Clone)]
pub struct NetworkDir {
    dir: PathBuf,
}

impl NetworkDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NetworkDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file_of(&self, name: &str) -> Result<PathBuf, ConfigError> {
        // The name is validated before it becomes a path, so a request cannot walk the tree.
        if !valid_network_name(name) {
            return Err(ConfigError::NotFound(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Refuses a directory other users can write (they could define or
    /// change networks); a missing one is empty, not an error.
    fn check_dir(&self) -> Result<(), ConfigError> {
        match crate::secure_fs::refuse_shared(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(ConfigError::Io {
                path: self.dir.clone(),
                error,
            }),
            Ok(()) => Ok(()),
        }
    }

    /// Loads and validates one network.
    pub fn load(&self, name: &str) -> Result<Network, ConfigError> {
        self.check_dir()?;
        self.load_file(name)
    }

    /// `load` in a directory already checked.
    fn load_file(&self, name: &str) -> Result<Network, ConfigError> {
        let path = self.file_of(name)?;
        let bytes = match read_definition(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound(name.to_string()))
            }
            Err(error) => return Err(ConfigError::Io { path, error }),
        };
        let net: Network = serde_json::from_slice(&bytes).map_err(|error| ConfigError::Parse {
            path: path.clone(),
            error,
        })?;
        net.validate().map_err(|error| ConfigError::Invalid {
            path: path.clone(),
            error,
        })?;
        if net.name != name {
            return Err(ConfigError::Invalid {
                path,
                error: invalid(
                    "name",
                    format!("{:?} does not match the file name", net.name),
                ),
            });
        }
        Ok(net)
    }

    /// Every network, sorted by name. Each file loads on its own: a broken
    /// one is set aside in [`Definitions::broken`] (for the faces to warn
    /// about, `ls` and `doctor` to show, `rm` to remove) and does not stop the
    /// others. Only an unreadable directory is an error.
    pub fn list(&self) -> Result<Definitions, ConfigError> {
        self.check_dir()?;
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Definitions::default()),
            Err(error) => {
                return Err(ConfigError::Io {
                    path: self.dir.clone(),
                    error,
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|n| valid_network_name(n))
            .collect();
        names.sort();
        let mut defs = Definitions::default();
        for name in names {
            match self.load_file(&name) {
                Ok(net) => defs.networks.push(net),
                // Gone between readdir and open: a concurrent `network rm`.
                Err(ConfigError::NotFound(_)) => {}
                Err(error) => defs.broken.push(BrokenDefinition { name, error }),
            }
        }
        Ok(defs)
    }

    /// Writes a new network atomically (temp file + rename); refuses to overwrite.
    pub fn create(&self, net: &Network) -> Result<PathBuf, ConfigError> {
        net.validate()?;
        let path = self.file_of(&net.name)?;
        fs::create_dir_all(&self.dir).map_err(|error| ConfigError::Io {
            path: self.dir.clone(),
            error,
        })?;
        self.check_dir()?;
        // pid + counter: unique across processes and across threads of one process.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.json.tmp{}.{seq}",
            net.name,
            std::process::id()
        ));
        let io_err = |error| ConfigError::Io {
            path: tmp.clone(),
            error,
        };
        let mut body = serde_json::to_vec_pretty(net).expect("network serializes");
        body.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err)?;
        f.write_all(&body).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        drop(f);
        // link(2) fails if the target exists, so two concurrent creates cannot both win.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(ConfigError::Exists(net.name.clone()))
            }
            Err(error) => Err(ConfigError::Io { path, error }),
        }
    }

    /// Removes a network's definition (also a broken one).
    pub fn remove(&self, name: &str) -> Result<(), ConfigError> {
        let path = self.file_of(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ConfigError::NotFound(name.to_string()))
            }
            Err(error) => Err(ConfigError::Io { path, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(net: &str, gw: Option<&str>, range: Option<&str>) -> Subnet {
        Subnet {
            subnet: net.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: BTreeMap::new(),
        }
    }

    /// A valid dual-stack macvlan network on a VLAN parent.
    fn lan() -> Network {
        let mut v4 = subnet(
            "192.168.32.0/24",
            Some("192.168.32.254"),
            Some("192.168.32.128/25"),
        );
        v4.aux_addresses
            .insert("my-router".into(), "192.168.32.129".parse().unwrap());
        Network {
            shared: None,
            host_addresses: Vec::new(),
            macvlan_sources: Vec::new(),
            announce: None,
            dhcp_timeout: None,
            mac_policy: None,
            sticky_ips: false,
            name: "lan".into(),
            driver: Driver::Macvlan,
            parent: "eth0.50".into(),
            mode: Some(Mode::Bridge),
            flag: None,
            mtu: Some(1500),
            subnets: vec![v4, subnet("2001:db8:32::/64", Some("2001:db8:32::1"), None)],
            internal: false,
            ipam: IpamMode::Pool,
            requests: Default::default(),
        }
    }

    fn ipvlan() -> Network {
        Network {
            shared: None,
            host_addresses: Vec::new(),
            macvlan_sources: Vec::new(),
            announce: None,
            dhcp_timeout: None,
            mac_policy: None,
            sticky_ips: false,
            name: "iv".into(),
            driver: Driver::Ipvlan,
            parent: "eth1".into(),
            mode: Some(Mode::L3),
            flag: Some(IpvlanFlag::Private),
            mtu: None,
            subnets: vec![subnet("10.1.0.0/16", None, None)],
            internal: true,
            ipam: IpamMode::Pool,
            requests: Default::default(),
        }
    }

    /// Asserts the definition is refused for `field`, with every word in the reason.
    fn refused(net: &Network, field: &str, words: &[&str]) {
        let e = net.validate().expect_err("accepted");
        assert_eq!(e.field, field, "{e}");
        for w in words {
            assert!(e.reason.contains(w), "{e} lacks {w:?}");
        }
    }

    #[test]
    fn valid_definitions() {
        lan().validate().unwrap();
        ipvlan().validate().unwrap();
        assert_eq!(lan().mode(), Mode::Bridge);
        let mut n = lan();
        n.mode = None;
        n.mtu = None;
        n.validate().unwrap();
        assert_eq!(n.mode(), Mode::Bridge);
        let mut n = ipvlan();
        n.mode = None;
        n.flag = None;
        n.validate().unwrap();
        assert_eq!((n.mode(), n.flag()), (Mode::L2, IpvlanFlag::Bridge));
        // Static without subnets: nothing to hand out, nothing wrong.
        let mut n = ipvlan();
        n.subnets.clear();
        n.ipam = IpamMode::Static;
        n.validate().unwrap();
        // Same subnet in two families is not an overlap; neither are adjacent subnets.
        let mut n = ipvlan();
        n.subnets = vec![
            subnet("10.0.0.0/25", None, None),
            subnet("10.0.0.128/25", None, None),
            subnet("::/64", None, None),
        ];
        n.validate().unwrap();
        // Every macvlan mode is a macvlan mode.
        for m in [
            Mode::Bridge,
            Mode::Vepa,
            Mode::Private,
            Mode::Passthru,
            Mode::Source,
        ] {
            let mut n = lan();
            n.mode = Some(m);
            if m == Mode::Source {
                // Source mode lists the stations it receives from.
                n.macvlan_sources = vec!["02:00:00:00:00:01".parse().unwrap()];
            }
            n.validate().unwrap();
        }
        // MTU bounds themselves.
        for mtu in [68, 65535] {
            let mut n = ipvlan();
            n.mtu = Some(mtu);
            n.validate().unwrap();
        }
        // IPv6 /127 keeps one host; IPv4 /30 two.
        let mut n = ipvlan();
        n.subnets = vec![
            subnet("10.0.0.0/30", Some("10.0.0.1"), None),
            subnet("2001:db8::/127", None, None),
        ];
        n.validate().unwrap();
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let n = lan();
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains(r#""driver":"macvlan""#), "{text}");
        assert!(text.contains(r#""ip_range":"192.168.32.128/25""#), "{text}");
        assert!(text.contains(r#""aux_addresses":{"my-router":"192.168.32.129"}"#));
        assert_eq!(serde_json::from_str::<Network>(&text).unwrap(), n);
        let min: Network = serde_json::from_str(
            r#"{"name":"x","driver":"ipvlan","parent":"eth0","ipam":"static"}"#,
        )
        .unwrap();
        assert_eq!(min.mode(), Mode::L2);
        assert!(!min.internal);
        let e = serde_json::from_str::<Network>(
            r#"{"name":"x","driver":"ipvlan","parent":"eth0","ipvlan_mode":"l3"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ipvlan_mode"), "{e}");
    }

    #[test]
    fn driver_mode_and_flag() {
        let mut n = lan();
        n.mode = Some(Mode::L2);
        refused(&n, "mode", &["l2", "ipvlan mode", "macvlan takes"]);
        let mut n = ipvlan();
        n.mode = Some(Mode::Bridge);
        refused(&n, "mode", &["bridge", "macvlan mode", "ipvlan takes"]);
        n.mode = Some(Mode::Passthru);
        refused(&n, "mode", &["passthru"]);
        let mut n = lan();
        n.flag = Some(IpvlanFlag::Bridge);
        refused(&n, "flag", &["ipvlan only"]);
    }

    #[test]
    fn names_and_parents() {
        let mut n = lan();
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "../x",
            "a b",
            "\u{e9}",
            &"x".repeat(65),
        ] {
            n.name = bad.to_string();
            refused(&n, "name", &["must match"]);
        }
        n.name = "x".repeat(64);
        n.validate().unwrap();
        let mut n = lan();
        for bad in [
            "",
            "eth 0",
            "a/b",
            "..",
            "abcdefghijklmnop",
            "eth:0",
            "eth%d",
        ] {
            n.parent = bad.to_string();
            refused(&n, "parent", &["not a valid interface name"]);
        }
        n.parent = "eth0.4095".into();
        refused(&n, "parent", &["4095", "outside 1-4094"]);
        n.parent = ".50".into();
        refused(&n, "parent", &["VLAN base"]);
    }

    #[test]
    fn ifnames() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("abcdefghijklmno"));
        assert!(valid_ifname("a.b-c_d@e"));
        for bad in [
            "",
            "abcdefghijklmnop",
            "a/b",
            ".",
            "..",
            "eth 0",
            "eth\t0",
            "e:1",
            "e%d",
            "\u{e9}th0",
            "eth0\0",
        ] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
        assert!(valid_network_name("a"));
        assert!(valid_network_name("A9._-"));
        assert!(!valid_network_name("_a"));
    }

    #[test]
    fn vlan_parents() {
        assert_eq!(parse_vlan_parent("eth0").unwrap(), None);
        assert_eq!(
            parse_vlan_parent("eth0.50").unwrap(),
            Some(VlanParent {
                base: "eth0".into(),
                vid: 50
            })
        );
        assert_eq!(parse_vlan_parent("eth0.1").unwrap().unwrap().vid, 1);
        assert_eq!(parse_vlan_parent("eth0.4094").unwrap().unwrap().vid, 4094);
        // Nested: the last dot splits, the base is itself a VLAN.
        assert_eq!(
            parse_vlan_parent("bond0.5.100").unwrap().unwrap().base,
            "bond0.5"
        );
        // A dot followed by something that is not a number is a plain name (br.lan, eth0.abc).
        assert_eq!(parse_vlan_parent("eth0.abc").unwrap(), None);
        assert_eq!(parse_vlan_parent("br.lan").unwrap(), None);
        assert_eq!(parse_vlan_parent("eth0.").unwrap(), None);
        assert_eq!(parse_vlan_parent("eth0.-1").unwrap(), None);
        for (bad, words) in [
            ("eth0.0", &["VLAN id 0", "outside 1-4094"][..]),
            ("eth0.4095", &["VLAN id 4095", "outside 1-4094"]),
            ("eth0.99999", &["99999", "outside 1-4094"]),
            ("e.99999999999", &["99999999999", "outside 1-4094"]),
            (".50", &["\"\"", "VLAN base"]),
            ("..50", &["\".\"", "VLAN base"]),
        ] {
            let e = parse_vlan_parent(bad).expect_err(bad);
            assert_eq!(e.field, "parent");
            for w in words {
                assert!(e.reason.contains(w), "{e} lacks {w:?}");
            }
        }
    }

    #[test]
    fn mtu() {
        for (mtu, words) in [
            (0, &["0", "outside 68-65535"][..]),
            (67, &["67", "outside 68-65535"]),
            (70000, &["70000", "outside 68-65535"]),
            (1279, &["1279", "IPv6", "subnets[1]"]),
        ] {
            let mut n = lan();
            n.mtu = Some(mtu);
            refused(&n, "mtu", words);
        }
        // A small MTU is fine with IPv4 only.
        let mut n = ipvlan();
        n.mtu = Some(576);
        n.validate().unwrap();
    }

    #[test]
    fn subnets() {
        let with = |s: Subnet| {
            let mut n = ipvlan();
            n.subnets = vec![s];
            n
        };
        refused(
            &with(subnet("192.168.32.1/24", None, None)),
            "subnets[0].subnet",
            &["host bits", "192.168.32.0/24"],
        );
        refused(
            &with(subnet("2001:db8::1/64", None, None)),
            "subnets[0].subnet",
            &["host bits"],
        );
        for s in ["10.0.0.1/32", "10.0.0.0/31", "2001:db8::1/128"] {
            refused(
                &with(subnet(s, None, None)),
                "subnets[0].subnet",
                &["no room for hosts"],
            );
        }
        refused(
            &with(subnet("10.0.0.0/24", Some("10.0.1.1"), None)),
            "subnets[0].gateway",
            &["10.0.1.1", "not inside 10.0.0.0/24"],
        );
        refused(
            &with(subnet("10.0.0.0/24", Some("2001:db8::1"), None)),
            "subnets[0].gateway",
            &["not inside"],
        );
        refused(
            &with(subnet("10.0.0.0/24", Some("10.0.0.0"), None)),
            "subnets[0].gateway",
            &["network address"],
        );
        refused(
            &with(subnet("10.0.0.0/24", Some("10.0.0.255"), None)),
            "subnets[0].gateway",
            &["broadcast"],
        );
        refused(
            &with(subnet("2001:db8::/64", Some("2001:db8::"), None)),
            "subnets[0].gateway",
            &["network address"],
        );
        // The last IPv6 address is a host (no broadcast in IPv6).
        with(subnet(
            "2001:db8::/64",
            Some("2001:db8::ffff:ffff:ffff:ffff"),
            None,
        ))
        .validate()
        .unwrap();
        refused(
            &with(subnet("10.0.0.0/24", None, Some("10.0.1.0/25"))),
            "subnets[0].ip_range",
            &["10.0.1.0/25", "not inside 10.0.0.0/24"],
        );
        refused(
            &with(subnet("10.0.0.0/24", None, Some("10.0.0.0/23"))),
            "subnets[0].ip_range",
            &["not inside"],
        );
        refused(
            &with(subnet("10.0.0.0/24", None, Some("10.0.0.129/25"))),
            "subnets[0].ip_range",
            &["host bits"],
        );
        with(subnet("10.0.0.0/24", None, Some("10.0.0.0/24")))
            .validate()
            .unwrap();
        let mut s = subnet("10.0.0.0/24", None, None);
        s.aux_addresses
            .insert("r".into(), "10.0.9.1".parse().unwrap());
        refused(&with(s), "subnets[0].aux_addresses.r", &["not inside"]);
        let mut s = subnet("10.0.0.0/24", None, None);
        s.aux_addresses
            .insert("".into(), "10.0.0.9".parse().unwrap());
        refused(&with(s), "subnets[0].aux_addresses", &["1-64 bytes"]);

        let mut n = ipvlan();
        n.subnets = vec![
            subnet("10.0.0.0/16", None, None),
            subnet("2001:db8::/64", None, None),
            subnet("10.0.128.0/24", None, None),
        ];
        refused(&n, "subnets[2]", &["10.0.128.0/24 overlaps 10.0.0.0/16"]);
        n.subnets.swap(0, 2);
        refused(&n, "subnets[2]", &["overlaps"]);
        n.subnets = vec![
            subnet("10.0.0.0/24", None, None),
            subnet("10.0.0.0/24", None, None),
        ];
        refused(&n, "subnets[1]", &["overlaps"]);

        let mut n = lan();
        n.subnets.clear();
        refused(&n, "subnets", &["pool", "at least one subnet"]);
    }

    #[test]
    fn unavailable_reasons() {
        let mut s = subnet("192.168.32.0/24", Some("192.168.32.254"), None);
        s.aux_addresses
            .insert("my-router".into(), "192.168.32.129".parse().unwrap());
        let why = |a: &str| s.unavailable_reason(a.parse().unwrap());
        assert_eq!(
            why("192.168.32.0").unwrap(),
            "the network address of 192.168.32.0/24"
        );
        assert_eq!(
            why("192.168.32.255").unwrap(),
            "the broadcast address of 192.168.32.0/24"
        );
        assert_eq!(
            why("192.168.32.254").unwrap(),
            "the gateway of 192.168.32.0/24"
        );
        assert_eq!(
            why("192.168.32.129").unwrap(),
            "the aux address \"my-router\""
        );
        assert_eq!(why("192.168.32.1"), None);
        assert_eq!(why("192.168.32.253"), None);
        let s6 = subnet("2001:db8::/64", Some("2001:db8::1"), None);
        let why6 = |a: &str| s6.unavailable_reason(a.parse().unwrap());
        assert!(why6("2001:db8::").unwrap().contains("network address"));
        assert!(why6("2001:db8::1").unwrap().contains("gateway"));
        assert_eq!(why6("2001:db8::ffff:ffff:ffff:ffff"), None);
        assert_eq!(why6("2001:db8::2"), None);

        let n = lan();
        assert_eq!(
            n.subnet_of("2001:db8:32::9".parse().unwrap())
                .unwrap()
                .subnet,
            "2001:db8:32::/64".parse::<IpNet>().unwrap()
        );
        assert!(n.subnet_of("10.0.0.1".parse().unwrap()).is_none());
    }

    /// A unique directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "netattach-config-test-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn dir_create_load_list_remove() {
        let tmp = TempDir::new("crud");
        // The directory does not exist yet: empty list, not an error.
        let dir = NetworkDir::new(tmp.0.join("networks.d"));
        assert!(dir.list().unwrap().networks.is_empty());
        assert!(matches!(dir.load("lan"), Err(ConfigError::NotFound(n)) if n == "lan"));

        let path = dir.create(&lan()).unwrap();
        assert_eq!(path, tmp.0.join("networks.d/lan.json"));
        assert_eq!(dir.load("lan").unwrap(), lan());
        // Refuses to overwrite, and the existing file is untouched.
        let mut other = lan();
        other.mtu = Some(9000);
        assert!(matches!(dir.create(&other), Err(ConfigError::Exists(n)) if n == "lan"));
        assert_eq!(dir.load("lan").unwrap().mtu, Some(1500));

        dir.create(&ipvlan()).unwrap();
        let names: Vec<String> = dir
            .list()
            .unwrap()
            .networks
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["iv", "lan"]);
        // No temp files left behind; stray files that are not <name>.json are ignored.
        let mut files: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["iv.json", "lan.json"]);
        fs::write(dir.path().join("README"), "x").unwrap();
        fs::write(dir.path().join(".lan.json.tmp1.0"), "{").unwrap();
        assert_eq!(dir.list().unwrap().networks.len(), 2);

        dir.remove("lan").unwrap();
        assert!(matches!(dir.remove("lan"), Err(ConfigError::NotFound(_))));
        assert!(matches!(dir.load("lan"), Err(ConfigError::NotFound(_))));
        assert_eq!(dir.list().unwrap().networks.len(), 1);
    }

    #[test]
    fn dir_refuses_bad_names_and_invalid_definitions() {
        let tmp = TempDir::new("bad");
        let dir = NetworkDir::new(&tmp.0);
        for bad in ["../x", "a/b", "", ".hidden"] {
            assert!(
                matches!(dir.load(bad), Err(ConfigError::NotFound(_))),
                "{bad}"
            );
            assert!(
                matches!(dir.remove(bad), Err(ConfigError::NotFound(_))),
                "{bad}"
            );
        }
        let mut n = lan();
        n.mtu = Some(1);
        assert!(matches!(dir.create(&n), Err(ConfigError::Definition(e)) if e.field == "mtu"));
        let mut n = lan();
        n.name = "../evil".into();
        assert!(dir.create(&n).is_err());
        assert!(!tmp.0.join("../evil.json").exists());
        // Nothing was written for refused definitions.
        assert!(dir.list().unwrap().networks.is_empty());
    }

    #[test]
    fn dir_load_failures() {
        let tmp = TempDir::new("load");
        let dir = NetworkDir::new(&tmp.0);
        fs::create_dir_all(&tmp.0).unwrap();
        let good = r#"{"name":"lan","driver":"macvlan","parent":"eth0","subnets":[{"subnet":"10.0.0.0/24"}]}"#;
        fs::write(tmp.0.join("lan.json"), good).unwrap();
        dir.load("lan").unwrap();

        // Unknown key (a typo) at the top level and inside a subnet.
        fs::write(
            tmp.0.join("typo.json"),
            r#"{"name":"typo","driver":"macvlan","parent":"eth0","macvlan_mode":"bridge","subnets":[{"subnet":"10.0.0.0/24"}]}"#,
        )
        .unwrap();
        let e = dir.load("typo").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("macvlan_mode"), "{e}");
        assert!(e.to_string().contains("typo.json"), "{e}");
        fs::write(
            tmp.0.join("typo.json"),
            r#"{"name":"typo","driver":"macvlan","parent":"eth0","subnets":[{"subnet":"10.0.0.0/24","gw":"10.0.0.1"}]}"#,
        )
        .unwrap();
        assert!(dir.load("typo").unwrap_err().to_string().contains("gw"));

        // The name inside must match the file name.
        fs::write(tmp.0.join("other.json"), good).unwrap();
        let e = dir.load("other").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { error, .. } if error.field == "name"),
            "{e}"
        );
        assert!(
            e.to_string().contains("does not match the file name"),
            "{e}"
        );

        // Parsed but invalid.
        fs::write(
            tmp.0.join("bad.json"),
            r#"{"name":"bad","driver":"ipvlan","parent":"eth0","mode":"bridge","ipam":"static"}"#,
        )
        .unwrap();
        let e = dir.load("bad").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { error, .. } if error.field == "mode"),
            "{e}"
        );

        // list loads each file on its own: the good one, and the broken
        // ones named with their reason, each said once.
        let defs = dir.list().unwrap();
        let names: Vec<&str> = defs.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lan"]);
        let broken: Vec<&str> = defs.broken.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(broken, ["bad", "other", "typo"]);
        for w in defs.warnings() {
            assert!(w.contains("netattach network rm"), "{w}");
        }
        let chain = format!("{:#}", anyhow::Error::new(dir.load("typo").unwrap_err()));
        assert_eq!(
            chain.matches("gw").count(),
            1,
            "a cause is said once: {chain}"
        );
        // rm removes a broken definition.
        dir.remove("typo").unwrap();
        fs::write(tmp.0.join("typo.json"), "{").unwrap();
        fs::remove_file(tmp.0.join("bad.json")).unwrap();
        fs::remove_file(tmp.0.join("typo.json")).unwrap();
        fs::remove_file(tmp.0.join("other.json")).unwrap();
        assert_eq!(dir.list().unwrap().networks.len(), 1);
    }

    #[test]
    fn a_fifo_or_device_definition_is_broken_not_a_hang() {
        let tmp = TempDir::new("fifo");
        let dir = NetworkDir::new(&tmp.0);
        dir.create(&lan()).unwrap();
        let fifo = tmp.0.join("pipe.json");
        let fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", tmp.0.join("zero.json")).unwrap();
        // Without a writer, opening the FIFO would wait forever: ask from a
        // thread and give up on it after a while.
        let (tx, rx) = std::sync::mpsc::channel();
        let listing = dir.clone();
        std::thread::spawn(move || {
            let defs = listing.list().map(|d| {
                let broken: Vec<String> = d.broken.iter().map(|b| b.to_string()).collect();
                (d.networks.len(), broken)
            });
            let own = listing.load("pipe").map(|_| ()).map_err(|e| e.to_string());
            let _ = tx.send((defs.map_err(|e| e.to_string()), own));
        });
        let (defs, own) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("listing a directory with a FIFO in it hung");
        let (good, broken) = defs.unwrap();
        assert_eq!(good, 1, "the other network still loads");
        assert_eq!(broken.len(), 2, "{broken:?}");
        for b in &broken {
            assert!(b.contains("not a regular file"), "{b}");
        }
        let own = own.unwrap_err();
        assert!(
            own.contains("pipe.json") && own.contains("not a regular file"),
            "{own}"
        );
    }

    #[test]
    fn concurrent_creates_one_winner() {
        let tmp = TempDir::new("race");
        let dir = NetworkDir::new(&tmp.0);
        let results: Vec<Result<PathBuf, ConfigError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| dir.create(&lan()))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(ConfigError::Exists(_))), "{r:?}");
        }
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 1);
    }

    #[test]
    fn gateway_defaults_to_the_first_usable_address_unless_none() {
        let n: Network = serde_json::from_str(
            r#"{"name":"g","driver":"macvlan","parent":"eth0","subnets":[
                {"subnet":"10.211.0.0/24"},
                {"subnet":"10.212.0.0/24","gateway":"none"},
                {"subnet":"2001:db8:5::/64"}]}"#,
        )
        .unwrap();
        n.validate().unwrap();
        let gws: Vec<Option<IpAddr>> = n.subnets.iter().map(Subnet::gateway).collect();
        assert_eq!(
            gws,
            vec![
                Some("10.211.0.1".parse().unwrap()),
                None,
                Some("2001:db8:5::1".parse().unwrap())
            ]
        );
        assert!(n.subnets[0]
            .unavailable_reason("10.211.0.1".parse().unwrap())
            .unwrap()
            .contains("gateway"));
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains(r#""gateway":"none""#), "{text}");
        let e = serde_json::from_str::<Subnet>(r#"{"subnet":"10.0.0.0/24","gateway":"nope"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("neither an IP address nor"), "{e}");
    }

    #[test]
    fn request_policy_round_trips_and_is_checked() {
        let mut n = lan();
        assert!(n.requests.is_default());
        assert!(!serde_json::to_string(&n).unwrap().contains("requests"));
        n.requests =
            serde_json::from_str(r#"{"ips":["192.168.32.64/27"],"mac":false,"max_ips":4}"#)
                .unwrap();
        n.validate().unwrap();
        let text = serde_json::to_string(&n).unwrap();
        assert!(
            text.contains(r#""requests":{"ips":["192.168.32.64/27"],"mac":false,"max_ips":4}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Network>(&text).unwrap(), n);
        for (policy, words) in [
            (r#"{"ips":["10.9.0.0/24"]}"#, "not inside a subnet"),
            (r#"{"ips":["192.168.32.65/27"]}"#, "host bits"),
            (r#"{"ips":[]}"#, "write \"none\""),
            (r#"{"max_ips":0}"#, "outside 1-256"),
        ] {
            let mut m = lan();
            m.requests = serde_json::from_str(policy).unwrap();
            let field = if policy.contains("max_ips") {
                "requests.max_ips"
            } else {
                "requests.ips"
            };
            refused(&m, field, &[words]);
        }
        let mut m = ipvlan();
        m.requests.ips = RequestedIps::IpRange;
        refused(&m, "requests.ips", &["no subnet has one"]);
        assert!("bogus".parse::<RequestedIps>().is_err());
        assert!(serde_json::from_str::<RequestPolicy>(r#"{"ips":"some"}"#).is_err());
    }

    #[test]
    fn dotted_parents_name_one_segment() {
        let mut n = lan();
        n.parent = "eth0.050".into();
        assert_eq!(n.segment(), "eth0.50");
        n.parent = "eth0".into();
        assert_eq!(n.segment(), "eth0");
    }
}
