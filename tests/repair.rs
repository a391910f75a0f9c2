//! Root integration tests of `netattach repair` on the fake LAN: the parent
//! goes away (the kernel deletes every macvlan on it) and comes back; the
//! live containers get their links back with the same addresses and MACs,
//! and reach the gateway again.

mod common;

use common::{FakeLan, GW4, GW6};

#[test]
fn live_containers_get_their_links_back_with_their_addresses() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_dual_stack("lan", &[]);
    let a = lan.container_ns("a");
    let b = lan.container_ns("b");
    let gone = lan.container_ns("gone");
    lan.netattach_ok(&["attach", "--netns", a.path_str(), "--id", "ctr-a", "lan"]);
    lan.netattach_ok(&[
        "attach",
        "--netns",
        b.path_str(),
        "--id",
        "ctr-b",
        "--ip",
        "192.168.32.77",
        "--mac",
        "02:00:00:00:00:77",
        "lan",
    ]);
    lan.netattach_ok(&[
        "attach",
        "--netns",
        gone.path_str(),
        "--id",
        "ctr-gone",
        "lan",
    ]);
    let before_a = (
        common::addrs(&a.name, "eth0"),
        common::link_json(&a.name, "eth0")["address"].clone(),
    );
    let before_b = (
        common::addrs(&b.name, "eth0"),
        common::link_json(&b.name, "eth0")["address"].clone(),
    );
    assert_eq!(lan.netattach_ok(&["repair"]).trim(), "nothing to repair");

    lan.recreate_parent();
    drop(gone); // a container that ended meanwhile is not repaired
    assert_eq!(common::link_names(&a.name), vec!["lo".to_string()]);
    // doctor says what needs repair, and fails.
    let out = lan.netattach(&["doctor"]);
    assert!(!out.status.success());
    let text = common::stdout(&out);
    assert!(
        text.contains("eth0 of ctr-a (network lan): missing"),
        "{text}"
    );
    assert!(
        text.contains("eth0 of ctr-b (network lan): missing"),
        "{text}"
    );
    assert!(!text.contains("ctr-gone"), "{text}");
    let said = lan.netattach_ok(&["repair", "--dry-run"]);
    assert!(!said.contains("repaired"), "{said}");

    let said = lan.netattach_ok(&["repair"]);
    assert!(said.contains("repaired eth0 of ctr-a"), "{said}");
    assert!(said.contains("repaired eth0 of ctr-b"), "{said}");
    for (ns, before) in [(&a, before_a), (&b, before_b)] {
        let after = (
            common::addrs(&ns.name, "eth0"),
            common::link_json(&ns.name, "eth0")["address"].clone(),
        );
        assert_eq!(after, before, "{}", ns.name);
        assert!(common::ping_from(&ns.name, GW4), "{} -> gateway", ns.name);
        assert!(
            common::ping_from(&ns.name, GW6),
            "{} -> gateway v6",
            ns.name
        );
        assert_eq!(
            common::default_gateway(&ns.name, false).as_deref(),
            Some(GW4)
        );
        // One owner on the wire: its IPv4 address answers ARP from the
        // gateway's netns with this link's MAC only.
        let v4 = after.0.iter().find(|a| a.contains('.')).unwrap();
        let v4 = v4.split('/').next().unwrap();
        let mac = after.1.as_str().unwrap().to_string();
        assert_eq!(
            common::arp_answerers(&lan, v4),
            std::collections::BTreeSet::from([mac])
        );
    }
    assert_eq!(lan.netattach_ok(&["repair"]).trim(), "nothing to repair");
    lan.netattach_ok(&["doctor"]);
    // The ended container's lease is gc's, as always.
    assert!(lan.netattach_ok(&["gc"]).contains("of ctr-gone"));
}
