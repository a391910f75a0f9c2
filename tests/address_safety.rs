//! Root integration tests of address safety on the fake LAN: one address and
//! one MAC per layer-2 segment, checked on the wire (an ARP request from the
//! gateway's netns gets exactly one answer); release removes live
//! interfaces; the gateway default; the request policy; dead owners do not
//! block; IPv6 autoconfiguration stays off.

mod common;

use std::collections::BTreeSet;
use std::process::Output;

use common::{arp_answerers, assert_bare, hook, FakeLan, Netns, GW4, GW6, SUBNET4, SUBNET6};

/// `attach --netns NS --id ID NETWORK [extra...]`.
fn attach(lan: &FakeLan, ns: &Netns, id: &str, network: &str, extra: &[&str]) -> Output {
    let mut args = vec!["attach", "--netns", ns.path_str(), "--id", id, network];
    args.extend_from_slice(extra);
    lan.netattach(&args)
}

fn attach_ok(lan: &FakeLan, ns: &Netns, id: &str, network: &str, extra: &[&str]) {
    let out = attach(lan, ns, id, network, extra);
    assert!(
        out.status.success(),
        "attach {id} {network} {extra:?}: {}",
        common::text(&out)
    );
}

fn refused(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} was accepted");
    common::stderr(out)
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    common::link_json(&ns.name, ifname)["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no {ifname} in {}", ns.name))
        .to_ascii_lowercase()
}

/// The IPv4 address (without prefix) of IF in NS.
fn ipv4_of(ns: &Netns, ifname: &str) -> String {
    common::addrs(&ns.name, ifname)
        .into_iter()
        .find(|a| !a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv4 address on {ifname} in {}", ns.name))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn leased(lan: &FakeLan, address: &str) -> Vec<String> {
    lan.leases_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["address"] == address)
        .map(|l| l["owner"].as_str().unwrap().to_string())
        .collect()
}

fn require_arping() -> bool {
    common::skip_unless(
        common::have("arping"),
        "arping (iputils-arping) is not installed",
    )
}

#[test]
fn two_networks_on_one_parent_share_one_address_space() {
    if common::skip_unless_root() || require_arping() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    lan.create_network("b", &[]);
    let c1 = lan.container_ns("1");
    let c2 = lan.container_ns("2");
    attach_ok(&lan, &c1, "one", "a", &["--ip", "192.168.32.50"]);

    let err = refused(
        &attach(&lan, &c2, "two", "b", &["--ip", "192.168.32.50"]),
        "the same address through a second network on the parent",
    );
    assert!(
        err.contains("192.168.32.50") && err.contains("one (eth0, network a)"),
        "the refusal names the address and its holder: {err}"
    );
    assert_bare(&c2);

    // Pooled addresses of either network skip what the other holds.
    attach_ok(&lan, &c2, "two", "b", &[]);
    let c3 = lan.container_ns("3");
    attach_ok(&lan, &c3, "three", "a", &[]);
    let given: BTreeSet<String> = [&c1, &c2, &c3].iter().map(|c| ipv4_of(c, "eth0")).collect();
    assert_eq!(given.len(), 3, "three distinct addresses: {given:?}");

    // On the wire: each address has exactly one owner.
    for c in [&c1, &c2, &c3] {
        let addr = ipv4_of(c, "eth0");
        let answers = arp_answerers(&lan, &addr);
        assert_eq!(
            answers,
            BTreeSet::from([mac_of(c, "eth0")]),
            "ARP answers for {addr}"
        );
    }
}

