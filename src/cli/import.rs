//! `netattach network import`: the macvlan and ipvlan networks of a Docker
//! host, read from `docker network inspect` output, defined here.
//!
//! Each Docker network is turned into the flags `network create` takes and
//! goes through `network create`'s own builder and validation
//! ([`super::network::definition_from`]), so an imported definition is one
//! that could have been typed. What netattach cannot reproduce is refused by
//! name, never dropped: the import either defines the network the containers
//! had under Docker, or says why not.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Read};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::network::{definition_from, CreateArgs, SharedArgs};
use super::Context;
use crate::config::{ConfigError, Driver, Gateway, Network};

#[derive(Args)]
pub struct ImportArgs {
    /// Write nothing: print the definitions that would be written, as a JSON
    /// array (refusals still on stderr, and the same exit status).
    #[arg(long)]
    dry_run: bool,
    /// The output of `docker network inspect` (a JSON array); `-` or none
    /// reads it from stdin.
    file: Option<PathBuf>,
}

/// What becomes of one network of the input.
#[derive(Debug)]
pub enum Outcome {
    /// Not a macvlan or ipvlan network: nothing to import, not an error.
    Skipped { name: String, why: String },
    /// A macvlan or ipvlan network netattach cannot carry over as it is.
    Refused { name: String, why: String },
    /// The definition to write, with what the operator should know about it.
    Defined {
        net: Box<Network>,
        notes: Vec<String>,
    },
}

/// The driver options of Docker's macvlan and ipvlan drivers that mean the
/// same to `network create -o` (an option of the wrong driver is refused
/// there, by name).
const PASSED_OPTIONS: &[&str] = &[
    "parent",
    "macvlan_mode",
    "ipvlan_mode",
    "ipvlan_flag",
    "com.docker.network.driver.mtu",
];
/// Recent Docker versions record `--ipv4` / `--ipv6` among the options too;
/// netattach follows the subnets, so these are only checked against them.
const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";

