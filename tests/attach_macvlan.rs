//! Root integration tests of the macvlan attach on a fake LAN: every mode, the
//! interface as a user would inspect it, traffic to the gateway, rollback on
//! injected failures, idempotency and release.

mod common;

use common::{assert_bare, hook, FakeLan, GW4, GW6, SUBNET4};
use serde_json::Value;

fn leases_of(lan: &FakeLan, owner: &str) -> Vec<String> {
    lan.leases_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["owner"] == owner)
        .map(|l| format!("{}/{}", l["address"].as_str().unwrap(), l["prefix_len"]))
        .collect()
}

/// Everything a user checks after attaching one macvlan with a static dual-stack
/// address, a MAC and an MTU.
fn check_mode(mode: &str, expect_gateway_reachable: bool) {
    check_mode_with(mode, expect_gateway_reachable, |_| Vec::new())
}

/// [`check_mode`] with more `network create` arguments, made from the LAN.
fn check_mode_with(
    mode: &str,
    expect_gateway_reachable: bool,
    extra: impl Fn(&FakeLan) -> Vec<String>,
) {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let mode_opt = format!("macvlan_mode={mode}");
    let extra = extra(&lan);
    let mut args = vec!["-o", &mode_opt, "-o", "mtu=1400"];
    args.extend(extra.iter().map(String::as_str));
    lan.create_dual_stack("lan", &args);
    let c = lan.container_ns("1");
    // A passthru interface takes over the parent's MAC; the others get the requested one.
    let passthru = mode == "passthru";
    let mac = if passthru {
        common::link_json(lan.host_ns(), "lan0")["address"]
            .as_str()
            .unwrap()
            .to_string()
    } else {
        "02:00:c0:a8:20:0a".to_string()
    };
    let mut args = vec!["attach", "--netns", c.path_str(), "--id", "ctr1"];
    if !passthru {
        args.extend_from_slice(&["--mac", &mac]);
    }
    args.extend_from_slice(&[
        "--ip",
        "192.168.32.10/24",
        "--ip",
        "2001:db8:32::10/64",
        "lan",
    ]);
    lan.netattach_ok(&args);
    let link = common::link_json(&c.name, "eth0");
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], mode, "{link}");
    assert_eq!(link["address"], mac.as_str());
    assert_eq!(link["mtu"], 1400);
    assert!(
        link["flags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("UP")),
        "{link}"
    );
    let mut addrs = common::addrs(&c.name, "eth0");
    addrs.sort();
    assert_eq!(addrs, vec!["192.168.32.10/24", "2001:db8:32::10/64"]);
    assert_eq!(
        common::default_gateway(&c.name, false).as_deref(),
        Some(GW4)
    );
    assert_eq!(common::default_gateway(&c.name, true).as_deref(), Some(GW6));
    let sysctl = common::exec_in(&c.name, &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(common::stdout(&sysctl).trim(), "1");
    let sysctl = common::exec_in(
        &c.name,
        &["cat", "/proc/sys/net/ipv6/conf/eth0/ndisc_notify"],
    );
    assert_eq!(common::stdout(&sysctl).trim(), "1");
    if expect_gateway_reachable {
        assert!(
            common::ping_from(&c.name, GW4),
            "gateway {GW4} unreachable in mode {mode}"
        );
        assert!(
            common::ping_from(&c.name, GW6),
            "gateway {GW6} unreachable in mode {mode}"
        );
    }
    let mut leases = leases_of(&lan, "ctr1");
    leases.sort();
    assert_eq!(leases, vec!["192.168.32.10/24", "2001:db8:32::10/64"]);
    lan.netattach_ok(&["detach", "--id", "ctr1", "--netns", c.path_str()]);
    assert!(leases_of(&lan, "ctr1").is_empty());
    assert_bare(&c);
    // The host side keeps only its own links.
    assert_eq!(lan.host_links(), vec!["lo".to_string(), "lan0".to_string()]);
}

#[test]
fn bridge_mode() {
    check_mode("bridge", true);
}

#[test]
fn vepa_mode() {
    check_mode("vepa", true);
}

#[test]
fn private_mode() {
    check_mode("private", true);
}

#[test]
fn passthru_mode() {
    check_mode("passthru", true);
}

fn gateway_mac(lan: &FakeLan) -> String {
    common::link_json(lan.ext_ns(), "gw0")["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A source-mode macvlan receives only frames from the stations on its list
/// (`-o macvlan_source=`): with the gateway on it, the gateway answers.
#[test]
fn source_mode() {
    check_mode_with("source", true, |lan| {
        vec![
            "-o".into(),
            format!("macvlan_source=02:00:00:00:00:01,{}", gateway_mac(lan)),
        ]
    });
}

/// Without the gateway on the list its replies are filtered; without a list
/// the network is refused at create, with the option to use.
#[test]
fn source_mode_filters_other_stations_and_needs_a_list() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let e = lan.create_refused(&[
        "--subnet",
        SUBNET4,
        "-o",
        "parent=lan0",
        "-o",
        "macvlan_mode=source",
        "src",
    ]);
    assert!(
        e.contains("give them with -o macvlan_source=MAC[,MAC...]"),
        "{e}"
    );
    let e = lan.create_refused(&[
        "--subnet",
        SUBNET4,
        "-o",
        "parent=lan0",
        "-o",
        "macvlan_source=02:00:00:00:00:01",
        "src",
    ]);
    assert!(e.contains("applies to macvlan source mode only"), "{e}");
    lan.create_network(
        "src",
        &[
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "-o",
            "macvlan_mode=source",
            "-o",
            "macvlan_source=02:00:00:00:00:01",
        ],
    );
    let v: Value = serde_json::from_str(&lan.netattach_ok(&["network", "inspect", "src"])).unwrap();
    assert_eq!(v[0]["macvlan_sources"][0], "02:00:00:00:00:01", "{v}");
    let c = lan.container_ns("1");
    lan.netattach_ok(&["attach", "--netns", c.path_str(), "--id", "ctr1", "src"]);
    assert!(
        !common::ping_from(&c.name, GW4),
        "a station off the list got through"
    );
}

/// Two containers on one parent: bridge lets them talk directly; private and
/// vepa (the fake LAN's far end does no hairpin) keep them apart.
fn two_containers_talk(mode: &str) -> bool {
    let lan = FakeLan::new();
    lan.create_network("lan", &["-o", &format!("macvlan_mode={mode}")]);
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        a.path_str(),
        "--ip",
        "192.168.32.11",
        "lan",
    ]);
    lan.netattach_ok(&[
        "attach",
        "--netns",
        b.path_str(),
        "--ip",
        "192.168.32.12",
        "lan",
    ]);
    assert!(common::ping_from(&a.name, GW4));
    assert!(common::ping_from(&b.name, GW4));
    common::ping_from(&a.name, "192.168.32.12")
}