/// A container with two interfaces on one LAN (two networks on one parent):
/// each address is answered by the MAC of the interface that carries it only.
#[test]
fn two_interfaces_on_one_lan_answer_arp_each_for_its_own_address() {
    if common::skip_unless_root() || require_arping() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    lan.create_network(
        "b",
        &["--subnet", "192.168.33.0/24", "--gateway", "192.168.33.254"],
    );
    lan.ext
        .ip(&["addr", "add", "192.168.33.254/24", "dev", "gw0"]);
    let c = lan.container_ns("1");
    attach_ok(&lan, &c, "one", "a", &[]);
    attach_ok(&lan, &c, "one", "b@net1", &[]);
    for ifname in ["eth0", "net1"] {
        let addr = ipv4_of(&c, ifname);
        assert_eq!(
            arp_answerers(&lan, &addr),
            BTreeSet::from([mac_of(&c, ifname)]),
            "ARP answers for {addr} ({ifname})"
        );
    }
    for gw in [GW4, "192.168.33.254"] {
        assert!(common::ping_from(&c.name, gw), "{gw}");
    }
}

#[test]
fn the_hook_face_refuses_an_address_held_through_another_network() {
    if common::skip_unless_root() || require_arping() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    lan.create_network("b", &[]);
    let c1 = lan.container_ns("1");
    let c2 = lan.container_ns("2");
    let out = hook(
        &lan,
        "attach",
        "one",
        &c1,
        r#"[{"name":"a","ips":["192.168.32.60/24"]}]"#,
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let err = refused(
        &hook(
            &lan,
            "attach",
            "two",
            &c2,
            r#"[{"name":"b","ips":["192.168.32.60/24"]}]"#,
        ),
        "a hook taking an address held through another network",
    );
    assert!(err.contains("network a"), "{err}");
    assert_bare(&c2);
    assert_eq!(
        arp_answerers(&lan, "192.168.32.60"),
        BTreeSet::from([mac_of(&c1, "eth0")])
    );
    assert_eq!(leased(&lan, "192.168.32.60"), vec!["one".to_string()]);
}

#[test]
fn a_duplicate_mac_on_the_parent_is_refused_and_macs_are_recorded() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    lan.create_network("b", &[]);
    let c1 = lan.container_ns("1");
    let c2 = lan.container_ns("2");
    attach_ok(&lan, &c1, "one", "a", &["--mac", "02:00:00:00:00:51"]);
    let err = refused(
        &attach(&lan, &c2, "two", "b", &["--mac", "02:00:00:00:00:51"]),
        "a MAC already used on the parent",
    );
    assert!(
        err.contains("02:00:00:00:00:51") && err.contains("one (eth0, network a)"),
        "{err}"
    );
    assert_bare(&c2);
    assert!(lan
        .leases_json()
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["owner"] != "two"));

    // A kernel-chosen MAC is recorded too, and a request for it is refused.
    attach_ok(&lan, &c2, "two", "b", &[]);
    let random = mac_of(&c2, "eth0");
    let leases = lan.leases_json();
    let mac_recorded = |owner: &str| {
        leases
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["owner"] == owner)
            .and_then(|l| l["mac"].as_str().map(str::to_ascii_lowercase))
    };
    assert_eq!(mac_recorded("one").as_deref(), Some("02:00:00:00:00:51"));
    assert_eq!(mac_recorded("two").as_deref(), Some(random.as_str()));
    let c3 = lan.container_ns("3");
    let err = refused(
        &attach(&lan, &c3, "three", "a", &["--mac", &random]),
        "the MAC the kernel gave another container",
    );
    assert!(err.contains("two (eth0, network b)"), "{err}");
}

