//! How an attachment remembers the network namespace it was made for, so that
//! a liveness check never mistakes a later namespace for it. The kernel reuses
//! a namespace's inode number once the namespace is gone, so the inode comes
//! with a second part that is never reused:
//!
//! - `net:[INODE]#COOKIE`: the namespace's cookie (`SO_NETNS_COOKIE`, Linux
//!   5.14 and later), unique for the host's uptime.
//! - `net:[INODE]@MARK`: on older kernels, a random 64-bit mark that netattach
//!   keeps in the alias of the namespace's `lo` (`ip link show lo` shows
//!   `alias netattach:MARK`). Every namespace has its own `lo`, which dies with
//!   it, so a later namespace with the same inode has no mark or another one.
//!   The mark is written once, under an flock on the namespace itself (every
//!   open of one namespace shares its nsfs inode), so that two attaches into
//!   one new namespace agree on it.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::deadline::{self, Deadline};
use crate::netlink::Netlink;
use crate::netns::Netns;

/// What tells a namespace apart from earlier ones with the same inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Cookie(u64),
    Mark(u64),
}

/// A recorded namespace: inode plus [`Tag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub inode: u64,
    pub tag: Tag,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Tag::Cookie(c) => write!(f, "net:[{}]#{c}", self.inode),
            Tag::Mark(m) => write!(f, "net:[{}]@{m:016x}", self.inode),
        }
    }
}

impl Identity {
    /// Reads `net:[INODE]#COOKIE` or `net:[INODE]@MARK`; anything else (no
    /// namespace recorded, as for `lease reserve`) is `None`.
    pub fn parse(s: &str) -> Option<Identity> {
        let (inode, rest) = s.strip_prefix("net:[")?.split_once(']')?;
        let tag = if let Some(cookie) = rest.strip_prefix('#') {
            Tag::Cookie(cookie.parse().ok()?)
        } else {
            let mark = rest.strip_prefix('@')?;
            if mark.len() != 16 {
                return None;
            }
            Tag::Mark(u64::from_str_radix(mark, 16).ok()?)
        };
        Some(Identity {
            inode: inode.parse().ok()?,
            tag,
        })
    }
}

/// Which kind of [`Tag`] this kernel lets netattach record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Cookie,
    Mark,
}

impl Scheme {
    /// The running kernel's, probed once per process: `SO_NETNS_COOKIE` on a
    /// socket of our own namespace, answered with ENOPROTOOPT before 5.14.
    pub fn of_this_kernel() -> Scheme {
        static SCHEME: OnceLock<Scheme> = OnceLock::new();
        *SCHEME.get_or_init(|| match Netlink::open().and_then(|nl| nl.netns_cookie()) {
            Err(e) if e.errno() == Some(libc::ENOPROTOOPT) => Scheme::Mark,
            _ => Scheme::Cookie,
        })
    }

    /// For `doctor`.
    pub fn describe(self) -> &'static str {
        match self {
            Scheme::Cookie => "netns cookie (SO_NETNS_COOKIE)",
            Scheme::Mark => "mark in lo's alias (no SO_NETNS_COOKIE before Linux 5.14)",
        }
    }
}

/// The alias text that carries a mark.
const MARK_PREFIX: &str = "netattach:";

/// The identity to record for an attach into `ns`, whose namespace `inside`
/// is a socket of. On a kernel without cookies this marks the namespace if
/// it has no mark yet, waiting at most until `deadline` for another process
/// that is marking it.
pub fn for_attach(ns: &Netns, inside: &mut Netlink, deadline: Deadline) -> Result<Identity> {
    let inode = ns.id().context("inspect the network namespace")?.1;
    // The socket at hand answers whether this kernel has cookies.
    let tag = match inside.netns_cookie() {
        Ok(cookie) => Tag::Cookie(cookie),
        Err(e) if e.errno() == Some(libc::ENOPROTOOPT) => Tag::Mark(mark(ns, inside, deadline)?),
        Err(e) => return Err(e.into()),
    };
    Ok(Identity { inode, tag })
}

/// The namespace's mark, made now if it has none.
pub fn mark(ns: &Netns, inside: &mut Netlink, deadline: Deadline) -> Result<u64> {
    // SAFETY: the descriptor belongs to `ns`, which outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(ns.raw_fd()) };
    if !deadline::flock_exclusive(fd, deadline).context("lock the network namespace")? {
        bail!(
            "gave up after waiting for another process marking the network namespace {}",
            ns.path().display()
        );
    }
    let result = mark_locked(inside);
    // SAFETY: as above; unlocking a lock we hold.
    unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) };
    result
}

