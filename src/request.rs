//! The annotation grammar (SPEC §3): `netattach/networks` in its short form
//! (`lan`, `lan@eth1`, `lan,storage@st0`) and its JSON form (the Kubernetes
//! network-selection list). The value is untrusted: everything is bounded and
//! checked here, before it meets a network definition.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::Deserialize;

use crate::config::{valid_ifname, valid_network_name};

/// The annotation key that carries the request.
pub const ANNOTATION: &str = "netattach/networks";

/// The annotation that names a container's stable identity (kept across
/// re-creations, unlike its id): what `mac_policy=stable` derives from.
pub const IDENTITY_ANNOTATION: &str = "netattach/identity";

/// A stable identity as given: 1 to 253 printable ASCII characters.
pub fn check_identity(identity: &str) -> Result<(), String> {
    if identity.is_empty()
        || identity.len() > 253
        || !identity.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "{IDENTITY_ANNOTATION}: {identity:?} must be 1 to 253 printable characters without spaces"
        ));
    }
    Ok(())
}
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

/// As text, `02:00:c0:a8:20:8c`.
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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

impl MacAddr {
    /// Bit 0 of the first octet: a group (multicast or broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Bit 1 of the first octet: assigned locally, not by a vendor.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The MAC a request may ask for: unicast, locally administered, not all zero.
    /// `Err` holds the rule that is broken.
    pub fn check_assignable(&self) -> Result<(), &'static str> {
        if self.0 == [0; 6] {
            Err("the all-zero address is not a usable MAC")
        } else if self.is_multicast() {
            Err("a multicast address (bit 0 of the first octet is set); a unicast address is required")
        } else if !self.is_locally_administered() {
            Err("a globally administered address (bit 1 of the first octet is clear); a locally administered address is required, e.g. with first octet 02")
        } else {
            Ok(())
        }
    }
}

/// `xx:xx:xx:xx:xx:xx`, hex digits of either case. Syntax only; see
/// [`MacAddr::check_assignable`] for what a request may ask for.
impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected six hex octets separated by ':', like 02:00:c0:a8:20:8c";
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for octet in out.iter_mut() {
            let part = parts.next().ok_or(EXPECTED)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(EXPECTED.to_string());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| EXPECTED)?;
        }
        if parts.next().is_some() {
            return Err(EXPECTED.to_string());
        }
        Ok(MacAddr(out))
    }
}

/// As text, as it is written.
impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `addr` or `addr/prefix`, the prefix in 1..=32 (IPv4) or 1..=128 (IPv6).
/// Syntax only; see [`unusable_reason`] for the address classes a request may not use.
impl FromStr for RequestedIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "not an IPv4 or IPv6 address".to_string())?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => None,
            Some(p) => {
                let len = (!p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| p.parse::<u8>().ok())
                    .flatten()
                    .filter(|l| (1..=max).contains(l));
                match len {
                    Some(l) => Some(l),
                    None => return Err(format!("prefix length must be a number in 1..={max}")),
                }
            }
        };
        Ok(RequestedIp { addr, prefix_len })
    }
}

/// Why `addr` can never be given to (or used as a gateway by) a container, if it cannot:
/// unspecified, loopback, multicast, IPv4 limited broadcast.
pub fn unusable_reason(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the limited broadcast address")
    } else {
        None
    }
}

/// Keys of one network in the JSON form, in the order messages list them.
const KEYS: [&str; 5] = ["name", "interface", "ips", "mac", "default-route"];

/// One element of the JSON form exactly as written; converted and checked by [`convert`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a network object")]
struct RawNetwork {
    name: String,
    interface: Option<String>,
    ips: Option<Vec<String>>,
    mac: Option<String>,
    #[serde(rename = "default-route")]
    default_route: Option<Vec<String>>,
}