#[test]
fn mode_semantics_between_two_containers() {
    if common::skip_unless_root() {
        return;
    }
    assert!(
        two_containers_talk("bridge"),
        "bridge mode must let siblings talk"
    );
    assert!(
        !two_containers_talk("private"),
        "private mode must isolate siblings"
    );
    assert!(
        !two_containers_talk("vepa"),
        "vepa without a hairpin switch must not loop back"
    );
}

#[test]
fn passthru_refuses_a_second_interface_on_the_parent() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("pt", &["-o", "macvlan_mode=passthru"]);
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    lan.netattach_ok(&["attach", "--netns", a.path_str(), "--id", "a", "pt"]);
    let out = lan.netattach(&["attach", "--netns", b.path_str(), "--id", "b", "pt"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("passthru needs the parent to itself"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(leases_of(&lan, "b").is_empty());
    assert_bare(&b);
    assert_eq!(leases_of(&lan, "a").len(), 1);
}

#[test]
fn pooled_attach_is_idempotent_and_released() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_dual_stack("lan", &["--ip-range", "192.168.32.128/25"]);
    let c = lan.container_ns("1");
    let first = lan.netattach_ok(&[
        "attach",
        "--json",
        "--netns",
        c.path_str(),
        "--id",
        "p1",
        "lan",
    ]);
    let first: Value = serde_json::from_str(&first).unwrap();
    let index = common::link_json(&c.name, "eth0")["ifindex"].clone();
    let mut leased = leases_of(&lan, "p1");
    leased.sort();
    assert_eq!(leased, vec!["192.168.32.128/24", "2001:db8:32::1/64"]);
    let mut inside = common::addrs(&c.name, "eth0");
    inside.sort();
    assert_eq!(inside, leased);
    assert!(common::ping_from(&c.name, GW4));

    // The same attach again changes nothing and says so.
    let again = lan.netattach_ok(&[
        "attach",
        "--json",
        "--netns",
        c.path_str(),
        "--id",
        "p1",
        "lan",
    ]);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again[0]["existing"], true);
    assert_eq!(again[0]["addresses"], first[0]["addresses"]);
    assert_eq!(common::link_json(&c.name, "eth0")["ifindex"], index);
    assert_eq!(common::link_names(&c.name).len(), 2);
    assert_eq!(leases_of(&lan, "p1").len(), 2);

    // Release through the hook, twice: the second is harmless.
    for _ in 0..2 {
        let out = hook(&lan, "release", "p1", &c, "lan");
        assert!(out.status.success(), "{}", common::text(&out));
        assert!(leases_of(&lan, "p1").is_empty());
    }
}

