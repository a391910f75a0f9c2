//! Routes: default routes in containers; on the host, the routes through a
//! network's host link (src/hostlink.rs).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
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

/// A route of the main table to `dst` straight out of link `index`.
fn link_route_message(dst: IpNet, index: u32) -> RouteMessage {
    let family = Family::of(&dst.network());
    let mut msg = main_table_message(family);
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = RouteScope::Link;
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.attributes
        .push(RouteAttribute::Destination(match dst.network() {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

impl Netlink {
    /// Adds (or replaces) the route to `dst` out of link `index`.
    pub fn replace_link_route(&mut self, dst: IpNet, index: u32) -> Result<()> {
        self.request(
            &format!("add route {dst} dev #{index}"),
            RouteNetlinkMessage::NewRoute(link_route_message(dst, index)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the route to `dst` out of link `index`; a route already gone
    /// is not an error.
    pub fn delete_link_route(&mut self, dst: IpNet, index: u32) -> Result<()> {
        match self.request(
            &format!("delete route {dst} dev #{index}"),
            RouteNetlinkMessage::DelRoute(link_route_message(dst, index)),
            0,
        ) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// The destinations of the main table's routes out of link `index`.
    pub fn routes_out_of(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let replies = self.dump(
                "list routes",
                RouteNetlinkMessage::GetRoute(main_table_message(family)),
            )?;
            for m in replies {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN
                    || !r.attributes.contains(&RouteAttribute::Oif(index))
                {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                if let Some(Ok(net)) =
                    dst.map(|d| IpNet::new(d, r.header.destination_prefix_length))
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }
}
