//! From a request and the administrator's definitions to a plan: which links,
//! with which names, MACs, wanted addresses and default routes. Pure data and no
//! I/O, so every rule of SPEC §3 is unit-tested here.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::{Driver, IpamMode, MacPolicy, Mode, Network};
use crate::ipam::{pool, Claim, MacWant, Want};
use crate::netlink::route::Family;
use crate::request::{MacAddr, NetworkRequest};
use crate::sharing::LinkSpec;

/// One link to create in the container's netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub network: Network,
    pub ifname: String,
    /// The MAC the store is to pick or check (unique per segment).
    pub mac: MacWant,
    /// Addresses to lease: requested ones first, then one pooled per missing family.
    pub wants: Vec<Want>,
    /// Default routes this link should carry, each only if the netns has no
    /// default route of that family yet.
    pub default_routes: Vec<DefaultRoute>,
    /// The owner's identity, on a network with sticky addresses.
    pub sticky: Option<String>,
}

impl LinkPlan {
    /// What the lease store must reserve for this link.
    pub fn claim(&self) -> Claim {
        Claim {
            network: self.network.name.clone(),
            segment: self.network.segment(),
            ifname: self.ifname.clone(),
            link: Some(LinkSpec::of(&self.network)),
            mac: self.mac,
            wants: self.wants.clone(),
            shared: self.network.shared.is_some(),
            sticky: self.sticky.clone(),
        }
    }
}

/// A default route: via a gateway, or out of the device (ipvlan l3/l3s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub family: Family,
    pub gateway: Option<IpAddr>,
}

/// A request that cannot be satisfied by the definitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn refuse(msg: impl Into<String>) -> PlanError {
    PlanError(msg.into())
}

/// What a plan is made in view of, besides the requested networks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// Every defined network: those on a requested network's segment reserve
    /// their gateways and aux addresses there too.
    pub peers: &'a [Network],
    /// The interface names already present in the netns.
    pub existing_ifnames: &'a [String],
    /// An administrator's own reservation (`lease reserve`): the request
    /// policy, which is about untrusted requests, does not apply.
    pub trusted: bool,
    /// The owner's stable identity (the pod's namespace/name, or the
    /// `netattach/identity` annotation): what `mac_policy=stable` derives from.
    pub identity: Option<&'a str>,
}

