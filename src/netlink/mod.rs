//! A thin synchronous wrapper over one rtnetlink socket: send a request, read its
//! acknowledgement or its dump. No async runtime: the hook path runs on every
//! container start and must stay lean.
//!
//! A socket belongs to the network namespace it was created in; open one per
//! namespace (see [`crate::netns`]).

pub mod addr;
pub mod link;
pub mod route;

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A failed netlink operation: what was attempted, the errno, and the kernel's
/// extended-ack message when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {}{}", .source, .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct NetlinkError {
    pub op: String,
    pub source: io::Error,
    pub detail: Option<String>,
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    fn io(op: &str, source: io::Error) -> Self {
        NetlinkError {
            op: op.to_string(),
            source,
            detail: None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Why no acknowledgement came: the kernel refused the request, or the
/// socket failed (then nothing more can be read from it).
enum Failure {
    Refused(NetlinkError),
    Socket(NetlinkError),
}

/// One request of a [`Netlink::batch`]: what it does (for its error), the
/// message and its flags (`NLM_F_REQUEST | NLM_F_ACK` are added).
pub struct Request {
    pub op: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
}

/// The first request of a batch that failed: its position, and why.
#[derive(Debug)]
pub struct BatchError {
    pub index: usize,
    pub error: NetlinkError,
}

/// One rtnetlink socket, bound to the namespace it was opened in.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

// NLMSGERR_ATTR_MSG: the extended-ack text after the echoed header.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io("open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetlinkError::io("bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::io("connect netlink socket", e))?;
        // Best effort: the kernel's reason text makes errors readable; cap_ack keeps
        // errors small by not echoing our whole request back.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The cookie of the namespace this socket lives in: unique for the host's
    /// uptime and never reused, unlike the namespace's inode number.
    pub fn netns_cookie(&self) -> Result<u64> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::io(
                "read the netns cookie",
                io::Error::last_os_error(),
            ));
        }
        Ok(cookie)
    }

    fn send(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        let mut out = Vec::new();
        let seq = self.append(&mut out, msg, flags);
        self.socket
            .send(&out, 0)
            .map_err(|e| NetlinkError::io(op, e))?;
        Ok(seq)
    }

    /// Serializes `msg` under the next sequence number at the end of `out`.
    fn append(&mut self, out: &mut Vec<u8>, msg: RouteNetlinkMessage, flags: u16) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let start = out.len();
        out.resize(start + packet.buffer_len(), 0);
        packet.serialize(&mut out[start..]);
        self.seq
    }

    /// Sends `requests` in one datagram and reads every acknowledgement:
    /// one round trip instead of one per request. The kernel handles them
    /// in order and goes on after a failed one, so a caller whose later
    /// requests depend on earlier ones must undo the lot on error (an
    /// attach deletes the link). Returns the first failure.
    pub fn batch(&mut self, requests: Vec<Request>) -> std::result::Result<(), BatchError> {
        let mut out = Vec::new();
        let mut pending = Vec::with_capacity(requests.len());
        for r in requests {
            let seq = self.append(&mut out, r.msg, r.flags | NLM_F_ACK);
            pending.push((seq, r.op));
        }
        let Some((_, first_op)) = pending.first() else {
            return Ok(());
        };
        if let Err(e) = self.socket.send(&out, 0) {
            return Err(BatchError {
                index: 0,
                error: NetlinkError::io(first_op, e),
            });
        }
        // Each request's ack in turn: the kernel answers in order.
        let mut first_error = None;
        for (index, (seq, op)) in pending.iter().enumerate() {
            match self.receive_answer(op, *seq, |_| {}) {
                Ok(()) => {}
                Err(Failure::Refused(error)) => {
                    first_error.get_or_insert(BatchError { index, error });
                }
                // No later ack can be read from a failing socket.
                Err(Failure::Socket(error)) => {
                    return Err(first_error.unwrap_or(BatchError { index, error }))
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Reads replies to `seq`, handing each inner message to `each`, until the
    /// ack (or, for a dump, the end). Errors carry the kernel's message.
    fn receive(&mut self, op: &str, seq: u32, each: impl FnMut(RouteNetlinkMessage)) -> Result<()> {
        self.receive_answer(op, seq, each).map_err(|f| match f {
            Failure::Refused(e) | Failure::Socket(e) => e,
        })
    }

    /// [`Netlink::receive`], telling the kernel's refusal of the request
    /// apart from the socket failing.
    fn receive_answer(
        &mut self,
        op: &str,
        seq: u32,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> std::result::Result<(), Failure> {
        let socket_error = |e| Failure::Socket(NetlinkError::io(op, e));
        loop {
            let len = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(socket_error)?;
            let mut offset = 0;
            while offset < len {
                let bytes = &self.buf[offset..len];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        socket_error(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                    })?;
                let msg_len = msg.header.length as usize;
                if msg_len == 0 {
                    break;
                }
                offset += (msg_len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(()),
                            Some(code) => Err(Failure::Refused(NetlinkError {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                                detail: extack_message(&err.header),
                            })),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement.
    pub fn request(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let seq = self.send(op, msg, flags | NLM_F_ACK)?;
        self.receive(op, seq, |_| {})
    }

    /// Sends a request and returns the single reply it produces (e.g. a GET by name).
    pub fn get(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Option<RouteNetlinkMessage>> {
        let seq = self.send(op, msg, NLM_F_ACK)?;
        let mut reply = None;
        self.receive(op, seq, |m| {
            reply.get_or_insert(m);
        })?;
        Ok(reply)
    }

    /// Sends a dump request and collects every reply.
    pub fn dump(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(op, msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(op, seq, |m| out.push(m))?;
        Ok(out)
    }
}

/// Extracts NLMSGERR_ATTR_MSG from an error's payload: the echoed request header
/// (capped) followed by attributes.
fn extack_message(payload: &[u8]) -> Option<String> {
    let mut rest = payload.get(NLMSG_HDRLEN..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &rest[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_text_is_found_after_the_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        let text = b"Nexthop has invalid gateway\0";
        let len = (4 + text.len()) as u16;
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(
            extack_message(&payload).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(extack_message(&payload[..10]), None);
    }
}
