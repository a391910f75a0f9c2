//! Pooled addressing under parallel container starts: many `netattach`
//! processes at once against one small pool. Zero duplicate addresses, the
//! exact exhaustion error, and every lease accounted for.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use common::FakeLan;

const WORKERS: usize = 16;
const ATTACHES_PER_WORKER: usize = 100;

/// Each worker owns one netns and attaches/detaches in a loop; while it holds
/// an address, no other worker may hold the same one.
#[test]
fn parallel_attaches_never_duplicate_an_address() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    // 31 usable addresses (.1-.31) for 16 workers that each hold at most one at a time.
    lan.create_network(
        "pool",
        &[
            "--subnet",
            "192.168.32.0/24",
            "--gateway",
            "192.168.32.254",
            "--ip-range",
            "192.168.32.0/27",
        ],
    );
    let held: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let seen: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let spaces: Vec<_> = (0..WORKERS)
        .map(|w| lan.container_ns(&format!("w{w}")))
        .collect();
    std::thread::scope(|scope| {
        for ns in &spaces {
            let (lan, held, seen) = (&lan, &held, &seen);
            scope.spawn(move || {
                let w = &ns.name;
                for i in 0..ATTACHES_PER_WORKER {
                    let owner = format!("{w}-{i}");
                    let out = lan.netattach(&[
                        "attach",
                        "--json",
                        "--netns",
                        ns.path_str(),
                        "--id",
                        &owner,
                        "pool",
                    ]);
                    assert!(out.status.success(), "{owner}: {}", common::text(&out));
                    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    let addr = json[0]["addresses"][0].as_str().unwrap().to_string();
                    // What the kernel has is what the store handed out.
                    assert_eq!(common::addrs(&ns.name, "eth0"), vec![addr.clone()]);
                    if let Some(other) = held.lock().unwrap().insert(addr.clone(), owner.clone()) {
                        panic!("{addr} handed to {owner} while {other} holds it");
                    }
                    seen.lock().unwrap().insert(addr.clone());
                    held.lock().unwrap().remove(&addr);
                    lan.netattach_ok(&["detach", "--id", &owner, "--netns", ns.path_str()]);
                }
            });
        }
    });
    let leases = lan.leases_json();
    assert_eq!(
        leases.as_array().unwrap().len(),
        0,
        "every lease released: {leases}"
    );
    // Round-robin spreads the work over the whole range.
    assert_eq!(seen.lock().unwrap().len(), 31, "{:?}", seen.lock().unwrap());
}

/// 16 workers × 100 attaches against a pool of 14: exactly 14 succeed, every
/// other one fails with the exhaustion message and leaves nothing behind.
#[test]
fn parallel_attaches_exhaust_a_pool_exactly() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    // 192.168.32.240/28 minus .240 (network)... the range keeps its first
    // address; .254 is the gateway and .255 the broadcast: 14 left.
    lan.create_network(
        "tiny",
        &[
            "--subnet",
            "192.168.32.0/24",
            "--gateway",
            "192.168.32.254",
            "--ip-range",
            "192.168.32.240/28",
        ],
    );
    let won: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
    let refused = Mutex::new(0usize);
    // The netns live until the end (their links are part of the accounting).
    let spaces: Vec<_> = (0..WORKERS)
        .map(|w| lan.container_ns(&format!("x{w}")))
        .collect();
    std::thread::scope(|scope| {
        for (w, ns) in spaces.iter().enumerate() {
            let (lan, won, refused) = (&lan, &won, &refused);
            scope.spawn(move || {
                for i in 0..ATTACHES_PER_WORKER {
                    let owner = format!("x{w}-{i}");
                    let ifname = format!("e{i}");
                    let out = lan.netattach(&[
                        "attach",
                        "--json",
                        "--netns",
                        ns.path_str(),
                        "--id",
                        &owner,
                        &format!("tiny@{ifname}"),
                    ]);
                    if out.status.success() {
                        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                        let addr = json[0]["addresses"][0].as_str().unwrap().to_string();
                        assert_eq!(common::addrs(&ns.name, &ifname), vec![addr.clone()]);
                        won.lock().unwrap().push((owner, ifname, addr));
                    } else {
                        let err = common::stderr(&out);
                        assert_eq!(
                            err.trim(),
                            "netattach: no free address in 192.168.32.240/28 of tiny",
                            "{owner}"
                        );
                        assert!(
                            common::link_json(&ns.name, &ifname).is_null(),
                            "{owner} left {ifname}"
                        );
                        *refused.lock().unwrap() += 1;
                    }
                }
            });
        }
    });
    let won = won.into_inner().unwrap();
    assert_eq!(won.len(), 14, "{won:?}");
    assert_eq!(
        refused.into_inner().unwrap(),
        WORKERS * ATTACHES_PER_WORKER - 14
    );
    let distinct: BTreeSet<&String> = won.iter().map(|(_, _, a)| a).collect();
    assert_eq!(distinct.len(), 14, "duplicates among {won:?}");
    // Every lease is one of the winners', and every winner has its lease.
    let leases = lan.leases_json();
    let mut leased: Vec<(String, String, String)> = leases
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["owner"].as_str().unwrap().to_string(),
                l["ifname"].as_str().unwrap().to_string(),
                format!("{}/{}", l["address"].as_str().unwrap(), l["prefix_len"]),
            )
        })
        .collect();
    leased.sort();
    let mut expected = won.clone();
    expected.sort();
    assert_eq!(leased, expected);
}
