//! `netattach network create|ls|inspect|rm`, with the `docker network create` flags.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::{print_table, Context};
use crate::config::{
    first_usable, ConfigError, Driver, Gateway, IpamMode, IpvlanFlag, Mode, Network, RequestPolicy,
    Shared, Subnet,
};
use crate::deadline::Deadline;
use crate::ipam::{rejoin, shared, LeaseStore};
use crate::netlink::Netlink;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Define a network (docker network create flags); with --etcd, a
    /// network shared by several hosts, which this host then joins.
    Create(CreateArgs),
    /// Add this host to a shared network defined in etcd.
    Join(JoinArgs),
    /// Define the macvlan and ipvlan networks of `docker network inspect`
    /// output (a file, or stdin), as `create` would.
    Import(super::import::ImportArgs),
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
    /// Remove networks that nothing is attached to; this host leaves a
    /// shared one (its blocks go back to etcd).
    #[command(alias = "remove")]
    Rm {
        /// Remove a shared network here even when etcd cannot be told: this
        /// host's blocks stay claimed until another host runs `netattach
        /// host forget` for it.
        #[arg(long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// macvlan or ipvlan.
    #[arg(short = 'd', long = "driver", default_value = "macvlan")]
    pub(super) driver: String,
    /// Subnet in CIDR form; repeat for several (IPv4 and IPv6 mixed).
    #[arg(long)]
    pub(super) subnet: Vec<IpNet>,
    /// Gateway of the subnet that contains it, or `none` for the subnet at
    /// the same position; repeatable. Without one, a subnet's first usable
    /// address is reserved as its gateway (as Docker does).
    #[arg(long)]
    pub(super) gateway: Vec<Gateway>,
    /// Hand out pooled addresses from this sub-range of its subnet; repeatable.
    #[arg(long = "ip-range")]
    pub(super) ip_range: Vec<IpNet>,
    /// Address never handed out, as name=ip; repeatable.
    #[arg(long = "aux-address")]
    pub(super) aux_address: Vec<String>,
    /// This host's own address on the network (one per family; also `-o
    /// host_address=IP`): netattach keeps a link of the host on the parent
    /// with it, so that the host reaches its containers and they reach it.
    #[arg(long = "host-address")]
    pub(super) host_address: Vec<IpAddr>,
    /// No default route through this network.
    #[arg(long)]
    pub(super) internal: bool,
    /// Accepted for docker compatibility: IPv6 follows from the subnets.
    #[arg(long, hide = true)]
    pub(super) ipv6: bool,
    /// pool (addresses handed out), static (only requested addresses) or
    /// dhcp (IPv4 from the LAN's DHCP server; see docs/dhcp.md).
    #[arg(long, default_value = "pool")]
    pub(super) ipam: String,
    /// Driver options: parent=, macvlan_mode=, macvlan_source=MAC[,MAC...]
    /// (source mode), ipvlan_mode=, ipvlan_flag=, mtu=, host_address=,
    /// announce=N (gratuitous ARP / unsolicited NA per address, default 3),
    /// mac_policy=random|ipv4|stable, sticky_ips=true|false,
    /// dhcp_timeout=SECONDS (ipam dhcp: wait for a lease, default 5);
    /// request policy: request_ips=any|ip_range|none|CIDR[,CIDR...],
    /// request_mac=true|false, request_max_ips=N.
    #[arg(short = 'o', long = "opt")]
    pub(super) opt: Vec<String>,
    #[command(flatten)]
    pub(super) shared: SharedArgs,
    /// Share the network through etcd (`http://HOST:PORT`; repeatable): the
    /// definition (without the parent) goes to etcd, once.
    #[arg(long = "etcd")]
    pub(super) etcd: Vec<String>,
    /// Shared networks: prefix length of the blocks hosts claim (default:
    /// each range's prefix + 4, i.e. 16 blocks).
    #[arg(long, requires = "etcd")]
    pub(super) block_prefix: Option<u8>,
    /// Shared networks: seconds a host keeps allocating in its blocks with
    /// no heartbeat reaching etcd.
    #[arg(long, requires = "etcd")]
    pub(super) hold: Option<u64>,
    /// Network name.
    pub(super) name: String,
}

/// How this host is named among the hosts of a shared network.
#[derive(Args)]
pub struct SharedArgs {
    /// This host's id (default: $NETATTACH_HOST_ID, else /etc/machine-id).
    #[arg(long, requires = "etcd")]
    pub(super) host_id: Option<String>,
}

