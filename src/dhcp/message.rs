//! DHCPv4 messages on the wire, through `dhcproto`: what the client state
//! machine (`machine.rs`) asks to send becomes bytes here, and a server's
//! bytes become a `Reply` it can take, or nothing if they are not for us.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::machine::{Message, Offer, Reply, RequestKind};

/// Who asks: the container's link and the names the server may know it by.
#[derive(Debug, Clone)]
pub struct ClientIds {
    pub mac: [u8; 6],
    /// Option 61: type 0, then the bytes (see `client_id`).
    pub client_id: Vec<u8>,
    /// Option 12, when the request or the pod gives one.
    pub hostname: Option<String>,
}

/// The option 61 value of an owner: stable per identity when it has one, so
/// a re-created pod keeps its lease on servers that key on the client id.
pub fn client_id(identity: &str) -> Vec<u8> {
    let mut id = vec![0u8];
    id.extend_from_slice(b"netattach:");
    id.extend_from_slice(identity.as_bytes());
    // Option values are at most 255 bytes.
    id.truncate(255);
    id
}

/// What the client asks the server for, in every message that may be answered.
const PARAMETERS: [OptionCode; 6] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// The bytes of one message. Replies are asked to be broadcast while the
/// link has no address (the flag): a UDP socket on it cannot receive a
/// unicast to an address it does not have.
pub fn encode(message: &Message, ids: &ClientIds) -> Vec<u8> {
    let (xid, kind) = match message {
        Message::Discover { xid } => (*xid, MessageType::Discover),
        Message::Request { xid, .. } => (*xid, MessageType::Request),
        Message::Release { xid, .. } => (*xid, MessageType::Release),
    };
    let mut msg = v4::Message::default();
    msg.set_xid(xid).set_chaddr(&ids.mac);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ClientIdentifier(ids.client_id.clone()));
    match message {
        Message::Discover { .. } => {
            msg.set_flags(v4::Flags::default().set_broadcast());
        }
        Message::Request { kind, .. } => match *kind {
            RequestKind::Selecting { requested, server } => {
                msg.set_flags(v4::Flags::default().set_broadcast());
                let opts = msg.opts_mut();
                opts.insert(DhcpOption::RequestedIpAddress(requested));
                opts.insert(DhcpOption::ServerIdentifier(server));
            }
            RequestKind::Renewing { ciaddr } | RequestKind::Rebinding { ciaddr } => {
                msg.set_ciaddr(ciaddr);
            }
        },
        Message::Release {
            address, server, ..
        } => {
            msg.set_ciaddr(*address);
            msg.opts_mut().insert(DhcpOption::ServerIdentifier(*server));
        }
    }
    if !matches!(message, Message::Release { .. }) {
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::ParameterRequestList(PARAMETERS.to_vec()));
        if let Some(h) = &ids.hostname {
            opts.insert(DhcpOption::Hostname(h.clone()));
        }
    }
    let mut buf = Vec::with_capacity(300);
    // Encoding a message built from these values cannot fail: every option
    // is within its size (the client id was truncated, a hostname is a
    // validated DNS label).
    msg.encode(&mut Encoder::new(&mut buf))
        .expect("a DHCP message of known options encodes");
    buf
}

/// A server's answer for the link with `mac`; `None` for anything else (a
/// request of another client, an answer to another MAC, bytes that are not
/// DHCP, an offer without the options a lease needs).
pub fn decode(bytes: &[u8], mac: &[u8; 6]) -> Option<Reply> {
    let msg = v4::Message::decode(&mut Decoder::new(bytes)).ok()?;
    if msg.opcode() != v4::Opcode::BootReply || msg.chaddr().get(..6)? != mac {
        return None;
    }
    let xid = msg.xid();
    let opts = msg.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    match opts.msg_type()? {
        MessageType::Nak => Some(Reply::Nak { xid, server }),
        MessageType::Offer => Some(Reply::Offer {
            xid,
            offer: offer_of(&msg, server)?,
        }),
        MessageType::Ack => Some(Reply::Ack {
            xid,
            offer: offer_of(&msg, server)?,
        }),
        _ => None,
    }
}

