//! Dotted parents (`eth0.50`): the 802.1Q sub-interface a network rides on.
//! netattach creates it when missing, remembers that it did, and removes only
//! the ones it created, once no network and no attachment uses them.

use anyhow::{bail, Context, Result};

use crate::config::{parse_vlan_parent, NetworkDir};
use crate::ipam::LeaseStore;
use crate::netlink::link::Link;
use crate::netlink::Netlink;

/// The parent link `name`, creating it first if it is a dotted VLAN parent
/// that does not exist yet. `None` when a plain parent does not exist.
pub fn ensure_parent(
    host: &mut Netlink,
    store: &dyn LeaseStore,
    name: &str,
) -> Result<Option<Link>> {
    if let Some(link) = host.link_by_name(name)? {
        return Ok(Some(link));
    }
    let Some(vlan) = parse_vlan_parent(name)? else {
        return Ok(None);
    };
    let Some(base) = host.link_by_name(&vlan.base)? else {
        bail!(
            "base interface {} of VLAN parent {name} does not exist",
            vlan.base
        );
    };
    match host.create_vlan(name, base.index, vlan.vid) {
        Ok(()) => {
            // Recorded before anything can fail, so gc knows it is ours.
            store.record_vlan(name)?;
            let link = host
                .link_by_name(name)?
                .with_context(|| format!("VLAN link {name} vanished after creation"))?;
            host.set_link_up(link.index, name)?;
            Ok(host.link_by_name(name)?)
        }
        // Another attach created it at the same moment: use theirs.
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(host.link_by_name(name)?),
        Err(e) => Err(e).with_context(|| format!("create VLAN {} on {}", vlan.vid, vlan.base)),
    }
}

/// Removes the VLAN links netattach created that no defined network and no
/// attachment uses any more; returns their names.
pub fn prune(
    host: &mut Netlink,
    store: &dyn LeaseStore,
    networks: &NetworkDir,
) -> Result<Vec<String>> {
    let ours = store.vlans()?;
    if ours.is_empty() {
        return Ok(Vec::new());
    }
    let listed = networks.list()?;
    // A definition that does not load could name any parent: keep every VLAN.
    if !listed.broken.is_empty() {
        return Ok(Vec::new());
    }
    let definitions = listed.networks;
    let attachments = store.attachments()?;
    // An attachment whose network is no longer defined could sit on any parent.
    let orphans = attachments
        .iter()
        .any(|a| !definitions.iter().any(|d| d.name == a.network));
    let mut removed = Vec::new();
    for name in ours {
        let used = definitions.iter().any(|d| d.parent == name);
        if used || orphans {
            continue;
        }
        if let Some(link) = host.link_by_name(&name)? {
            if link.kind.as_deref() != Some("vlan") {
                // Someone replaced it with something else: not ours to delete.
                store.forget_vlan(&name)?;
                continue;
            }
            host.delete_link(link.index)?;
        }
        store.forget_vlan(&name)?;
        removed.push(name);
    }
    Ok(removed)
}
