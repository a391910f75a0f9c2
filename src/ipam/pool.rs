//! Address arithmetic and pool ranges of a network.
//!
//! Addresses are handled as `u128` plus a family flag so that "next address" and
//! range bounds are plain integer operations for IPv4 and IPv6 alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::PoolRange;
use crate::config::{IpamMode, Network};

/// The pools of a network: for an `ipam: pool` network one `Vec<PoolRange>` per
/// address family present (IPv4 first, then IPv6), each in the order of the
/// network's subnets. A range is the subnet's `ip_range`, else the subnet itself;
/// `excluded` holds the subnet's gateway and aux addresses (the network address and
/// the IPv4 broadcast are implied, see [`usable_bounds`]).
///
/// An `ipam: static` network hands out nothing: the result is empty.
pub fn pools_of(net: &Network) -> Vec<Vec<PoolRange>> {
    if net.ipam == IpamMode::Static {
        return Vec::new();
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for s in &net.subnets {
        let mut excluded: Vec<IpAddr> = s.gateway().into_iter().collect();
        excluded.extend(s.aux_addresses.values().copied());
        excluded.sort();
        excluded.dedup();
        let range = PoolRange {
            subnet: s.subnet,
            range: s.ip_range.unwrap_or(s.subnet),
            excluded,
        };
        match s.subnet {
            IpNet::V4(_) => v4.push(range),
            IpNet::V6(_) => v6.push(range),
        }
    }
    [v4, v6].into_iter().filter(|r| !r.is_empty()).collect()
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of an integer in the given family; `None` if it does not fit IPv4.
pub fn u128_to_addr(value: u128, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        Some(IpAddr::V6(Ipv6Addr::from(value)))
    } else {
        u32::try_from(value)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v)))
    }
}

/// The first and last address that may be handed out from `range` inside `subnet`,
/// as integers, or `None` when there is none (or the families differ).
///
/// Never the subnet's network address (for IPv6 that is the subnet-router anycast
/// address) nor the IPv4 broadcast. The network address of an `ip_range` that is
/// smaller than its subnet is an ordinary host address and is handed out, as Docker
/// does. Gateway and aux addresses are not removed here: see [`PoolRange::excluded`].
pub fn usable_bounds(subnet: IpNet, range: IpNet) -> Option<(u128, u128)> {
    if subnet.network().is_ipv4() != range.network().is_ipv4() {
        return None;
    }
    let s_lo = addr_to_u128(subnet.network());
    let s_hi = addr_to_u128(subnet.broadcast());
    let first = addr_to_u128(range.network()).max(s_lo.checked_add(1)?);
    let last_in_subnet = match subnet {
        IpNet::V4(_) => s_hi.checked_sub(1)?,
        IpNet::V6(_) => s_hi,
    };
    let last = addr_to_u128(range.broadcast()).min(last_in_subnet);
    (first <= last).then_some((first, last))
}

impl PoolRange {
    /// Whether the range is IPv6.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }

    /// [`usable_bounds`] of this range.
    pub fn bounds(&self) -> Option<(u128, u128)> {
        usable_bounds(self.subnet, self.range)
    }