/// The MAC of `identity` on `network` under `mac_policy=stable`: a hash of
/// both, as a locally administered unicast address. The store still checks
/// that nobody else on the segment has it.
pub fn stable_mac(network: &str, identity: &str) -> MacAddr {
    // FNV-1a over both, then a second round so every byte depends on all.
    let fnv = |seed: u64, bytes: &[u8]| {
        bytes.iter().fold(seed, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let key = format!("netattach\0{network}\0{identity}");
    let h = fnv(fnv(0xcbf2_9ce4_8422_2325, key.as_bytes()), key.as_bytes()).to_be_bytes();
    MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
}

/// Builds the plan. `networks` holds the definition of every requested network,
/// in request order.
pub fn build(
    requests: &[NetworkRequest],
    networks: &[Network],
    scope: Scope<'_>,
) -> Result<Vec<LinkPlan>, PlanError> {
    debug_assert_eq!(requests.len(), networks.len());
    let mut taken: HashSet<&str> = scope.existing_ifnames.iter().map(String::as_str).collect();
    for req in requests {
        if let Some(name) = &req.interface {
            if !taken.insert(name) {
                return Err(refuse(format!(
                    "interface {name} (network {}) already exists in the container's network namespace",
                    req.name
                )));
            }
        }
    }
    let default_network = default_route_network(requests, networks)?;
    let mut plans = Vec::with_capacity(requests.len());
    let mut next_eth = 0usize;
    for (i, (req, net)) in requests.iter().zip(networks).enumerate() {
        let ifname = match &req.interface {
            Some(name) => name.clone(),
            None => loop {
                let candidate = format!("eth{next_eth}");
                next_eth += 1;
                if !taken.contains(candidate.as_str()) {
                    break candidate;
                }
            },
        };
        if req.mac.is_some() && net.driver == Driver::Ipvlan {
            return Err(refuse(format!(
                "network {}: ipvlan interfaces share the parent's MAC; remove \"mac\" from the request",
                net.name
            )));
        }
        if req.mac.is_some() && net.mode() == crate::config::Mode::Passthru {
            return Err(refuse(format!(
                "network {}: a passthru interface carries its parent's MAC; remove \"mac\" from the request",
                net.name
            )));
        }
        let mac = match req.mac {
            Some(_) if !scope.trusted && !net.requests.mac => {
                return Err(refuse(format!(
                    "network {}: requests may not choose the MAC address (request_mac=false)",
                    net.name
                )))
            }
            Some(mac) => MacWant::Requested(mac),
            // ipvlan and passthru links carry the parent's MAC.
            None if net.driver == Driver::Ipvlan || net.mode() == Mode::Passthru => MacWant::None,
            None => match net.mac_policy.unwrap_or_default() {
                MacPolicy::Random => MacWant::Random,
                MacPolicy::Ipv4 => MacWant::FromIpv4,
                MacPolicy::Stable => match scope.identity {
                    Some(identity) => MacWant::Requested(stable_mac(&net.name, identity)),
                    None => {
                        return Err(refuse(format!(
                        "network {} derives MACs from the owner's identity (mac_policy=stable): \
                             give it in the netattach/identity annotation (or attach --identity)",
                        net.name
                    )))
                    }
                },
            },
        };
        let reserved = segment_reserved(net, scope.peers);
        let wants = wanted_addresses(req, net, &reserved, scope.trusted)?;
        let default_routes = if default_network == Some(i) {
            default_routes(req, net)?
        } else {
            Vec::new()
        };
        let sticky = if net.sticky_ips {
            scope.identity.map(str::to_string)
        } else {
            None
        };
        plans.push(LinkPlan {
            network: net.clone(),
            ifname,
            mac,
            wants,
            default_routes,
            sticky,
        });
    }
    Ok(plans)
}

/// Which request of the whole list carries the default routes, and those
/// routes (as [`build`] gives them to that request's link). An attach that
/// finishes an earlier, interrupted one plans only the networks left to do,
/// and must not pick the default network among those alone.
pub fn default_routes_of(
    requests: &[NetworkRequest],
    networks: &[Network],
) -> Result<Option<(usize, Vec<DefaultRoute>)>, PlanError> {
    match default_route_network(requests, networks)? {
        Some(i) => Ok(Some((i, default_routes(&requests[i], &networks[i])?))),
        None => Ok(None),
    }
}

/// The index of the network that carries the default route: the one marked
/// `default-route`, else the first listed with a gateway that is not internal.
fn default_route_network(
    requests: &[NetworkRequest],
    networks: &[Network],
) -> Result<Option<usize>, PlanError> {
    if let Some(i) = requests.iter().position(|r| r.default_route.is_some()) {
        let net = &networks[i];
        if net.internal {
            return Err(refuse(format!(
                "network {} is internal and cannot carry the default route",
                net.name
            )));
        }
        return Ok(Some(i));
    }
    Ok(networks.iter().position(|n| {
        !n.internal
            && (is_l3(n)
                || n.ipam == IpamMode::Dhcp
                || n.subnets.iter().any(|s| s.gateway().is_some()))
    }))
}

fn is_l3(net: &Network) -> bool {
    net.driver == Driver::Ipvlan
        && matches!(
            net.mode(),
            crate::config::Mode::L3 | crate::config::Mode::L3s
        )
}

/// Default routes of the chosen network: at most one per family.
fn default_routes(req: &NetworkRequest, net: &Network) -> Result<Vec<DefaultRoute>, PlanError> {
    if net.ipam == IpamMode::Dhcp {
        if req.default_route.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(refuse(format!(
                "network {}: the DHCP server names the router; default-route takes no address here",
                net.name
            )));
        }
        // Through the router the server names (the engine fills it in), if any.
        return Ok(vec![DefaultRoute {
            family: Family::V4,
            gateway: None,
        }]);
    }
    let gateways: Vec<IpAddr> = net.subnets.iter().filter_map(|s| s.gateway()).collect();
    let chosen: Vec<IpAddr> = match req.default_route.as_deref() {
        Some(list) if !list.is_empty() => {
            for gw in list {
                if !gateways.contains(gw) {
                    return Err(refuse(format!(
                        "network {}: default-route {gw} is not a gateway of the network",
                        net.name
                    )));
                }
            }
            list.to_vec()
        }
        _ => gateways,
    };
    let mut routes = Vec::new();
    let mut have_v4 = false;
    let mut have_v6 = false;
    if is_l3(net) {
        // l3/l3s slaves have no ARP: the route points at the device itself.
        for s in &net.subnets {
            let family = Family::of(&s.subnet.addr());
            let seen = if family == Family::V4 {
                &mut have_v4
            } else {
                &mut have_v6
            };
            if !*seen {
                *seen = true;
                routes.push(DefaultRoute {
                    family,
                    gateway: None,
                });
            }
        }
        return Ok(routes);
    }
    for gw in chosen {
        let seen = if gw.is_ipv4() {
            &mut have_v4
        } else {
            &mut have_v6
        };
        if !*seen {
            *seen = true;
            routes.push(DefaultRoute {
                family: Family::of(&gw),
                gateway: Some(gw),
            });
        }
    }
    Ok(routes)
}

/// Gateways and aux addresses that other networks on `net`'s segment reserve
/// inside `net`'s subnets, with what they are: one segment is one address
/// space, so another network's router is this network's router too.
fn segment_reserved(net: &Network, peers: &[Network]) -> Vec<(IpAddr, String)> {
    let segment = net.segment();
    let mut reserved = Vec::new();
    for peer in peers {
        if peer.name == net.name || peer.segment() != segment {
            continue;
        }
        for s in &peer.subnets {
            for (addr, why) in s.reserved_addresses() {
                if net.subnet_of(addr).is_some() {
                    reserved.push((addr, format!("{why} on network {}", peer.name)));
                }
            }
        }
    }
    reserved
}

/// Requested addresses (checked against the definition, the segment and the
/// request policy), then a pooled address for each family of the network the
/// request did not cover.
fn wanted_addresses(
    req: &NetworkRequest,
    net: &Network,
    reserved: &[(IpAddr, String)],
    trusted: bool,
) -> Result<Vec<Want>, PlanError> {
    if net.ipam == IpamMode::Dhcp {
        // The server chooses; the engine asks it once the link exists.
        if let Some(ip) = req.ips.first() {
            return Err(refuse(format!(
                "network {} takes its address from the LAN's DHCP server: {ip} cannot be requested",
                net.name
            )));
        }
        return Ok(Vec::new());
    }
    if !trusted && req.ips.len() > net.requests.max_ips {
        return Err(refuse(format!(
            "network {}: the request names {} addresses; at most {} are allowed (request_max_ips)",
            net.name,
            req.ips.len(),
            net.requests.max_ips
        )));
    }
    let mut wants = Vec::new();
    let mut families_covered = (false, false);
    for ip in &req.ips {
        let Some(subnet) = net.subnet_of(ip.addr) else {
            let subnets: Vec<String> = net.subnets.iter().map(|s| s.subnet.to_string()).collect();
            return Err(refuse(format!(
                "address {} is outside the subnets of network {} ({})",
                ip.addr,
                net.name,
                if subnets.is_empty() {
                    "none".to_string()
                } else {
                    subnets.join(", ")
                }
            )));
        };
        if let Some(p) = ip.prefix_len {
            if p != subnet.subnet.prefix_len() {
                return Err(refuse(format!(
                    "address {ip}: prefix length /{p} does not match subnet {} of network {}",
                    subnet.subnet, net.name
                )));
            }
        }
        let why = subnet.unavailable_reason(ip.addr).or_else(|| {
            reserved
                .iter()
                .find(|(a, _)| *a == ip.addr)
                .map(|(_, why)| why.clone())
        });
        if let Some(why) = why {
            return Err(refuse(format!(
                "address {} cannot be used on network {}: it is {why}",
                ip.addr, net.name
            )));
        }
        if !trusted {
            net.may_request(ip.addr).map_err(|why| {
                refuse(format!(
                    "address {} cannot be requested on network {}: {why}",
                    ip.addr, net.name
                ))
            })?;
        }
        if ip.addr.is_ipv4() {
            families_covered.0 = true;
        } else {
            families_covered.1 = true;
        }
        wants.push(Want::Address {
            address: ip.addr,
            subnet: subnet.subnet,
        });
    }
    if net.ipam == IpamMode::Pool {
        for mut ranges in pool::pools_of(net) {
            for r in &mut ranges {
                r.excluded.extend(reserved.iter().map(|(a, _)| *a));
            }
            let is_v4 = ranges.first().is_some_and(|r| r.subnet.addr().is_ipv4());
            let covered = if is_v4 {
                families_covered.0
            } else {
                families_covered.1
            };
            if !covered {
                wants.push(Want::Pool { ranges });
            }
        }
    } else if wants.is_empty() && !net.subnets.is_empty() {
        return Err(refuse(format!(
            "network {} hands out no addresses (ipam static): name one in \"ips\"",
            net.name
        )));
    }
    Ok(wants)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse, RequestedIp};

    fn net(name: &str, json: &str) -> Network {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["name"] = name.into();
        let n: Network = serde_json::from_value(v).unwrap();
        n.validate().unwrap();
        n
    }

    fn lan() -> Network {
        net(
            "lan",
            r#"{"driver":"macvlan","parent":"lan0","subnets":[
                {"subnet":"192.168.32.0/24","gateway":"192.168.32.254","aux_addresses":{"router":"192.168.32.129"}},
                {"subnet":"2001:db8:32::/64","gateway":"2001:db8:32::fe"}]}"#,
        )
    }

    fn storage() -> Network {
        net(
            "storage",
            r#"{"driver":"macvlan","parent":"lan1","subnets":[{"subnet":"10.9.0.0/16","gateway":"10.9.0.1"}]}"#,
        )
    }

    fn internal() -> Network {
        let mut n = net(
            "backplane",
            r#"{"driver":"macvlan","parent":"lan2","subnets":[{"subnet":"10.10.0.0/24","gateway":"10.10.0.1"}]}"#,
        );
        n.internal = true;
        n
    }

    fn in_netns(names: &[String]) -> Scope<'_> {
        Scope {
            existing_ifnames: names,
            ..Scope::default()
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn interface_names_skip_those_in_the_netns_and_those_requested() {
        let reqs = parse("lan,storage@eth1").unwrap();
        let plans = build(
            &reqs,
            &[lan(), storage()],
            in_netns(&names(&["lo", "eth0"])),
        )
        .unwrap();
        assert_eq!(plans[0].ifname, "eth2");
        assert_eq!(plans[1].ifname, "eth1");
    }

    #[test]
    fn requested_interface_that_exists_is_refused() {
        let reqs = parse("lan@eth0").unwrap();
        let err = build(&reqs, &[lan()], in_netns(&names(&["lo", "eth0"]))).unwrap_err();
        assert!(
            err.0.contains("eth0") && err.0.contains("already exists"),
            "{err}"
        );
    }

    #[test]
    fn pooled_network_wants_one_address_per_family_unless_requested() {
        let plans = build(&parse("lan").unwrap(), &[lan()], Scope::default()).unwrap();
        assert_eq!(plans[0].wants.len(), 2);
        assert!(plans[0]
            .wants
            .iter()
            .all(|w| matches!(w, Want::Pool { .. })));

        let reqs = parse(r#"[{"name":"lan","ips":["192.168.32.140/24"]}]"#).unwrap();
        let plans = build(&reqs, &[lan()], Scope::default()).unwrap();
        assert_eq!(
            plans[0].wants[0],
            Want::Address {
                address: "192.168.32.140".parse().unwrap(),
                subnet: "192.168.32.0/24".parse().unwrap()
            }
        );
        // The IPv6 family is still filled from the pool.
        assert!(
            matches!(&plans[0].wants[1], Want::Pool { ranges } if ranges[0].subnet.addr().is_ipv6())
        );
    }

    #[test]
    fn requested_addresses_are_checked_against_the_definition() {
        let cases = [
            ("10.1.1.1", "outside the subnets of network lan"),
            ("192.168.32.0", "the network address"),
            ("192.168.32.255", "the broadcast address"),
            ("192.168.32.254", "the gateway"),
            ("192.168.32.129", "the aux address \"router\""),
            ("192.168.32.7/25", "prefix length /25"),
        ];
        for (ip, expected) in cases {
            let reqs = parse(&format!(r#"[{{"name":"lan","ips":["{ip}"]}}]"#)).unwrap();
            let err = build(&reqs, &[lan()], Scope::default()).unwrap_err();
            assert!(err.0.contains(expected), "{ip}: {err}");
        }
    }

    #[test]
    fn default_route_goes_to_the_first_non_internal_network_with_a_gateway() {
        let reqs = parse("backplane,lan,storage").unwrap();
        let plans = build(&reqs, &[internal(), lan(), storage()], Scope::default()).unwrap();
        assert!(plans[0].default_routes.is_empty());
        assert_eq!(
            plans[1].default_routes,
            vec![
                DefaultRoute {
                    family: Family::V4,
                    gateway: Some("192.168.32.254".parse().unwrap())
                },
                DefaultRoute {
                    family: Family::V6,
                    gateway: Some("2001:db8:32::fe".parse().unwrap())
                },
            ]
        );
        assert!(plans[2].default_routes.is_empty());
        // Asked of the whole list, the same network and routes; planned
        // without lan (done by an earlier attach), storage would take them.
        let nets = [internal(), lan(), storage()];
        assert_eq!(
            default_routes_of(&reqs, &nets).unwrap(),
            Some((1, plans[1].default_routes.clone()))
        );
        let rest = build(&reqs[2..], &nets[2..], Scope::default()).unwrap();
        assert!(!rest[0].default_routes.is_empty());
    }

    #[test]
    fn marked_network_carries_the_default_route_with_its_chosen_gateway() {
        let reqs =
            parse(r#"[{"name":"lan"},{"name":"storage","default-route":["10.9.0.1"]}]"#).unwrap();
        let plans = build(&reqs, &[lan(), storage()], Scope::default()).unwrap();
        assert!(plans[0].default_routes.is_empty());
        assert_eq!(plans[1].default_routes.len(), 1);

        let reqs = parse(r#"[{"name":"storage","default-route":["10.9.0.7"]}]"#).unwrap();
        let err = build(&reqs, &[storage()], Scope::default()).unwrap_err();
        assert!(err.0.contains("not a gateway"), "{err}");

        let reqs = parse(r#"[{"name":"backplane","default-route":[]}]"#).unwrap();
        let err = build(&reqs, &[internal()], Scope::default()).unwrap_err();
        assert!(err.0.contains("internal"), "{err}");
    }

    #[test]
    fn ipvlan_refuses_a_mac_and_l3_gets_device_routes() {
        let mut ipv = storage();
        ipv.driver = Driver::Ipvlan;
        ipv.mode = Some(Mode::L3);
        let reqs = parse(r#"[{"name":"storage","mac":"02:00:00:00:00:01"}]"#).unwrap();
        let err = build(&reqs, &[ipv.clone()], Scope::default()).unwrap_err();
        assert!(err.0.contains("share the parent's MAC"), "{err}");

        let plans = build(&parse("storage").unwrap(), &[ipv], Scope::default()).unwrap();
        assert_eq!(
            plans[0].default_routes,
            vec![DefaultRoute {
                family: Family::V4,
                gateway: None
            }]
        );
    }

    #[test]
    fn static_network_needs_a_requested_address() {
        let mut s = storage();
        s.ipam = IpamMode::Static;
        let err = build(&parse("storage").unwrap(), &[s.clone()], Scope::default()).unwrap_err();
        assert!(err.0.contains("ipam static"), "{err}");
        let reqs = vec![NetworkRequest {
            name: "storage".into(),
            ips: vec![RequestedIp {
                addr: "10.9.3.4".parse().unwrap(),
                prefix_len: None,
            }],
            ..Default::default()
        }];
        let plans = build(&reqs, &[s], Scope::default()).unwrap();
        assert_eq!(plans[0].wants.len(), 1);
    }

    /// `lan` with the given request policy (JSON of `requests`).
    fn lan_with_policy(policy: &str) -> Network {
        let mut n = lan();
        n.subnets[0].ip_range = Some("192.168.32.128/25".parse().unwrap());
        n.requests = serde_json::from_str(policy).unwrap();
        n.validate().unwrap();
        n
    }

    fn ask(net: &Network, entry: &str) -> Result<Vec<LinkPlan>, PlanError> {
        let reqs = parse(&format!("[{entry}]")).unwrap();
        build(&reqs, std::slice::from_ref(net), Scope::default())
    }

    #[test]
    fn request_policy_bounds_what_requests_may_ask() {
        let range = lan_with_policy(r#"{"ips":"ip_range"}"#);
        let err = ask(&range, r#"{"name":"lan","ips":["192.168.32.10"]}"#).unwrap_err();
        assert!(
            err.0.contains("192.168.32.10") && err.0.contains("192.168.32.128/25"),
            "{err}"
        );
        ask(&range, r#"{"name":"lan","ips":["192.168.32.130"]}"#).unwrap();
        // Addresses of the other family are not in any ip_range either.
        ask(&range, r#"{"name":"lan","ips":["2001:db8:32::9"]}"#).unwrap_err();

        let listed = lan_with_policy(r#"{"ips":["192.168.32.64/27"]}"#);
        ask(&listed, r#"{"name":"lan","ips":["192.168.32.70"]}"#).unwrap();
        ask(&listed, r#"{"name":"lan","ips":["192.168.32.100"]}"#).unwrap_err();

        let none = lan_with_policy(r#"{"ips":"none"}"#);
        let err = ask(&none, r#"{"name":"lan","ips":["192.168.32.130"]}"#).unwrap_err();
        assert!(err.0.contains("request_ips=none"), "{err}");
        ask(&none, r#"{"name":"lan"}"#).unwrap();

        let no_mac = lan_with_policy(r#"{"mac":false}"#);
        let err = ask(&no_mac, r#"{"name":"lan","mac":"02:00:00:00:00:01"}"#).unwrap_err();
        assert!(err.0.contains("request_mac=false"), "{err}");

        let two = lan_with_policy(r#"{"max_ips":2}"#);
        let err = ask(
            &two,
            r#"{"name":"lan","ips":["192.168.32.130","192.168.32.131","2001:db8:32::9"]}"#,
        )
        .unwrap_err();
        assert!(err.0.contains("at most 2"), "{err}");

        // The administrator's own reservation is not bound by it.
        let reqs = parse(r#"[{"name":"lan","ips":["192.168.32.10"]}]"#).unwrap();
        let trusted = Scope {
            trusted: true,
            ..Scope::default()
        };
        build(&reqs, &[range], trusted).unwrap();
    }

    #[test]
    fn macs_are_picked_per_kind_of_link() {
        let plans = ask(&lan(), r#"{"name":"lan"}"#).unwrap();
        assert_eq!(plans[0].mac, MacWant::Random);
        let plans = ask(&lan(), r#"{"name":"lan","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert!(matches!(plans[0].mac, MacWant::Requested(_)));
        let mut pt = lan();
        pt.mode = Some(Mode::Passthru);
        assert_eq!(ask(&pt, r#"{"name":"lan"}"#).unwrap()[0].mac, MacWant::None);
        let claim = plans[0].claim();
        assert_eq!(claim.segment, "lan0");
        assert_eq!(claim.link, Some(LinkSpec::of(&lan())));
    }

    #[test]
    fn other_networks_on_the_segment_reserve_their_gateway_and_aux_addresses() {
        // "lan" names no gateway of its own ("none"); "office", on the same
        // parent, says .1 is the router and .2 a printer.
        let mut bare = lan();
        bare.subnets[0].gateway = Some(crate::config::Gateway::None);
        bare.subnets[0].aux_addresses.clear();
        let office = net(
            "office",
            r#"{"driver":"macvlan","parent":"lan0","subnets":[
                {"subnet":"192.168.32.0/25","gateway":"192.168.32.1","aux_addresses":{"printer":"192.168.32.2"}}]}"#,
        );
        let mut elsewhere = office.clone();
        elsewhere.name = "elsewhere".into();
        elsewhere.parent = "lan9".into();
        let peers = [bare.clone(), office, elsewhere];
        let scope = Scope {
            peers: &peers,
            ..Scope::default()
        };
        let reqs = parse(r#"[{"name":"lan","ips":["192.168.32.1"]}]"#).unwrap();
        let err = build(&reqs, std::slice::from_ref(&bare), scope).unwrap_err();
        assert!(
            err.0
                .contains("the gateway of 192.168.32.0/25 on network office"),
            "{err}"
        );
        let plans = build(&parse("lan").unwrap(), std::slice::from_ref(&bare), scope).unwrap();
        let Want::Pool { ranges } = &plans[0].wants[0] else {
            panic!("{:?}", plans[0].wants)
        };
        let mut excluded = ranges[0].excluded.clone();
        excluded.sort();
        assert_eq!(
            excluded,
            vec![
                "192.168.32.1".parse::<IpAddr>().unwrap(),
                "192.168.32.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn stable_macs_are_local_unicast_and_differ_by_network_and_identity() {
        let a = stable_mac("lan", "default/web-1");
        assert_eq!(a, stable_mac("lan", "default/web-1"));
        assert_eq!(a.0[0] & 0x03, 0x02, "{a}");
        assert_ne!(a, stable_mac("lan", "default/web-2"));
        assert_ne!(a, stable_mac("lan2", "default/web-1"));
        // The separator keeps ("a", "b/c") and ("a/b", "c") apart.
        assert_ne!(stable_mac("a", "b/c"), stable_mac("a/b", "c"));
    }
}