/// The lease an OFFER or ACK describes. Without a lease time it is no
/// lease (RFC 2131 requires option 51 in both); without a subnet mask the
/// address's class used to decide: a /24 is what such servers mean today.
fn offer_of(msg: &v4::Message, server: Ipv4Addr) -> Option<Offer> {
    let opts = msg.opts();
    let seconds = |code| match opts.get(code) {
        Some(
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
        ) => Some(Duration::from_secs(u64::from(*s))),
        _ => None,
    };
    let address = msg.yiaddr();
    if address.is_unspecified() || address.is_broadcast() {
        return None;
    }
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).leading_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    Some(Offer {
        address,
        server,
        prefix_len,
        router,
        dns,
        lease_time: seconds(OptionCode::AddressLeaseTime)?,
        renewal_time: seconds(OptionCode::Renewal),
        rebinding_time: seconds(OptionCode::Rebinding),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> ClientIds {
        ClientIds {
            mac: [2, 0x42, 10, 0, 0, 5],
            client_id: client_id("default/web"),
            hostname: Some("web".into()),
        }
    }

    /// A server's reply as dnsmasq builds it, from a client message.
    fn reply(kind: MessageType, xid: u32, mac: &[u8; 6], mask: Option<Ipv4Addr>) -> Vec<u8> {
        let mut msg = v4::Message::default();
        msg.set_opcode(v4::Opcode::BootReply)
            .set_xid(xid)
            .set_chaddr(mac)
            .set_yiaddr(Ipv4Addr::new(192, 0, 2, 50));
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
        o.insert(DhcpOption::AddressLeaseTime(120));
        o.insert(DhcpOption::Renewal(60));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(192, 0, 2, 1)]));
        if let Some(m) = mask {
            o.insert(DhcpOption::SubnetMask(m));
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    #[test]
    fn a_discover_asks_for_broadcast_replies_with_the_client_id_and_hostname() {
        let bytes = encode(&Message::Discover { xid: 7 }, &ids());
        let msg = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(msg.xid(), 7);
        assert!(msg.flags().broadcast());
        assert_eq!(&msg.chaddr()[..6], &ids().mac);
        assert!(msg.opts().has_msg_type(MessageType::Discover));
        assert_eq!(
            msg.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(
                b"\0netattach:default/web".to_vec()
            ))
        );
        assert_eq!(
            msg.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web".into()))
        );
    }

    #[test]
    fn a_renewing_request_names_its_address_in_ciaddr_only() {
        let ciaddr = Ipv4Addr::new(192, 0, 2, 50);
        let m = Message::Request {
            xid: 9,
            kind: RequestKind::Renewing { ciaddr },
        };
        let msg = v4::Message::decode(&mut Decoder::new(&encode(&m, &ids()))).unwrap();
        assert_eq!(msg.ciaddr(), ciaddr);
        assert!(!msg.flags().broadcast());
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(msg.opts().get(OptionCode::ServerIdentifier).is_none());
    }

    #[test]
    fn a_release_names_the_server_and_the_address() {
        let m = Message::Release {
            xid: 3,
            address: Ipv4Addr::new(192, 0, 2, 50),
            server: Ipv4Addr::new(192, 0, 2, 1),
        };
        let msg = v4::Message::decode(&mut Decoder::new(&encode(&m, &ids()))).unwrap();
        assert!(msg.opts().has_msg_type(MessageType::Release));
        assert_eq!(msg.ciaddr(), Ipv4Addr::new(192, 0, 2, 50));
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }

    #[test]
    fn an_ack_becomes_a_lease_with_its_prefix_router_and_times() {
        let mac = ids().mac;
        let bytes = reply(
            MessageType::Ack,
            5,
            &mac,
            Some(Ipv4Addr::new(255, 255, 255, 128)),
        );
        let Some(Reply::Ack { xid: 5, offer }) = decode(&bytes, &mac) else {
            panic!("not an ack");
        };
        assert_eq!(offer.address, Ipv4Addr::new(192, 0, 2, 50));
        assert_eq!(offer.prefix_len, 25);
        assert_eq!(offer.router, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(offer.lease_time, Duration::from_secs(120));
        assert_eq!(offer.renewal_time, Some(Duration::from_secs(60)));
        assert_eq!(offer.rebinding_time, None);
    }

    #[test]
    fn replies_to_other_macs_and_garbage_are_not_ours() {
        let mac = ids().mac;
        let other = reply(MessageType::Offer, 5, &[2, 0, 0, 0, 0, 9], None);
        assert!(decode(&other, &mac).is_none());
        assert!(decode(b"not dhcp", &mac).is_none());
        assert!(decode(&[], &mac).is_none());
        // Our own broadcast request, seen on the way out, is no reply.
        assert!(decode(&encode(&Message::Discover { xid: 5 }, &ids()), &mac).is_none());
        // Without a mask the offer is taken as a /24.
        let Some(Reply::Offer { offer, .. }) =
            decode(&reply(MessageType::Offer, 5, &mac, None), &mac)
        else {
            panic!("not an offer");
        };
        assert_eq!(offer.prefix_len, 24);
    }
}
