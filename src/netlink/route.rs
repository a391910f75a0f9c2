//! Default routes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Result};

/// Address family of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn netlink(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

fn main_table_message(family: Family) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.netlink();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg
}

impl Netlink {
    /// Whether the main table has a default route of `family`.
    pub fn has_default_route(&mut self, family: Family) -> Result<bool> {
        let replies = self.dump(
            "list routes",
            RouteNetlinkMessage::GetRoute(main_table_message(family)),
        )?;
        Ok(replies.iter().any(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
                    && r.header.address_family == family.netlink()
            }
            _ => false,
        }))
    }

    /// Adds a default route: via `gateway` on link `index`, or straight out of the
    /// device when `gateway` is `None` (ipvlan l3/l3s).
    pub fn add_default_route(
        &mut self,
        family: Family,
        index: u32,
        gateway: Option<IpAddr>,
    ) -> Result<()> {
        let mut msg = main_table_message(family);
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.attributes.push(RouteAttribute::Oif(index));
        if let Some(gw) = gateway {
            msg.attributes.push(RouteAttribute::Gateway(match gw {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        }
        let what = gateway.map_or("dev".to_string(), |g| format!("via {g}"));
        self.request(
            &format!("add default route {what}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}
