//! Whether the owner of a record is still alive: the network namespace an
//! attachment recorded (see [`crate::identity`]) is held by some process or bind
//! mount on this host. Asked by `gc`, by a release (is the interface still on
//! the wire?) and by the store before a conflict refuses an attach (a dead
//! owner must not block anyone).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::identity::{self, Identity, Tag};
use crate::ipam::Attachment;
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

/// What is known of a recorded namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Alive; this path opens it.
    Alive(PathBuf),
    /// No longer exists anywhere on this host.
    Gone,
    /// Cannot be told (no identity recorded, as for `lease reserve`, or the
    /// live namespace could not be read): treated as alive by every caller,
    /// since freeing an address in use is worse than keeping a stale one.
    Unknown,
}

/// The inode of the host's (initial) pid namespace, fixed by the kernel
/// (`PROC_PID_INIT_INO`).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Whether this process sees every process of the host. Without that (run
/// from a container without the host's pid namespace) a namespace held only by
/// processes we cannot see would look gone, and its owner's leases would be
/// freed while in use; the reason is returned instead.
pub fn sees_every_process() -> Result<(), String> {
    match fs::metadata("/proc/self/ns/pid") {
        Ok(m) if m.ino() == INITIAL_PID_NAMESPACE => Ok(()),
        Ok(_) => Err(
            "this process runs in a pid namespace of its own and cannot see the \
                      host's processes (run it on the host, or with the host's pid namespace)"
                .to_string(),
        ),
        Err(e) => Err(format!("cannot read /proc/self/ns/pid: {e}")),
    }
}

/// Looks recorded namespaces up, scanning `/proc` at most once and only when
/// a path given up front (the netns a face knows) does not answer.
#[derive(Default)]
pub struct Namespaces {
    hints: Vec<PathBuf>,
    live: Option<HashMap<u64, PathBuf>>,
    /// What each path opened showed, per kind of tag asked (`None`: unreadable).
    seen: HashMap<(PathBuf, bool), Option<Option<Identity>>>,
    /// `sees_every_process`, asked once; without it nothing is ever `Gone`.
    blind: Option<bool>,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces::default()
    }

    fn blind(&mut self) -> bool {
        *self
            .blind
            .get_or_insert_with(|| sees_every_process().is_err())
    }

    /// A path that may open the namespace asked about (checked by identity
    /// before it is believed).
    pub fn with_hint(mut self, path: Option<&Path>) -> Namespaces {
        self.hints.extend(path.map(Path::to_path_buf));
        self
    }

    /// The identity, in the kind of `like`, of the namespace at `path`, read
    /// once per path: `Some(None)` when it has none of that kind (an unmarked
    /// namespace), `None` when it cannot be read.
    fn identity_at(&mut self, path: &Path, like: Tag) -> Option<Option<Identity>> {
        let key = (path.to_path_buf(), matches!(like, Tag::Cookie(_)));
        *self
            .seen
            .entry(key)
            .or_insert_with(|| identity::read(&Netns::open(path).ok()?, like).ok())
    }

    /// Where the namespace recorded as `identity` is, if it still exists.
    pub fn find(&mut self, identity: &str) -> Found {
        let Some(wanted) = Identity::parse(identity) else {
            return Found::Unknown;
        };
        for hint in self.hints.clone() {
            if self.identity_at(&hint, wanted.tag) == Some(Some(wanted)) {
                return Found::Alive(hint);
            }
        }
        if self.blind() {
            return Found::Unknown;
        }
        let path = match self.live.get_or_insert_with(live_netns).get(&wanted.inode) {
            None => return Found::Gone,
            Some(p) => p.clone(),
        };
        // The kernel reuses inode numbers: the tag tells namespaces apart.
        match self.identity_at(&path, wanted.tag) {
            Some(Some(seen)) if seen == wanted => Found::Alive(path),
            Some(_) => Found::Gone,
            None => Found::Unknown,
        }
    }

    /// Whether the attachment's owner may still be using its addresses.
    pub fn is_alive(&mut self, a: &Attachment) -> bool {
        !matches!(self.find(&a.netns), Found::Gone)
    }
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

    #[test]
    fn identities_without_a_namespace_are_unknown_not_dead() {
        let mut ns = Namespaces::new();
        assert_eq!(ns.find(""), Found::Unknown);
        assert_eq!(ns.find("/run/netns/x"), Found::Unknown);
        // An inode no namespace has.
        assert_eq!(ns.find("net:[1]#1"), Found::Gone);
        assert_eq!(ns.find("net:[1]@0000000000000001"), Found::Gone);
    }
}
