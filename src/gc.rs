//! Freeing what owners that are gone left behind: attachments whose netns no
//! process holds and no bind mount keeps alive anymore (see [`crate::liveness`]).

use crate::ipam::{Lease, LeaseStore};
use crate::liveness::{Found, Namespaces};

/// What `collect` freed for one attachment whose netns is gone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Freed {
    pub owner: String,
    pub network: String,
    pub netns: String,
    pub leases: Vec<Lease>,
}

/// Frees the leases and attachments of owners whose netns no longer exists
/// anywhere on this host. A namespace is the same only if both its inode and
/// its cookie match: the kernel reuses inode numbers.
///
/// Refuses (frees nothing) when this process cannot see every process of the
/// host: namespaces held only by the others would look gone.
pub fn collect(store: &dyn LeaseStore) -> anyhow::Result<Vec<Freed>> {
    crate::liveness::sees_every_process()
        .map_err(|why| anyhow::anyhow!("gc frees nothing: {why}"))?;
    let attachments = store.attachments()?;
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    let mut namespaces = Namespaces::new();
    let mut freed = Vec::new();
    for a in attachments {
        // An identity we cannot read (written by something else, or a
        // reservation) is left alone, as is a namespace we cannot read.
        if namespaces.find(&a.netns) != Found::Gone {
            continue;
        }
        crate::engine::release_dhcp_leases(store, std::slice::from_ref(&a));
        let leases = store.release_networks(&a.owner, std::slice::from_ref(&a.network))?;
        freed.push(Freed {
            owner: a.owner,
            network: a.network,
            netns: a.netns,
            leases,
        });
    }
    Ok(freed)
}
