//! Root integration tests of `-o mac_policy=ipv4|stable` on the fake LAN:
//! the MAC a container gets, that a re-created one gets the same, that a
//! derived MAC is still unique on its segment, and traffic with it.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{FakeLan, GW4, SUBNET4};
use serde_json::Value;

fn network(lan: &FakeLan, policy: &str) {
    let opt = format!("mac_policy={policy}");
    lan.create_network("lan", &["--subnet", SUBNET4, "--gateway", GW4, "-o", &opt]);
}

/// `attach --json`: (address, MAC) of the one link, or netattach's stderr.
fn attach(
    lan: &FakeLan,
    ns: &common::Netns,
    id: &str,
    extra: &[&str],
) -> Result<(String, String), String> {
    let mut args = vec!["attach", "--json", "--netns", ns.path_str(), "--id", id];
    args.extend_from_slice(extra);
    args.push("lan");
    let out = lan.netattach(&args);
    if !out.status.success() {
        return Err(common::stderr(&out));
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let addr = v[0]["addresses"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    Ok((addr, v[0]["mac"].as_str().unwrap().to_ascii_lowercase()))
}

fn link_mac(ns: &common::Netns) -> String {
    common::link_json(&ns.name, "eth0")["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn ipv4_policy_gives_docker_s_classic_mac() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    network(&lan, "ipv4");
    let a = lan.container_ns("a");
    let (addr, mac) = attach(&lan, &a, "ctr-a", &["--ip", "192.168.32.10"]).unwrap();
    assert_eq!(
        (addr.as_str(), mac.as_str()),
        ("192.168.32.10", "02:42:c0:a8:20:0a")
    );
    assert_eq!(link_mac(&a), mac);
    assert!(common::ping_from(&a.name, GW4));
    // A pooled address: the MAC follows it, and the lease records it.
    let b = lan.container_ns("b");
    let (addr, mac) = attach(&lan, &b, "ctr-b", &[]).unwrap();
    let o: Vec<u8> = addr.split('.').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        mac,
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );
    assert_eq!(link_mac(&b), mac);
    let leases = lan.leases_json();
    let lease = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["owner"] == "ctr-b")
        .unwrap();
    assert_eq!(lease["mac"], mac.as_str(), "{lease}");
    // The MAC is checked like any other: one held by hand is refused.
    lan.netattach_ok(&["detach", "--id", "ctr-a"]);
    let c = lan.container_ns("c");
    attach(
        &lan,
        &c,
        "ctr-c",
        &["--ip", "192.168.32.20", "--mac", "02:42:c0:a8:20:0a"],
    )
    .map(|_| ())
    .unwrap_or_else(|e| panic!("{e}"));
    let d = lan.container_ns("d");
    let e = attach(&lan, &d, "ctr-d", &["--ip", "192.168.32.10"]).unwrap_err();
    assert!(
        e.contains("02:42:c0:a8:20:0a") && e.contains("ctr-c"),
        "{e}"
    );
    common::assert_bare(&d);
}

#[test]
fn stable_policy_gives_a_recreated_container_its_mac_back() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    network(&lan, "stable");
    let v: Value = serde_json::from_str(&lan.netattach_ok(&["network", "inspect", "lan"])).unwrap();
    assert_eq!(v[0]["mac_policy"], "stable", "{v}");
    // Without an identity there is nothing to derive from.
    let a = lan.container_ns("a");
    let e = attach(&lan, &a, "ctr-1", &[]).unwrap_err();
    assert!(e.contains("netattach/identity"), "{e}");
    common::assert_bare(&a);
    let (_, first) = attach(&lan, &a, "ctr-1", &["--identity", "web-1"]).unwrap();
    assert_eq!(link_mac(&a), first);
    let octet = u8::from_str_radix(&first[0..2], 16).unwrap();
    assert_eq!(octet & 0x3, 0x2, "locally administered unicast: {first}");
    assert!(common::ping_from(&a.name, GW4));
    // Another identity, another MAC; the same one while it runs: refused.
    let b = lan.container_ns("b");
    let (_, other) = attach(&lan, &b, "ctr-2", &["--identity", "web-2"]).unwrap();
    assert_ne!(other, first);
    let c = lan.container_ns("c");
    let e = attach(&lan, &c, "ctr-3", &["--identity", "web-1"]).unwrap_err();
    assert!(e.contains(&first) && e.contains("ctr-1"), "{e}");
    common::assert_bare(&c);
    // Re-created (new id, new netns): the same MAC, also through the hook's
    // netattach/identity annotation.
    lan.netattach_ok(&["detach", "--id", "ctr-1"]);
    drop(a);
    let again = lan.container_ns("again");
    let bundle = lan.dir.path().join("bundle-hook");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network", "path": again.path_str()}]}})
        .to_string(),
    )
    .unwrap();
    let state = serde_json::json!({"ociVersion": "1.0.2-dev", "id": "ctr-4", "status": "creating",
        "bundle": bundle, "annotations": {"netattach/networks": "lan", "netattach/identity": "web-1"}});
    let mut child = lan
        .command_in_host(common::bin())
        .args([
            "--config-dir",
            lan.config_dir_str(),
            "--state-dir",
            lan.state_dir_str(),
            "hook",
            "attach",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(link_mac(&again), first);
    assert!(common::ping_from(&again.name, GW4));
}

#[test]
fn mac_policies_are_checked_at_create() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    let e = lan.create_refused(&[
        "-d",
        "ipvlan",
        "--subnet",
        SUBNET4,
        "-o",
        "parent=lan0",
        "-o",
        "mac_policy=stable",
        "iv",
    ]);
    assert!(e.contains("only random applies"), "{e}");
    let e = lan.create_refused(&[
        "--subnet",
        "2001:db8:32::/64",
        "-o",
        "parent=lan0",
        "-o",
        "mac_policy=ipv4",
        "v6",
    ]);
    assert!(e.contains("ipv4 needs an IPv4 subnet"), "{e}");
    let e = lan.create_refused(&[
        "--subnet",
        SUBNET4,
        "-o",
        "parent=lan0",
        "-o",
        "mac_policy=sticky",
        "x",
    ]);
    assert!(e.contains("mac_policy: unknown value \"sticky\""), "{e}");
}

