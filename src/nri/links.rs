//! The NRI plugin repairs by itself: a thread listens to the host's link
//! events (rtnetlink's link group), and when an interface that is a
//! network's parent (or a VLAN parent's base) appears or comes up, it waits
//! for the events to settle and runs the repair (src/repair.rs) with the
//! engine's turn, so the pods on it get their links back with their
//! addresses. A parent that stays away leaves them broken, and `doctor`
//! says so.

use std::io;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::config::{parse_vlan_parent, NetworkDir};

/// rtnetlink's multicast group of link changes (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

/// Quiet time after the last parent event before repairing: a VLAN or a
/// NIC comes back in several steps.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts the thread; `networks` gives the current definitions directory,
/// `repair` runs one repair (`None` from `networks` ends the thread).
pub fn start(
    networks: impl Fn() -> Option<NetworkDir> + Send + 'static,
    repair: impl Fn() + Send + 'static,
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    socket.set_non_blocking(false)?;
    set_receive_timeout(&socket, SETTLE)?;
    std::thread::Builder::new()
        .name("nri-links".into())
        .spawn(move || run(&socket, &networks, &repair))?;
    Ok(())
}

fn set_receive_timeout(socket: &Socket, wait: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_usec: wait.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn run(socket: &Socket, networks: &dyn Fn() -> Option<NetworkDir>, repair: &dyn Fn()) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut due: Option<Instant> = None;
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => {
                let Some(dir) = networks() else {
                    return;
                };
                let parents = parents_of(&dir);
                if up_links(&buf[..n])
                    .iter()
                    .any(|name| parents.contains(name))
                {
                    due = Some(Instant::now() + SETTLE);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // ENOBUFS (events lost): repair anyway, it finds what is broken.
                due = Some(Instant::now() + SETTLE);
            }
        }
        if due.is_some_and(|t| Instant::now() >= t) {
            due = None;
            repair();
        }
    }
}

/// The interfaces whose appearance can bring links back: every network's
/// parent, and the base of each VLAN parent.
fn parents_of(dir: &NetworkDir) -> Vec<String> {
    let mut out = Vec::new();
    for net in dir.list().map(|d| d.networks).unwrap_or_default() {
        if let Ok(Some(vlan)) = parse_vlan_parent(&net.parent) {
            out.push(vlan.base);
        }
        out.push(net.parent);
    }
    out
}

/// Names of the links a datagram of link events reports as up.
fn up_links(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            break;
        };
        let len = (msg.header.length as usize).max(16).min(bytes.len());
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload {
            if link.header.flags.contains(LinkFlags::Up) {
                out.extend(link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }));
            }
        }
        let next = ((len + 3) & !3).min(bytes.len());
        bytes = &bytes[next..];
    }
    out
}