#[test]
fn hook_attaches_several_networks_with_one_default_route() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_dual_stack("lan", &[]);
    lan.create_network(
        "side",
        &[
            "--subnet",
            "10.77.0.0/24",
            "--gateway",
            "10.77.0.1",
            "--internal",
        ],
    );
    let c = lan.container_ns("1");
    let out = hook(&lan, "attach", "multi", &c, "side,lan@net0");
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "a hook is silent on success"
    );
    assert_eq!(
        common::link_json(&c.name, "eth0")["linkinfo"]["info_kind"],
        "macvlan"
    );
    assert_eq!(
        common::link_json(&c.name, "net0")["linkinfo"]["info_kind"],
        "macvlan"
    );
    // `side` is internal: the default route goes through `lan`.
    let routes = common::routes_json(&c.name, false);
    let default: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .collect();
    assert_eq!(default.len(), 1, "{routes}");
    assert_eq!(default[0]["dev"], "net0");
    assert_eq!(default[0]["gateway"], GW4);
    assert!(common::ping_from(&c.name, GW4));
    assert_eq!(leases_of(&lan, "multi").len(), 3);
}

#[test]
fn parent_that_does_not_exist_leaves_nothing_behind() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.netattach_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        SUBNET4,
        "-o",
        "parent=nosuch0",
        "ghost",
    ]);
    let c = lan.container_ns("1");
    let out = lan.netattach(&["attach", "--netns", c.path_str(), "--id", "g", "ghost"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("parent interface nosuch0 does not exist"),
        "{}",
        common::text(&out)
    );
    assert!(leases_of(&lan, "g").is_empty());
    assert_bare(&c);
}

/// The second network's parent disappears after the first link was made: the
/// first link and every lease are rolled back.
#[test]
fn parent_gone_mid_way_rolls_back_the_links_already_made() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_dual_stack("lan", &[]);
    lan.host.ip(&[
        "link", "add", "lan1", "type", "veth", "peer", "name", "lan1p",
    ]);
    lan.netattach_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.78.0.0/24",
        "-o",
        "parent=lan1",
        "second",
    ]);
    lan.host.ip(&["link", "del", "lan1"]);
    let c = lan.container_ns("1");
    let out = hook(&lan, "attach", "mid", &c, "lan,second");
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("second") && err.contains("lan1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(leases_of(&lan, "mid").is_empty(), "leases rolled back");
    assert_bare(&c);
}

#[test]
fn duplicate_interface_name_in_the_netns_is_refused() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let c = lan.container_ns("1");
    c.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let out = lan.netattach(&["attach", "--netns", c.path_str(), "--id", "d", "lan@eth0"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("interface eth0"),
        "{}",
        common::text(&out)
    );
    assert!(leases_of(&lan, "d").is_empty());
    let mut names = common::link_names(&c.name);
    names.sort();
    assert_eq!(names, vec!["eth0", "lo", "other0"]);
    // Without a name, the first free ethN is used.
    lan.netattach_ok(&["attach", "--netns", c.path_str(), "--id", "d", "lan"]);
    assert_eq!(
        common::link_json(&c.name, "eth1")["linkinfo"]["info_kind"],
        "macvlan"
    );
}

