//! Network definitions written by the administrator (SPEC §2): the types, their
//! validation, and the directory of JSON files they live in.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Default directory of network definitions.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/netattach/networks.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Macvlan,
    Ipvlan,
}

/// Link mode. macvlan uses bridge/vepa/private/passthru/source, ipvlan l2/l3/l3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpamMode {
    /// Addresses handed out from the subnet or its ip_range.
    #[default]
    Pool,
    /// Only addresses named by the request.
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub subnet: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
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
}

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

/// Linux interface names: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
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
    let vid: u32 = vid
        .parse()
        .map_err(|_| invalid("parent", format!("VLAN id in {parent:?} is not a number")))?;
    if !(1..=4094).contains(&vid) || base.is_empty() {
        return Err(invalid(
            "parent",
            format!("VLAN id {vid} in {parent:?} is outside 1-4094"),
        ));
    }
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

    /// The effective ipvlan flag.
    pub fn flag(&self) -> IpvlanFlag {
        self.flag.unwrap_or(IpvlanFlag::Bridge)
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
        }
        if self.ipam == IpamMode::Pool && self.subnets.is_empty() {
            // A pool with nothing in it would fail every attach; say so now.
            return Err(invalid(
                "subnets",
                "ipam pool needs at least one subnet (or set ipam to static)",
            ));
        }
        for (i, s) in self.subnets.iter().enumerate() {
            s.validate(&format!("subnets[{i}]"))?;
            for (j, other) in self.subnets.iter().enumerate().skip(i + 1) {
                if s.subnet.contains(&other.subnet.network()) || other.subnet.contains(&s.subnet.network()) {
                    return Err(invalid(
                        format!("subnets[{j}]"),
                        format!("{} overlaps {}", other.subnet, s.subnet),
                    ));
                }
            }
        }
        Ok(())
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
        if net.prefix_len() >= net.max_prefix_len() {
            return Err(invalid(
                format!("{at}.subnet"),
                format!("{net} has no room for hosts"),
            ));
        }
        if let Some(gw) = self.gateway {
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
            return Err(invalid(field, format!("{addr} is not inside {}", self.subnet)));
        }
        if let Some(why) = self.reserved_reason(addr) {
            return Err(invalid(field, format!("{addr} is {why}")));
        }
        Ok(())
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
        if self.gateway == Some(addr) {
            return Some(format!("the gateway of {}", self.subnet));
        }
        if let Some((name, _)) = self.aux_addresses.iter().find(|(_, a)| **a == addr) {
            return Some(format!("the aux address {name:?}"));
        }
        None
    }
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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: InvalidNetwork,
    },
    #[error(transparent)]
    Definition(#[from] InvalidNetwork),
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

    /// Loads and validates one network.
    pub fn load(&self, name: &str) -> Result<Network, ConfigError> {
        let path = self.file_of(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound(name.to_string()))
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let net: Network = serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        net.validate().map_err(|source| ConfigError::Invalid {
            path: path.clone(),
            source,
        })?;
        if net.name != name {
            return Err(ConfigError::Invalid {
                path,
                source: invalid("name", format!("{:?} does not match the file name", net.name)),
            });
        }
        Ok(net)
    }

    /// Every network, sorted by name. A broken file is an error, not silently skipped.
    pub fn list(&self) -> Result<Vec<Network>, ConfigError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: self.dir.clone(),
                    source,
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
        names.iter().map(|n| self.load(n)).collect()
    }

    /// Writes a new network atomically (temp file + rename); refuses to overwrite.
    pub fn create(&self, net: &Network) -> Result<PathBuf, ConfigError> {
        net.validate()?;
        let path = self.file_of(&net.name)?;
        fs::create_dir_all(&self.dir).map_err(|source| ConfigError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let tmp = self.dir.join(format!(".{}.json.tmp{}", net.name, std::process::id()));
        let io_err = |source| ConfigError::Io {
            path: tmp.clone(),
            source,
        };
        let mut body = serde_json::to_vec_pretty(net).expect("network serializes");
        body.push(b'\n');
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
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
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    /// Removes a network's definition.
    pub fn remove(&self, name: &str) -> Result<(), ConfigError> {
        let path = self.file_of(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ConfigError::NotFound(name.to_string()))
            }
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }
}
