//! Interface addresses.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Request, Result};

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Netlink {
    /// Every address of the namespace.
    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let replies = self.dump(
            "list addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(m) => {
                    let address = m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(a) => Some(*a),
                        _ => None,
                    })?;
                    Some(Address {
                        index: m.header.index,
                        address,
                        prefix_len: m.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

impl Netlink {
    /// Adds one address to link `index` (see [`add_address_request`]).
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        let r = add_address_request(index, address, prefix_len);
        self.request(&r.op, r.msg, r.flags)
    }

    /// Removes one address from link `index`.
    pub fn delete_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.family = match address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes.push(AddressAttribute::Address(address));
        self.request(
            &format!("delete address {address}/{prefix_len}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
    }
}

/// The request that adds `address/prefix_len` to link `index`. IPv6 addresses
/// skip duplicate address detection (`IFA_F_NODAD`): the lease store already
/// guarantees uniqueness, and DAD would hold the address tentative for 1-2 s.
pub fn add_address_request(index: u32, address: IpAddr, prefix_len: u8) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix_len;
    match address {
        IpAddr::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes.push(AddressAttribute::Local(address));
            msg.attributes.push(AddressAttribute::Address(address));
            let net = ipnet::Ipv4Net::new(v4, prefix_len).map(|n| n.broadcast());
            if let Ok(brd) = net {
                if prefix_len < 31 {
                    msg.attributes.push(AddressAttribute::Broadcast(brd));
                }
            }
        }
        IpAddr::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.attributes.push(AddressAttribute::Address(address));
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    Request {
        op: format!("add address {address}/{prefix_len}"),
        msg: RouteNetlinkMessage::NewAddress(msg),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}
