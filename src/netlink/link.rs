//! Links: look up, create (macvlan, ipvlan, 802.1Q), rename, bring up, delete.

use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoVlan, IpVlanFlags, IpVlanMode, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, MacVlanMacAddressMode, MacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, Request, Result};

/// What we need to know of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The `kind` of a virtual link (`macvlan`, `ipvlan`, `vlan`, `veth`...).
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// The lower device's ifindex, for stacked links.
    pub lower: Option<u32>,
    /// 802.1Q VLAN id, for vlan links.
    pub vlan_id: Option<u16>,
    /// The link's alias (`ip link set NAME alias TEXT`), when it has one.
    pub alias: Option<String>,
}

/// The driver-specific part of a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Macvlan(MacVlanMode),
    Ipvlan(IpVlanMode, IpVlanFlags),
}

/// A link to create on top of `lower` (an ifindex in the socket's namespace).
#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    pub name: &'a str,
    pub lower: u32,
    pub kind: LinkKind,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Create the link directly in this namespace (`IFLA_NET_NS_FD`).
    pub netns_fd: Option<RawFd>,
    /// macvlan source mode: the allowed source MACs.
    pub sources: &'a [[u8; 6]],
}

fn link_message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: None,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower: None,
            vlan_id: None,
            alias: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
                LinkAttribute::Link(l) => link.lower = Some(l),
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            NlLinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::Vlan(v)) => {
                                link.vlan_id = v.iter().find_map(|i| match i {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    /// Sends a GETLINK for one link; a missing link is `None`, not an error.
    fn get_link(&mut self, op: &str, msg: LinkMessage) -> Result<Option<Link>> {
        match self.get(op, RouteNetlinkMessage::GetLink(msg)) {
            Ok(Some(RouteNetlinkMessage::NewLink(m))) => Ok(Some(Link::from_message(m))),
            Ok(_) => Ok(None),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("look up link {name}"), msg)
    }

    /// The link with ifindex `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.get_link(&format!("look up link #{index}"), link_message(index))
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump("list links", RouteNetlinkMessage::GetLink(link_message(0)))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .collect())
    }

    /// Creates a macvlan or ipvlan link; fails if the name is taken.
    pub fn create_link(&mut self, new: &NewLink<'_>) -> Result<()> {
        let mut msg = link_message(0);
        msg.attributes
            .push(LinkAttribute::IfName(new.name.to_string()));
        msg.attributes.push(LinkAttribute::Link(new.lower));
        if let Some(fd) = new.netns_fd {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(mac) = new.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = new.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let (kind, data) = match new.kind {
            LinkKind::Macvlan(mode) => {
                let mut data = vec![InfoMacVlan::Mode(mode)];
                if !new.sources.is_empty() {
                    data.push(InfoMacVlan::MacAddrMode(MacVlanMacAddressMode::Set));
                    data.push(InfoMacVlan::MacAddrData(
                        new.sources
                            .iter()
                            .map(|m| InfoMacVlan::MacAddr(*m))
                            .collect(),
                    ));
                }
                (InfoKind::MacVlan, InfoData::MacVlan(data))
            }
            LinkKind::Ipvlan(mode, flags) => (
                InfoKind::IpVlan,
                InfoData::IpVlan(vec![InfoIpVlan::Mode(mode), InfoIpVlan::Flags(flags)]),
            ),
        };
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(kind),
            NlLinkInfo::Data(data),
        ]));
        self.request(
            &format!("create link {}", new.name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates the 802.1Q sub-interface `name` with VLAN `vid` on `base`.
    pub fn create_vlan(&mut self, name: &str, base: u32, vid: u16) -> Result<()> {
        let mut msg = link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(base));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Vlan),
            NlLinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(vid)])),
        ]));
        self.request(
            &format!("create VLAN link {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sets a link's alias.
    pub fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut msg = link_message(index);
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(
            &format!("set the alias of link #{index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Brings a link up.
    pub fn set_link_up(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = link_message(index);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("bring up {name}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Deletes a link.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.request(
            &format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(link_message(index)),
            0,
        )
    }
}

impl Netlink {
    /// Whether the kernel knows link kind `kind` (built in, or a module it
    /// loaded on request). Asks for a link without a lower device, which every
    /// stacked kind refuses with EINVAL, and an unknown kind with EOPNOTSUPP:
    /// nothing is ever created.
    pub fn supports_kind(&mut self, kind: InfoKind) -> Result<bool> {
        let mut msg = link_message(0);
        msg.attributes
            .push(LinkAttribute::IfName("naprobe0".into()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                kind.clone(),
            )]));
        match self.request(
            &format!("probe link kind {kind}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(e) if e.errno() == Some(libc::EINVAL) => Ok(true),
            Err(e) => Err(e),
            Ok(()) => Ok(true),
        }
    }
}

/// The request that names link `index` `name` and brings it up, in that
/// order (the kernel renames before it changes flags, and does not change
/// them when the rename fails: EEXIST leaves the link down).
pub fn rename_and_up_request(index: u32, name: &str) -> Request {
    let mut msg = link_message(index);
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    Request {
        op: format!("name the link {name} and bring it up"),
        msg: RouteNetlinkMessage::SetLink(msg),
        flags: 0,
    }
}