/// Parses the value of the `netattach/networks` annotation (SPEC §3).
///
/// Short form `lan`, `lan@eth1`, `lan,storage@st0`, or the JSON form
/// `[{"name":"lan","interface":"eth1","ips":[...],"mac":"02:..","default-route":[...]}]`.
/// The value is untrusted: it is bounded ([`MAX_BYTES`], [`MAX_NETWORKS`]), names
/// and interface names pass `valid_network_name` / `valid_ifname`, and every
/// error is one line naming the byte position or the network and field at fault.
/// An absent annotation is the caller's business (a no-op); an empty value is an error,
/// while the JSON list `[]` (as generators write "no networks") is an empty request.
pub fn parse(value: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    if value.len() > MAX_BYTES {
        return Err(err(format!(
            "value too large: {} bytes, at most {MAX_BYTES} allowed",
            value.len()
        )));
    }
    let Some(start) = value.bytes().position(|c| !c.is_ascii_whitespace()) else {
        return Err(err("empty request: the value names no network"));
    };
    let nets = match value.as_bytes()[start] {
        b'[' => parse_json(value)?,
        b'{' | b'"' => {
            return Err(err(format!(
                "not a JSON array at byte {start}: the JSON form is a list of networks, [{{\"name\":...}}]"
            )))
        }
        _ => parse_short(value)?,
    };
    check_set(&nets)?;
    Ok(nets)
}

fn err(msg: impl Into<String>) -> RequestError {
    RequestError(one_line(&msg.into()))
}

/// Escapes control and invisible formatting characters so a message stays one
/// honest line whatever the value held.
fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        if c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A piece of untrusted text for a message: quoted, escaped, and cut at 64 chars.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// Where a problem is: the network's index, its name when known, the byte when known.
struct At<'a> {
    index: usize,
    name: Option<&'a str>,
    byte: Option<usize>,
}

impl<'a> At<'a> {
    fn new(index: usize, name: &'a str) -> Self {
        At {
            index,
            name: Some(name),
            byte: None,
        }
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network {}", self.index)?;
        if let Some(name) = self.name {
            write!(f, " ({})", quote(name))?;
        }
        if let Some(byte) = self.byte {
            write!(f, " at byte {byte}")?;
        }
        Ok(())
    }
}

/// `<what> in network <i> ("<name>"), field "<field>": <detail>`.
fn field_err(
    what: impl fmt::Display,
    at: &At,
    field: &str,
    detail: impl fmt::Display,
) -> RequestError {
    err(format!("{what} in {at}, field \"{field}\": {detail}"))
}

fn too_many(n: usize) -> RequestError {
    err(format!(
        "too many networks: {n} requested, at most {MAX_NETWORKS} allowed"
    ))
}

fn check_name(at: &At, name: &str) -> Result<(), RequestError> {
    if valid_network_name(name) {
        return Ok(());
    }
    let at = At { name: None, ..*at };
    Err(field_err(
        format_args!("invalid network name {}", quote(name)),
        &at,
        "name",
        "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    ))
}

fn check_ifname(at: &At, ifname: &str) -> Result<(), RequestError> {
    if valid_ifname(ifname) {
        return Ok(());
    }
    Err(field_err(
        format_args!("invalid interface name {}", quote(ifname)),
        at,
        "interface",
        "must be 1-15 bytes of printable ASCII without '/', ':' or whitespace, and not \".\" or \"..\"",
    ))
}

/// `name[@ifname]` items separated by commas, whitespace around items ignored.
fn parse_short(value: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    let count = value.split(',').count();
    if count > MAX_NETWORKS {
        return Err(too_many(count));
    }
    let ws = |c: char| c.is_ascii_whitespace();
    let mut nets = Vec::with_capacity(count);
    let mut item_start = 0;
    for (index, item) in value.split(',').enumerate() {
        let byte = item_start + (item.len() - item.trim_start_matches(ws).len());
        item_start += item.len() + 1;
        let item = item.trim_matches(ws);
        if item.is_empty() {
            return Err(err(format!(
                "empty network entry at byte {byte} (network {index}): expected name or name@interface between commas"
            )));
        }
        let mut at = At {
            index,
            name: None,
            byte: Some(byte),
        };
        let (name, ifname) = match item.split_once('@') {
            Some((n, i)) => (n, Some(i)),
            None => (item, None),
        };
        check_name(&at, name)?;
        at.name = Some(name);
        // Problems after the '@' point at the interface name.
        at.byte = Some(byte + name.len() + 1);
        if let Some(ifname) = ifname {
            if ifname.contains('@') {
                return Err(field_err(
                    "more than one '@'",
                    &at,
                    "interface",
                    "expected name or name@interface",
                ));
            }
            check_ifname(&at, ifname)?;
        }
        nets.push(NetworkRequest {
            name: name.to_string(),
            interface: ifname.map(str::to_string),
            ..NetworkRequest::default()
        });
    }
    Ok(nets)
}

fn parse_json(value: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    let raws: Vec<RawNetwork> = serde_json::from_str(value).map_err(|e| json_error(value, &e))?;
    if raws.len() > MAX_NETWORKS {
        return Err(too_many(raws.len()));
    }
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| convert(index, raw))
        .collect()
}

/// Turns a serde error into a message with a byte position or, for a well-formed
/// value of the wrong shape, the network and key at fault.
fn json_error(value: &str, e: &serde_json::Error) -> RequestError {
    let byte = byte_offset(value, e.line(), e.column());
    let full = e.to_string();
    let msg = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    if e.is_syntax() || e.is_eof() {
        return err(format!("malformed JSON at byte {byte}: {msg}"));
    }
    // Well-formed but not what we take: look again without the schema to say
    // which network and which key. (The depth limit of serde_json applies here too.)
    // A value that is not JSON at all is reported as such first.
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v) => {
            if let Some(m) = describe_shape(&v) {
                return err(m);
            }
        }
        Err(syntax) => return json_error(value, &syntax),
    }
    err(format!("invalid request at byte {byte}: {msg}"))
}

