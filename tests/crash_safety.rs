//! Crash safety: attaches killed with SIGKILL at random points (before and
//! after the lease commit, after the link is made). Afterwards the runtime's
//! own reaction (a dead container's netns goes away; a retried one is attached
//! again) plus `gc` must leave the store consistent with the kernel: no lease
//! without a live owner, no live interface without its lease.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{FakeLan, Netns, Rng};

const ROUNDS: usize = 60;

fn attach_args<'a>(lan: &'a FakeLan, ns: &'a Netns, owner: &'a str) -> Vec<&'a str> {
    vec![
        "--config-dir",
        lan.config_dir_str(),
        "--state-dir",
        lan.state_dir_str(),
        "attach",
        "--netns",
        ns.path_str(),
        "--id",
        owner,
        "pool",
    ]
}

#[test]
fn killed_attaches_leave_nothing_gc_cannot_mend() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network(
        "pool",
        &[
            "--subnet",
            "192.168.32.0/24",
            "--gateway",
            "192.168.32.254",
            "--subnet",
            "2001:db8:32::/64",
            "--gateway",
            "2001:db8:32::fe",
        ],
    );

    // How long one attach takes here (warm: the first one creates the store),
    // so the kills land all along its way.
    let mut times = Vec::new();
    for i in 0..4 {
        let probe = lan.container_ns(&format!("probe{i}"));
        let start = Instant::now();
        lan.netattach_ok(&[
            "attach",
            "--netns",
            probe.path_str(),
            "--id",
            "probe",
            "pool",
        ]);
        times.push(start.elapsed().as_micros() as u64);
        lan.netattach_ok(&["detach", "--id", "probe"]);
    }
    times.sort();
    let span = times[2] * 3 / 2;
    let mut rng = Rng::from_clock();
    eprintln!("seed {}, kill window {span} us", rng.0);
    let mut survivors = Vec::new();
    let mut killed = 0;
    for round in 0..ROUNDS {
        let owner = format!("k{round}");
        let ns = lan.container_ns(&owner);
        let mut child = lan
            .command_in_host(common::bin())
            .args(attach_args(&lan, &ns, &owner))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // The runtime's reaction: a failed start deletes the container (and its
        // netns); a retried one runs the hook again.
        if rng.below(2) == 0 {
            drop(ns);
        } else {
            lan.netattach_ok(&attach_args(&lan, &ns, &owner)[4..]);
            survivors.push((owner, ns));
        }
    }
    eprintln!(
        "{killed} of {ROUNDS} attaches were killed mid-way; {} retried",
        survivors.len()
    );
    assert!(
        killed > ROUNDS / 4,
        "the kills must land inside attaches ({killed})"
    );
    lan.netattach_ok(&["gc"]);

    // No lease without a live owner.
    let live: HashSet<&str> = survivors.iter().map(|(o, _)| o.as_str()).collect();
    let leases = lan.leases_json();
    let leases = leases.as_array().unwrap();
    for l in leases {
        assert!(
            live.contains(l["owner"].as_str().unwrap()),
            "lease of a dead owner: {l}"
        );
    }
    let mut addresses = HashSet::new();
    for l in leases {
        assert!(
            addresses.insert(l["address"].as_str().unwrap().to_string()),
            "duplicate {l}"
        );
    }
    // Each survivor: exactly its one complete interface, carrying its leases.
    for (owner, ns) in &survivors {
        let mut names = common::link_names(&ns.name);
        names.sort();
        assert_eq!(names, vec!["eth0", "lo"], "{owner}");
        let mut inside = common::addrs(&ns.name, "eth0");
        inside.sort();
        let mut leased: Vec<String> = leases
            .iter()
            .filter(|l| l["owner"] == owner.as_str())
            .map(|l| format!("{}/{}", l["address"].as_str().unwrap(), l["prefix_len"]))
            .collect();
        leased.sort();
        assert_eq!(leased.len(), 2, "{owner}: {leased:?}");
        assert_eq!(inside, leased, "{owner}");
    }
    assert_eq!(leases.len(), survivors.len() * 2);
}
