//! Finding owners that are gone: an attachment's netns that no process holds and
//! no bind mount keeps alive anymore.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::ipam::{IpamError, Lease, LeaseStore};
use crate::netns::Netns;

/// Every network namespace alive on this host, as far as we can see them (the
/// namespaces of all threads and every nsfs bind mount in every mount
/// namespace), by inode, with one path that opens it.
pub fn live_netns() -> HashMap<u64, PathBuf> {
    let mut live = HashMap::new();
    let mut mount_namespaces = std::collections::HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return live;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Threads can sit in another netns than their process (setns per thread).
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let path = task.path().join("ns/net");
                if let Ok(meta) = fs::metadata(&path) {
                    live.entry(meta.ino()).or_insert(path);
                }
            }
        }
        // Bind mounts live in mount namespaces: read each one's table once, and
        // reach its mounts through that process's root.
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/mnt")) {
            if mount_namespaces.insert(meta.ino()) {
                if let Ok(table) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                    for (inode, mount_point) in nsfs_mounts(&table) {
                        let path = PathBuf::from(format!("/proc/{pid}/root{mount_point}"));
                        live.entry(inode).or_insert(path);
                    }
                }
            }
        }
    }
    live
}

/// Network namespaces bind-mounted in a mountinfo table: nsfs entries whose
/// root field reads `net:[INODE]`, with their mount points.
fn nsfs_mounts(mountinfo: &str) -> impl Iterator<Item = (u64, &str)> + '_ {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        if fstype != "nsfs" {
            return None;
        }
        let inode = root
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((inode, mount_point))
    })
}

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
pub fn collect(store: &dyn LeaseStore) -> Result<Vec<Freed>, IpamError> {
    let attachments = store.attachments()?;
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    let live = live_netns();
    let mut cookies: HashMap<u64, Option<u64>> = HashMap::new();
    let mut freed = Vec::new();
    for a in attachments {
        // An identity we cannot read (written by something else) is left alone.
        let Some((inode, cookie)) = a.netns_id() else {
            continue;
        };
        let alive = match live.get(&inode) {
            None => false,
            Some(path) => {
                let current = *cookies
                    .entry(inode)
                    .or_insert_with(|| Netns::open(path).and_then(|ns| ns.cookie()).ok());
                // If the live namespace cannot be read, keep the lease: freeing
                // an address in use is worse than keeping a stale one.
                current.is_none_or(|c| c == cookie)
            }
        };
        if alive {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_bind_mounts_are_read_from_mountinfo() {
        let table = "\
1339 29 0:4 net:[4026532301] /run/netns/c1 rw shared:645 - nsfs nsfs rw
1340 29 0:4 mnt:[4026532302] /run/x rw - nsfs nsfs rw
25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
";
        assert_eq!(
            nsfs_mounts(table).collect::<Vec<_>>(),
            vec![(4026532301, "/run/netns/c1")]
        );
    }

    #[test]
    fn our_own_netns_is_live() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(live_netns().contains_key(&own));
    }
}