/// serde_json counts lines from 1 and columns in bytes up to and including the
/// offending one; this gives the 0-based byte offset into the value.
fn byte_offset(value: &str, line: usize, column: usize) -> usize {
    if line == 0 {
        return 0;
    }
    let line_start: usize = value
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    (line_start + column).saturating_sub(1).min(value.len())
}

fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first shape problem of a well-formed JSON value, named by network and key.
fn describe_shape(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let Value::Array(items) = v else {
        return Some(format!(
            "not a JSON array: the JSON form is a list of networks, found {}",
            kind(v)
        ));
    };
    for (index, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            return Some(format!(
                "wrong type for network {index}: expected an object, found {}",
                kind(item)
            ));
        };
        let at = At {
            index,
            name: map.get("name").and_then(Value::as_str),
            byte: None,
        };
        if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Some(format!(
                "unknown key {} in {at}; expected one of {}",
                quote(key),
                KEYS.join(", ")
            ));
        }
        if !map.contains_key("name") {
            return Some(format!(
                "missing key \"name\" in {at}; every network needs a name"
            ));
        }
        for key in KEYS {
            let Some(field) = map.get(key) else { continue };
            let (ok, expected) = match key {
                "name" => (field.is_string(), "a string"),
                "interface" | "mac" => (field.is_string() || field.is_null(), "a string"),
                _ => (
                    field.is_null()
                        || field
                            .as_array()
                            .is_some_and(|a| a.iter().all(Value::is_string)),
                    "an array of strings",
                ),
            };
            if !ok {
                let found = match field.as_array() {
                    Some(a) => match a.iter().find(|x| !x.is_string()) {
                        Some(x) => format!("an array holding {}", kind(x)),
                        None => "an array".to_string(),
                    },
                    None => kind(field).to_string(),
                };
                return Some(format!(
                    "wrong type for key \"{key}\" in {at}: expected {expected}, found {found}"
                ));
            }
        }
    }
    None
}

/// Checks one network of the JSON form and turns it into a request.
fn convert(index: usize, raw: RawNetwork) -> Result<NetworkRequest, RequestError> {
    let at = At {
        index,
        name: None,
        byte: None,
    };
    check_name(&at, &raw.name)?;
    let at = At::new(index, &raw.name);
    if let Some(ifname) = &raw.interface {
        check_ifname(&at, ifname)?;
    }
    let mut ips = Vec::new();
    for s in raw.ips.iter().flatten() {
        let ip: RequestedIp = s.parse().map_err(|why: String| {
            field_err(
                format_args!("invalid address {}", quote(s)),
                &at,
                "ips",
                why,
            )
        })?;
        if let Some(why) = unusable_reason(ip.addr) {
            return Err(field_err(
                format_args!("unusable address {}", ip.addr),
                &at,
                "ips",
                format_args!("{why} cannot be given to a container"),
            ));
        }
        ips.push(ip);
    }
    let mac = match &raw.mac {
        None => None,
        Some(s) => {
            let mac: MacAddr = s.parse().map_err(|why: String| {
                field_err(format_args!("malformed MAC {}", quote(s)), &at, "mac", why)
            })?;
            if let Err(why) = mac.check_assignable() {
                return Err(field_err(
                    format_args!("unusable MAC {mac}"),
                    &at,
                    "mac",
                    format_args!("it is {why}"),
                ));
            }
            Some(mac)
        }
    };
    let default_route = match &raw.default_route {
        None => None,
        Some(list) => {
            let mut gateways = Vec::with_capacity(list.len());
            for s in list {
                let gw: IpAddr = s.parse().map_err(|_| {
                    field_err(
                        format_args!("invalid gateway {}", quote(s)),
                        &at,
                        "default-route",
                        "expected an IPv4 or IPv6 address without prefix",
                    )
                })?;
                if let Some(why) = unusable_reason(gw) {
                    return Err(field_err(
                        format_args!("unusable gateway {gw}"),
                        &at,
                        "default-route",
                        format_args!("{why} cannot be a gateway"),
                    ));
                }
                gateways.push(gw);
            }
            Some(gateways)
        }
    };
    Ok(NetworkRequest {
        interface: raw.interface,
        ips,
        mac,
        default_route,
        name: raw.name,
    })
}

