//! ipvlan and 802.1Q parents on a fake LAN. The development and CI machines'
//! kernel has neither, so every test here is `#[ignore]`d on the host and run
//! inside a VM booting Debian's kernel by `tests/vm.rs` (`--ignored`).
//!
//! The fake LAN is the one of tests/common: `lan0` in the host-side netns,
//! its veth peer `gw0` with the gateway in the ext netns.

mod common;

use common::{assert_bare, FakeLan, Netns, GW4, GW6, SUBNET4, SUBNET6};
use serde_json::Value;

/// The host side's own addresses on `lan0`: in l3/l3s mode the slaves'
/// packets are routed by the parent's netns, which therefore needs a leg on
/// the LAN, and the far side reaches the slaves through it.
const HOST4: &str = "192.168.32.1";
const HOST6: &str = "2001:db8:32::1";

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.contains(&Value::from(flag)))
}

/// `attach --netns NS --id ID --ip ... NETWORK`, which must succeed.
fn attach(lan: &FakeLan, ns: &Netns, id: &str, ips: &[&str], network: &str) {
    let mut args = vec!["attach", "--netns", ns.path_str(), "--id", id];
    for ip in ips {
        args.extend_from_slice(&["--ip", ip]);
    }
    args.push(network);
    lan.netattach_ok(&args);
}

/// A dual-stack ipvlan network `name` on `lan0` in `mode` with `flag`.
fn ipvlan_network(lan: &FakeLan, name: &str, mode: &str, flag: &str) {
    let mode = format!("ipvlan_mode={mode}");
    let flag = format!("ipvlan_flag={flag}");
    lan.create_network_on(
        "ipvlan",
        "lan0",
        name,
        &[
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "--subnet",
            SUBNET6,
            "--gateway",
            GW6,
            "-o",
            &mode,
            "-o",
            &flag,
        ],
    );
}

/// Far-side routes for an l3/l3s slave: the host side gets addresses on the
/// LAN, and the gateway sends the slave's traffic to it.
fn route_through_host(lan: &FakeLan, slave4: &str, slave6: &str) {
    if common::addrs(lan.host_ns(), "lan0").is_empty() {
        lan.host
            .ip(&["addr", "add", &format!("{HOST4}/24"), "dev", "lan0"]);
        lan.host.ip(&[
            "addr",
            "add",
            &format!("{HOST6}/64"),
            "dev",
            "lan0",
            "nodad",
        ]);
    }
    lan.ext
        .ip(&["route", "add", &format!("{slave4}/32"), "via", HOST4]);
    lan.ext
        .ip(&["-6", "route", "add", &format!("{slave6}/128"), "via", HOST6]);
}

/// `ns` gets an echo reply from `addr` within two tries. In l3/l3s mode the
/// kernel drops the first IPv6 packet while the parent's netns resolves the
/// gateway's neighbour entry (seen on Debian's 6.1); the second one passes.
fn reaches(ns: &Netns, addr: &str) -> bool {
    common::ping_from(&ns.name, addr) || common::ping_from(&ns.name, addr)
}

