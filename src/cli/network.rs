//! `netattach network create|ls|inspect|rm`, with the `docker network create` flags.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::{print_table, Context};
use crate::config::{
    first_usable, ConfigError, Driver, Gateway, IpamMode, IpvlanFlag, Mode, Network, RequestPolicy,
    Subnet,
};
use crate::ipam::LeaseStore;
use crate::netlink::Netlink;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Define a network (docker network create flags).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show networks' definitions as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks that nothing is attached to.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// macvlan or ipvlan.
    #[arg(short = 'd', long = "driver", default_value = "macvlan")]
    driver: String,
    /// Subnet in CIDR form; repeat for several (IPv4 and IPv6 mixed).
    #[arg(long)]
    subnet: Vec<IpNet>,
    /// Gateway of the subnet that contains it, or `none` for the subnet at
    /// the same position; repeatable. Without one, a subnet's first usable
    /// address is reserved as its gateway (as Docker does).
    #[arg(long)]
    gateway: Vec<Gateway>,
    /// Hand out pooled addresses from this sub-range of its subnet; repeatable.
    #[arg(long = "ip-range")]
    ip_range: Vec<IpNet>,
    /// Address never handed out, as name=ip; repeatable.
    #[arg(long = "aux-address")]
    aux_address: Vec<String>,
    /// No default route through this network.
    #[arg(long)]
    internal: bool,
    /// Accepted for docker compatibility: IPv6 follows from the subnets.
    #[arg(long, hide = true)]
    ipv6: bool,
    /// pool (addresses handed out) or static (only requested addresses).
    #[arg(long, default_value = "pool")]
    ipam: String,
    /// Driver options: parent=, macvlan_mode=, ipvlan_mode=, ipvlan_flag=, mtu=;
    /// request policy: request_ips=any|ip_range|none|CIDR[,CIDR...],
    /// request_mac=true|false, request_max_ips=N.
    #[arg(short = 'o', long = "opt")]
    opt: Vec<String>,
    /// Network name.
    name: String,
}

pub fn run(ctx: &Context, cmd: NetworkCommand) -> Result<()> {
    let dir = ctx.networks();
    match cmd {
        NetworkCommand::Create(args) => {
            let net = definition_from(args)?;
            dir.create(&net)?;
            println!("{}", net.name);
        }
        NetworkCommand::Ls { json } => {
            let listed = dir.list()?;
            for b in &listed.broken {
                eprintln!("netattach: {b}");
            }
            let nets = listed.networks;
            if json {
                println!("{}", serde_json::to_string_pretty(&nets)?);
            } else {
                let rows: Vec<Vec<String>> = nets.iter().map(summary_row).collect();
                print_table(&["NAME", "DRIVER", "PARENT", "MODE", "SUBNETS"], &rows);
            }
        }
        NetworkCommand::Inspect { names } => {
            let nets = names
                .iter()
                .map(|n| dir.load(n))
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", serde_json::to_string_pretty(&nets)?);
        }
        NetworkCommand::Rm { names } => {
            let store = ctx.store()?;
            let attachments = store.attachments()?;
            for name in &names {
                // Only a missing one is an error: removing a broken one is its fix.
                if let Err(e @ ConfigError::NotFound(_)) = dir.load(name) {
                    return Err(e.into());
                }
                let users = attachments.iter().filter(|a| &a.network == name).count();
                if users > 0 {
                    bail!("network {name} still has {users} attachment(s); release them first (netattach lease ls {name})");
                }
            }
            for name in names {
                dir.remove(&name)?;
                println!("{name}");
            }
            for vlan in crate::vlan::prune(&mut Netlink::open()?, &store, &dir)? {
                println!("removed VLAN link {vlan} (created by netattach, now unused)");
            }
        }
    }
    Ok(())
}

fn summary_row(n: &Network) -> Vec<String> {
    let mode = match n.driver {
        Driver::Macvlan => n.mode().to_string(),
        Driver::Ipvlan => format!("{} ({})", n.mode(), n.flag()),
    };
    let subnets: Vec<String> = n.subnets.iter().map(|s| s.subnet.to_string()).collect();
    vec![
        n.name.clone(),
        n.driver.to_string(),
        n.parent.clone(),
        mode,
        subnets.join(","),
    ]
}