/// Rules across the networks of one request: each network, interface, address and
/// MAC at most once, at most one network carrying `default-route`.
fn check_set(nets: &[NetworkRequest]) -> Result<(), RequestError> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ifnames: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut macs: HashMap<MacAddr, usize> = HashMap::new();
    let mut default_route: Option<usize> = None;
    let label = |i: usize| At::new(i, &nets[i].name).to_string();
    for (i, net) in nets.iter().enumerate() {
        let at = At::new(i, &net.name);
        if let Some(first) = names.insert(&net.name, i) {
            return Err(field_err(
                format_args!("duplicate network {}", quote(&net.name)),
                &At { name: None, ..at },
                "name",
                format_args!("already requested as network {first}"),
            ));
        }
        if let Some(ifname) = &net.interface {
            if let Some(first) = ifnames.insert(ifname, i) {
                return Err(field_err(
                    format_args!("duplicate interface name {}", quote(ifname)),
                    &at,
                    "interface",
                    format_args!("already used by {}", label(first)),
                ));
            }
        }
        for ip in &net.ips {
            if let Some(first) = addrs.insert(ip.addr, i) {
                let detail = if first == i {
                    "listed twice in this network".to_string()
                } else {
                    format!("also requested by {}", label(first))
                };
                return Err(field_err(
                    format_args!("duplicate address {}", ip.addr),
                    &at,
                    "ips",
                    detail,
                ));
            }
        }
        if let Some(mac) = net.mac {
            if let Some(first) = macs.insert(mac, i) {
                return Err(field_err(
                    format_args!("duplicate MAC {mac}"),
                    &at,
                    "mac",
                    format_args!("also requested by {}", label(first)),
                ));
            }
        }
        if net.default_route.is_some() {
            if let Some(first) = default_route {
                return Err(field_err(
                    "second default-route",
                    &at,
                    "default-route",
                    format_args!(
                        "{} already carries it; at most one network may",
                        label(first)
                    ),
                ));
            }
            default_route = Some(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> Vec<NetworkRequest> {
        match parse(v) {
            Ok(n) => n,
            Err(e) => panic!("{v:?} refused: {e}"),
        }
    }

    /// The message, checked to be one line that contains every word in `words`.
    fn refused(v: &str, words: &[&str]) -> String {
        let e = match parse(v) {
            Ok(n) => panic!("{:?} accepted: {n:?}", &v[..v.len().min(200)]),
            Err(e) => e,
        };
        let shown = e.to_string();
        assert!(shown.starts_with("netattach/networks: "), "{shown}");
        assert!(
            !shown.contains('\n') && !shown.contains('\r'),
            "not one line: {shown}"
        );
        for w in words {
            assert!(e.0.contains(w), "message {:?} lacks {w:?}", e.0);
        }
        e.0
    }

    fn named(name: &str, interface: Option<&str>) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            interface: interface.map(Into::into),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> RequestedIp {
        s.parse().unwrap()
    }

    #[test]
    fn short_forms() {
        assert_eq!(ok("lan"), vec![named("lan", None)]);
        assert_eq!(ok("lan@eth1"), vec![named("lan", Some("eth1"))]);
        assert_eq!(
            ok("lan,storage@st0"),
            vec![named("lan", None), named("storage", Some("st0"))]
        );
        assert_eq!(
            ok("  lan@eth1 ,\tstorage \n"),
            vec![named("lan", Some("eth1")), named("storage", None)]
        );
        assert_eq!(
            ok("a.b-c_D9@eth-9.x"),
            vec![named("a.b-c_D9", Some("eth-9.x"))]
        );
        // Exactly 15 bytes and exactly 64 bytes are fine.
        let long = "n".repeat(64);
        assert_eq!(
            ok(&format!("{long}@abcdefghijklmno")),
            vec![named(&long, Some("abcdefghijklmno"))]
        );
        // 32 networks is the limit, not beyond it.
        let v: Vec<String> = (0..32).map(|i| format!("n{i}")).collect();
        assert_eq!(ok(&v.join(",")).len(), 32);
    }

    #[test]
    fn short_form_refusals() {
        refused("lan,,x", &["empty network entry", "byte 4", "network 1"]);
        refused("lan,", &["empty network entry", "byte 4"]);
        refused(",lan", &["empty network entry", "byte 0"]);
        refused("lan, ,x", &["empty network entry", "byte 5"]);
        refused(
            "lan@",
            &[
                "invalid interface name \"\"",
                "network 0 (\"lan\")",
                "\"interface\"",
            ],
        );
        // The position points at the interface name of the right item.
        refused(
            "x, lan@a/b",
            &[
                "invalid interface name \"a/b\"",
                "network 1 (\"lan\") at byte 7",
            ],
        );
        refused(
            "@eth0",
            &["invalid network name \"\"", "network 0", "\"name\""],
        );
        refused("lan@eth0@x", &["more than one '@'", "network 0 (\"lan\")"]);
        refused("lan @eth0", &["invalid network name \"lan \"", "byte 0"]);
        refused("ns/lan", &["invalid network name \"ns/lan\"", "\"name\""]);
        refused(
            "x,../etc",
            &["invalid network name \"../etc\"", "network 1", "byte 2"],
        );
        refused("-lan", &["invalid network name"]);
        refused(&"n".repeat(65), &["invalid network name"]);
        refused("lan\0", &["invalid network name \"lan\\0\""]);
        refused("l\u{0430}n", &["invalid network name"]); // Cyrillic a
        refused("lan\u{202e}", &["invalid network name"]);
        refused(
            "lan,lan@eth1",
            &[
                "duplicate network \"lan\"",
                "network 1",
                "already requested as network 0",
            ],
        );
        refused(
            "a@eth1,b@eth1",
            &[
                "duplicate interface name \"eth1\"",
                "network 1 (\"b\")",
                "network 0 (\"a\")",
            ],
        );
    }

    #[test]
    fn bad_interface_names() {
        // Whitespace around a short-form item is trimmed; inside a JSON string it is not.
        assert_eq!(ok("lan@eth0\n"), vec![named("lan", Some("eth0"))]);
        refused(
            r#"[{"name":"lan","interface":"eth0\n"}]"#,
            &["invalid interface name \"eth0\\n\"", "network 0 (\"lan\")"],
        );
        for bad in [
            "abcdefghijklmnop",
            "a/b",
            ".",
            "..",
            "eth 0",
            "eth\t0",
            "eth:0",
            "et\u{e9}",
            "eth0\u{a0}",
        ] {
            let v = format!("lan@{bad}");
            let m = refused(
                &v,
                &[
                    "invalid interface name",
                    "network 0 (\"lan\")",
                    "\"interface\"",
                ],
            );
            assert!(!m.contains('\n'));
            let v = format!(
                r#"[{{"name":"lan","interface":{}}}]"#,
                serde_json::to_string(bad).unwrap()
            );
            refused(
                &v,
                &[
                    "invalid interface name",
                    "network 0 (\"lan\")",
                    "\"interface\"",
                ],
            );
        }
    }

    #[test]
    fn json_form() {
        let v = r#"[{"name":"lan","interface":"eth1","ips":["192.168.32.140/24","2001:db8::8c/64"],"mac":"02:00:c0:a8:20:8c","default-route":["192.168.32.254"]}]"#;
        let got = ok(v);
        assert_eq!(
            got,
            vec![NetworkRequest {
                name: "lan".into(),
                interface: Some("eth1".into()),
                ips: vec![
                    RequestedIp {
                        addr: "192.168.32.140".parse().unwrap(),
                        prefix_len: Some(24)
                    },
                    RequestedIp {
                        addr: "2001:db8::8c".parse().unwrap(),
                        prefix_len: Some(64)
                    },
                ],
                mac: Some(MacAddr([0x02, 0x00, 0xc0, 0xa8, 0x20, 0x8c])),
                default_route: Some(vec!["192.168.32.254".parse().unwrap()]),
            }]
        );
        assert_eq!(got[0].ips[0].to_string(), "192.168.32.140/24");
        assert_eq!(got[0].mac.unwrap().to_string(), "02:00:c0:a8:20:8c");

        // Minimal, whitespace, no prefix, upper-case MAC, empty default-route, null = absent.
        let got = ok(" \n [ {\"name\":\"a\"},\n {\"name\":\"b\",\"ips\":[\"10.0.0.5\"],\"mac\":\"0A:BC:DE:F0:12:34\",\"default-route\":[],\"interface\":null} ] \n");
        assert_eq!(got[0], named("a", None));
        assert_eq!(got[1].ips, vec![ip("10.0.0.5")]);
        assert_eq!(got[1].ips[0].prefix_len, None);
        assert_eq!(
            got[1].mac,
            Some(MacAddr([0x0a, 0xbc, 0xde, 0xf0, 0x12, 0x34]))
        );
        assert_eq!(got[1].default_route, Some(vec![]));
        assert_eq!(got[1].interface, None);
        assert_eq!(got[0].default_route, None);

        // Prefix bounds.
        assert_eq!(
            ok(r#"[{"name":"a","ips":["10.0.0.5/32","2001:db8::1/128","10.0.0.6/1"]}]"#)[0]
                .ips
                .len(),
            3
        );
        // Same address in different families of the same host is fine; the empty array too.
        assert!(ok(r#"[{"name":"a","ips":[]}]"#)[0].ips.is_empty());
    }

    #[test]
    fn json_unknown_and_missing_keys() {
        let m = refused(
            r#"[{"name":"lan","iface":"eth1"}]"#,
            &[
                "unknown key \"iface\"",
                "network 0 (\"lan\")",
                "expected one of name, interface, ips, mac, default-route",
            ],
        );
        assert!(m.starts_with("unknown key"), "{m}");
        refused(
            r#"[{"name":"a"},{"name":"b","defaultRoute":[]}]"#,
            &["unknown key \"defaultRoute\"", "network 1 (\"b\")"],
        );
        refused(
            r#"[{"interface":"eth1"}]"#,
            &["missing key \"name\"", "network 0"],
        );
        refused(
            r#"[{"name":"a\nb","x\u202e":1}]"#,
            &["unknown key", "network 0"],
        );
        refused(r#"[{"name":"a","name":"b"}]"#, &["duplicate field", "byte"]);
    }

    #[test]
    fn json_wrong_types() {
        refused(
            "[1]",
            &[
                "wrong type for network 0",
                "expected an object, found a number",
            ],
        );
        refused("[[]]", &["wrong type for network 0", "found an array"]);
        refused(
            r#"[{"name":5}]"#,
            &[
                "wrong type for key \"name\"",
                "network 0",
                "expected a string, found a number",
            ],
        );
        refused(
            r#"[{"name":"a","ips":"10.0.0.1"}]"#,
            &[
                "wrong type for key \"ips\"",
                "network 0 (\"a\")",
                "found a string",
            ],
        );
        refused(
            r#"[{"name":"a","ips":[1]}]"#,
            &["\"ips\"", "found an array holding a number"],
        );
        refused(
            r#"[{"name":"a","mac":true}]"#,
            &["\"mac\"", "found a boolean"],
        );
        refused(
            r#"[{"name":"a","default-route":"10.0.0.1"}]"#,
            &["\"default-route\"", "expected an array of strings"],
        );
    }

    #[test]
    fn json_syntax_errors_name_the_byte() {
        refused("[1,]", &["malformed JSON", "byte 3"]);
        refused(
            r#"[{"name":"a"}] x"#,
            &["malformed JSON", "trailing characters", "byte 15"],
        );
        refused(r#"[{"name":"a"}][]"#, &["malformed JSON", "byte 14"]);
        refused(
            "[\n{\"name\":\"a\",}]",
            &["malformed JSON", "trailing comma", "byte 14"],
        );
        refused(r#"[{"name":"a""#, &["malformed JSON", "EOF"]);
        refused("[", &["malformed JSON"]);
        refused(r#"[{"name":"a\u0000"}]"#, &["invalid network name", "\\0"]);
    }

    #[test]
    fn empty_json_list_is_no_network() {
        assert_eq!(ok("[]"), vec![]);
        assert_eq!(ok(" [ ] "), vec![]);
    }

    #[test]
    fn not_an_array() {
        refused(r#"{"name":"lan"}"#, &["not a JSON array", "byte 0"]);
        refused(r#"  "lan""#, &["not a JSON array", "byte 2"]);
    }

    #[test]
    fn deep_nesting_does_not_crash() {
        for v in [
            "[".repeat(10_000),
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!(r#"[{{"name":"a","ips":{}}}]"#, "[".repeat(10_000)),
            format!(
                r#"[{{"name":"a","x":{}1{}}}]"#,
                "[".repeat(5_000),
                "]".repeat(5_000)
            ),
            format!(
                r#"[{{"name":{}"a"{}}}]"#,
                "{\"a\":".repeat(5_000),
                "}".repeat(5_000)
            ),
        ] {
            let e = parse(&v).unwrap_err();
            assert!(!e.0.contains('\n'));
            assert!(e.0.len() < 300, "{}", e.0);
        }
    }

    #[test]
    fn bounds() {
        refused("", &["empty request"]);
        refused(" \t\n ", &["empty request"]);
        let big = format!("lan{}", " ".repeat(MAX_BYTES + 1 - 3));
        assert_eq!(big.len(), MAX_BYTES + 1);
        refused(&big, &["too large", "65537 bytes", "65536"]);
        // Size is checked before anything is parsed: even garbage says "too large".
        refused(&"[".repeat(MAX_BYTES + 1), &["too large"]);
        // Exactly the bound is fine.
        let edge = format!("lan{}", " ".repeat(MAX_BYTES - 3));
        assert_eq!(ok(&edge), vec![named("lan", None)]);

        let v: Vec<String> = (0..33).map(|i| format!("n{i}")).collect();
        refused(&v.join(","), &["too many networks", "33", "32"]);
        let v: Vec<String> = (0..33).map(|i| format!(r#"{{"name":"n{i}"}}"#)).collect();
        refused(
            &format!("[{}]", v.join(",")),
            &["too many networks", "33", "32"],
        );
        let v: Vec<String> = (0..32).map(|i| format!(r#"{{"name":"n{i}"}}"#)).collect();
        assert_eq!(ok(&format!("[{}]", v.join(","))).len(), 32);
    }

    #[test]
    fn macs() {
        let j = |mac: &str| format!(r#"[{{"name":"lan","mac":"{mac}"}}]"#);
        assert_eq!(
            ok(&j("fe:ff:ff:ff:ff:ff"))[0].mac,
            Some(MacAddr([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]))
        );
        refused(
            &j("01:00:5e:00:00:01"),
            &[
                "unusable MAC 01:00:5e:00:00:01",
                "network 0 (\"lan\")",
                "\"mac\"",
                "multicast",
                "unicast",
            ],
        );
        refused(&j("ff:ff:ff:ff:ff:ff"), &["unusable MAC", "multicast"]);
        refused(&j("03:00:00:00:00:01"), &["unusable MAC", "multicast"]);
        refused(
            &j("00:11:22:33:44:55"),
            &[
                "unusable MAC 00:11:22:33:44:55",
                "globally administered",
                "locally administered",
            ],
        );
        refused(&j("00:00:00:00:00:00"), &["unusable MAC", "all-zero"]);
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "2:0:0:0:0:1",
            "02:00:00:00:00:0g",
            "+2:00:00:00:00:01",
            "020000000001",
            "02:00:00:00:00:01 ",
            "",
        ] {
            refused(
                &j(bad),
                &[
                    "malformed MAC",
                    "\"mac\"",
                    "network 0 (\"lan\")",
                    "six hex octets",
                ],
            );
        }
        refused(
            r#"[{"name":"a","mac":"02:00:00:00:00:01"},{"name":"b","mac":"02:00:00:00:00:01"}]"#,
            &[
                "duplicate MAC 02:00:00:00:00:01",
                "network 1 (\"b\")",
                "network 0 (\"a\")",
            ],
        );
    }

    #[test]
    fn ips() {
        let j = |ip: &str| format!(r#"[{{"name":"lan","ips":["{ip}"]}}]"#);
        for bad in [
            "10.0.0.1/0",
            "10.0.0.1/33",
            "2001:db8::1/129",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0.1/24/1",
            "10.0.0.1/x",
        ] {
            refused(
                &j(bad),
                &[
                    "invalid address",
                    "\"ips\"",
                    "network 0 (\"lan\")",
                    "prefix length",
                ],
            );
        }
        for bad in [
            "10.0.0",
            "010.0.0.1",
            "fe80::1%eth0",
            "lan",
            " 10.0.0.1",
            "",
        ] {
            refused(
                &j(bad),
                &["invalid address", "\"ips\"", "not an IPv4 or IPv6 address"],
            );
        }
        refused(&j("0.0.0.0"), &["unusable address 0.0.0.0", "unspecified"]);
        refused(&j("::"), &["unusable address ::", "unspecified"]);
        refused(
            &j("127.0.0.5/8"),
            &["unusable address 127.0.0.5", "loopback"],
        );
        refused(&j("::1"), &["loopback"]);
        refused(&j("224.0.0.1"), &["multicast"]);
        refused(&j("ff02::1"), &["multicast"]);
        refused(&j("255.255.255.255"), &["broadcast"]);
        refused(
            r#"[{"name":"a","ips":["10.0.0.5/24"]},{"name":"b","ips":["10.0.0.5"]}]"#,
            &[
                "duplicate address 10.0.0.5",
                "network 1 (\"b\")",
                "\"ips\"",
                "network 0 (\"a\")",
            ],
        );
        refused(
            r#"[{"name":"a","ips":["2001:db8::1","2001:db8:0::1/64"]}]"#,
            &[
                "duplicate address 2001:db8::1",
                "network 0 (\"a\")",
                "listed twice",
            ],
        );
    }

    #[test]
    fn default_routes() {
        let got = ok(r#"[{"name":"a"},{"name":"b","default-route":["10.0.0.1","2001:db8::1"]}]"#);
        assert_eq!(got[0].default_route, None);
        assert_eq!(
            got[1].default_route,
            Some(vec![
                "10.0.0.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap()
            ])
        );
        refused(
            r#"[{"name":"a","default-route":[]},{"name":"b","default-route":[]}]"#,
            &[
                "second default-route",
                "network 1 (\"b\")",
                "\"default-route\"",
                "network 0 (\"a\")",
            ],
        );
        refused(
            r#"[{"name":"a","default-route":["10.0.0.1/24"]}]"#,
            &["invalid gateway \"10.0.0.1/24\"", "\"default-route\""],
        );
        refused(
            r#"[{"name":"a","default-route":["0.0.0.0"]}]"#,
            &["unusable gateway 0.0.0.0", "\"default-route\""],
        );
    }

    #[test]
    fn json_duplicates() {
        refused(
            r#"[{"name":"a"},{"name":"a"}]"#,
            &["duplicate network \"a\"", "network 1", "network 0"],
        );
        refused(
            r#"[{"name":"a","interface":"eth1"},{"name":"b","interface":"eth1"}]"#,
            &[
                "duplicate interface name \"eth1\"",
                "network 1 (\"b\")",
                "\"interface\"",
                "network 0 (\"a\")",
            ],
        );
        // No interface named: the caller picks ethN, no conflict here.
        assert_eq!(ok(r#"[{"name":"a"},{"name":"b"}]"#).len(), 2);
    }

    #[test]
    fn hostile_names_never_pass() {
        for bad in [
            "../../etc/passwd",
            "a/b",
            ".hidden",
            "..",
            "a\nb",
            "a\0",
            "\u{ff0f}etc",
            "lan\u{200b}",
            "a b",
        ] {
            let v = format!(r#"[{{"name":{}}}]"#, serde_json::to_string(bad).unwrap());
            let m = refused(&v, &["invalid network name", "\"name\""]);
            assert!(!m.contains('\u{200b}') && !m.contains('\0'), "{m:?}");
        }
        // Long hostile text is cut in messages.
        let v = format!(r#"[{{"name":"{}/"}}]"#, "a".repeat(10_000));
        let m = refused(&v, &["invalid network name"]);
        assert!(m.len() < 400, "{m}");
    }

    #[test]
    fn from_str_helpers() {
        assert_eq!(
            "02:AB:cd:00:00:01".parse::<MacAddr>(),
            Ok(MacAddr([2, 0xab, 0xcd, 0, 0, 1]))
        );
        assert!("02:ab:cd:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .check_assignable()
            .is_ok());
        assert_eq!(ip("2001:db8::1/64").prefix_len, Some(64));
        assert_eq!(unusable_reason("192.168.1.1".parse().unwrap()), None);
    }

    #[test]
    fn administrators_options_are_refused_in_requests() {
        // Only the network's definition may set these: a request naming one
        // is refused, not silently ignored.
        for key in [
            "host_address",
            "host_addresses",
            "macvlan_source",
            "macvlan_sources",
            "announce",
            "mac_policy",
            "sticky_ips",
        ] {
            let v = format!(r#"[{{"name":"lan","{key}":"x"}}]"#);
            let e = refused(&v, &[key]);
            assert!(e.contains("unknown key"), "{key}: {e}");
        }
    }
}
