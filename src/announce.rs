//! Telling the LAN at once where a container's addresses are now.
//!
//! The kernel's `arp_notify` sends one gratuitous ARP request when a link
//! comes up, and switches or hosts that miss it, or that ignore requests,
//! keep a stale entry for a reused address for minutes. netattach sends, for
//! every address of a new link, a gratuitous ARP request and reply (IPv4) or
//! an unsolicited neighbour advertisement with the override flag (IPv6),
//! right after the link is up and then every second up to the network's
//! `announce` count (default 3), from a child process the attach starts (see
//! [`spawn`]): the container's start never waits for them. (Not from the
//! attach itself: closing a packet socket waits for an RCU grace period in
//! the kernel, 10 to 16 ms here, which every container start would pay.)
//!
//! The two frames are built here (a few fixed fields); a packet crate would
//! be a dependency for that alone.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
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

/// What the announcing child needs, prepared before it starts; it only
/// reads this, and its own stack.
struct Prepared {
    netns_path: CString,
    inode: u64,
    ifreq: libc::ifreq,
    frames: Vec<Vec<u8>>,
    rounds: u32,
    devnull: CString,
    home: RawFd,
    stack: Vec<u8>,
}

/// `Prepared`, handed to the reaping thread. `ifreq` holds a pointer type
/// in its union, which makes it `!Send`; nothing here points anywhere.
struct Reaped(Box<Prepared>);

// SAFETY: the data is plain bytes; the thread that owns it only drops it,
// after the child that read it has exited.
unsafe impl Send for Reaped {}

impl Reaped {
    /// Waits for the child `pid`, then frees what it read.
    fn after(self, pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: waits for our own child; only then is the data freed.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        drop(self.0);
    }
}

/// The child's stack: it runs a loop of system calls.
const CHILD_STACK: usize = 64 * 1024;

