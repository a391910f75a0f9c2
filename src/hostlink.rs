//! A network's host link: how the host reaches its own containers.
//!
//! By kernel design a macvlan or ipvlan child cannot talk to its parent, so
//! a host whose containers sit on its NIC's LAN cannot reach them through
//! that NIC. A network with `host_addresses` gets a link of the host's own
//! on the same parent, of the same kind as the containers' (macvlan bridge,
//! ipvlan l2), carrying those addresses (as /32 and /128: the host's route to
//! the subnet through its NIC stays as it is). Through it go a route to each
//! subnet's `ip_range` (where pooled addresses come from), and a host route
//! per container address outside the ranges, added at attach and removed at
//! release. Siblings on one parent talk to each other inside the kernel, so
//! the host reaches its containers, and they reach the host at its address.
//!
//! The link is named from the network (`na-NAME`, or a hashed form of a long
//! name) and carries the alias `netattach host link of NAME`, so that it is
//! never confused with a link someone else made. `network create` makes it
//! (when the parent exists), the first attach makes it when it is missing,
//! `network rm` deletes it, `netattach host-links` re-creates all of them
//! after a reboot, and `doctor` reports one missing or wrong. Nothing of this
//! runs for a network without host addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context as _, Result};
use ipnet::IpNet;

use crate::config::{Network, NetworkDir};
use crate::ipam::{Lease, LeaseStore};
use crate::netlink::addr::add_address_request;
use crate::netlink::link::{Link, NewLink};
use crate::netlink::Netlink;

const ALIAS_PREFIX: &str = "netattach host link of ";

/// The host link's name: `na-NAME` when it fits an interface name, else
/// `na-` and the name's first 6 characters and a 6-digit hash of it.
pub fn name_of(network: &str) -> String {
    let plain = format!("na-{network}");
    if plain.len() <= 15 {
        return plain;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = network.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("na-{}{:06x}", &network[..6], hash & 0xff_ffff)
}

fn alias_of(network: &str) -> String {
    format!("{ALIAS_PREFIX}{network}")
}

fn host_prefix(a: IpAddr) -> IpNet {
    IpNet::new(a, if a.is_ipv4() { 32 } else { 128 }).expect("a full-length prefix is valid")
}

/// The routes the host link carries for the network itself: its ip ranges.
fn range_routes(net: &Network) -> Vec<IpNet> {
    net.subnets.iter().filter_map(|s| s.ip_range).collect()
}

/// The per-container routes `addresses` need: those outside every range.
pub fn container_routes(net: &Network, addresses: &[IpAddr]) -> Vec<IpNet> {
    let ranges = range_routes(net);
    addresses
        .iter()
        .filter(|a| !ranges.iter().any(|r| r.contains(*a)))
        .map(|a| host_prefix(*a))
        .collect()
}

/// The host link of `net` if it exists and is netattach's.
fn find(nl: &mut Netlink, net: &Network) -> Result<Option<Link>> {
    let name = name_of(&net.name);
    match nl.link_by_name(&name)? {
        Some(link) if link.alias.as_deref() == Some(alias_of(&net.name).as_str()) => Ok(Some(link)),
        Some(_) => bail!(
            "network {}: interface {name} exists and is not netattach's host link of it; \
             rename or delete it",
            net.name
        ),
        None => Ok(None),
    }
}

/// What is wrong with the host link of `net`, one line each (`doctor`).
pub fn check(nl: &mut Netlink, net: &Network) -> Result<Vec<String>> {
    if net.host_addresses.is_empty() {
        return Ok(Vec::new());
    }
    let name = name_of(&net.name);
    let Some(link) = find(nl, net)? else {
        return Ok(vec![format!(
            "network {}: host link {name} is missing (netattach host-links re-creates it)",
            net.name
        )]);
    };
    let mut problems = Vec::new();
    let parent = nl.link_by_name(&net.parent)?;
    if link.lower.is_none() || link.lower != parent.as_ref().map(|p| p.index) {
        problems.push(format!(
            "network {}: host link {name} is not on parent {}",
            net.name, net.parent
        ));
    }
    if !link.up {
        problems.push(format!("network {}: host link {name} is down", net.name));
    }
    let have: BTreeSet<IpAddr> = nl
        .addresses()?
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.address)
        .collect();
    for a in &net.host_addresses {
        if !have.contains(a) {
            problems.push(format!("network {}: host link {name} lacks {a}", net.name));
        }
    }
    let routes = nl.routes_out_of(link.index)?;
    for r in range_routes(net) {
        if !routes.contains(&r) {
            problems.push(format!(
                "network {}: no route to {r} through host link {name}",
                net.name
            ));
        }
    }
    Ok(problems)
}