#[test]
fn release_of_a_live_attachment_removes_its_interface() {
    if common::skip_unless_root() || require_arping() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    let c1 = lan.container_ns("1");
    attach_ok(&lan, &c1, "one", "a", &[]);
    let addr = ipv4_of(&c1, "eth0");

    // Freeing the address alone would leave it on the wire: refused without --force.
    let err = refused(
        &lan.netattach(&["lease", "release", &addr]),
        "releasing an address whose interface is up",
    );
    assert!(err.contains("--force") && err.contains("eth0"), "{err}");
    assert_eq!(leased(&lan, &addr), vec!["one".to_string()]);
    assert!(common::link_json(&c1.name, "eth0").is_object());

    lan.netattach_ok(&["lease", "release", "--force", &addr]);
    assert!(leased(&lan, &addr).is_empty());
    assert_bare(&c1);

    // The freed address can go to someone else, and only they answer for it.
    let c2 = lan.container_ns("2");
    attach_ok(&lan, &c2, "two", "a", &["--ip", &addr]);
    assert_eq!(
        arp_answerers(&lan, &addr),
        BTreeSet::from([mac_of(&c2, "eth0")])
    );

    // detach of a live netns removes the interface before freeing the lease.
    lan.netattach_ok(&["detach", "--id", "two"]);
    assert_bare(&c2);
    assert!(leased(&lan, &addr).is_empty());
    assert!(
        arp_answerers(&lan, &addr).is_empty(),
        "nobody answers for {addr}"
    );

    // lease release --owner of a live owner does the same.
    attach_ok(&lan, &c1, "one", "a", &["--ip", &addr]);
    lan.netattach_ok(&["lease", "release", "--owner", "one"]);
    assert_bare(&c1);
    assert!(leased(&lan, &addr).is_empty());
}

#[test]
fn poststop_with_a_surviving_netns_removes_the_interface() {
    if common::skip_unless_root() || require_arping() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("a", &[]);
    // A netns that outlives the container (a pod's, a bind-mounted one).
    let shared = lan.container_ns("pod");
    let out = hook(&lan, "attach", "ctr", &shared, "a");
    assert!(out.status.success(), "{}", common::text(&out));
    let addr = ipv4_of(&shared, "eth0");
    let out = hook(&lan, "release", "ctr", &shared, "a");
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        shared.path.exists(),
        "the netns itself is not the hook's to delete"
    );
    assert_bare(&shared);
    assert!(leased(&lan, &addr).is_empty());
    assert!(
        arp_answerers(&lan, &addr).is_empty(),
        "nobody answers for {addr}"
    );
}

#[test]
fn a_network_without_a_gateway_keeps_the_first_address_for_the_router() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("plain", &["--subnet", "10.88.0.0/24"]);
    let inspect = lan.netattach_ok(&["network", "inspect", "plain"]);
    assert!(
        inspect.contains("10.88.0.1"),
        "inspect shows the gateway: {inspect}"
    );

    let c1 = lan.container_ns("1");
    attach_ok(&lan, &c1, "one", "plain", &[]);
    assert_eq!(ipv4_of(&c1, "eth0"), "10.88.0.2");
    assert_eq!(
        common::default_gateway(&c1.name, false).as_deref(),
        Some("10.88.0.1")
    );
    let c2 = lan.container_ns("2");
    let err = refused(
        &attach(&lan, &c2, "two", "plain", &["--ip", "10.88.0.1"]),
        "a container on the gateway's address",
    );
    assert!(
        err.contains("10.88.0.1") && err.contains("gateway"),
        "{err}"
    );
    assert_bare(&c2);

    // `--internal` too: the router's address is kept, only the route is left out.
    lan.create_network("inner", &["--subnet", "10.87.0.0/24", "--internal"]);
    let c3 = lan.container_ns("3");
    attach_ok(&lan, &c3, "three", "inner", &[]);
    assert_eq!(ipv4_of(&c3, "eth0"), "10.87.0.2");
    assert_eq!(common::default_gateway(&c3.name, false), None);

    // `--gateway none`: no router on this LAN, .1 is a container's, no default route.
    lan.create_network("flat", &["--subnet", "10.89.0.0/24", "--gateway", "none"]);
    attach_ok(&lan, &c2, "two", "flat", &[]);
    assert_eq!(ipv4_of(&c2, "eth0"), "10.89.0.1");
    assert_eq!(common::default_gateway(&c2.name, false), None);
}