/// One ipvlan container in `mode`/`flag`, checked as a user would: kind,
/// mode, flag, the parent's MAC, addresses, default routes, traffic to the
/// gateway over IPv4 and IPv6, lease, and release.
fn check_ipvlan(mode: &str, flag: &str) {
    let lan = FakeLan::new();
    ipvlan_network(&lan, "iv", mode, flag);
    let l3 = mode != "l2";
    if l3 {
        route_through_host(&lan, "192.168.32.10", "2001:db8:32::10");
    }
    let c = lan.container_ns("1");
    attach(
        &lan,
        &c,
        "ctr1",
        &["192.168.32.10/24", "2001:db8:32::10/64"],
        "iv",
    );

    let link = common::link_json(&c.name, "eth0");
    assert_eq!(link["linkinfo"]["info_kind"], "ipvlan", "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], mode, "{link}");
    // iproute2 shows the flag as a key of its own: "bridge": true.
    assert_eq!(link["linkinfo"]["info_data"][flag], true, "{link}");
    let parent = common::link_json(lan.host_ns(), "lan0");
    assert_eq!(
        link["address"], parent["address"],
        "ipvlan uses the parent's MAC"
    );
    assert!(has_flag(&link, "UP"), "{link}");
    let mut addrs = common::addrs(&c.name, "eth0");
    addrs.sort();
    assert_eq!(addrs, vec!["192.168.32.10/24", "2001:db8:32::10/64"]);

    for ipv6 in [false, true] {
        let routes = common::routes_json(&c.name, ipv6);
        let default = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == "default")
            .unwrap_or_else(|| panic!("no default route (ipv6: {ipv6}): {routes}"));
        assert_eq!(default["dev"], "eth0", "{default}");
        if l3 {
            // l3 slaves do no neighbour discovery: a device route, no gateway.
            assert!(default["gateway"].is_null(), "{default}");
        } else {
            let gw = if ipv6 { GW6 } else { GW4 };
            assert_eq!(default["gateway"], gw, "{default}");
        }
    }

    assert!(reaches(&c, GW4), "{GW4} unreachable in {mode} {flag}");
    assert!(reaches(&c, GW6), "{GW6} unreachable in {mode} {flag}");
    let mut leases = lan.addresses_of("ctr1");
    leases.sort();
    assert_eq!(leases, vec!["192.168.32.10", "2001:db8:32::10"]);

    lan.netattach_ok(&["detach", "--id", "ctr1", "--netns", c.path_str()]);
    assert!(lan.addresses_of("ctr1").is_empty());
    assert_bare(&c);
    assert_eq!(lan.host_links(), vec!["lo".to_string(), "lan0".to_string()]);
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l2_bridge() {
    check_ipvlan("l2", "bridge");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l2_private() {
    check_ipvlan("l2", "private");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l2_vepa() {
    check_ipvlan("l2", "vepa");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3_bridge() {
    check_ipvlan("l3", "bridge");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3_private() {
    check_ipvlan("l3", "private");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3_vepa() {
    check_ipvlan("l3", "vepa");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3s_bridge() {
    check_ipvlan("l3s", "bridge");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3s_private() {
    check_ipvlan("l3s", "private");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l3s_vepa() {
    check_ipvlan("l3s", "vepa");
}

/// Two containers on one parent in `mode`/`flag`: can the first ping the second?
fn siblings_talk(mode: &str, flag: &str) -> bool {
    let lan = FakeLan::new();
    ipvlan_network(&lan, "iv", mode, flag);
    if mode != "l2" {
        route_through_host(&lan, "192.168.32.11", "2001:db8:32::11");
        route_through_host(&lan, "192.168.32.12", "2001:db8:32::12");
    }
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    attach(
        &lan,
        &a,
        "a",
        &["192.168.32.11/24", "2001:db8:32::11/64"],
        "iv",
    );
    attach(
        &lan,
        &b,
        "b",
        &["192.168.32.12/24", "2001:db8:32::12/64"],
        "iv",
    );
    // Both reach the LAN whatever the flag: only sibling traffic differs.
    for ns in [&a, &b] {
        assert!(common::ping_from(&ns.name, GW4), "{mode} {flag}: gateway");
    }
    common::ping_from(&a.name, "192.168.32.12")
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_flags_between_two_containers() {
    assert!(
        siblings_talk("l2", "bridge"),
        "l2 bridge must let siblings talk"
    );
    assert!(
        !siblings_talk("l2", "private"),
        "l2 private must isolate siblings"
    );
    // vepa sends sibling traffic out to the LAN; the fake LAN does no hairpin.
    assert!(
        !siblings_talk("l2", "vepa"),
        "l2 vepa must not switch locally"
    );
    assert!(
        siblings_talk("l3", "bridge"),
        "l3 bridge must let siblings talk"
    );
    assert!(
        !siblings_talk("l3", "private"),
        "l3 private must isolate siblings"
    );
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_refuses_a_mac_and_leaves_nothing() {
    let lan = FakeLan::new();
    ipvlan_network(&lan, "iv", "l2", "bridge");
    let c = lan.container_ns("1");
    let out = lan.netattach(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "ctr1",
        "--mac",
        "02:00:00:00:00:01",
        "--ip",
        "192.168.32.10",
        "iv",
    ]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("ipvlan") && err.contains("MAC"), "{err}");
    assert_bare(&c);
    assert!(lan.addresses_of("ctr1").is_empty());
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn one_parent_carries_one_driver_and_one_ipvlan_mode() {
    let lan = FakeLan::new();
    lan.create_network("mv", &[]);
    ipvlan_network(&lan, "l2", "l2", "bridge");
    ipvlan_network(&lan, "l3", "l3", "bridge");
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");

    // macvlan in use: ipvlan on the same parent is refused before anything is made.
    attach(&lan, &a, "a", &["192.168.32.11"], "mv");
    let out = lan.netattach(&["attach", "--netns", b.path_str(), "--id", "b", "l2"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("either macvlan or ipvlan"), "{err}");
    assert!(err.contains("mv"), "names the network in the way: {err}");
    assert_bare(&b);
    assert!(lan.addresses_of("b").is_empty());
    lan.netattach_ok(&["detach", "--id", "a", "--netns", a.path_str()]);

    // ipvlan l2 in use: an l3 slave would silently switch it to l3. Refused.
    attach(&lan, &a, "a", &["192.168.32.11"], "l2");
    let out = lan.netattach(&["attach", "--netns", b.path_str(), "--id", "b", "l3"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("one ipvlan mode"), "{err}");
    assert_bare(&b);
    let link = common::link_json(&a.name, "eth0");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "l2", "{link}");
    // A second l2 container is fine, and so is macvlan once ipvlan is gone.
    attach(&lan, &b, "b", &["192.168.32.12"], "l2");
    for (ns, id) in [(&a, "a"), (&b, "b")] {
        lan.netattach_ok(&["detach", "--id", id, "--netns", ns.path_str()]);
    }
    attach(&lan, &a, "a", &["192.168.32.11"], "mv");
    assert!(common::ping_from(&a.name, GW4));
}

/// Concurrent attaches through an l2 and an l3 ipvlan network on one parent:
/// the kernel would switch the parent's mode for every slave when an l3 slave
/// joins l2 ones, so the sharing check and the record of each attachment must
/// be one transaction. Whatever the interleaving, the winners are all of one
/// network, every slave keeps its network's mode, losers are left bare and
/// hold nothing, and no address is given twice.
#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn concurrent_conflicting_ipvlan_attaches_never_switch_a_mode() {
    let lan = FakeLan::new();
    ipvlan_network(&lan, "l2net", "l2", "bridge");
    ipvlan_network(&lan, "l3net", "l3", "bridge");
    for round in 0..3 {
        let spaces: Vec<(Netns, &str)> = (0..16)
            .map(|i| {
                let network = if i % 2 == 0 { "l2net" } else { "l3net" };
                (lan.container_ns(&format!("r{round}n{i}")), network)
            })
            .collect();
        let outcomes: Vec<(usize, std::process::Output)> = std::thread::scope(|s| {
            let handles: Vec<_> = spaces
                .iter()
                .enumerate()
                .map(|(i, (ns, network))| {
                    let lan = &lan;
                    s.spawn(move || {
                        let id = format!("r{round}c{i}");
                        let args = ["attach", "--netns", ns.path_str(), "--id", &id, network];
                        (i, lan.netattach(&args))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut winners = std::collections::BTreeSet::new();
        let mut won = 0;
        for (i, out) in &outcomes {
            let (ns, network) = &spaces[*i];
            if out.status.success() {
                won += 1;
                winners.insert(*network);
                let link = common::link_json(&ns.name, "eth0");
                let mode = if *network == "l2net" { "l2" } else { "l3" };
                assert_eq!(
                    link["linkinfo"]["info_data"]["mode"], mode,
                    "round {round}: {} of {network} after all attaches: {link}",
                    ns.name
                );
            } else {
                let err = common::stderr(out);
                assert!(err.contains("one ipvlan mode"), "round {round}: {err}");
                assert_bare(ns);
                assert!(lan.addresses_of(&format!("r{round}c{i}")).is_empty());
            }
        }
        assert!(won > 0, "round {round}: some attach succeeds");
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners of one network: {winners:?}"
        );
        let leases = lan.leases_json();
        let addresses: std::collections::BTreeSet<&str> = leases
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["address"].as_str().unwrap())
            .collect();
        // Dual stack: one IPv4 and one IPv6 lease per winner, none shared.
        assert_eq!(
            leases.as_array().unwrap().len(),
            2 * won,
            "round {round}: {leases}"
        );
        assert_eq!(
            addresses.len(),
            2 * won,
            "round {round}: distinct addresses"
        );
        for (i, _) in outcomes.iter().filter(|(_, o)| o.status.success()) {
            lan.netattach_ok(&["detach", "--id", &format!("r{round}c{i}")]);
        }
        assert!(lan.leases_json().as_array().unwrap().is_empty());
    }
}

/// The LAN side of VLANs 50 and 60: each VLAN's end of `gw0` in a peer netns
/// of its own, both with addresses of one subnet, so only the tag separates them.
struct VlanPeers {
    v50: Netns,
    v60: Netns,
}

const VLAN_SUBNET: &str = "192.168.50.0/24";
const PEER50: &str = "192.168.50.254";
const PEER60: &str = "192.168.50.253";

impl VlanPeers {
    fn new(lan: &FakeLan) -> VlanPeers {
        let v50 = lan.container_ns("v50");
        let v60 = lan.container_ns("v60");
        for (vid, ns, addr) in [("50", &v50, PEER50), ("60", &v60, PEER60)] {
            let name = format!("gw0.{vid}");
            lan.ext.ip(&[
                "link", "add", "link", "gw0", "name", &name, "type", "vlan", "id", vid,
            ]);
            lan.ext.ip(&["link", "set", &name, "netns", &ns.name]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &name]);
            ns.ip(&["link", "set", &name, "up"]);
        }
        VlanPeers { v50, v60 }
    }
}

/// The VLAN link `name` in the host-side netns: (vlan id, up), or None.
fn host_vlan(lan: &FakeLan, name: &str) -> Option<(u64, bool)> {
    let link = common::link_json(lan.host_ns(), name);
    if link.is_null() {
        return None;
    }
    assert_eq!(link["linkinfo"]["info_kind"], "vlan", "{link}");
    let id = link["linkinfo"]["info_data"]["id"].as_u64().unwrap();
    Some((id, has_flag(&link, "UP")))
}

fn vlan_network(lan: &FakeLan, name: &str, parent: &str) {
    lan.create_network_on("macvlan", parent, name, &["--subnet", VLAN_SUBNET]);
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn vlan_traffic_stays_on_its_vlan() {
    let lan = FakeLan::new();
    let peers = VlanPeers::new(&lan);
    vlan_network(&lan, "v50", "lan0.50");
    vlan_network(&lan, "v60", "lan0.60");
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    attach(&lan, &a, "a", &["192.168.50.10"], "v50");
    attach(&lan, &b, "b", &["192.168.50.11"], "v60");
    assert_eq!(host_vlan(&lan, "lan0.50"), Some((50, true)));
    assert_eq!(host_vlan(&lan, "lan0.60"), Some((60, true)));

    assert!(
        common::ping_from(&a.name, PEER50),
        "VLAN 50 peer unreachable"
    );
    assert!(
        !common::ping_from(&a.name, PEER60),
        "VLAN 60 peer reached from VLAN 50"
    );
    assert!(
        common::ping_from(&b.name, PEER60),
        "VLAN 60 peer unreachable"
    );
    assert!(
        !common::ping_from(&b.name, PEER50),
        "VLAN 50 peer reached from VLAN 60"
    );
    // The frames really were tagged: the peers saw the containers on their VLAN only.
    for (peer, own, other) in [
        (&peers.v50, "192.168.50.10", "192.168.50.11"),
        (&peers.v60, "192.168.50.11", "192.168.50.10"),
    ] {
        let seen = common::stdout(&common::run_ok("ip", &["-n", &peer.name, "neigh", "show"]));
        assert!(seen.contains(own), "{}: {seen}", peer.name);
        assert!(!seen.contains(other), "{}: {seen}", peer.name);
    }
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn vlan_parent_is_shared_and_removed_with_its_last_user() {
    let lan = FakeLan::new();
    let _peers = VlanPeers::new(&lan);
    vlan_network(&lan, "one", "lan0.50");
    vlan_network(&lan, "two", "lan0.50");
    assert_eq!(
        host_vlan(&lan, "lan0.50"),
        None,
        "created on first use, not before"
    );
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    attach(&lan, &a, "a", &["192.168.50.10"], "one");
    attach(&lan, &b, "b", &["192.168.50.11"], "two");
    let vlans: Vec<String> = lan
        .host_links()
        .into_iter()
        .filter(|l| l.starts_with("lan0."))
        .collect();
    assert_eq!(
        vlans,
        vec!["lan0.50".to_string()],
        "one sub-interface for both"
    );
    assert!(common::ping_from(&a.name, PEER50));
    assert!(common::ping_from(&b.name, PEER50));
    let doctor = lan.netattach_ok(&["doctor"]);
    assert!(doctor.contains("VLAN created by netattach"), "{doctor}");

    lan.netattach_ok(&["detach", "--id", "a", "--netns", a.path_str()]);
    lan.netattach_ok(&["network", "rm", "one"]);
    assert!(
        host_vlan(&lan, "lan0.50").is_some(),
        "network two still uses it"
    );
    assert!(common::ping_from(&b.name, PEER50));
    lan.netattach_ok(&["detach", "--id", "b", "--netns", b.path_str()]);
    assert!(
        host_vlan(&lan, "lan0.50").is_some(),
        "network two is still defined"
    );
    lan.netattach_ok(&["network", "rm", "two"]);
    assert_eq!(
        host_vlan(&lan, "lan0.50"),
        None,
        "removed with its last user"
    );
    assert_eq!(lan.host_links(), vec!["lo".to_string(), "lan0".to_string()]);
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn vlan_of_a_dead_container_is_freed_by_gc_and_network_rm() {
    let lan = FakeLan::new();
    vlan_network(&lan, "v50", "lan0.50");
    let c = lan.container_ns("gone");
    attach(&lan, &c, "gone", &["192.168.50.10"], "v50");
    drop(c); // the container died without a release
    let out = lan.netattach(&["network", "rm", "v50"]);
    assert!(!out.status.success(), "an attachment is still recorded");
    assert!(host_vlan(&lan, "lan0.50").is_some());
    lan.netattach_ok(&["gc"]);
    assert!(lan.addresses_of("gone").is_empty());
    assert!(host_vlan(&lan, "lan0.50").is_some(), "v50 still defined");
    lan.netattach_ok(&["network", "rm", "v50"]);
    assert_eq!(host_vlan(&lan, "lan0.50"), None);
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn vlan_made_by_someone_else_is_never_removed() {
    let lan = FakeLan::new();
    lan.host.ip(&[
        "link", "add", "link", "lan0", "name", "lan0.70", "type", "vlan", "id", "70",
    ]);
    lan.host.ip(&["link", "set", "lan0.70", "up"]);
    vlan_network(&lan, "v70", "lan0.70");
    let c = lan.container_ns("1");
    attach(&lan, &c, "c", &["192.168.50.10"], "v70");
    lan.netattach_ok(&["detach", "--id", "c", "--netns", c.path_str()]);
    lan.netattach_ok(&["network", "rm", "v70"]);
    lan.netattach_ok(&["gc"]);
    assert_eq!(host_vlan(&lan, "lan0.70"), Some((70, true)));
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn vlan_parent_refusals() {
    let lan = FakeLan::new();
    let out = lan.netattach(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=lan0.4095",
        "--subnet",
        VLAN_SUBNET,
        "bad",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("outside 1-4094"),
        "{}",
        common::text(&out)
    );

    vlan_network(&lan, "nobase", "nope0.50");
    let c = lan.container_ns("1");
    let out = lan.netattach(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "c",
        "--ip",
        "192.168.50.10",
        "nobase",
    ]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("nope0") && err.contains("does not exist"),
        "{err}"
    );
    assert_bare(&c);
    assert!(lan.addresses_of("c").is_empty());
    assert_eq!(lan.host_links(), vec!["lo".to_string(), "lan0".to_string()]);
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_on_a_vlan_parent() {
    let lan = FakeLan::new();
    let _peers = VlanPeers::new(&lan);
    lan.create_network_on(
        "ipvlan",
        "lan0.50",
        "iv50",
        &["--subnet", VLAN_SUBNET, "-o", "ipvlan_mode=l2"],
    );
    let c = lan.container_ns("1");
    attach(&lan, &c, "c", &["192.168.50.10"], "iv50");
    let link = common::link_json(&c.name, "eth0");
    assert_eq!(link["linkinfo"]["info_kind"], "ipvlan", "{link}");
    assert!(common::ping_from(&c.name, PEER50));
    assert!(!common::ping_from(&c.name, PEER60));
}

/// `netattach doctor --json`, which must succeed.
fn doctor(lan: &FakeLan) -> Value {
    let out = lan.netattach(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The doctor's entry for one kernel feature.
fn feature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing: {report}"))
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn doctor_reports_ipvlan_and_vlan_support() {
    let lan = FakeLan::new();
    vlan_network(&lan, "v50", "lan0.50");
    let report = doctor(&lan);
    for name in ["macvlan", "ipvlan", "802.1Q"] {
        assert_eq!(feature(&report, name)["supported"], true, "{report}");
    }
    assert_eq!(report["networks"][0]["state"], "will be created on lan0");
}

/// `rmmod MODULE`, retrying while namespaces deleted by earlier tests still
/// hold links of it (the kernel frees them asynchronously).
fn unload(module: &str) {
    for _ in 0..100 {
        if common::run("rmmod", &[module]).status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("cannot unload {module}");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn doctor_loads_missing_modules_on_demand() {
    let lan = FakeLan::new();
    unload("ipvlan");
    unload("8021q");
    // The probe makes the kernel call modprobe, as a real attach would.
    let report = doctor(&lan);
    for name in ["ipvlan", "802.1Q"] {
        let f = feature(&report, name);
        assert_eq!(f["supported"], true, "{f}");
        assert_eq!(f["how"], "module, loaded on demand", "{f}");
    }
    let report = doctor(&lan);
    assert_eq!(feature(&report, "ipvlan")["how"], "loaded module");
    assert_eq!(feature(&report, "802.1Q")["how"], "loaded module");
}

#[test]
#[ignore = "needs ipvlan and 802.1Q: runs in the VM (tests/vm.rs)"]
fn ipvlan_l2_host_link_reaches_the_containers_both_ways() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    // The host's own addresses on the network, IPv4 and IPv6.
    let host4 = "192.168.32.250";
    let host6 = "2001:db8:32::fa";
    lan.create_network_on(
        "ipvlan",
        "lan0",
        "iv",
        &[
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "--subnet",
            SUBNET6,
            "--gateway",
            GW6,
            "--host-address",
            host4,
            "--host-address",
            host6,
        ],
    );
    let link = common::exec_in(lan.host_ns(), &["ip", "-j", "-d", "link", "show", "na-iv"]);
    let link: Value = serde_json::from_slice(&link.stdout).unwrap();
    assert_eq!(link[0]["linkinfo"]["info_kind"], "ipvlan", "{link}");
    assert_eq!(link[0]["linkinfo"]["info_data"]["mode"], "l2", "{link}");
    let ns = lan.container_ns("a");
    attach(
        &lan,
        &ns,
        "ctr-a",
        &["192.168.32.20", "2001:db8:32::20"],
        "iv",
    );
    // No ip range: each container address is a host route through the link.
    for addr in ["192.168.32.20", "2001:db8:32::20"] {
        assert!(reaches(&lan.host, addr), "host -> {addr}");
    }
    assert!(reaches(&ns, host4), "container -> {host4}");
    assert!(reaches(&ns, host6), "container -> {host6}");
    lan.netattach_ok(&["detach", "--id", "ctr-a"]);
    let routes = common::exec_in(
        lan.host_ns(),
        &["ip", "-6", "route", "show", "dev", "na-iv"],
    );
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("2001:db8:32::20"),
        "{routes:?}"
    );
}