/// One network as `docker network inspect` prints it. Only the fields the
/// import reads; every one may be absent or `null` (Docker prints `null`
/// for empty maps in some versions, and the input may be written by hand).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerNetwork {
    name: String,
    driver: Option<String>,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    ipam: Option<DockerIpam>,
    internal: Option<bool>,
    config_from: Option<DockerConfigFrom>,
    config_only: Option<bool>,
    options: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    containers: Option<BTreeMap<String, DockerContainer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerIpam {
    driver: Option<String>,
    options: Option<BTreeMap<String, String>>,
    config: Option<Vec<DockerIpamConfig>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerIpamConfig {
    subnet: Option<String>,
    gateway: Option<String>,
    #[serde(rename = "IPRange")]
    ip_range: Option<String>,
    auxiliary_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerConfigFrom {
    network: Option<String>,
}

#[derive(Deserialize)]
struct DockerContainer {
    #[serde(rename = "IPv4Address")]
    ipv4: Option<String>,
    #[serde(rename = "IPv6Address")]
    ipv6: Option<String>,
}

/// The netattach definition of the `index`th entry of the input (counted
/// from 0), or why there is none.
pub fn import_one(entry: &Value, index: usize) -> Outcome {
    let docker = match DockerNetwork::deserialize(entry) {
        Ok(d) => d,
        Err(e) => {
            let name = entry
                .get("Name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", index + 1), str::to_string);
            return Outcome::Refused {
                name,
                why: format!("not a network as docker network inspect prints it: {e}"),
            };
        }
    };
    let name = docker.name.clone();
    match definition(docker) {
        Ok((net, notes)) => Outcome::Defined {
            net: Box::new(net),
            notes,
        },
        Err(Why::Skip(why)) => Outcome::Skipped { name, why },
        Err(Why::Refuse(why)) => Outcome::Refused { name, why },
    }
}

enum Why {
    Skip(String),
    Refuse(String),
}

fn refuse(why: impl Into<String>) -> Why {
    Why::Refuse(why.into())
}

fn definition(d: DockerNetwork) -> Result<(Network, Vec<String>), Why> {
    let driver = d.driver.clone().unwrap_or_default();
    // Docker gives config-only networks the driver "null"; said apart
    // because the reason is not the driver.
    if d.config_only == Some(true) {
        return Err(Why::Skip(
            "a config-only network (--config-only) has no links of its own".into(),
        ));
    }
    if driver != "macvlan" && driver != "ipvlan" {
        return Err(Why::Skip(format!(
            "driver {} is not macvlan or ipvlan",
            if driver.is_empty() { "(none)" } else { &driver }
        )));
    }
    if let Some(from) = d
        .config_from
        .as_ref()
        .and_then(|c| c.network.as_deref())
        .filter(|n| !n.is_empty())
    {
        return Err(refuse(format!(
            "its settings are those of config-only network {from} (--config-from), which \
             the import does not follow; define it with netattach network create"
        )));
    }
    let ipam = d.ipam.as_ref();
    match ipam.and_then(|i| i.driver.as_deref()) {
        None | Some("") | Some("default") => {}
        // netattach hands out addresses itself: another IPAM's choices
        // (a DHCP server's, a plugin's) would not be the same.
        Some(other) => {
            return Err(refuse(format!(
                "IPAM driver {other} is not supported (netattach hands out addresses itself, \
                 as Docker's default IPAM does)"
            )))
        }
    }
    if let Some(opts) = ipam
        .and_then(|i| i.options.as_ref())
        .filter(|o| !o.is_empty())
    {
        return Err(refuse(format!(
            "IPAM option {} is not supported by netattach",
            listed(opts)
        )));
    }

    let options = d.options.clone().unwrap_or_default();
    let unsupported: BTreeMap<String, String> = options
        .iter()
        .filter(|(k, _)| !PASSED_OPTIONS.contains(&k.as_str()))
        .filter(|(k, _)| *k != ENABLE_IPV4 && *k != ENABLE_IPV6)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !unsupported.is_empty() {
        return Err(refuse(format!(
            "option {} is not supported by netattach (it imports {})",
            listed(&unsupported),
            PASSED_OPTIONS.join(", ")
        )));
    }
    if !options.contains_key("parent") {
        return Err(refuse(
            "no parent option: Docker put it on a dummy link of its own, where containers reach \
             only each other; netattach networks sit on a parent interface",
        ));
    }

    let mut args = CreateArgs {
        driver,
        subnet: Vec::new(),
        gateway: Vec::new(),
        ip_range: Vec::new(),
        aux_address: Vec::new(),
        host_address: Vec::new(),
        internal: d.internal.unwrap_or(false),
        ipv6: false,
        ipam: "pool".into(),
        opt: options
            .iter()
            .filter(|(k, _)| PASSED_OPTIONS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        shared: SharedArgs { host_id: None },
        etcd: Vec::new(),
        block_prefix: None,
        hold: None,
        name: d.name.clone(),
    };
    let configs = ipam.and_then(|i| i.config.as_deref()).unwrap_or_default();
    for (i, c) in configs.iter().enumerate() {
        let at = format!("IPAM.Config[{i}]");
        let subnet = c
            .subnet
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refuse(format!("{at} has no Subnet")))?;
        args.subnet.push(parse_net(&at, "Subnet", subnet)?);
        if let Some(gw) = c.gateway.as_deref().filter(|g| !g.is_empty()) {
            let gw: IpAddr = gw
                .parse()
                .map_err(|_| refuse(format!("{at}.Gateway {gw:?} is not an IP address")))?;
            args.gateway.push(Gateway::Address(gw));
        }
        if let Some(range) = c.ip_range.as_deref().filter(|r| !r.is_empty()) {
            args.ip_range.push(parse_net(&at, "IPRange", range)?);
        }
        for (aux, ip) in c.auxiliary_addresses.iter().flatten() {
            args.aux_address.push(format!("{aux}={ip}"));
        }
    }
    check_families(&d, &options, &args.subnet)?;
    args.ipv6 = args.subnet.iter().any(|s| s.addr().is_ipv6());

    let net = definition_from(args).map_err(|e| refuse(format!("{e:#}")))?;
    Ok((net, notes(&d)))
}

/// A family Docker has turned off (`--ipv6` not given, or `--ipv4=false`)
/// while a subnet of it is configured: Docker gives its containers no such
/// address, netattach would. Neither is guessed: the operator decides.
fn check_families(
    d: &DockerNetwork,
    options: &BTreeMap<String, String>,
    subnets: &[IpNet],
) -> Result<(), Why> {
    for (v6, top, field, key) in [
        (false, d.enable_ipv4, "EnableIPv4", ENABLE_IPV4),
        (true, d.enable_ipv6, "EnableIPv6", ENABLE_IPV6),
    ] {
        let from_option = match options.get(key) {
            None => None,
            Some(value) => Some(go_bool(value).ok_or_else(|| {
                refuse(format!("option {key}={value} is neither true nor false"))
            })?),
        };
        // The top-level field is what Docker did; the option what was asked.
        let (enabled, said) = match (top, from_option) {
            (Some(t), _) => (t, field.to_string()),
            (None, Some(o)) => (o, format!("option {key}")),
            (None, None) => continue,
        };
        if enabled {
            continue;
        }
        if let Some(s) = subnets.iter().find(|s| s.addr().is_ipv6() == v6) {
            let family = if v6 { "IPv6" } else { "IPv4" };
            return Err(refuse(format!(
                "{said} is false but IPAM has the {family} subnet {s}: Docker gives its \
                 containers no {family} address, netattach would (remove the subnet from the \
                 input, or enable {family} in Docker first)"
            )));
        }
    }
    Ok(())
}

/// What netattach keeps no record of, said rather than dropped.
fn notes(d: &DockerNetwork) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(labels) = d.labels.as_ref().filter(|l| !l.is_empty()) {
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        notes.push(format!(
            "labels not carried over (netattach definitions have none): {}",
            keys.join(", ")
        ));
    }
    if let Some(containers) = d.containers.as_ref().filter(|c| !c.is_empty()) {
        // The addresses are Docker's leases, which netattach cannot see: a
        // container attached here meanwhile could be given one of them.
        let addresses: BTreeSet<&str> = containers
            .values()
            .flat_map(|c| [c.ipv4.as_deref(), c.ipv6.as_deref()])
            .flatten()
            .filter(|a| !a.is_empty())
            .map(|a| a.split('/').next().unwrap_or(a))
            .collect();
        let addresses: Vec<&str> = addresses.into_iter().collect();
        notes.push(format!(
            "Docker still has {} container(s) on it ({}): netattach does not know these \
             addresses are taken; move those containers over before others attach to it",
            containers.len(),
            if addresses.is_empty() {
                "no address".to_string()
            } else {
                addresses.join(", ")
            }
        ));
    }
    notes
}