#[test]
fn mtu_above_the_parent_and_taken_addresses_are_refused() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("jumbo", &["-o", "mtu=9000"]);
    lan.create_network("lan", &[]);
    let c = lan.container_ns("1");
    let out = lan.netattach(&["attach", "--netns", c.path_str(), "--id", "j", "jumbo"]);
    assert!(
        common::stderr(&out).contains("exceeds the MTU 1500 of parent lan0"),
        "{}",
        common::text(&out)
    );
    assert_bare(&c);
    assert!(leases_of(&lan, "j").is_empty());

    let d = lan.container_ns("2");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "first",
        "--ip",
        "192.168.32.50",
        "lan",
    ]);
    let out = lan.netattach(&[
        "attach",
        "--netns",
        d.path_str(),
        "--id",
        "second",
        "--ip",
        "192.168.32.50",
        "lan",
    ]);
    let err = common::stderr(&out);
    assert!(
        err.contains("192.168.32.50")
            && err.contains("taken on parent lan0 by first (eth0, network lan)"),
        "{err}"
    );
    assert_bare(&d);
}

#[test]
fn the_host_netns_is_never_touched() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let out = lan.netattach(&["attach", "--netns", lan.host_ns_path(), "--id", "h", "lan"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("refusing to touch it"),
        "{}",
        common::text(&out)
    );
    assert_eq!(lan.host_links(), vec!["lo".to_string(), "lan0".to_string()]);
    assert!(leases_of(&lan, "h").is_empty());
}

#[test]
fn gc_frees_leases_of_deleted_namespaces() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let keep = lan.container_ns("keep");
    let gone = lan.container_ns("gone");
    lan.netattach_ok(&["attach", "--netns", keep.path_str(), "--id", "keep", "lan"]);
    lan.netattach_ok(&["attach", "--netns", gone.path_str(), "--id", "gone", "lan"]);
    drop(gone);
    let out = lan.netattach_ok(&["gc"]);
    assert!(out.contains("freed lan 192.168.32.2/24 of gone"), "{out}");
    assert!(leases_of(&lan, "gone").is_empty());
    assert_eq!(leases_of(&lan, "keep"), vec!["192.168.32.1/24"]);
    assert!(lan.netattach_ok(&["gc"]).contains("nothing to free"));
}

#[test]
fn doctor_reports_kernel_support_and_parents() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let out = lan.netattach(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let macvlan = report["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "macvlan")
        .unwrap();
    assert_eq!(macvlan["supported"], true);
    assert_eq!(report["networks"][0]["parent"], "lan0");
    assert_eq!(report["networks"][0]["state"], "up");

    lan.host.ip(&["link", "set", "lan0", "down"]);
    lan.netattach_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.9.0.0/24",
        "-o",
        "parent=gone0",
        "ghost",
    ]);
    let out = lan.netattach(&["doctor"]);
    assert!(!out.status.success(), "problems make doctor fail");
    let text = common::stdout(&out);
    assert!(text.contains("parent is down"), "{text}");
    assert!(text.contains("parent does not exist"), "{text}");
}

#[test]
fn netns_may_be_given_by_name_as_ip_netns_does() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let c = lan.container_ns("byname");
    assert_eq!(c.path_str(), format!("/run/netns/{}", c.name));
    // Without --id the owner is the netns path, the same for name and path.
    lan.netattach_ok(&["attach", "--netns", &c.name, "lan"]);
    assert_eq!(common::addrs(&c.name, "eth0").len(), 1);
    assert!(common::ping_from(&c.name, GW4));
    assert_eq!(leases_of(&lan, c.path_str()).len(), 1);
    lan.netattach_ok(&["detach", "--netns", &c.name]);
    assert!(leases_of(&lan, c.path_str()).is_empty());
    assert_bare(&c);
    let out = lan.netattach(&["attach", "--netns", "..", "--id", "n2", "lan"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("is not a namespace name"),
        "{}",
        common::text(&out)
    );
}