#[test]
fn sticky_ips_give_an_identity_its_address_back_while_it_is_free() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network(
        "lan",
        &[
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "-o",
            "sticky_ips=true",
        ],
    );
    let v: Value = serde_json::from_str(&lan.netattach_ok(&["network", "inspect", "lan"])).unwrap();
    assert_eq!(v[0]["sticky_ips"], true, "{v}");
    let a = lan.container_ns("a");
    let (first, _) = attach(&lan, &a, "ctr-1", &["--identity", "db-1"]).unwrap();
    lan.netattach_ok(&["detach", "--id", "ctr-1"]);
    drop(a);
    // Others come and go meanwhile (round robin moves on).
    let others: Vec<_> = (0..3).map(|i| lan.container_ns(&format!("o{i}"))).collect();
    for (i, ns) in others.iter().enumerate() {
        let (addr, _) = attach(&lan, ns, &format!("other-{i}"), &[]).unwrap();
        assert_ne!(addr, first);
    }
    // Re-created: the same address.
    let b = lan.container_ns("b");
    let (again, _) = attach(&lan, &b, "ctr-2", &["--identity", "db-1"]).unwrap();
    assert_eq!(again, first);
    assert!(common::ping_from(&b.name, GW4));
    lan.netattach_ok(&["detach", "--id", "ctr-2"]);
    // Taken meanwhile by someone else: another one, never a duplicate.
    let c = lan.container_ns("c");
    attach(&lan, &c, "squatter", &["--ip", &first]).unwrap();
    let d = lan.container_ns("d");
    let (moved, _) = attach(&lan, &d, "ctr-3", &["--identity", "db-1"]).unwrap();
    assert_ne!(moved, first);
    // Freed again: the identity now has two remembered; the newest wins.
    lan.netattach_ok(&["detach", "--id", "squatter"]);
    lan.netattach_ok(&["detach", "--id", "ctr-3"]);
    let e = lan.container_ns("e");
    let (latest, _) = attach(&lan, &e, "ctr-4", &["--identity", "db-1"]).unwrap();
    assert_eq!(latest, moved);
}