/// Makes the host link of `net` exist as it should (on its parent, up, with
/// its addresses and range routes); returns its index. A link of that name
/// that is netattach's but wrong (another parent or kind) is made again.
pub fn ensure(nl: &mut Netlink, store: &dyn LeaseStore, net: &Network) -> Result<u32> {
    let name = name_of(&net.name);
    let parent = crate::vlan::ensure_parent(nl, store, &net.parent)?.ok_or_else(|| {
        anyhow!(
            "network {}: parent interface {} does not exist",
            net.name,
            net.parent
        )
    })?;
    let link = match find(nl, net)? {
        Some(link) if link.lower == Some(parent.index) => link,
        other => {
            if let Some(stale) = other {
                nl.delete_link(stale.index)?;
            }
            nl.create_link(&NewLink {
                name: &name,
                lower: parent.index,
                kind: crate::engine::link_kind(net),
                mac: None,
                mtu: net.mtu,
                netns_fd: None,
                sources: &[],
            })
            .with_context(|| format!("network {}: create host link {name}", net.name))?;
            let link = nl
                .link_by_name(&name)?
                .with_context(|| format!("host link {name} vanished after creation"))?;
            nl.set_link_alias(link.index, &alias_of(&net.name))?;
            link
        }
    };
    let have: BTreeSet<IpAddr> = nl
        .addresses()?
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.address)
        .collect();
    let missing: Vec<_> = net
        .host_addresses
        .iter()
        .filter(|a| !have.contains(a))
        .map(|a| add_address_request(link.index, *a, host_prefix(*a).prefix_len()))
        .collect();
    if !missing.is_empty() {
        nl.batch(missing)
            .map_err(|e| anyhow!("network {}: host link {name}: {}", net.name, e.error))?;
    }
    if !link.up {
        nl.set_link_up(link.index, &name)?;
    }
    for r in range_routes(net) {
        nl.replace_link_route(r, link.index)?;
    }
    Ok(link.index)
}

/// Deletes the host link of `net`, if there is one; whether there was.
pub fn remove(nl: &mut Netlink, net: &Network) -> Result<bool> {
    match find(nl, net)? {
        Some(link) => {
            nl.delete_link(link.index)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// At attach, after the container's links are up: the host link (made if
/// missing) and the routes the new addresses need through it. All or
/// nothing: the routes added are removed again if one fails.
pub fn add_routes(
    nl: &mut Netlink,
    store: &dyn LeaseStore,
    net: &Network,
    addresses: &[IpAddr],
) -> Result<()> {
    if net.host_addresses.is_empty() {
        return Ok(());
    }
    let index = ensure(nl, store, net)?;
    let mut added = Vec::new();
    for r in container_routes(net, addresses) {
        if let Err(e) = nl.replace_link_route(r, index) {
            for done in added {
                let _ = nl.delete_link_route(done, index);
            }
            return Err(e).with_context(|| {
                format!("network {}: route to {r} through the host link", net.name)
            });
        }
        added.push(r);
    }
    Ok(())
}

/// Removes the routes `addresses` had through the host link of `net`.
pub fn remove_routes(nl: &mut Netlink, net: &Network, addresses: &[IpAddr]) -> Result<()> {
    let routes = container_routes(net, addresses);
    if net.host_addresses.is_empty() || routes.is_empty() {
        return Ok(());
    }
    if let Some(link) = find(nl, net)? {
        for r in routes {
            nl.delete_link_route(r, link.index)?;
        }
    }
    Ok(())
}

/// After a release: the routes the freed addresses had through their
/// networks' host links go. Definitions are read only for the released
/// networks; one without host addresses costs that read alone.
pub fn after_release(networks: &NetworkDir, leases: &[Lease]) -> Result<()> {
    let mut names: Vec<&str> = leases.iter().map(|l| l.network.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut nl = None;
    for name in names {
        let Ok(net) = networks.load(name) else {
            continue;
        };
        if net.host_addresses.is_empty() {
            continue;
        }
        let addresses: Vec<IpAddr> = leases
            .iter()
            .filter(|l| l.network == name)
            .map(|l| l.address)
            .collect();
        if container_routes(&net, &addresses).is_empty() {
            continue;
        }
        let nl = match &mut nl {
            Some(nl) => nl,
            None => nl.insert(Netlink::open()?),
        };
        remove_routes(nl, &net, &addresses)?;
    }
    Ok(())
}

/// Makes every host link of `networks` exist (`netattach host-links`, at
/// boot); lines saying what was done or failed.
pub fn ensure_all(nl: &mut Netlink, store: &dyn LeaseStore, networks: &[Network]) -> Vec<String> {
    let mut lines = Vec::new();
    for net in networks.iter().filter(|n| !n.host_addresses.is_empty()) {
        let before = check(nl, net).unwrap_or_default();
        match ensure(nl, store, net) {
            Ok(_) if before.is_empty() => lines.push(format!(
                "network {}: host link {} in place",
                net.name,
                name_of(&net.name)
            )),
            Ok(_) => lines.push(format!(
                "network {}: host link {} set up",
                net.name,
                name_of(&net.name)
            )),
            Err(e) => lines.push(format!("network {}: {e:#}", net.name)),
        }
        // The routes of the containers attached now (after a reboot, none).
        if let Ok(leases) = store.leases(Some(&net.name)) {
            let addresses: Vec<IpAddr> = leases.iter().map(|l| l.address).collect();
            if let Err(e) = add_routes(nl, store, net, &addresses) {
                lines.push(format!("network {}: {e:#}", net.name));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name_and_long_ones_differ() {
        assert_eq!(name_of("lan"), "na-lan");
        assert_eq!(name_of("twelve-chars"), "na-twelve-chars");
        let a = name_of("thirteen-char");
        let b = name_of("thirteen-chas");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("na-thirte"));
        assert_ne!(a, b);
    }

    #[test]
    fn addresses_outside_the_ranges_get_host_routes() {
        let net: Network = serde_json::from_str(
            r#"{"name":"lan","driver":"macvlan","parent":"eth0",
                "subnets":[{"subnet":"192.168.32.0/24","gateway":"192.168.32.254",
                            "ip_range":"192.168.32.64/26",
                            "aux_addresses":{"host":"192.168.32.250"}}],
                "host_addresses":["192.168.32.250"]}"#,
        )
        .unwrap();
        net.validate().unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            range_routes(&net),
            vec!["192.168.32.64/26".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            container_routes(&net, &[a("192.168.32.70"), a("192.168.32.10")]),
            vec!["192.168.32.10/32".parse::<IpNet>().unwrap()]
        );
    }
}
