//! A namespace is recognised by inode *and* a second part the kernel never
//! reuses (its cookie, or before Linux 5.14 netattach's mark): a new
//! namespace that gets a gone one's inode number is not mistaken for it.
//! Alone in its test binary, because the inode reuse it waits for must not be
//! taken by namespaces that other tests create at the same time; run on the
//! host (cookies) and in the VM under Debian 11's 5.10 (marks, tests/vm.rs).

mod common;

use common::{assert_bare, FakeLan};
use serde_json::Value;

/// The inode number of a namespace (what `/proc/PID/ns/net` shows).
fn inode_of(ns: &common::Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&ns.path).unwrap().ino()
}

#[test]
fn a_new_namespace_with_a_gone_ones_inode_is_told_apart() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    // The identity this kernel allows: its cookie, or (before Linux 5.14)
    // netattach's mark in the alias of the namespace's lo.
    let report: Value = serde_json::from_str(&lan.netattach_ok(&["doctor", "--json"])).unwrap();
    let scheme = report["host"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "netns identity")
        .expect("doctor reports the netns identity")["state"]
        .as_str()
        .unwrap()
        .to_string();
    let marked = !scheme.starts_with("netns cookie");
    // SO_NETNS_COOKIE came with Linux 5.14.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    assert_eq!(
        marked,
        version < (5, 14),
        "{scheme} on Linux {}",
        release.trim()
    );
    let lo_alias = |ns: &common::Netns| common::link_json(&ns.name, "lo")["ifalias"].clone();

    let gone = lan.container_ns("gone");
    let inode = inode_of(&gone);
    lan.netattach_ok(&["attach", "--netns", gone.path_str(), "--id", "gone", "lan"]);
    let mark = lo_alias(&gone);
    assert_eq!(
        mark.as_str().is_some_and(|a| a.starts_with("netattach:")),
        marked,
        "lo alias {mark} under {scheme}"
    );
    drop(gone);

    // The kernel hands out the lowest free inode number, so a later
    // namespace gets the gone one's back once it is cleaned up (which is
    // asynchronous) and once the lower free numbers are taken: namespaces
    // that get a lower number are kept until then, filling those holes.
    // The kernel cleans up deleted namespaces in batches, behind every one
    // deleted before. Probing slowly keeps this loop from adding much to that
    // queue.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut fillers = Vec::new();
    let reused = loop {
        let ns = lan.container_ns(&format!("r{}", fillers.len()));
        let got = inode_of(&ns);
        if got == inode {
            break ns;
        }
        if got < inode {
            fillers.push(ns);
        } else {
            drop(ns);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(
            std::time::Instant::now() < until && fillers.len() < 512,
            "no new namespace got inode {inode} back within 300 s ({} lower ones taken)",
            fillers.len()
        );
    };
    drop(fillers);
    assert_eq!(
        lo_alias(&reused),
        Value::Null,
        "a new namespace has no mark"
    );
    lan.netattach_ok(&["attach", "--netns", reused.path_str(), "--id", "new", "lan"]);
    if marked {
        let new_mark = lo_alias(&reused);
        assert!(
            new_mark.is_string() && new_mark != mark,
            "{new_mark} after {mark}"
        );
    }

    // Same inode, different namespaces: gc frees the gone one's lease only.
    let out = lan.netattach_ok(&["gc"]);
    assert!(out.contains("of gone"), "{out}");
    assert!(lan.addresses_of("gone").is_empty());
    assert_eq!(lan.addresses_of("new").len(), 1);
    // And the live one is released (its interface first) when asked.
    lan.netattach_ok(&["detach", "--id", "new"]);
    assert!(lan.addresses_of("new").is_empty());
    assert_bare(&reused);
}
