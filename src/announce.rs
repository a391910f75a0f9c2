//! Telling the LAN at once where a container's addresses are now.
//!
//! The kernel's `arp_notify` sends one gratuitous ARP request when a link
//! comes up, and switches or hosts that miss it, or that ignore requests,
//! keep a stale entry for a reused address for minutes. netattach sends, for
//! every address of a new link, a gratuitous ARP request and reply (IPv4) or
//! an unsolicited neighbour advertisement with the override flag (IPv6), at
//! once from the container's netns, then again every second up to the
//! network's `announce` count (default 3) from a small process of its own, so
//! the container's start never waits for them.
//!
//! The two frames are built here (a few fixed fields); a packet crate would
//! be a dependency for that alone.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Announcements per address when the network does not say.
pub const DEFAULT_COUNT: u32 = 3;

/// The most a network may ask for.
pub const MAX_COUNT: u32 = 10;

/// Time between two rounds of announcements.
pub const INTERVAL: Duration = Duration::from_secs(1);

const BROADCAST: [u8; 6] = [0xff; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(86);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A gratuitous ARP: `op` 1 (request, target MAC zero) or 2 (reply, target
/// MAC ours), sender and target address both `ip`, to the broadcast MAC.
fn garp(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]); // Ethernet, IPv4, lengths
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(if op == 2 { &mac } else { &[0; 6] });
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement for `ip` to all nodes (ff02::1),
/// override flag set, with our MAC as the target link-layer address.
fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0]; // type, code, checksum, O flag
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(ip, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet([0x33, 0x33, 0, 0, 0, 1], mac, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (RFC 4861)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the pseudo-header and `body`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frames that announce `addresses` with `mac`.
pub fn frames(mac: [u8; 6], addresses: &[IpAddr]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for a in addresses {
        match a {
            IpAddr::V4(ip) => {
                out.push(garp(mac, *ip, 1));
                out.push(garp(mac, *ip, 2));
            }
            IpAddr::V6(ip) => out.push(unsolicited_na(mac, *ip)),
        }
    }
    out
}

/// Sends `frames` out of link `ifindex` of the calling thread's netns.
pub fn send(ifindex: u32, frames: &[Vec<u8>]) -> io::Result<()> {
    // SAFETY: plain socket syscalls on an fd this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let mut result = Ok(());
        for f in frames {
            addr.sll_protocol = u16::from_be_bytes([f[12], f[13]]).to_be();
            let sent = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
        }
        libc::close(fd);
        result
    }
}

/// The inode of the network namespace `fd` refers to.
pub fn netns_inode(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat fills a zeroed stat of a valid fd.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.st_ino)
    }
}

/// Starts `netattach announce` for the rounds after the first: `count - 1`
/// more, a second apart, each entering the netns at `netns_path` only while
/// it sends, and only while that path still opens the same namespace
/// (`inode`): the helper never keeps a container's netns alive. Its stdio
/// is /dev/null so that a runtime reading the hook's output does not wait
/// for it; a thread reaps it.
pub fn spawn_repeats(
    netns_path: &Path,
    inode: u64,
    ifname: &str,
    mac: [u8; 6],
    addresses: &[IpAddr],
    count: u32,
) -> io::Result<()> {
    if count < 2 || addresses.is_empty() {
        return Ok(());
    }
    let mac = crate::request::MacAddr(mac).to_string();
    let mut child = Command::new("/proc/self/exe")
        .arg("announce")
        .arg("--netns")
        .arg(netns_path)
        .args(["--inode", &inode.to_string(), "--ifname", ifname])
        .args(["--mac", &mac, "--count", &(count - 1).to_string()])
        .args(addresses.iter().map(|a| a.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// The rounds after the first (`netattach announce`, see [`spawn_repeats`]).
/// Ends quietly when the netns, or the link in it, is gone.
pub fn repeat(
    netns_path: &Path,
    inode: u64,
    ifname: &str,
    mac: [u8; 6],
    addresses: &[IpAddr],
    rounds: u32,
) -> io::Result<()> {
    let frames = frames(mac, addresses);
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    for _ in 0..rounds.min(MAX_COUNT) {
        std::thread::sleep(INTERVAL);
        let Ok(ns) = crate::netns::Netns::open(netns_path) else {
            return Ok(());
        };
        if netns_inode(ns.raw_fd())? != inode {
            return Ok(());
        }
        // A thread enters it and leaves with the thread: this process
        // holds the namespace only while it sends.
        let frames = &frames;
        let name = &name;
        let sent = ns.run(|| {
            // SAFETY: if_nametoindex reads a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Ok(false);
            }
            send(index, frames).map(|()| true)
        })??;
        if !sent {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0xc0, 0xa8, 0x20, 0x0a];

    #[test]
    fn gratuitous_arp_request_and_reply() {
        let f = frames(MAC, &["192.168.32.10".parse().unwrap()]);
        assert_eq!(f.len(), 2);
        for (frame, op) in f.iter().zip([1u8, 2]) {
            assert_eq!(frame.len(), 42);
            assert_eq!(&frame[0..6], &BROADCAST);
            assert_eq!(&frame[6..12], &MAC);
            assert_eq!(&frame[12..14], &[0x08, 0x06]);
            assert_eq!(frame[21], op);
            // Sender and target protocol addresses are both the address.
            assert_eq!(&frame[28..32], &[192, 168, 32, 10]);
            assert_eq!(&frame[38..42], &[192, 168, 32, 10]);
        }
        assert_eq!(&f[0][32..38], &[0; 6]);
        assert_eq!(&f[1][32..38], &MAC);
    }

    #[test]
    fn unsolicited_neighbour_advertisement_checksums() {
        let ip: Ipv6Addr = "2001:db8:32::10".parse().unwrap();
        let f = &frames(MAC, &[IpAddr::V6(ip)])[0];
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override flag only");
        assert_eq!(&icmp[8..24], &ip.octets());
        // A correct checksum makes the sum over the whole message 0.
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        assert_eq!(icmpv6_checksum(ip, dst, icmp), 0);
    }
}
