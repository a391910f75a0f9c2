//! Repair: live owners whose links are gone are given them again.
//!
//! When a parent goes away (a VLAN re-created, a NIC driver reset, a veth
//! deleted), the kernel deletes every macvlan and ipvlan link on it, and the
//! containers lose their network while their leases stay. `find` lists the
//! attachments whose owner's netns still lives and whose link is missing or
//! incomplete; `repair` attaches those networks again, which makes each link
//! with the interface name, MAC and addresses the owner holds (see
//! `engine::attach`). `netattach repair` runs both, `doctor` shows `find`,
//! and the NRI plugin runs them when a parent comes back (src/nri/links.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::config::NetworkDir;
use crate::engine::{self, AttachedLink, Owner, Target};
use crate::ipam::LeaseStore;
use crate::liveness::{Found, Namespaces};
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::request::NetworkRequest;

/// A live owner's link that is missing or incomplete.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    pub owner: String,
    pub network: String,
    pub ifname: String,
    /// A path that opens the owner's netns now.
    pub netns: PathBuf,
    /// What is wrong: `missing`, `down`, or `lacks ADDRESS`.
    pub state: String,
}

/// Every attachment of a live owner whose link is not as recorded.
pub fn find(store: &dyn LeaseStore) -> Result<Vec<Broken>> {
    let mut namespaces = Namespaces::new();
    let leases = store.leases(None)?;
    let mut out = Vec::new();
    for a in store.attachments()? {
        if a.link.is_none() {
            continue; // a reservation: no link to have
        }
        let Found::Alive(path) = namespaces.find(&a.netns) else {
            continue;
        };
        let addresses: Vec<_> = leases
            .iter()
            .filter(|l| l.owner == a.owner && l.network == a.network)
            .map(|l| l.address)
            .collect();
        let ifname = a.ifname.clone();
        let state = Netns::open(&path)
            .and_then(|ns| {
                ns.run(move || -> Result<Option<String>> {
                    let mut nl = Netlink::open()?;
                    let Some(link) = nl.link_by_name(&ifname)? else {
                        return Ok(Some("missing".into()));
                    };
                    if !link.up {
                        return Ok(Some("down".into()));
                    }
                    let have: Vec<_> = nl
                        .addresses()?
                        .into_iter()
                        .filter(|x| x.index == link.index)
                        .map(|x| x.address)
                        .collect();
                    Ok(addresses
                        .iter()
                        .find(|a| !have.contains(a))
                        .map(|a| format!("lacks {a}")))
                })
            })
            .with_context(|| format!("inspect {} of {}", a.ifname, a.owner))??;
        if let Some(state) = state {
            out.push(Broken {
                owner: a.owner,
                network: a.network,
                ifname: a.ifname,
                netns: path,
                state,
            });
        }
    }
    Ok(out)
}

/// Attaches each broken owner's networks again, one owner at a time; per
/// owner, the links made or why not.
pub fn repair(
    networks: &NetworkDir,
    store: &dyn LeaseStore,
    broken: &[Broken],
) -> Vec<(String, Result<Vec<AttachedLink>>)> {
    let mut by_owner: BTreeMap<&str, Vec<&Broken>> = BTreeMap::new();
    for b in broken {
        by_owner.entry(&b.owner).or_default().push(b);
    }
    by_owner
        .into_iter()
        .map(|(owner, links)| {
            let requests: Vec<NetworkRequest> = links
                .iter()
                .map(|b| NetworkRequest {
                    name: b.network.clone(),
                    interface: Some(b.ifname.clone()),
                    ips: Vec::new(),
                    mac: None,
                    default_route: None,
                })
                .collect();
            let result = Target::open(&links[0].netns)
                .and_then(|target| {
                    engine::attach(networks, store, Owner::id(owner), target, &requests)
                })
                .map(|a| a.links);
            (owner.to_string(), result)
        })
        .collect()
}