    /// The excluded addresses of this range's family, as sorted integers.
    pub fn excluded_u128(&self) -> Vec<u128> {
        let v6 = self.is_ipv6();
        let mut v: Vec<u128> = self
            .excluded
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| addr_to_u128(*a))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// How ranges are named in "no free address in <range> of <network>": each range
/// as written (the `ip_range` when set, else the subnet), joined by ", ".
pub fn ranges_label(ranges: &[PoolRange]) -> String {
    ranges
        .iter()
        .map(|r| r.range.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Driver, Subnet};

    fn net(subnets: Vec<Subnet>, ipam: IpamMode) -> Network {
        Network {
            shared: None,
            host_addresses: Vec::new(),
            macvlan_sources: Vec::new(),
            announce: None,
            dhcp_timeout: None,
            mac_policy: None,
            sticky_ips: false,
            name: "lan".into(),
            driver: Driver::Macvlan,
            parent: "eth0".into(),
            mode: None,
            flag: None,
            mtu: None,
            subnets,
            internal: false,
            ipam,
            requests: Default::default(),
        }
    }

    fn subnet(s: &str, gw: Option<&str>, range: Option<&str>, aux: &[(&str, &str)]) -> Subnet {
        Subnet {
            subnet: s.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: aux
                .iter()
                .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bounds(subnet: &str, range: &str) -> Option<(IpAddr, IpAddr)> {
        let s: IpNet = subnet.parse().unwrap();
        let (lo, hi) = usable_bounds(s, range.parse().unwrap())?;
        let v6 = s.network().is_ipv6();
        Some((u128_to_addr(lo, v6).unwrap(), u128_to_addr(hi, v6).unwrap()))
    }

    #[test]
    fn u128_round_trip() {
        for a in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "::",
            "2001:db8::1",
            "ffff::ffff",
        ] {
            let a = ip(a);
            assert_eq!(u128_to_addr(addr_to_u128(a), a.is_ipv6()), Some(a));
        }
        assert_eq!(addr_to_u128(ip("0.0.1.2")), 258);
        assert_eq!(u128_to_addr(1 << 32, false), None);
    }

    #[test]
    fn bounds_ipv4_skip_network_and_broadcast() {
        let b = bounds("192.168.32.0/24", "192.168.32.0/24");
        assert_eq!(b, Some((ip("192.168.32.1"), ip("192.168.32.254"))));
        // An ip_range at the top of the subnet loses the broadcast, keeps its own first.
        let b = bounds("192.168.32.0/24", "192.168.32.128/25");
        assert_eq!(b, Some((ip("192.168.32.128"), ip("192.168.32.254"))));
        let b = bounds("192.168.32.0/24", "192.168.32.0/25");
        assert_eq!(b, Some((ip("192.168.32.1"), ip("192.168.32.127"))));
        assert_eq!(
            bounds("10.0.0.0/30", "10.0.0.0/30"),
            Some((ip("10.0.0.1"), ip("10.0.0.2")))
        );
        assert_eq!(bounds("10.0.0.0/31", "10.0.0.0/31"), None);
        assert_eq!(bounds("10.0.0.0/24", "10.0.0.0/32"), None);
        assert_eq!(bounds("10.0.0.0/24", "10.0.0.255/32"), None);
        assert_eq!(
            bounds("10.0.0.0/24", "10.0.0.7/32"),
            Some((ip("10.0.0.7"), ip("10.0.0.7")))
        );
    }

    #[test]
    fn bounds_ipv6_skip_anycast_keep_last() {
        let b = bounds("2001:db8::/64", "2001:db8::/64");
        assert_eq!(
            b,
            Some((ip("2001:db8::1"), ip("2001:db8::ffff:ffff:ffff:ffff")))
        );
        assert_eq!(
            bounds("2001:db8::/127", "2001:db8::/127"),
            Some((ip("2001:db8::1"), ip("2001:db8::1")))
        );
        let b = bounds("ffff::/16", "ffff::/16");
        assert_eq!(
            b,
            Some((ip("ffff::1"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")))
        );
    }

    #[test]
    fn bounds_family_mismatch() {
        assert_eq!(bounds("10.0.0.0/24", "2001:db8::/64"), None);
    }

    #[test]
    fn pools_dual_stack_v4_first_in_subnet_order() {
        let n = net(
            vec![
                subnet("2001:db8::/64", Some("2001:db8::1"), None, &[]),
                subnet(
                    "192.168.32.0/24",
                    Some("192.168.32.254"),
                    Some("192.168.32.128/25"),
                    &[("r", "192.168.32.129")],
                ),
                subnet("10.9.0.0/16", None, None, &[]),
            ],
            IpamMode::Pool,
        );
        let pools = pools_of(&n);
        assert_eq!(pools.len(), 2);
        assert_eq!(
            pools[0],
            vec![
                PoolRange {
                    subnet: "192.168.32.0/24".parse().unwrap(),
                    range: "192.168.32.128/25".parse().unwrap(),
                    excluded: vec![ip("192.168.32.129"), ip("192.168.32.254")],
                },
                PoolRange {
                    subnet: "10.9.0.0/16".parse().unwrap(),
                    range: "10.9.0.0/16".parse().unwrap(),
                    // No gateway given: the first usable address is reserved.
                    excluded: vec![ip("10.9.0.1")],
                },
            ]
        );
        assert_eq!(pools[1].len(), 1);
        assert!(pools[1][0].is_ipv6());
        assert_eq!(pools[1][0].excluded, vec![ip("2001:db8::1")]);
        assert_eq!(
            pools[1][0].excluded_u128(),
            vec![addr_to_u128(ip("2001:db8::1"))]
        );
        assert_eq!(ranges_label(&pools[0]), "192.168.32.128/25, 10.9.0.0/16");
    }

    #[test]
    fn pools_single_family_and_static() {
        let n = net(
            vec![subnet("2001:db8::/64", None, None, &[])],
            IpamMode::Pool,
        );
        let pools = pools_of(&n);
        assert_eq!(pools.len(), 1);
        assert!(pools[0][0].is_ipv6());
        let n = net(
            vec![subnet("10.0.0.0/24", Some("10.0.0.1"), None, &[])],
            IpamMode::Static,
        );
        assert!(pools_of(&n).is_empty());
    }
}
