//! Root integration tests of host links (`network create --host-address`,
//! src/hostlink.rs): the fake LAN's host-side netns plays the host, which
//! by kernel design cannot reach the macvlan containers on its own parent;
//! with a host address it can, and they can reach it. Traffic goes only to
//! namespaces the test made.

mod common;

use common::FakeLan;
use serde_json::Value;

const HOST_ADDR: &str = "192.168.32.250";

/// The host netns' routes out of `dev`, as `ip -j route` destinations.
fn routes_via(lan: &FakeLan, dev: &str) -> Vec<String> {
    let out = common::exec_in(lan.host_ns(), &["ip", "-j", "route", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["dst"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn attach(lan: &FakeLan, ns: &common::Netns, id: &str, extra: &[&str]) -> String {
    let mut args = vec!["attach", "--json", "--netns", ns.path_str(), "--id", id];
    args.extend_from_slice(extra);
    args.push("lan");
    let out = lan.netattach_ok(&args);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["addresses"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_host_reaches_its_containers_through_its_host_link() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let parent = format!("parent={}", lan.parent);
    lan.netattach_ok(&[
        "network",
        "create",
        "--subnet",
        "192.168.32.0/24",
        "--gateway",
        &lan.gw4,
        "--ip-range",
        "192.168.32.64/26",
        "--host-address",
        HOST_ADDR,
        "-o",
        &parent,
        "lan",
    ]);
    // The definition says it, and reserves the address.
    let v: Value = serde_json::from_str(&lan.netattach_ok(&["network", "inspect", "lan"])).unwrap();
    assert_eq!(v[0]["host_addresses"][0], HOST_ADDR, "{v}");
    assert_eq!(
        v[0]["subnets"][0]["aux_addresses"]["host"], HOST_ADDR,
        "{v}"
    );
    // The host link exists at once: on the parent, up, the address as a /32,
    // and the range routed through it.
    let link = common::exec_in(lan.host_ns(), &["ip", "-j", "-d", "addr", "show", "na-lan"]);
    let link: Value = serde_json::from_slice(&link.stdout).unwrap();
    assert_eq!(link[0]["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(link[0]["linkinfo"]["info_data"]["mode"], "bridge", "{link}");
    assert_eq!(link[0]["ifalias"], "netattach host link of lan", "{link}");
    assert_eq!(link[0]["link"], lan.parent.as_str(), "{link}");
    let addrs: Vec<String> = link[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, vec![format!("{HOST_ADDR}/32")]);
    assert_eq!(routes_via(&lan, "na-lan"), vec!["192.168.32.64/26"]);

    // A pooled container and one with a requested address outside the range.
    let a_ns = lan.container_ns("a");
    let b_ns = lan.container_ns("b");
    let a = attach(&lan, &a_ns, "ctr-a", &[]);
    let b = attach(&lan, &b_ns, "ctr-b", &["--ip", "192.168.32.10"]);
    assert!(a.starts_with("192.168.32."), "{a}");
    assert_eq!(b, "192.168.32.10");
    let mut routes = routes_via(&lan, "na-lan");
    routes.sort();
    assert_eq!(routes, vec!["192.168.32.10", "192.168.32.64/26"]);
    // Both ways, both containers.
    for addr in [&a, &b] {
        assert!(common::ping_from(lan.host_ns(), addr), "host -> {addr}");
    }
    assert!(common::ping_from(&a_ns.name, HOST_ADDR), "a -> host");
    assert!(common::ping_from(&b_ns.name, HOST_ADDR), "b -> host");
    // doctor finds nothing wrong with it.
    let doc = lan.netattach_ok(&["doctor", "--json"]);
    assert!(!doc.contains("host link"), "{doc}");

    // The release takes the container's own route away, not the range's.
    lan.netattach_ok(&["detach", "--id", "ctr-b"]);
    assert_eq!(routes_via(&lan, "na-lan"), vec!["192.168.32.64/26"]);

    // Gone (say, a reboot): doctor says so, host-links makes it again.
    lan.host.ip(&["link", "del", "na-lan"]);
    let out = lan.netattach(&["doctor", "--json"]);
    assert!(!out.status.success());
    let doc = common::stdout(&out);
    assert!(doc.contains("host link na-lan is missing"), "{doc}");
    let said = lan.netattach_ok(&["host-links"]);
    assert!(
        said.contains("network lan: host link na-lan set up"),
        "{said}"
    );
    assert!(
        common::ping_from(lan.host_ns(), &a),
        "host -> {a} after host-links"
    );
    let said = lan.netattach_ok(&["host-links"]);
    assert!(said.contains("in place"), "{said}");

    // network rm takes it away.
    lan.netattach_ok(&["detach", "--id", "ctr-a"]);
    lan.netattach_ok(&["network", "rm", "lan"]);
    assert!(!lan.host_links().contains(&"na-lan".to_string()));
}

#[test]
fn a_network_without_a_host_address_changes_nothing_on_the_host() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let parent = format!("parent={}", lan.parent);
    lan.netattach_ok(&[
        "network",
        "create",
        "--subnet",
        "192.168.32.0/24",
        "--gateway",
        &lan.gw4,
        "-o",
        &parent,
        "lan",
    ]);
    let links = lan.host_links();
    let routes = common::exec_in(lan.host_ns(), &["ip", "route"]).stdout;
    let ns = lan.container_ns("a");
    let a = attach(&lan, &ns, "ctr-a", &[]);
    assert_eq!(lan.host_links(), links);
    assert_eq!(
        common::exec_in(lan.host_ns(), &["ip", "route"]).stdout,
        routes
    );
    // By kernel design the host cannot reach its macvlan child.
    assert!(!common::ping_from(lan.host_ns(), &a));
}

#[test]
fn host_addresses_are_checked_at_create_and_refused_in_requests() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let parent = format!("parent={}", lan.parent);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "network",
            "create",
            "--subnet",
            "192.168.32.0/24",
            "-o",
            &parent,
        ];
        args.extend_from_slice(extra);
        args.push("lan");
        common::stderr(&lan.netattach(&args))
    };
    let e = create(&["--host-address", "10.1.2.3"]);
    assert!(
        e.contains("--host-address 10.1.2.3 is not inside any --subnet"),
        "{e}"
    );
    let e = create(&["--host-address", HOST_ADDR, "-o", "macvlan_mode=vepa"]);
    assert!(
        e.contains("the host reaches its containers only through macvlan bridge"),
        "{e}"
    );
    let e = create(&["--host-address", "192.168.32.1"]);
    assert!(e.contains("192.168.32.1 is the gateway"), "{e}");
    let e = create(&[
        "--host-address",
        HOST_ADDR,
        "-o",
        "host_address=192.168.32.251",
    ]);
    assert!(e.contains("at most one address per family"), "{e}");
    assert!(lan.host_links().iter().all(|l| !l.starts_with("na-")));
    // Defined: a request may not ask for it, nor name the option.
    lan.netattach_ok(&[
        "network",
        "create",
        "--subnet",
        "192.168.32.0/24",
        "--host-address",
        HOST_ADDR,
        "-o",
        &parent,
        "lan",
    ]);
    let ns = lan.container_ns("a");
    let out = lan.netattach(&[
        "attach",
        "--netns",
        ns.path_str(),
        "--id",
        "x",
        "--ip",
        HOST_ADDR,
        "lan",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("aux address \"host\""),
        "{}",
        common::text(&out)
    );
    let out = common::hook(
        &lan,
        "attach",
        "y",
        &ns,
        r#"[{"name":"lan","host_address":"192.168.32.251"}]"#,
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("host_address"),
        "{}",
        common::text(&out)
    );
}
