//! Runs the client state machine over a UDP socket opened inside the
//! container's netns and bound to its link, until it binds, renews, gives
//! up or the deadline passes. Every wait is a receive with a timeout no
//! later than the machine's next timer or the caller's deadline.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use super::machine::{Action, Client, Destination, Lease};
use super::message::{self, ClientIds};
use crate::netns::Netns;

pub const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// The machine's clock: wall time since the epoch, so that a lease
/// persisted by one process is read on the same clock by the next.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A UDP socket on port 68 of link `ifname` in `netns`, bound to `address`
/// (unspecified before the link has one). Broadcasts leave through that
/// link only, and without an address the kernel sends them from 0.0.0.0 as
/// RFC 2131 wants. Several links of one netns each have their own socket
/// (SO_REUSEADDR with SO_BINDTODEVICE keeps them apart).
pub fn open_socket(netns: &Netns, ifname: &str, address: Ipv4Addr) -> Result<UdpSocket> {
    let ifname = ifname.to_string();
    let fd = netns
        .run(move || -> nix::Result<OwnedFd> {
            let fd = broadcast_socket(&ifname)?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::from(SocketAddrV4::new(address, CLIENT_PORT)),
            )?;
            Ok(fd)
        })
        .context("enter the container's network namespace")?
        .context("open a DHCP client socket")?;
    Ok(UdpSocket::from(fd))
}

/// A UDP socket of the current netns that may broadcast, and sends and
/// receives through link `ifname` only.
pub fn broadcast_socket(ifname: &str) -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )?;
    Ok(fd)
}

/// How an exchange ended.
#[derive(Debug)]
pub enum Outcome {
    Bound(Lease),
    Renewed(Lease),
    Lost(Lease),
    Failed(String),
    /// The deadline passed first (renewals run in short exchanges: the
    /// machine's own retransmission timer is the deadline).
    Waiting,
}

/// Feeds `actions` to the wire, then answers to the machine, until an action
/// ends the exchange or `deadline` passes.
pub fn run(
    client: &mut Client,
    actions: Vec<Action>,
    socket: &UdpSocket,
    ids: &ClientIds,
    deadline: Instant,
) -> Result<Outcome> {
    let mut pending = actions;
    let mut buf = [0u8; 1500];
    loop {
        for action in pending.drain(..) {
            match action {
                Action::Send(msg, dest) => send(socket, &message::encode(&msg, ids), dest)?,
                Action::Bound(l) => return Ok(Outcome::Bound(l)),
                Action::Renewed(l) => return Ok(Outcome::Renewed(l)),
                Action::Lost(l) => return Ok(Outcome::Lost(l)),
                Action::Failed(why) => return Ok(Outcome::Failed(why)),
            }
        }
        let wall = now();
        let until_timer = client
            .next_timer()
            .map(|t| t.saturating_sub(wall))
            .unwrap_or(Duration::MAX);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(Outcome::Waiting);
        }
        let wait = until_timer.min(remaining);
        if wait.is_zero() {
            pending = client.on_timer(now());
            continue;
        }
        socket.set_read_timeout(Some(wait))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                if let Some(reply) = message::decode(&buf[..n], &ids.mac) {
                    pending = client.on_reply(now(), reply);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                pending = client.on_timer(now());
            }
            Err(e) => return Err(anyhow!("receive DHCP replies: {e}")),
        }
    }
}

fn send(socket: &UdpSocket, bytes: &[u8], dest: Destination) -> Result<()> {
    let to = match dest {
        Destination::Broadcast => Ipv4Addr::BROADCAST,
        Destination::Unicast(server) => server,
    };
    socket
        .send_to(bytes, SocketAddrV4::new(to, SERVER_PORT))
        .with_context(|| format!("send a DHCP message to {to}"))?;
    Ok(())
}