/// Builds a definition from the docker-style flags; the definition's own
/// validation then names the field at fault.
fn definition_from(args: CreateArgs) -> Result<Network> {
    let driver = parse_enum::<Driver>("driver", &args.driver)?;
    let ipam = parse_enum::<IpamMode>("ipam", &args.ipam)?;
    let mut parent = None;
    let mut mode = None;
    let mut flag = None;
    let mut mtu = None;
    let mut requests = RequestPolicy::default();
    for opt in &args.opt {
        let (key, value) = opt
            .split_once('=')
            .ok_or_else(|| anyhow!("option {opt:?} must be key=value"))?;
        match key {
            "parent" => parent = Some(value.to_string()),
            "macvlan_mode" if driver == Driver::Macvlan => mode = Some(parse_enum::<Mode>(key, value)?),
            "ipvlan_mode" if driver == Driver::Ipvlan => mode = Some(parse_enum::<Mode>(key, value)?),
            "ipvlan_flag" if driver == Driver::Ipvlan => {
                flag = Some(parse_enum::<IpvlanFlag>(key, value)?)
            }
            "mtu" | "com.docker.network.driver.mtu" => {
                mtu = Some(value.parse().map_err(|_| anyhow!("option mtu: {value:?} is not a number"))?)
            }
            "macvlan_mode" | "ipvlan_mode" | "ipvlan_flag" => {
                bail!("option {key} does not apply to the {driver} driver")
            }
            "request_ips" => {
                requests.ips = value.parse().map_err(|e| anyhow!("option request_ips: {e}"))?
            }
            "request_mac" => {
                requests.mac = match value {
                    "true" | "yes" => true,
                    "false" | "no" => false,
                    _ => bail!("option request_mac: {value:?} is not true or false"),
                }
            }
            "request_max_ips" => {
                requests.max_ips = value
                    .parse()
                    .map_err(|_| anyhow!("option request_max_ips: {value:?} is not a number"))?
            }
            _ => bail!("unknown option {key:?} (known: parent, macvlan_mode, ipvlan_mode, ipvlan_flag, mtu, request_ips, request_mac, request_max_ips)"),
        }
    }
    let parent = parent.ok_or_else(|| anyhow!("-o parent=INTERFACE is required"))?;
    let mut subnets: Vec<Subnet> = args
        .subnet
        .iter()
        .map(|s| Subnet {
            subnet: *s,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        })
        .collect();
    for (i, gw) in args.gateway.iter().enumerate() {
        let s = match gw {
            Gateway::Address(a) => containing(&mut subnets, "gateway", *a)?,
            // "none" names no address: it goes with the --subnet at its position.
            Gateway::None => subnets.get_mut(i).ok_or_else(|| {
                anyhow!(
                    "--gateway none (#{}) has no --subnet at that position",
                    i + 1
                )
            })?,
        };
        if s.gateway.is_some() {
            bail!("--gateway: subnet {} already has a gateway", s.subnet);
        }
        s.gateway = Some(*gw);
    }
    // Written out, so the definition says which address is reserved.
    for s in &mut subnets {
        if s.gateway.is_none() {
            s.gateway = first_usable(s.subnet).map(Gateway::Address);
        }
    }
    for range in args.ip_range {
        let s = containing(&mut subnets, "ip-range", range.network())?;
        if s.ip_range.is_some() {
            bail!("--ip-range: subnet {} already has an ip range", s.subnet);
        }
        s.ip_range = Some(range);
    }
    for aux in &args.aux_address {
        let (name, ip) = aux
            .split_once('=')
            .ok_or_else(|| anyhow!("--aux-address {aux:?} must be name=ip"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| anyhow!("--aux-address {aux:?}: {ip:?} is not an IP address"))?;
        let s = containing(&mut subnets, "aux-address", ip)?;
        if s.aux_addresses.insert(name.to_string(), ip).is_some() {
            bail!("--aux-address: name {name:?} given twice");
        }
    }
    let net = Network {
        name: args.name,
        driver,
        parent,
        mode,
        flag,
        mtu,
        subnets,
        internal: args.internal,
        ipam,
        requests,
    };
    net.validate()?;
    Ok(net)
}

fn containing<'a>(subnets: &'a mut [Subnet], flag: &str, ip: IpAddr) -> Result<&'a mut Subnet> {
    subnets
        .iter_mut()
        .find(|s| s.subnet.contains(&ip))
        .ok_or_else(|| anyhow!("--{flag} {ip} is not inside any --subnet"))
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| anyhow!("{what}: unknown value {value:?}"))
}