#[test]
fn the_request_policy_bounds_what_a_request_may_ask() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let c = lan.container_ns("1");
    lan.create_network(
        "ranged",
        &[
            "--ip-range",
            "192.168.32.128/28",
            "-o",
            "request_ips=ip_range",
        ],
    );
    let err = refused(
        &attach(&lan, &c, "x", "ranged", &["--ip", "192.168.32.10"]),
        "an address outside the --ip-range under request_ips=ip_range",
    );
    assert!(err.contains("192.168.32.10"), "{err}");
    assert_bare(&c);
    attach_ok(&lan, &c, "x", "ranged", &["--ip", "192.168.32.130"]);
    lan.netattach_ok(&["detach", "--id", "x"]);

    lan.create_network(
        "pooled",
        &["--subnet", "10.90.0.0/24", "-o", "request_ips=none"],
    );
    let err = refused(
        &attach(&lan, &c, "x", "pooled", &["--ip", "10.90.0.20"]),
        "any address under request_ips=none",
    );
    assert!(err.contains("request_ips"), "{err}");
    assert_bare(&c);

    lan.create_network(
        "nomac",
        &["--subnet", "10.91.0.0/24", "-o", "request_mac=false"],
    );
    let err = refused(
        &attach(&lan, &c, "x", "nomac", &["--mac", "02:00:00:00:00:77"]),
        "a MAC under request_mac=false",
    );
    assert!(err.contains("request_mac=false"), "{err}");
    assert_bare(&c);

    lan.create_network(
        "one",
        &["--subnet", "10.92.0.0/24", "-o", "request_max_ips=1"],
    );
    let err = refused(
        &attach(
            &lan,
            &c,
            "x",
            "one",
            &["--ip", "10.92.0.20", "--ip", "10.92.0.21"],
        ),
        "two addresses under request_max_ips=1",
    );
    assert!(
        err.contains("request_max_ips") || err.contains("at most 1"),
        "{err}"
    );
    assert_bare(&c);
    assert!(lan.leases_json().as_array().unwrap().is_empty());
}

#[test]
fn a_dead_owner_does_not_block_its_address_or_its_parent() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("bridge", &[]);
    lan.create_network(
        "whole",
        &["--subnet", "10.93.0.0/24", "-o", "macvlan_mode=passthru"],
    );
    {
        let dead = lan.container_ns("dead");
        attach_ok(&lan, &dead, "dead", "bridge", &["--ip", "192.168.32.70"]);
    } // its netns is gone without a release

    let c1 = lan.container_ns("1");
    attach_ok(&lan, &c1, "one", "bridge", &["--ip", "192.168.32.70"]);
    assert_eq!(leased(&lan, "192.168.32.70"), vec!["one".to_string()]);

    // A live bridge attachment keeps passthru off the parent...
    let c2 = lan.container_ns("2");
    let err = refused(
        &attach(&lan, &c2, "two", "whole", &[]),
        "passthru on a parent with a live bridge link",
    );
    assert!(err.contains("one (eth0, network bridge)"), "{err}");
    assert_bare(&c2);
    // ...a dead one does not.
    drop(c1);
    attach_ok(&lan, &c2, "two", "whole", &[]);
    let owners: BTreeSet<String> = lan
        .leases_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["owner"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from(["two".to_string()]),
        "dead owners dropped"
    );
}

#[test]
fn ipv6_router_advertisements_and_autoconfiguration_are_off() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network(
        "dual",
        &[
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "--subnet",
            SUBNET6,
            "--gateway",
            GW6,
        ],
    );
    let c = lan.container_ns("1");
    attach_ok(&lan, &c, "one", "dual", &[]);
    for key in ["accept_ra", "autoconf"] {
        let out = common::exec_in(
            &c.name,
            &["sysctl", "-n", &format!("net.ipv6.conf.eth0.{key}")],
        );
        assert_eq!(
            common::stdout(&out).trim(),
            "0",
            "{key} on eth0: {}",
            common::text(&out)
        );
    }
    // Only the leased global IPv6 address is on the link.
    let v6: Vec<String> = common::addrs(&c.name, "eth0")
        .into_iter()
        .filter(|a| a.contains(':'))
        .collect();
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert!(common::ping_from(&c.name, GW6));
}
