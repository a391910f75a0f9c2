//! Finding owners that are gone: an attachment's netns that no process holds and
//! no bind mount keeps alive anymore.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;

/// The inode numbers of every network namespace alive on this host, as far as
/// we can see them: the namespaces of all processes (every thread) and every
/// nsfs bind mount in every mount namespace.
pub fn live_netns_inodes() -> HashSet<u64> {
    let mut live = HashSet::new();
    let mut mount_namespaces = HashSet::new();
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
                if let Ok(meta) = fs::metadata(task.path().join("ns/net")) {
                    live.insert(meta.ino());
                }
            }
        }
        // Bind mounts live in mount namespaces: read each one's table once.
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/mnt")) {
            if mount_namespaces.insert(meta.ino()) {
                if let Ok(table) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                    live.extend(nsfs_mount_inodes(&table));
                }
            }
        }
    }
    live
}

/// Inodes of network namespaces bind-mounted in a mountinfo table: nsfs
/// entries whose root field reads `net:[INODE]`.
fn nsfs_mount_inodes(mountinfo: &str) -> impl Iterator<Item = u64> + '_ {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let root = fields.nth(3)?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        if fstype != "nsfs" {
            return None;
        }
        root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
    })
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
            nsfs_mount_inodes(table).collect::<Vec<_>>(),
            vec![4026532301]
        );
    }

    #[test]
    fn our_own_netns_is_live() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(live_netns_inodes().contains(&own));
    }
}

/// What `collect` freed for one attachment whose netns is gone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Freed {
    pub owner: String,
    pub network: String,
    pub netns: String,
    pub leases: Vec<crate::ipam::Lease>,
}

/// Frees the leases and attachments of owners whose netns no longer exists
/// anywhere on this host.
pub fn collect(store: &dyn crate::ipam::LeaseStore) -> Result<Vec<Freed>, crate::ipam::IpamError> {
    let attachments = store.attachments()?;
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    let live = live_netns_inodes();
    let mut freed = Vec::new();
    for a in attachments {
        // An identity we cannot read (written by something else) is left alone.
        let Some(inode) = a.netns_inode() else {
            continue;
        };
        if live.contains(&inode) {
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