fn parse_net(at: &str, field: &str, text: &str) -> Result<IpNet, Why> {
    text.parse()
        .map_err(|_| refuse(format!("{at}.{field} {text:?} is not a CIDR subnet")))
}

/// `key=value, key=value`: each option named as it was given.
fn listed(opts: &BTreeMap<String, String>) -> String {
    opts.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A boolean as Docker reads its options (Go's `strconv.ParseBool`).
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The networks of the input: the array `docker network inspect` prints, or
/// one network object (`docker network inspect -f '{{json .}}'`).
pub fn entries(text: &str) -> Result<Vec<Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("input is not JSON: {e}"))?;
    match value {
        Value::Array(entries) => Ok(entries),
        object @ Value::Object(_) => Ok(vec![object]),
        _ => {
            bail!("input is neither an array of networks (docker network inspect) nor one network")
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<String> {
    let mut text = String::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        stdin => {
            let mut input = std::io::stdin().lock();
            // Without an argument, a terminal on stdin means the pipe was
            // forgotten: say so rather than wait for typed JSON.
            if stdin.is_none() && input.is_terminal() {
                bail!("give the file of docker network inspect output, or pipe it in (docker network inspect $(docker network ls -q) | netattach network import)");
            }
            input
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
        }
    }
    Ok(text)
}

pub fn run(ctx: &Context, args: ImportArgs) -> Result<()> {
    let entries = entries(&read_input(args.file.as_ref())?)?;
    let dir = ctx.networks();
    // The definitions of this run, so that a name given twice in the input
    // is told the same with and without --dry-run.
    let mut planned: Vec<Network> = Vec::new();
    let mut candidates = 0;
    let mut failed = 0;
    for (i, entry) in entries.iter().enumerate() {
        let (net, notes) = match import_one(entry, i) {
            Outcome::Skipped { name, why } => {
                eprintln!("netattach: skipped {name}: {why}");
                continue;
            }
            Outcome::Refused { name, why } => {
                candidates += 1;
                failed += 1;
                eprintln!("netattach: refused {name}: {why}");
                continue;
            }
            Outcome::Defined { net, notes } => (*net, notes),
        };
        candidates += 1;
        let name = net.name.clone();
        let existing = match planned.iter().find(|n| n.name == name) {
            Some(n) => Ok(n.clone()),
            None => dir.load(&name),
        };
        match existing {
            Err(ConfigError::NotFound(_)) => {}
            // Importing again what an earlier import wrote is not an error:
            // a second run after fixing a refusal goes through.
            Ok(same) if same == net => {
                eprintln!("netattach: {name}: already defined the same: left as it is");
                continue;
            }
            Ok(_) => {
                failed += 1;
                eprintln!(
                    "netattach: refused {name}: a network of that name is already defined \
                     differently (netattach network inspect {name}); remove it first \
                     (netattach network rm {name}) to import Docker's"
                );
                continue;
            }
            Err(e) => {
                failed += 1;
                eprintln!("netattach: refused {name}: {e}");
                continue;
            }
        }
        if !args.dry_run {
            if let Err(e) = dir.create(&net) {
                failed += 1;
                eprintln!("netattach: refused {name}: {e}");
                continue;
            }
            println!("imported {}", summary(&net));
        }
        for note in notes {
            eprintln!("netattach: {name}: {note}");
        }
        planned.push(net);
    }
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&planned)?);
    }
    if candidates == 0 {
        eprintln!("netattach: no macvlan or ipvlan network in the input");
    }
    if failed > 0 {
        bail!("{failed} of {candidates} macvlan/ipvlan network(s) not imported (see above)");
    }
    Ok(())
}