#[derive(Args)]
pub struct JoinArgs {
    /// etcd endpoint (`http://HOST:PORT`); repeatable.
    #[arg(long = "etcd", required = true)]
    etcd: Vec<String>,
    /// parent=INTERFACE: this host's link to the network's LAN (required:
    /// the definition in etcd has no parent, each host has its own).
    #[arg(short = 'o', long = "opt")]
    opt: Vec<String>,
    #[command(flatten)]
    shared: SharedArgs,
    /// Network name.
    name: String,
}

pub fn run(ctx: &Context, cmd: NetworkCommand) -> Result<()> {
    let dir = ctx.networks();
    match cmd {
        NetworkCommand::Create(args) if !args.etcd.is_empty() => {
            let host = shared::host_id(args.shared.host_id.as_deref())?;
            let net = shared_definition_from(args)?;
            refuse_existing(&dir, &net.name)?;
            let store = ctx.store()?;
            let client = shared::client_until(&net_endpoints(&net), Deadline::after(ETCD_WAIT))?;
            shared::publish_config(&client, &net)?;
            shared::join(store.local(), &net, &host, Deadline::after(ETCD_WAIT))?;
            dir.create(&net)?;
            host_link_now(ctx, &net)?;
            println!("{}", net.name);
        }
        NetworkCommand::Create(args) => {
            let net = definition_from(args)?;
            dir.create(&net)?;
            host_link_now(ctx, &net)?;
            println!("{}", net.name);
        }
        NetworkCommand::Join(args) => {
            let host = shared::host_id(args.shared.host_id.as_deref())?;
            let mut parent = None;
            for opt in &args.opt {
                match opt.split_once('=') {
                    Some(("parent", p)) => parent = Some(p.to_string()),
                    _ => bail!("option {opt:?}: join takes only -o parent=INTERFACE (the rest of the definition comes from etcd)"),
                }
            }
            let parent = parent.ok_or_else(|| {
                anyhow!("-o parent=INTERFACE is required: the definition in etcd has no parent, each host has its own")
            })?;
            let store = ctx.store()?;
            // Defined here already: a join checks the membership in etcd,
            // and joins again (registering the live leases) if this host
            // was forgotten.
            if let Some(net) = dir.load(&args.name).ok().filter(|n| n.shared.is_some()) {
                for line in rejoin::rejoin(store.local(), &net, &host, Deadline::after(ETCD_WAIT))?
                {
                    eprintln!("netattach: {line}");
                }
                println!("{}", net.name);
                return Ok(());
            }
            refuse_existing(&dir, &args.name)?;
            let client = shared::client_until(&args.etcd, Deadline::after(ETCD_WAIT))?;
            let net = shared::fetch_config(&client, &args.name, &parent, &args.etcd)?;
            shared::join(store.local(), &net, &host, Deadline::after(ETCD_WAIT))?;
            dir.create(&net)?;
            println!("{}", net.name);
        }
        NetworkCommand::Import(args) => super::import::run(ctx, args)?,
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
        NetworkCommand::Rm { force, names } => {
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
                if let Ok(net) = dir.load(&name) {
                    if net.shared.is_some() {
                        leave(&store, &net, force)?;
                    }
                    if !net.host_addresses.is_empty() {
                        crate::hostlink::remove(&mut Netlink::open()?, &net)?;
                    }
                }
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

/// How long the etcd steps of `create` and `join` may take in all.
const ETCD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn net_endpoints(net: &Network) -> Vec<String> {
    net.shared
        .as_ref()
        .map(|s| s.etcd.clone())
        .unwrap_or_default()
}

/// A new network's host link, made now when its parent exists (else by the
/// first attach or `netattach host-links`).
fn host_link_now(ctx: &super::Context, net: &Network) -> Result<()> {
    if net.host_addresses.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::open()?;
    let parent_missing = nl.link_by_name(&net.parent)?.is_none()
        && !matches!(crate::config::parse_vlan_parent(&net.parent), Ok(Some(_)));
    if parent_missing {
        eprintln!(
            "netattach: network {}: parent {} does not exist yet; its host link is made by the first attach (or netattach host-links)",
            net.name, net.parent
        );
        return Ok(());
    }
    crate::hostlink::ensure(&mut nl, &ctx.store()?, net)?;
    Ok(())
}

/// This host leaves a shared network before its definition goes: with
/// `force`, also when etcd cannot be told (the local record goes anyway).
fn leave(store: &crate::ipam::store::Store, net: &Network, force: bool) -> Result<()> {
    match shared::leave(store.local(), net, Deadline::after(ETCD_WAIT)) {
        Ok(()) => Ok(()),
        // Leases left are never overridden: `rm` checked for attachments.
        Err(e) if force && store.leases(Some(&net.name))?.is_empty() => {
            eprintln!(
                "netattach: {e:#}; removed here anyway: this host's blocks of {} stay claimed \
                 in etcd until another host runs `netattach host forget`",
                net.name
            );
            store.local().record_left(&net.name)?;
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "network {}: this host could not leave it in etcd (--force removes it here anyway)",
            net.name
        ))),
    }
}

/// A shared network's definition must not clash with a local one: checked
/// before anything is written to etcd.
fn refuse_existing(dir: &crate::config::NetworkDir, name: &str) -> Result<()> {
    match dir.load(name) {
        Err(ConfigError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Err(ConfigError::Exists(name.to_string()).into()),
    }
}

/// The definition of a new shared network: the local flags' definition,
/// plus how it is shared (endpoints, hold, block sizes).
fn shared_definition_from(mut args: CreateArgs) -> Result<Network> {
    let etcd = std::mem::take(&mut args.etcd);
    let hold = args.hold.unwrap_or(crate::config::DEFAULT_HOLD_S);
    let block_prefix = args.block_prefix;
    let mut net = definition_from(args)?;
    net.shared = Some(Shared {
        etcd,
        hold,
        block_prefix: shared::block_prefixes(&net, block_prefix),
    });
    net.validate()?;
    Ok(net)
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
pub(super) fn definition_from(args: CreateArgs) -> Result<Network> {
    let driver = parse_enum::<Driver>("driver", &args.driver)?;
    let ipam = parse_enum::<IpamMode>("ipam", &args.ipam)?;
    let mut parent = None;
    let mut mode = None;
    let mut flag = None;
    let mut mtu = None;
    let mut requests = RequestPolicy::default();
    let mut host_addresses = args.host_address.clone();
    let mut macvlan_sources = Vec::new();
    let mut announce = None;
    let mut dhcp_timeout = None;
    let mut mac_policy = None;
    let mut sticky_ips = false;
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
            "macvlan_source" if driver == Driver::Macvlan => {
                for mac in value.split(',') {
                    macvlan_sources.push(mac.parse().map_err(|e| anyhow!("option macvlan_source: {mac:?}: {e}"))?);
                }
            }
            "macvlan_mode" | "ipvlan_mode" | "ipvlan_flag" | "macvlan_source" => {
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
            "sticky_ips" => {
                sticky_ips = match value {
                    "true" | "yes" => true,
                    "false" | "no" => false,
                    _ => bail!("option sticky_ips: {value:?} is not true or false"),
                }
            }
            "mac_policy" => mac_policy = Some(parse_enum::<crate::config::MacPolicy>(key, value)?),
            "dhcp_timeout" => {
                dhcp_timeout = Some(value.parse().map_err(|_| {
                    anyhow!("option dhcp_timeout: {value:?} is not a number of seconds")
                })?)
            }
            "announce" => {
                announce = Some(value.parse().map_err(|_| anyhow!("option announce: {value:?} is not a number"))?)
            }
            "host_address" => host_addresses.push(
                value
                    .parse()
                    .map_err(|_| anyhow!("option host_address: {value:?} is not an IP address"))?,
            ),
            "request_max_ips" => {
                requests.max_ips = value
                    .parse()
                    .map_err(|_| anyhow!("option request_max_ips: {value:?} is not a number"))?
            }
            _ => bail!("unknown option {key:?} (known: parent, macvlan_mode, macvlan_source, ipvlan_mode, ipvlan_flag, mtu, host_address, announce, mac_policy, dhcp_timeout, sticky_ips, request_ips, request_mac, request_max_ips)"),
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
    // The host's address is reserved like Docker's documented workaround
    // does it: as an aux address (unless one already names it).
    for (i, ip) in host_addresses.iter().enumerate() {
        if host_addresses[..i]
            .iter()
            .any(|o| o.is_ipv4() == ip.is_ipv4())
        {
            bail!("--host-address {ip}: at most one address per family");
        }
        let s = containing(&mut subnets, "host-address", *ip)?;
        if !s.aux_addresses.values().any(|a| a == ip) {
            let name = if ip.is_ipv4() { "host" } else { "host6" };
            if s.aux_addresses.insert(name.to_string(), *ip).is_some() {
                bail!("--host-address {ip}: the aux address name {name:?} is taken; give it as --aux-address too");
            }
        }
    }
    let net = Network {
        shared: None,
        host_addresses,
        macvlan_sources,
        announce,
        mac_policy,
        sticky_ips,
        dhcp_timeout,
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