fn mark_locked(inside: &mut Netlink) -> Result<u64> {
    let lo = loopback(inside)?;
    match lo.alias.as_deref().map(parse_mark) {
        Some(Ok(mark)) => return Ok(mark),
        Some(Err(foreign)) => bail!(
            "the namespace's lo has the alias {foreign:?}, where netattach keeps its mark on \
             kernels without SO_NETNS_COOKIE; clear it (ip link set lo alias \"\")"
        ),
        None => {}
    }
    let mark = random_u64()?;
    inside.set_link_alias(lo.index, &format!("{MARK_PREFIX}{mark:016x}"))?;
    Ok(mark)
}

/// The identity of the namespace at `ns` in the kind of `like`; `None` when it
/// has no mark (it cannot be one netattach recorded).
pub fn read(ns: &Netns, like: Tag) -> io::Result<Option<Identity>> {
    let inode = ns.id()?.1;
    let tag = ns.run(|| -> anyhow::Result<Option<Tag>> {
        let mut inside = Netlink::open()?;
        Ok(match like {
            Tag::Cookie(_) => Some(Tag::Cookie(inside.netns_cookie()?)),
            Tag::Mark(_) => loopback(&mut inside)?
                .alias
                .as_deref()
                .and_then(|a| parse_mark(a).ok())
                .map(Tag::Mark),
        })
    })?;
    let tag = tag.map_err(|e| io::Error::other(format!("{e:#}")))?;
    Ok(tag.map(|tag| Identity { inode, tag }))
}

fn loopback(inside: &mut Netlink) -> Result<crate::netlink::link::Link> {
    inside
        .link_by_name("lo")?
        .context("the network namespace has no lo")
}

/// The mark in a `lo` alias, or the alias itself when it is not ours.
fn parse_mark(alias: &str) -> std::result::Result<u64, &str> {
    alias
        .strip_prefix(MARK_PREFIX)
        .filter(|m| m.len() == 16)
        .and_then(|m| u64::from_str_radix(m, 16).ok())
        .ok_or(alias)
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        bail!("getrandom: {}", io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_back_what_they_print() {
        for id in [
            Identity {
                inode: 4026532301,
                tag: Tag::Cookie(4097),
            },
            Identity {
                inode: 4026532301,
                tag: Tag::Mark(0x00ab_cdef_0123_4567),
            },
        ] {
            assert_eq!(Identity::parse(&id.to_string()), Some(id));
        }
        assert_eq!(
            Identity::parse("net:[12]@00000000000000ff").map(|i| i.tag),
            Some(Tag::Mark(255))
        );
        for bad in [
            "",
            "/run/netns/x",
            "net:[12]",
            "net:[12]#",
            "net:[x]#1",
            "net:[12]@ff",
            "net:[12]@0123456789abcdefg",
            "net:[12]%1",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_our_own_alias_is_a_mark() {
        assert_eq!(parse_mark("netattach:00000000000000ff"), Ok(255));
        assert_eq!(parse_mark("uplink to rack 4"), Err("uplink to rack 4"));
        assert_eq!(parse_mark("netattach:ff"), Err("netattach:ff"));
    }

    /// A new namespace, or `None` (skipped) without the rights to make one.
    fn scratch() -> Option<Netns> {
        match crate::netns::scratch() {
            Ok(ns) => Some(ns),
            Err(e) => {
                eprintln!("SKIP: cannot make a network namespace: {e}");
                None
            }
        }
    }

    fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce(&mut Netlink) -> T + Send) -> T {
        ns.run(|| f(&mut Netlink::open().unwrap())).unwrap()
    }

    #[test]
    fn a_namespace_is_marked_once_and_keeps_its_mark() {
        let Some(ns) = scratch() else { return };
        let first = in_ns(&ns, |inside| {
            let a = mark(&ns, inside, Deadline::default_wait()).unwrap();
            let b = mark(&ns, inside, Deadline::default_wait()).unwrap();
            assert_eq!(a, b, "a second attach reuses the mark");
            a
        });
        let read_back = read(&ns, Tag::Mark(0)).unwrap().unwrap();
        assert_eq!(read_back.tag, Tag::Mark(first));
        assert_eq!(read_back.inode, ns.id().unwrap().1);
        // Another namespace gets another mark, and an unmarked one reads as none.
        let other = scratch().unwrap();
        assert_eq!(read(&other, Tag::Mark(0)).unwrap(), None);
        let second = in_ns(&other, |inside| {
            mark(&other, inside, Deadline::default_wait()).unwrap()
        });
        assert_ne!(first, second);
    }

    #[test]
    fn a_held_namespace_lock_ends_at_the_deadline() {
        let Some(ns) = scratch() else { return };
        // Another open of the same namespace holds the lock.
        let holder = std::fs::File::open(ns.path()).unwrap();
        // SAFETY: flock on a file this test keeps open.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let err = in_ns(&ns, |inside| {
            let deadline = Deadline::after(std::time::Duration::from_millis(50));
            mark(&ns, inside, deadline).unwrap_err()
        });
        assert!(
            err.to_string().contains("marking the network namespace"),
            "{err}"
        );
    }
}