/// `NAME: DRIVER MODE on PARENT, subnets A, B`, the line of an imported network.
fn summary(n: &Network) -> String {
    let mode = match n.driver {
        Driver::Macvlan => n.mode().to_string(),
        Driver::Ipvlan => format!("{} ({})", n.mode(), n.flag()),
    };
    let subnets: Vec<String> = n.subnets.iter().map(|s| s.subnet.to_string()).collect();
    format!(
        "{}: {} {mode} on {}, subnets {}",
        n.name,
        n.driver,
        n.parent,
        subnets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{IpvlanFlag, Mode};

    fn defined(entry: Value) -> (Network, Vec<String>) {
        match import_one(&entry, 0) {
            Outcome::Defined { net, notes } => (*net, notes),
            other => panic!("not defined: {other:?}"),
        }
    }

    fn refused(entry: Value) -> String {
        match import_one(&entry, 0) {
            Outcome::Refused { why, .. } => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn skipped(entry: Value) -> String {
        match import_one(&entry, 0) {
            Outcome::Skipped { why, .. } => why,
            other => panic!("not skipped: {other:?}"),
        }
    }

    /// A macvlan network as Docker 24 prints it, with a VLAN parent.
    fn macvlan() -> Value {
        json!({
            "Name": "lan10",
            "Id": "7b2c1e0f",
            "Created": "2024-05-01T10:00:00.000000000Z",
            "Scope": "local",
            "Driver": "macvlan",
            "EnableIPv6": false,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [{
                    "Subnet": "192.168.10.0/24",
                    "IPRange": "192.168.10.128/25",
                    "Gateway": "192.168.10.1",
                    "AuxiliaryAddresses": {"nas": "192.168.10.129"}
                }]
            },
            "Internal": false,
            "Attachable": false,
            "Ingress": false,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": false,
            "Containers": {},
            "Options": {"parent": "eth0.10", "macvlan_mode": "bridge"},
            "Labels": {}
        })
    }

    #[test]
    fn macvlan_with_a_vlan_parent_keeps_every_address_setting() {
        let (net, notes) = defined(macvlan());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(net.name, "lan10");
        assert_eq!(net.driver, Driver::Macvlan);
        // Stored dotted, as `create -o parent=eth0.10` stores it: the
        // attach makes VLAN 10 on eth0 when it is missing, as Docker does.
        assert_eq!(net.parent, "eth0.10");
        assert_eq!(net.segment(), "eth0.10");
        assert_eq!(net.mode, Some(Mode::Bridge));
        assert!(!net.internal);
        assert_eq!(net.subnets.len(), 1);
        let s = &net.subnets[0];
        assert_eq!(s.subnet.to_string(), "192.168.10.0/24");
        assert_eq!(s.gateway(), Some("192.168.10.1".parse().unwrap()));
        assert_eq!(s.ip_range.unwrap().to_string(), "192.168.10.128/25");
        assert_eq!(
            s.aux_addresses["nas"],
            "192.168.10.129".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_definition_is_the_one_network_create_makes_from_the_same_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Create {
            #[command(flatten)]
            args: CreateArgs,
        }
        let typed = Create::parse_from([
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "192.168.10.0/24",
            "--gateway",
            "192.168.10.1",
            "--ip-range",
            "192.168.10.128/25",
            "--aux-address",
            "nas=192.168.10.129",
            "-o",
            "parent=eth0.10",
            "-o",
            "macvlan_mode=bridge",
            "lan10",
        ]);
        assert_eq!(defined(macvlan()).0, definition_from(typed.args).unwrap());
    }

    #[test]
    fn ipvlan_l3_with_its_flag() {
        let (net, _) = defined(json!({
            "Name": "routed",
            "Driver": "ipvlan",
            "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet": "10.20.0.0/24"}]},
            "Options": {"parent": "eth1", "ipvlan_mode": "l3", "ipvlan_flag": "private"},
            "Labels": null,
            "Containers": null
        }));
        assert_eq!(net.driver, Driver::Ipvlan);
        assert_eq!(net.mode, Some(Mode::L3));
        assert_eq!(net.flag, Some(IpvlanFlag::Private));
        // No gateway given: the first usable address is reserved, as Docker's IPAM does.
        assert_eq!(net.subnets[0].gateway(), Some("10.20.0.1".parse().unwrap()));
    }

    #[test]
    fn dual_stack_and_several_subnets_with_the_mtu() {
        let (net, _) = defined(json!({
            "Name": "dual",
            "Driver": "macvlan",
            "EnableIPv4": true,
            "EnableIPv6": true,
            "IPAM": {"Driver": "default", "Config": [
                {"Subnet": "192.168.30.0/24", "Gateway": "192.168.30.254"},
                {"Subnet": "2001:db8:30::/64", "Gateway": "2001:db8:30::1",
                 "AuxiliaryAddresses": {"router": "2001:db8:30::2"}},
                {"Subnet": "192.168.31.0/24", "AuxiliaryAddresses": {"router": "192.168.31.2"}}
            ]},
            "Options": {
                "parent": "eth2",
                "com.docker.network.driver.mtu": "1400",
                "com.docker.network.enable_ipv4": "true",
                "com.docker.network.enable_ipv6": "true"
            }
        }));
        let subnets: Vec<String> = net.subnets.iter().map(|s| s.subnet.to_string()).collect();
        assert_eq!(
            subnets,
            ["192.168.30.0/24", "2001:db8:30::/64", "192.168.31.0/24"]
        );
        let gws: Vec<Option<IpAddr>> = net.subnets.iter().map(|s| s.gateway()).collect();
        assert_eq!(
            gws,
            [
                Some("192.168.30.254".parse().unwrap()),
                Some("2001:db8:30::1".parse().unwrap()),
                Some("192.168.31.1".parse().unwrap())
            ]
        );
        // Docker's aux names are per subnet: one name in two families is fine.
        assert_eq!(
            net.subnets[1].aux_addresses["router"].to_string(),
            "2001:db8:30::2"
        );
        assert_eq!(
            net.subnets[2].aux_addresses["router"].to_string(),
            "192.168.31.2"
        );
        assert_eq!(net.mtu, Some(1400));
    }

    #[test]
    fn other_drivers_and_config_only_networks_are_skipped() {
        for driver in [
            "bridge",
            "host",
            "null",
            "overlay",
            "ghcr.io/x/net-dhcp:latest",
        ] {
            let mut n = macvlan();
            n["Driver"] = driver.into();
            assert_eq!(
                skipped(n),
                format!("driver {driver} is not macvlan or ipvlan")
            );
        }
        let mut n = macvlan();
        n["Driver"] = "null".into();
        n["ConfigOnly"] = true.into();
        assert!(skipped(n).contains("config-only"));
        let mut n = macvlan();
        n.as_object_mut().unwrap().remove("Driver");
        assert!(skipped(n).contains("driver (none)"));
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let mut n = macvlan();
        n["Options"]["com.docker.network.container_iface_prefix"] = "lan".into();
        n["Options"]["mtu"] = "9000".into();
        let why = refused(n);
        assert!(
            why.contains(
                "option com.docker.network.container_iface_prefix=lan, mtu=9000 is not supported"
            ),
            "{why}"
        );
        // netattach's own options are not Docker's: a Docker network that
        // carried one (Docker ignored it) does not turn it on here.
        for (key, value) in [("announce", "0"), ("host_address", "192.168.10.5")] {
            let mut n = macvlan();
            n["Options"][key] = value.into();
            assert!(refused(n).contains(&format!("option {key}={value}")));
        }
        let mut n = macvlan();
        n["IPAM"]["Options"] = json!({"com.docker.network.ipam.serial": "true"});
        assert!(refused(n).contains("IPAM option com.docker.network.ipam.serial=true"));
        let mut n = macvlan();
        n["IPAM"]["Driver"] = "dhcp".into();
        assert!(refused(n).contains("IPAM driver dhcp"));
        // An option of the other driver: refused by create's own parser.
        let mut n = macvlan();
        n["Options"]["ipvlan_mode"] = "l2".into();
        assert!(refused(n).contains("option ipvlan_mode does not apply to the macvlan driver"));
    }

    #[test]
    fn what_netattach_cannot_reproduce_is_refused() {
        let mut n = macvlan();
        n["Options"].as_object_mut().unwrap().remove("parent");
        assert!(refused(n).contains("no parent option"));
        let mut n = macvlan();
        n["ConfigFrom"]["Network"] = "lan-config".into();
        assert!(refused(n).contains("config-only network lan-config"));
        // IPv6 turned off with an IPv6 subnet: Docker's containers had none.
        let mut n = macvlan();
        n["IPAM"]["Config"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Subnet": "2001:db8:10::/64"}));
        let why = refused(n.clone());
        assert!(
            why.contains("EnableIPv6 is false but IPAM has the IPv6 subnet 2001:db8:10::/64"),
            "{why}"
        );
        n["EnableIPv6"] = Value::Null;
        n["Options"]["com.docker.network.enable_ipv6"] = "false".into();
        assert!(refused(n.clone()).contains("option com.docker.network.enable_ipv6 is false"));
        n["Options"]["com.docker.network.enable_ipv6"] = "maybe".into();
        assert!(refused(n.clone()).contains("neither true nor false"));
        n["Options"]["com.docker.network.enable_ipv6"] = "1".into();
        assert_eq!(defined(n).0.subnets.len(), 2);
        let mut n = macvlan();
        n["EnableIPv4"] = false.into();
        assert!(refused(n).contains("EnableIPv4 is false"));
    }

    #[test]
    fn create_validation_refuses_what_it_refuses_for_create() {
        let mut n = macvlan();
        n["IPAM"]["Config"][0]["Gateway"] = "192.168.10.0".into();
        let why = refused(n);
        assert!(
            why.contains("gateway") && why.contains("network address"),
            "{why}"
        );
        let mut n = macvlan();
        n["IPAM"]["Config"][0]["AuxiliaryAddresses"]["far"] = "10.9.9.9".into();
        assert!(refused(n).contains("--aux-address 10.9.9.9 is not inside any --subnet"));
        let mut n = macvlan();
        n["Options"]["macvlan_mode"] = "l2".into();
        assert!(refused(n).contains("mode"));
        let mut n = macvlan();
        n["Name"] = "x".repeat(65).into();
        assert!(refused(n).contains("name"));
        let mut n = macvlan();
        n["IPAM"]["Config"][0]["Subnet"] = "192.168.10.0/33".into();
        assert!(refused(n).contains("IPAM.Config[0].Subnet \"192.168.10.0/33\""));
    }

    #[test]
    fn malformed_entries_are_refused_with_their_name_or_position() {
        assert!(matches!(
            import_one(&json!({"Name": "a", "Options": {"parent": 5}}), 0),
            Outcome::Refused { name, .. } if name == "a"
        ));
        assert!(matches!(
            import_one(&json!("lan"), 2),
            Outcome::Refused { name, .. } if name == "#3"
        ));
        assert!(entries("[1").is_err());
        assert!(entries("3").is_err());
        assert_eq!(entries(&macvlan().to_string()).unwrap().len(), 1);
    }

    #[test]
    fn labels_and_dockers_own_containers_are_said() {
        let mut n = macvlan();
        n["Labels"] = json!({"com.docker.compose.project": "site", "owner": "ops"});
        n["Containers"] = json!({
            "4a1b": {"Name": "web", "EndpointID": "e1", "MacAddress": "02:42:c0:a8:0a:80",
                     "IPv4Address": "192.168.10.128/24", "IPv6Address": ""},
            "9c2d": {"Name": "db", "EndpointID": "e2", "MacAddress": "02:42:c0:a8:0a:81",
                     "IPv4Address": "192.168.10.131/24", "IPv6Address": ""}
        });
        let (_, notes) = defined(n);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("labels not carried over"));
        assert!(notes[0].contains("com.docker.compose.project, owner"));
        assert!(notes[1].contains("2 container(s) on it (192.168.10.128, 192.168.10.131)"));
    }

    #[test]
    fn internal_stays_internal() {
        let mut n = macvlan();
        n["Internal"] = true.into();
        assert!(defined(n).0.internal);
    }
}