/// Starts the announcements of `addresses` on link `ifname` of the netns at
/// `netns_path`: `count` rounds, the first at once, then a second apart, in
/// a child process that shares this one's memory (`clone(CLONE_VM)`): no
/// page tables are copied and no program is started, so the attach pays
/// about what starting a thread costs (a fork cost it 0.5 to 1 ms, a new
/// process 0.7 ms, on this project's machines). The child makes raw system
/// calls only (see [`sys`]): it touches no lock, no allocator and not even
/// `errno` of the thread that started it. Its stdio is /dev/null and it
/// keeps no other fd of ours (a runtime reading the hook's output must not
/// wait for it); it enters the netns only while it sends, and only while
/// the path still opens the same namespace (`inode`), so it never keeps a
/// stopped container's netns alive. A thread reaps it and frees what it
/// used; when this process exits first (a hook), the memory lives on with
/// the child.
pub fn spawn(
    netns_path: &Path,
    inode: u64,
    ifname: &str,
    mac: [u8; 6],
    addresses: &[IpAddr],
    count: u32,
) -> io::Result<()> {
    if count == 0 || addresses.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed ifreq is valid; the name is copied in below.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifreq.ifr_name.len() {
        return Err(io::Error::other(format!(
            "interface name {ifname:?} too long"
        )));
    }
    for (dst, src) in ifreq.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    let home_path = CString::new("/proc/thread-self/ns/net").map_err(io::Error::other)?;
    // SAFETY: open of a NUL-terminated path; closed below.
    let home = unsafe { libc::open(home_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if home < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut prepared = Box::new(Prepared {
        netns_path: CString::new(netns_path.as_os_str().as_bytes()).map_err(io::Error::other)?,
        inode,
        ifreq,
        frames: frames(mac, addresses),
        rounds: count.min(MAX_COUNT),
        devnull: CString::new("/dev/null").map_err(io::Error::other)?,
        home,
        stack: vec![0u8; CHILD_STACK],
    });
    // The stack grows down from its 16-byte aligned top.
    let top = (prepared.stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let arg: *mut Prepared = &mut *prepared;
    // SAFETY: the child runs `child_entry` on its own stack, reads only
    // `prepared` (kept alive until it is reaped, or for ever if this
    // process exits first) and makes raw system calls only.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            arg.cast(),
        )
    };
    let started = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: closing our own fd; the child has its own copy.
    unsafe { libc::close(home) };
    started?;
    let reaped = Reaped(prepared);
    std::thread::spawn(move || reaped.after(pid));
    Ok(())
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` of `spawn`, alive while we run.
    unsafe { announce_child(&*(arg as *const Prepared)) }
}

/// The child's work: raw system calls only, then exit.
///
/// # Safety
/// Only in the child `spawn` starts.
unsafe fn announce_child(p: &Prepared) -> ! {
    use sys::*;
    // Stdio to /dev/null, the netns to come home to as fd 3, nothing else.
    let null = openat(p.devnull.as_ptr(), libc::O_RDWR);
    if null < 0 {
        exit(1);
    }
    for fd in 0..3 {
        dup3(null, fd);
    }
    if p.home != 3 && dup3(p.home as isize, 3) < 0 {
        exit(1);
    }
    if close_range(4) != 0 {
        for fd in 4..4096 {
            close(fd);
        }
    }
    let mut addr: libc::sockaddr_ll = std::mem::zeroed();
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_halen = 6;
    let second = libc::timespec {
        tv_sec: INTERVAL.as_secs() as libc::time_t,
        tv_nsec: INTERVAL.subsec_nanos() as libc::c_long,
    };
    let mut round = 0;
    while round < p.rounds {
        if round > 0 {
            nanosleep(&second);
        }
        round += 1;
        let ns = openat(p.netns_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if ns < 0 {
            exit(0);
        }
        let mut st: libc::stat = std::mem::zeroed();
        if fstat(ns, &mut st) != 0 || st.st_ino != p.inode || setns(ns) != 0 {
            exit(0);
        }
        close(ns);
        let sock = socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC);
        let mut ifreq = p.ifreq;
        let found = sock >= 0 && ioctl(sock, libc::SIOCGIFINDEX, &mut ifreq) == 0;
        if found {
            addr.sll_ifindex = ifreq.ifr_ifru.ifru_ifindex;
            for f in &p.frames {
                if let (Some(&hi), Some(&lo)) = (f.get(12), f.get(13)) {
                    addr.sll_protocol = u16::from_be_bytes([hi, lo]).to_be();
                    sendto(sock, f, &addr);
                }
            }
        }
        // Home before the close, which waits for the kernel (an RCU grace
        // period): the container's netns is not held meanwhile.
        setns(3);
        if sock >= 0 {
            close(sock);
        }
        if !found {
            exit(0);
        }
    }
    exit(0)
}

/// Raw system calls for the announcing child, which shares our memory: the
/// libc wrappers would write `errno` into the thread-local storage of the
/// thread that started it. Arguments and results as the kernel has them
/// (a negative result is `-errno`).
mod sys {
    use std::ffi::c_char;

    #[cfg(target_arch = "x86_64")]
    unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
        ret
    }

    pub unsafe fn openat(path: *const c_char, flags: libc::c_int) -> isize {
        call(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as usize,
                path as usize,
                flags as usize,
                0,
                0,
                0,
            ],
        )
    }
    pub unsafe fn dup3(old: isize, new: usize) -> isize {
        call(libc::SYS_dup3, [old as usize, new, 0, 0, 0, 0])
    }
    pub unsafe fn close(fd: isize) -> isize {
        call(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0])
    }
    pub unsafe fn close_range(first: usize) -> isize {
        call(
            libc::SYS_close_range,
            [first, u32::MAX as usize, 0, 0, 0, 0],
        )
    }
    pub unsafe fn fstat(fd: isize, st: *mut libc::stat) -> isize {
        call(libc::SYS_fstat, [fd as usize, st as usize, 0, 0, 0, 0])
    }
    pub unsafe fn setns(fd: isize) -> isize {
        call(
            libc::SYS_setns,
            [fd as usize, libc::CLONE_NEWNET as usize, 0, 0, 0, 0],
        )
    }
    pub unsafe fn socket(domain: libc::c_int, kind: libc::c_int) -> isize {
        call(
            libc::SYS_socket,
            [domain as usize, kind as usize, 0, 0, 0, 0],
        )
    }
    pub unsafe fn ioctl(fd: isize, request: libc::c_ulong, arg: *mut libc::ifreq) -> isize {
        call(
            libc::SYS_ioctl,
            [fd as usize, request as usize, arg as usize, 0, 0, 0],
        )
    }
    pub unsafe fn sendto(fd: isize, frame: &[u8], to: *const libc::sockaddr_ll) -> isize {
        call(
            libc::SYS_sendto,
            [
                fd as usize,
                frame.as_ptr() as usize,
                frame.len(),
                0,
                to as usize,
                std::mem::size_of::<libc::sockaddr_ll>(),
            ],
        )
    }
    pub unsafe fn nanosleep(t: *const libc::timespec) -> isize {
        call(libc::SYS_nanosleep, [t as usize, 0, 0, 0, 0, 0])
    }
    pub unsafe fn exit(code: usize) -> ! {
        loop {
            call(libc::SYS_exit, [code, 0, 0, 0, 0, 0]);
        }
    }
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
