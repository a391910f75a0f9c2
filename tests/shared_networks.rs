//! Root integration tests of shared networks on a real etcd
//! (docs/multi-host.md): several "hosts" on one machine, each with its own
//! network namespace, parent veth, config and state dirs and host id, all on
//! one layer-2 segment:
//!
//! ```text
//!  na<tag>h0: lan0 ----\
//!  na<tag>h1: lan0 -----+-- br0 192.168.35.254/22 (na<tag>l, the LAN and its gateway)
//!  na<tag>h2: lan0 ----/
//! ```
//!
//! Containers are namespaces the test makes; traffic goes only to them and
//! the gateway. Everything is removed on drop, also when a test fails.
//! `NETATTACH_MULTI_HOST_N` sets the attaches per host of the big test
//! (default 300).

mod common;
mod etcd_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Netns, TempDir};
use etcd_harness::Etcd;
use ipnet::Ipv4Net;
use serde_json::Value;

const SUBNET: &str = "192.168.32.0/22";
const GW: &str = "192.168.35.254";
/// etcd's address on the LAN's bridge; host i is 10.99.0.(i+1) on its parent.
const ETCD_IP: &str = "10.99.0.254";
/// Attaches at once on each host.
const PARALLEL: usize = 16;

/// One host: its netns (with the parent), its dirs, its containers.
struct Host {
    /// Dropped first: the containers' namespaces.
    containers: Mutex<Vec<Netns>>,
    id: String,
    ns: Netns,
    parent: String,
    _dir: TempDir,
    config_dir: PathBuf,
    state_dir: PathBuf,
    seq: AtomicUsize,
}

/// The LAN: a bridge with the gateway, and the hosts plugged into it.
struct Lan {
    hosts: Vec<Host>,
    ns: Netns,
    tag: String,
}

/// One container attached on one host.
#[derive(Debug, Clone)]
struct Attached {
    id: String,
    ns: String,
    address: String,
    mac: String,
}

impl Lan {
    /// A LAN with one host per parent name.
    fn new(parents: &[&str]) -> Lan {
        let tag = common::unique_tag();
        let ns = Netns::new(&format!("na{tag}l"));
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("{GW}/22"), "dev", "br0"]);
        ns.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        ns.ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, &parent) in parents.iter().enumerate() {
            let h = Netns::new(&format!("na{tag}h{i}"));
            let port = format!("p{i}");
            h.ip(&[
                "link", "add", parent, "type", "veth", "peer", "name", &port, "netns", &ns.name,
            ]);
            ns.ip(&["link", "set", &port, "master", "br0"]);
            ns.ip(&["link", "set", &port, "up"]);
            h.ip(&["link", "set", parent, "up"]);
            // How the host reaches etcd: an address of its own on the LAN.
            h.ip(&[
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                parent,
            ]);
            let dir = TempDir::new(&format!("netattach-mh-{tag}-{i}"));
            let config_dir = dir.path().join("config");
            let state_dir = dir.path().join("state");
            std::fs::create_dir_all(&config_dir).unwrap();
            hosts.push(Host {
                containers: Mutex::new(Vec::new()),
                id: format!("host{i}"),
                ns: h,
                parent: parent.to_string(),
                _dir: dir,
                config_dir,
                state_dir,
                seq: AtomicUsize::new(0),
            });
        }
        Lan { hosts, ns, tag }
    }

    /// Host 0 creates `name` on etcd with `extra` flags; the others join.
    fn share(&self, etcd: &Etcd, name: &str, extra: &[&str]) {
        let url = etcd.url();
        let h0 = &self.hosts[0];
        let parent = format!("parent={}", h0.parent);
        let mut args: Vec<&str> = vec![
            "network",
            "create",
            "--etcd",
            url.as_str(),
            "--host-id",
            h0.id.as_str(),
            "--subnet",
            SUBNET,
            "--gateway",
            GW,
            "-o",
            parent.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push(name);
        h0.ok(&args);
        for h in &self.hosts[1..] {
            h.join(&url, name);
        }
    }

    /// Every address answers ARP from the gateway's netns exactly once, with
    /// the MAC of the container that holds it.
    fn assert_unique_on_wire(&self, attached: &[Attached]) {
        let next = AtomicUsize::new(0);
        let wrong = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(a) = attached.get(i) else { break };
                    let answers = common::arp_answerers_from(&self.ns.name, "br0", 2, &a.address);
                    if answers != BTreeSet::from([a.mac.clone()]) {
                        wrong.lock().unwrap().push(format!(
                            "{} of {}: answered by {answers:?}, expected {}",
                            a.address, a.id, a.mac
                        ));
                    }
                });
            }
        });
        let wrong = wrong.into_inner().unwrap();
        assert!(wrong.is_empty(), "ARP answers: {wrong:#?}");
    }
}

impl Host {
    fn netattach(&self, args: &[&str]) -> Output {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path_str()))
            .arg(common::bin())
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run netattach")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.netattach(args);
        assert!(
            out.status.success(),
            "{}: netattach {}: {}",
            self.id,
            args.join(" "),
            common::text(&out)
        );
        common::stdout(&out)
    }

    fn join(&self, url: &str, name: &str) {
        let parent = format!("parent={}", self.parent);
        self.ok(&[
            "network",
            "join",
            "--etcd",
            url,
            "--host-id",
            &self.id,
            "-o",
            &parent,
            name,
        ]);
    }

    /// One attach in a new container namespace: the address and MAC, or
    /// netattach's stderr.
    fn attach(&self, network: &str) -> Result<Attached, String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let ns = Netns::new(&format!("{}c{n}", self.ns.name));
        let id = format!("{}-c{n}", self.id);
        let out = self.netattach(&[
            "attach",
            "--json",
            "--netns",
            ns.path_str(),
            "--id",
            &id,
            network,
        ]);
        let name = ns.name.clone();
        self.containers.lock().unwrap().push(ns);
        if !out.status.success() {
            return Err(common::stderr(&out));
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("attach --json");
        let link = &v[0];
        Ok(Attached {
            id,
            ns: name,
            address: link["addresses"][0]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
            mac: link["mac"].as_str().unwrap().to_ascii_lowercase(),
        })
    }

    /// `n` attaches, [`PARALLEL`] at a time.
    fn attach_many(&self, network: &str, n: usize) -> Vec<Result<Attached, String>> {
        let next = AtomicUsize::new(0);
        let results = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(n) {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let r = self.attach(network);
                        results.lock().unwrap().push(r);
                    }
                });
            }
        });
        results.into_inner().unwrap()
    }

    /// The addresses `lease ls` shows on this host for `network`.
    fn leased(&self, network: &str) -> BTreeSet<String> {
        let out = self.ok(&["lease", "ls", "--json", network]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["address"].as_str().unwrap().to_string())
            .collect()
    }

    /// Drops the container namespaces (their links go with them), as a
    /// host that dies takes its containers with it.
    fn kill_containers(&self) {
        self.containers.lock().unwrap().clear();
    }
}

/// etcd's keys under `prefix`, read from the LAN's namespace.
fn etcd_range(lan: &Lan, etcd: &Etcd, prefix: &str) -> Vec<netattach::etcd::KeyValue> {
    let url = etcd.url();
    etcd_harness::in_netns(&lan.ns.name, || {
        let client = netattach::etcd::Client::new(&[url], Default::default()).unwrap();
        client.get_prefix(prefix.as_bytes()).unwrap().kvs
    })
}

/// etcd's blocks of `network`: block -> owning host.
fn etcd_blocks(lan: &Lan, etcd: &Etcd, network: &str) -> BTreeMap<Ipv4Net, String> {
    let prefix = format!("/netattach/v1/networks/{network}/blocks/");
    etcd_range(lan, etcd, &prefix)
        .into_iter()
        .map(|kv| {
            let name = String::from_utf8(kv.key[prefix.len()..].to_vec()).unwrap();
            let block = name.replace('-', "/").parse().unwrap();
            let v: Value = serde_json::from_slice(&kv.value).unwrap();
            (block, v["host"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Every lease of the host lies in a block etcd gives to that host.
fn assert_leases_in_own_blocks(lan: &Lan, etcd: &Etcd, network: &str, host: &Host) {
    let blocks = etcd_blocks(lan, etcd, network);
    for a in host.leased(network) {
        let ip: Ipv4Addr = a.parse().unwrap();
        let owner = blocks.iter().find(|(b, _)| b.contains(&ip)).map(|(_, h)| h);
        assert_eq!(
            owner,
            Some(&host.id),
            "{a} leased on {} lies in a block of {owner:?} (etcd: {blocks:?})",
            host.id
        );
    }
}

/// The LAN with one host per parent, and etcd on it; `None` (after
/// `SKIP:`) without root, arping or etcd.
fn setup(parents: &[&str]) -> Option<(Lan, Etcd)> {
    if common::skip_unless_root()
        || common::skip_unless(
            common::have("arping"),
            "arping (iputils-arping) is not installed",
        )
        || common::skip_unless(
            etcd_harness::etcd_binary().is_some(),
            "needs etcd 3.4 (apt-get install etcd-server)",
        )
    {
        return None;
    }
    let lan = Lan::new(parents);
    let etcd = Etcd::start_in_netns_or_skip(&lan.ns.name, ETCD_IP)?;
    Some((lan, etcd))
}

/// The LAN with one host per parent and etcd, and `network` shared by the
/// first host (the others joined) on 192.168.33.0/27 in blocks of 8.
fn small_shared(parents: &[&str], network: &str) -> Option<(Lan, Etcd)> {
    let (lan, etcd) = setup(parents)?;
    lan.share(
        &etcd,
        network,
        &["--ip-range", "192.168.33.0/27", "--block-prefix", "29"],
    );
    Some((lan, etcd))
}

/// The attached containers, once every attach succeeded.
fn all_attached(results: Vec<Result<Attached, String>>) -> Vec<Attached> {
    let (ok, failed) = split(results);
    assert!(failed.is_empty(), "{failed:?}");
    ok
}

fn split(results: Vec<Result<Attached, String>>) -> (Vec<Attached>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(a) => ok.push(a),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}

fn assert_distinct(attached: &[Attached]) {
    let set: BTreeSet<&str> = attached.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(set.len(), attached.len(), "an address was handed out twice");
}

#[test]
fn three_hosts_hand_out_unique_addresses() {
    let Some((lan, etcd)) = setup(&["lan0", "lan0", "lan0"]) else {
        return;
    };
    let n: usize = std::env::var("NETATTACH_MULTI_HOST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // A /22 is 16 blocks of 64: 300 per host fits in 5 blocks each.
    assert!(
        n <= 300,
        "NETATTACH_MULTI_HOST_N above 300 does not fit the /22"
    );
    lan.share(&etcd, "shared", &[]);
    let started = Instant::now();
    let results: Vec<Vec<Result<Attached, String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = lan
            .hosts
            .iter()
            .map(|h| s.spawn(|| h.attach_many("shared", n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "{} attaches on 3 hosts ({PARALLEL} at once each) in {:?}",
        3 * n,
        started.elapsed()
    );
    let mut all = Vec::new();
    for (h, r) in lan.hosts.iter().zip(results) {
        let (ok, failed) = split(r);
        assert!(
            failed.is_empty(),
            "{}: {} failed: {:?}",
            h.id,
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert_eq!(ok.len(), n);
        let leased = h.leased("shared");
        let attached: BTreeSet<String> = ok.iter().map(|a| a.address.clone()).collect();
        assert_eq!(
            leased, attached,
            "{}: lease ls differs from what was attached",
            h.id
        );
        assert_leases_in_own_blocks(&lan, &etcd, "shared", h);
        all.extend(ok);
    }
    assert_distinct(&all);
    let started = Instant::now();
    lan.assert_unique_on_wire(&all);
    eprintln!(
        "{} addresses checked with ARP in {:?}",
        all.len(),
        started.elapsed()
    );
    // host ls agrees: three hosts, alive, their blocks.
    let ls = lan.hosts[0].ok(&["host", "ls", "--json"]);
    let v: Value = serde_json::from_str(&ls).unwrap();
    let hosts = v[0]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{ls}");
    assert!(hosts.iter().all(|h| h["alive"] == true), "{ls}");
    let blocks: usize = hosts
        .iter()
        .map(|h| h["blocks"].as_array().unwrap().len())
        .sum();
    assert_eq!(blocks, etcd_blocks(&lan, &etcd, "shared").len());
    drop(lan);
}

#[test]
fn demand_beyond_the_range_fails_with_no_free_address() {
    let Some((lan, etcd)) = setup(&["lan0", "lan0", "lan0"]) else {
        return;
    };
    // 32 addresses in 4 blocks of 8; 48 attaches ask for them.
    lan.share(
        &etcd,
        "small",
        &["--ip-range", "192.168.33.0/27", "--block-prefix", "29"],
    );
    let results: Vec<Vec<Result<Attached, String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = lan
            .hosts
            .iter()
            .map(|h| s.spawn(|| h.attach_many("small", 16)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Vec::new();
    let mut failures = Vec::new();
    for (h, r) in lan.hosts.iter().zip(results) {
        let (ok, failed) = split(r);
        assert_eq!(h.leased("small").len(), ok.len());
        assert_leases_in_own_blocks(&lan, &etcd, "small", h);
        all.extend(ok);
        failures.extend(failed);
    }
    assert_eq!(all.len(), 32, "failures: {failures:?}");
    assert_eq!(failures.len(), 16);
    for f in &failures {
        assert!(
            f.contains("no free address in 192.168.33.0/27 of small"),
            "{f}"
        );
        assert_eq!(f.trim().lines().count(), 1, "{f}");
    }
    assert_distinct(&all);
    for a in &all {
        let ip: Ipv4Addr = a.address.parse().unwrap();
        assert!("192.168.33.0/27".parse::<Ipv4Net>().unwrap().contains(&ip));
    }
    lan.assert_unique_on_wire(&all);
}

#[test]
fn etcd_down_only_new_blocks_fail_and_claims_resume_when_it_is_back() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, mut etcd)) = small_shared(&["lan0", "lan0"], "wan") else {
        return;
    };
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(h0.attach("wan").expect("attach with etcd up"));
    }
    live.push(h1.attach("wan").expect("attach with etcd up"));
    etcd.kill();
    // Inside the blocks already claimed: attaches go on, 16 at once.
    let ok = all_attached(h0.attach_many("wan", 5));
    live.extend(ok);
    // A new block is needed: refused quickly, in one line that says why
    // and what this host has left.
    let started = Instant::now();
    let e = h0.attach("wan").expect_err("a new block without etcd");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("network wan needs a new block but etcd is unreachable"),
        "{e}"
    );
    assert!(
        e.contains("this host has 0 of 8 addresses free in its 1 blocks"),
        "{e}"
    );
    // Releases work locally, and free room for the next attach.
    let gone = live.remove(0);
    h0.ok(&["detach", "--id", &gone.id]);
    live.push(h0.attach("wan").expect("attach into the freed address"));
    // The other host still has room in its block.
    live.push(h1.attach("wan").expect("h1 inside its block"));
    etcd.restart();
    let more = h0.attach("wan").expect("a new block once etcd is back");
    let blocks = etcd_blocks(&lan, &etcd, "wan");
    assert_eq!(
        blocks.values().filter(|h| **h == h0.id).count(),
        2,
        "{blocks:?}"
    );
    live.push(more);
    for h in &lan.hosts {
        assert_leases_in_own_blocks(&lan, &etcd, "wan", h);
    }
    assert_distinct(&live);
    lan.assert_unique_on_wire(&live);
}

#[test]
fn a_forgotten_hosts_blocks_go_to_the_others() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, etcd)) = small_shared(&["lan0", "lan0", "lan0"], "pool") else {
        return;
    };
    let [h0, h1, h2] = [&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]];
    let gone = all_attached(h2.attach_many("pool", 16));
    let mut live = Vec::new();
    for h in [h0, h1] {
        let (ok, failed) = split(h.attach_many("pool", 8));
        assert!(failed.is_empty(), "{failed:?}");
        live.extend(ok);
    }
    let e = h0.attach("pool").expect_err("the range is full");
    assert!(
        e.contains("no free address in 192.168.33.0/27 of pool"),
        "{e}"
    );
    // Host 2 dies with its containers; its store still lists their leases.
    h2.kill_containers();
    assert_eq!(h2.leased("pool").len(), 16);
    // Its alive key is still there: forget is refused without --force.
    let out = h0.netattach(&["host", "forget", &h2.id]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(
        e.contains(&format!("host {} is alive", h2.id)) && e.contains("--force"),
        "{e}"
    );
    let said = h0.ok(&["host", "forget", "--force", &h2.id]);
    assert!(said.contains("2 block(s) freed"), "{said}");
    assert!(etcd_blocks(&lan, &etcd, "pool")
        .values()
        .all(|h| *h != h2.id));
    // Its blocks are the others' now: 16 more attaches fit.
    let freed: BTreeSet<String> = gone.iter().map(|a| a.address.clone()).collect();
    let mut reused = 0;
    for h in [h0, h1] {
        let (ok, failed) = split(h.attach_many("pool", 8));
        assert!(failed.is_empty(), "{failed:?}");
        reused += ok.iter().filter(|a| freed.contains(&a.address)).count();
        live.extend(ok);
        assert_leases_in_own_blocks(&lan, &etcd, "pool", h);
    }
    assert_eq!(reused, 16);
    // host ls no longer lists it.
    let ls = h0.ok(&["host", "ls", "pool"]);
    assert!(!ls.contains(&h2.id), "{ls}");
    assert_distinct(&live);
    lan.assert_unique_on_wire(&live);
}

#[test]
fn a_shared_network_attaches_on_another_host_with_its_own_parent() {
    let Some((lan, etcd)) = setup(&["lan0", "uplink"]) else {
        return;
    };
    let url = etcd.url();
    lan.share(&etcd, "corp", &[]);
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    // The definition in etcd has no parent and no endpoints.
    let kv = etcd_range(&lan, &etcd, "/netattach/v1/networks/corp/config")
        .pop()
        .expect("P/config");
    let config: Value = serde_json::from_slice(&kv.value).unwrap();
    assert!(config.get("parent").is_none(), "{config}");
    assert!(config["shared"].get("etcd").is_none(), "{config}");
    // Host 1's local definition: its own parent, the endpoints.
    let def: Value = serde_json::from_str(&h1.ok(&["network", "inspect", "corp"])).unwrap();
    assert_eq!(def[0]["parent"], "uplink");
    assert_eq!(def[0]["shared"]["etcd"][0], url.as_str());
    let a = h1.attach("corp").expect("attach on the joining host");
    assert!(
        common::ping_from(&a.ns, GW),
        "no ping from {} to the gateway",
        a.address
    );
    let b = h0.attach("corp").expect("attach on the creating host");
    assert!(
        common::ping_from(&b.ns, &a.address),
        "{} cannot reach {}",
        b.address,
        a.address
    );
    for h in &lan.hosts {
        assert_leases_in_own_blocks(&lan, &etcd, "corp", h);
    }
    // Joining again with the same store is a no-op.
    h1.join(&url, "corp");
    // Host 1 with a lost store (fresh dirs), same host id.
    let fresh = TempDir::new(&format!("netattach-mh-{}-fresh", lan.tag));
    let with_fresh_dirs = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", h1.ns.path_str()))
            .arg(common::bin())
            .arg("--config-dir")
            .arg(fresh.path().join("config"))
            .arg("--state-dir")
            .arg(fresh.path().join("state"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let parent = format!("parent={}", h1.parent);
    // Its old incarnation's blocks may hold live addresses: refused until forgotten.
    let out = with_fresh_dirs(&[
        "network",
        "join",
        "--etcd",
        &url,
        "--host-id",
        &h1.id,
        "-o",
        &parent,
        "corp",
    ]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(
        e.contains("already a member") && e.contains("host forget"),
        "{e}"
    );
    // The definition in etcd is written once.
    let out = with_fresh_dirs(&[
        "network",
        "create",
        "--etcd",
        &url,
        "--host-id",
        "newcomer",
        "--subnet",
        SUBNET,
        "--gateway",
        GW,
        "-o",
        &parent,
        "corp",
    ]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(e.contains("network corp is already defined in etcd"), "{e}");
    // join needs this host's parent.
    let out = with_fresh_dirs(&[
        "network",
        "join",
        "--etcd",
        &url,
        "--host-id",
        "newcomer",
        "corp",
    ]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(e.contains("-o parent=INTERFACE is required"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn etcd_killed_while_attaches_run() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, mut etcd)) = small_shared(&["lan0"], "mid") else {
        return;
    };
    let h0 = &lan.hosts[0];
    let first = h0.attach("mid").expect("attach with etcd up");
    // 24 attaches, 16 at once; etcd dies once 4 of them hold an address.
    let (results, killed_after) = std::thread::scope(|s| {
        let batch = s.spawn(|| h0.attach_many("mid", 24));
        let deadline = Instant::now() + Duration::from_secs(30);
        while h0.leased("mid").len() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        etcd.kill();
        let killed_after = h0.leased("mid").len();
        (batch.join().unwrap(), killed_after)
    });
    let (ok, failed) = split(results);
    assert_eq!(ok.len() + failed.len(), 24);
    // What was claimed when etcd died is used up: at least the first block.
    assert!(ok.len() + 1 >= 8, "only {} attached", ok.len());
    assert!(ok.len() + 1 >= killed_after);
    // Every failure came once the host's blocks were full, in one line.
    assert!(
        !failed.is_empty(),
        "24 fitted in blocks claimed before the kill"
    );
    for e in &failed {
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains("network mid"), "{e}");
        assert!(e.contains("etcd"), "{e}");
        if e.contains("needs a new block") {
            assert!(e.contains("this host has 0 of"), "{e}");
        }
    }
    etcd.restart();
    let again = h0.attach("mid").expect("a claim once etcd is back");
    let mut live = ok;
    live.push(first);
    live.push(again);
    assert_leases_in_own_blocks(&lan, &etcd, "mid", h0);
    assert_distinct(&live);
    lan.assert_unique_on_wire(&live);
}

/// The blocks etcd gives `host` in `network`.
fn blocks_of(lan: &Lan, etcd: &Etcd, network: &str, host: &Host) -> BTreeSet<Ipv4Net> {
    etcd_blocks(lan, etcd, network)
        .into_iter()
        .filter(|(_, h)| *h == host.id)
        .map(|(b, _)| b)
        .collect()
}

#[test]
fn emptied_blocks_go_back_and_a_host_that_leaves_frees_everything() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, etcd)) = small_shared(&["lan0", "lan0"], "ret") else {
        return;
    };
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let first = all_attached(h0.attach_many("ret", 20));
    assert_eq!(blocks_of(&lan, &etcd, "ret", h0).len(), 3);
    // Every container stops: the emptied blocks go back at once, but one,
    // kept for the next attach.
    for a in &first {
        h0.ok(&["detach", "--id", &a.id]);
    }
    assert!(h0.leased("ret").is_empty());
    assert_eq!(blocks_of(&lan, &etcd, "ret", h0).len(), 1);
    // The other host can use all the rest.
    let mut live = all_attached(h1.attach_many("ret", 24));
    assert_eq!(blocks_of(&lan, &etcd, "ret", h1).len(), 3);
    let e = h1.attach("ret").expect_err("h0 still holds a block");
    assert!(e.contains("no free address"), "{e}");
    // h0 leaves: its block, host and alive keys go.
    h0.ok(&["network", "rm", "ret"]);
    assert!(blocks_of(&lan, &etcd, "ret", h0).is_empty());
    let ls = h1.ok(&["host", "ls", "ret"]);
    assert!(!ls.contains(&h0.id), "{ls}");
    let more = all_attached(h1.attach_many("ret", 8));
    live.extend(more);
    assert_eq!(live.len(), 32);
    assert_leases_in_own_blocks(&lan, &etcd, "ret", h1);
    assert_distinct(&live);
    lan.assert_unique_on_wire(&live);
    // It can join again as a new member.
    h0.join(&etcd.url(), "ret");
    let ls = h1.ok(&["host", "ls", "ret"]);
    assert!(ls.contains(&h0.id), "{ls}");
}

#[test]
fn blocks_etcd_missed_are_set_right_by_gc() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, mut etcd)) = small_shared(&["lan0"], "late") else {
        return;
    };
    let h0 = &lan.hosts[0];
    let live = all_attached(h0.attach_many("late", 9));
    let before = blocks_of(&lan, &etcd, "late", h0);
    assert_eq!(before.len(), 2);
    // The one container alone in its block stops while etcd is down: the
    // release works, and the block waits to go back.
    let alone = live
        .iter()
        .find(|a| {
            let ip: Ipv4Addr = a.address.parse().unwrap();
            let block = before.iter().find(|b| b.contains(&ip)).unwrap();
            live.iter()
                .filter(|o| block.contains(&o.address.parse::<Ipv4Addr>().unwrap()))
                .count()
                == 1
        })
        .expect("a container alone in its block");
    // One of the full block's containers stops first, so that the other
    // block is not the only room left (that one would be kept).
    let other = live
        .iter()
        .find(|a| a.id != alone.id)
        .expect("a container of the full block");
    h0.ok(&["detach", "--id", &other.id]);
    etcd.kill();
    let started = Instant::now();
    h0.ok(&["detach", "--id", &alone.id]);
    assert!(started.elapsed() < Duration::from_secs(2));
    etcd.restart();
    assert_eq!(blocks_of(&lan, &etcd, "late", h0), before);
    let out = h0.netattach(&["gc"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::stderr(&out).contains("1 empty block(s) returned to etcd"),
        "{}",
        common::text(&out)
    );
    assert_eq!(blocks_of(&lan, &etcd, "late", h0).len(), 1);
    // A claim whose answer was lost leaves a block that is the host's in
    // etcd only (made here by writing that key as the claim does); gc
    // takes it up, and the host allocates in it.
    let prefix = "/netattach/v1/networks/late/";
    let host_key = format!("{prefix}hosts/{}", h0.id);
    let epoch = etcd_range(&lan, &etcd, &host_key)[0].create_revision;
    let taken: BTreeSet<Ipv4Net> = etcd_blocks(&lan, &etcd, "late").into_keys().collect();
    let free = [
        "192.168.33.0/29",
        "192.168.33.8/29",
        "192.168.33.16/29",
        "192.168.33.24/29",
    ]
    .iter()
    .map(|b| b.parse::<Ipv4Net>().unwrap())
    .find(|b| !taken.contains(b))
    .unwrap();
    let url = etcd.url();
    let key = format!("{prefix}blocks/{}-29", free.network());
    let value = serde_json::json!({"host": h0.id, "epoch": epoch, "mode": "private"}).to_string();
    etcd_harness::in_netns(&lan.ns.name, || {
        let client = netattach::etcd::Client::new(&[url], Default::default()).unwrap();
        client.put(key.as_bytes(), value.as_bytes(), 0).unwrap();
    });
    let out = h0.netattach(&["gc"]);
    assert!(
        common::stderr(&out).contains(&format!("block {free} is this host's in etcd")),
        "{}",
        common::text(&out)
    );
    let ls = h0.ok(&["host", "ls", "--json", "late"]);
    assert!(ls.contains(&format!("{}-29", free.network())), "{ls}");
    // 7 live in the kept block, 1 free there and 8 in the taken-up one.
    let more = all_attached(h0.attach_many("late", 9));
    assert_eq!(blocks_of(&lan, &etcd, "late", h0).len(), 2);
    let mut all: Vec<Attached> = live
        .iter()
        .filter(|a| a.id != alone.id && a.id != other.id)
        .cloned()
        .collect();
    all.extend(more);
    assert_leases_in_own_blocks(&lan, &etcd, "late", h0);
    assert_distinct(&all);
    lan.assert_unique_on_wire(&all);
}

#[test]
fn network_rm_without_etcd_needs_force() {
    let Some((lan, mut etcd)) = setup(&["lan0", "lan0"]) else {
        return;
    };
    lan.share(&etcd, "gone", &["--ip-range", "192.168.33.0/27"]);
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let a = h1.attach("gone").expect("attach");
    // Attached: refused, etcd or not.
    let out = h1.netattach(&["network", "rm", "--force", "gone"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("still has 1 attachment"));
    h1.ok(&["detach", "--id", &a.id]);
    etcd.kill();
    let out = h1.netattach(&["network", "rm", "gone"]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(
        e.contains("could not leave it in etcd") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // The definition is still there.
    h1.ok(&["network", "inspect", "gone"]);
    let out = h1.netattach(&["network", "rm", "--force", "gone"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::stderr(&out).contains("host forget"));
    assert!(!h1
        .netattach(&["network", "inspect", "gone"])
        .status
        .success());
    // Its block stays claimed until another host forgets it.
    etcd.restart();
    assert_eq!(blocks_of(&lan, &etcd, "gone", h1).len(), 1);
    let said = h0.ok(&["host", "forget", "--force", &h1.id]);
    assert!(said.contains("1 block(s) freed"), "{said}");
}

/// etcd's blocks of `network`: block -> (owning host, mode).
fn etcd_block_modes(lan: &Lan, etcd: &Etcd, network: &str) -> BTreeMap<Ipv4Net, (String, String)> {
    let prefix = format!("/netattach/v1/networks/{network}/blocks/");
    etcd_range(lan, etcd, &prefix)
        .into_iter()
        .map(|kv| {
            let name = String::from_utf8(kv.key[prefix.len()..].to_vec()).unwrap();
            let v: Value = serde_json::from_slice(&kv.value).unwrap();
            (
                name.replace('-', "/").parse().unwrap(),
                (
                    v["host"].as_str().unwrap_or("").to_string(),
                    v["mode"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// etcd's address keys of `network`: address -> holding host.
fn etcd_address_keys(lan: &Lan, etcd: &Etcd, network: &str) -> BTreeMap<String, String> {
    let prefix = format!("/netattach/v1/networks/{network}/addrs/");
    etcd_range(lan, etcd, &prefix)
        .into_iter()
        .map(|kv| {
            let rest = String::from_utf8(kv.key[prefix.len()..].to_vec()).unwrap();
            let v: Value = serde_json::from_slice(&kv.value).unwrap();
            (
                rest.split('/').nth(1).unwrap().to_string(),
                v["host"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every lease of the host lies in a private block of that host in etcd,
/// or is held through an address key of that host.
fn assert_leases_accounted(lan: &Lan, etcd: &Etcd, network: &str, host: &Host) {
    let blocks = etcd_block_modes(lan, etcd, network);
    let keys = etcd_address_keys(lan, etcd, network);
    for a in host.leased(network) {
        let ip: Ipv4Addr = a.parse().unwrap();
        let (owner, mode) = blocks
            .iter()
            .find(|(b, _)| b.contains(&ip))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let private_here = owner == host.id && mode == "private";
        let keyed_here = keys.get(&a) == Some(&host.id);
        assert!(
            private_here || keyed_here,
            "{a} leased on {}: block of {owner:?} ({mode}), key of {:?}",
            host.id,
            keys.get(&a)
        );
    }
}

/// Detaches `host`'s containers so that each of its blocks keeps `keep[i]`
/// of them (blocks by decreasing count); returns those left.
fn thin_out(
    lan: &Lan,
    etcd: &Etcd,
    network: &str,
    host: &Host,
    live: Vec<Attached>,
    keep: &[usize],
) -> Vec<Attached> {
    let blocks = blocks_of(lan, etcd, network, host);
    let mut by_block: Vec<Vec<Attached>> = blocks
        .iter()
        .map(|b| {
            live.iter()
                .filter(|a| b.contains(&a.address.parse::<Ipv4Addr>().unwrap()))
                .cloned()
                .collect()
        })
        .collect();
    by_block.sort_by_key(|v| std::cmp::Reverse(v.len()));
    assert_eq!(by_block.len(), keep.len(), "{blocks:?}");
    let mut left = Vec::new();
    for (group, &k) in by_block.into_iter().zip(keep) {
        for (i, a) in group.into_iter().enumerate() {
            if i < k {
                left.push(a);
            } else {
                host.ok(&["detach", "--id", &a.id]);
            }
        }
    }
    left
}

#[test]
fn a_host_without_room_borrows_what_others_lend_and_they_take_it_back() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, etcd)) = small_shared(&["lan0", "lan0"], "lend") else {
        return;
    };
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let first = all_attached(h0.attach_many("lend", 17));
    // h0's three blocks keep 6, 2 and 1 containers: 13 addresses free there.
    let mut live0 = thin_out(&lan, &etcd, "lend", h0, first, &[6, 2, 1]);
    let mut live1 = all_attached(h1.attach_many("lend", 8));
    // h1's block is full and no block is free: nothing to borrow yet.
    let e = h1.attach("lend").expect_err("nothing lent yet");
    assert!(
        e.contains("no free address in 192.168.33.0/27 of lend"),
        "{e}"
    );
    // h0's upkeep sees that h1 wants addresses: it lends its two emptiest
    // blocks and keeps the fullest for itself.
    let out = h0.netattach(&["gc"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::stderr(&out).contains("lent to the other hosts"),
        "{}",
        common::text(&out)
    );
    let modes = etcd_block_modes(&lan, &etcd, "lend");
    let lent: Vec<Ipv4Net> = modes
        .iter()
        .filter(|(_, (h, m))| *h == h0.id && m == "shared")
        .map(|(b, _)| *b)
        .collect();
    assert_eq!(lent.len(), 2, "{modes:?}");
    // Its containers there are published as address keys.
    assert_eq!(etcd_address_keys(&lan, &etcd, "lend").len(), 3);
    // h1 borrows 10 of the 13 free addresses there, 16 attaches at once.
    let borrowed = all_attached(h1.attach_many("lend", 10));
    for a in &borrowed {
        let ip: Ipv4Addr = a.address.parse().unwrap();
        assert!(
            lent.iter().any(|b| b.contains(&ip)),
            "{} not lent",
            a.address
        );
    }
    let ls = h0.ok(&["host", "ls", "--json", "lend"]);
    let v: Value = serde_json::from_str(&ls).unwrap();
    let h1_row = v[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == h1.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(h1_row["borrowed"], 10, "{ls}");
    live1.extend(borrowed.iter().cloned());
    // h0 fills its own block, then allocates in its lent blocks through keys.
    let more = all_attached(h0.attach_many("lend", 5));
    live0.extend(more);
    let e = h0.attach("lend").expect_err("the range is full");
    assert!(e.contains("no free address"), "{e}");
    for h in [h0, h1] {
        assert_leases_accounted(&lan, &etcd, "lend", h);
    }
    let mut all: Vec<Attached> = live0.iter().chain(&live1).cloned().collect();
    assert_eq!(all.len(), 32);
    assert_distinct(&all);
    lan.assert_unique_on_wire(&all);
    // h1 gives its borrowed addresses back: their keys go at once.
    for a in &borrowed {
        h1.ok(&["detach", "--id", &a.id]);
    }
    let keys = etcd_address_keys(&lan, &etcd, "lend");
    assert!(keys.values().all(|h| *h == h0.id), "{keys:?}");
    // Nobody wants addresses now (h1's wish went with its borrow): h0
    // takes its blocks back, and its containers there become private leases.
    let out = h0.netattach(&["gc"]);
    assert!(
        common::stderr(&out).contains("taken back"),
        "{}",
        common::text(&out)
    );
    let modes = etcd_block_modes(&lan, &etcd, "lend");
    assert!(modes.values().all(|(_, m)| m == "private"), "{modes:?}");
    assert!(etcd_address_keys(&lan, &etcd, "lend").is_empty());
    assert_leases_accounted(&lan, &etcd, "lend", h0);
    // And allocates there locally again.
    live0.extend(h0.attach_many("lend", 2).into_iter().map(|r| r.unwrap()));
    assert_leases_accounted(&lan, &etcd, "lend", h0);
    all = live0
        .iter()
        .chain(&live1)
        .filter(|a| !borrowed.iter().any(|b| b.id == a.id))
        .cloned()
        .collect();
    assert_distinct(&all);
    lan.assert_unique_on_wire(&all);
}

#[test]
fn a_forgotten_lenders_blocks_stay_taken_while_borrowed() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, etcd)) = small_shared(&["lan0", "lan0"], "orph") else {
        return;
    };
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let first = all_attached(h0.attach_many("orph", 17));
    thin_out(&lan, &etcd, "orph", h0, first, &[6, 2, 1]);
    let live1 = all_attached(h1.attach_many("orph", 8));
    h1.attach("orph").expect_err("nothing lent yet");
    h0.ok(&["gc"]);
    let borrowed = all_attached(h1.attach_many("orph", 4));
    // The lent blocks h1 borrowed from (one or both: borrows start at a
    // random lent block).
    let modes = etcd_block_modes(&lan, &etcd, "orph");
    let holding: BTreeSet<Ipv4Net> = modes
        .iter()
        .filter(|(b, (_, m))| {
            m == "shared"
                && borrowed
                    .iter()
                    .any(|a| b.contains(&a.address.parse::<Ipv4Addr>().unwrap()))
        })
        .map(|(b, _)| *b)
        .collect();
    assert!(!holding.is_empty(), "{modes:?}");
    // h0 dies with its containers and is forgotten: its private block and
    // a lent block nobody borrowed from are free; a lent block with h1's
    // addresses keeps them and has no owner.
    h0.kill_containers();
    let said = h1.ok(&["host", "forget", "--force", &h0.id]);
    assert!(
        said.contains(&format!("{} block(s) freed", 3 - holding.len())),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{} shared block(s) left without owner",
            holding.len()
        )),
        "{said}"
    );
    let modes = etcd_block_modes(&lan, &etcd, "orph");
    let orphans: BTreeSet<Ipv4Net> = modes
        .iter()
        .filter(|(_, (h, _))| h.is_empty())
        .map(|(b, _)| *b)
        .collect();
    assert_eq!(orphans, holding, "{modes:?}");
    let keys = etcd_address_keys(&lan, &etcd, "orph");
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys.values().all(|h| *h == h1.id), "{keys:?}");
    // h1 claims the freed block and borrows the orphans' free addresses,
    // never one of the 4 it holds there.
    let more = all_attached(h1.attach_many("orph", 20));
    let mut all: Vec<Attached> = live1
        .iter()
        .chain(&borrowed)
        .chain(&more)
        .cloned()
        .collect();
    assert_eq!(all.len(), 32);
    assert_distinct(&all);
    assert_leases_accounted(&lan, &etcd, "orph", h1);
    lan.assert_unique_on_wire(&all);
    // Everything in the orphans released: they are free again at the next upkeep.
    for a in borrowed.iter().chain(&more) {
        let ip: Ipv4Addr = a.address.parse().unwrap();
        if orphans.iter().any(|b| b.contains(&ip)) {
            h1.ok(&["detach", "--id", &a.id]);
        }
    }
    let out = h1.netattach(&["gc"]);
    assert!(
        common::stderr(&out).contains("of a forgotten host freed"),
        "{}",
        common::text(&out)
    );
    let modes = etcd_block_modes(&lan, &etcd, "orph");
    assert!(modes.values().all(|(h, _)| *h == h1.id), "{modes:?}");
    all.retain(|a| {
        let ip: Ipv4Addr = a.address.parse().unwrap();
        !orphans.iter().any(|b| b.contains(&ip))
    });
    // The freed orphans are claimed and used like any block.
    let (again, failed) = split(h1.attach_many("orph", 8 * orphans.len()));
    assert!(failed.is_empty(), "{failed:?}");
    all.extend(again);
    assert_distinct(&all);
    assert_leases_accounted(&lan, &etcd, "orph", h1);
    lan.assert_unique_on_wire(&all);
}

#[test]
fn a_host_forgotten_while_running_joins_again_with_its_live_addresses() {
    // 32 addresses in 4 blocks of 8.
    let Some((lan, etcd)) = small_shared(&["lan0", "lan0"], "keep") else {
        return;
    };
    lan.share(
        &etcd,
        "lost",
        &["--ip-range", "192.168.34.0/27", "--block-prefix", "29"],
    );
    let (h0, h1) = (&lan.hosts[0], &lan.hosts[1]);
    let mut keep = all_attached(h0.attach_many("keep", 3));
    let lost = all_attached(h0.attach_many("lost", 3));
    // The operator wrongly forgets h0, whose containers still run.
    let said = h1.ok(&["host", "forget", "--force", &h0.id]);
    assert!(
        said.contains("network keep: host host0 forgotten"),
        "{said}"
    );
    // On "lost", h1 takes every block, h0's old one too: its three
    // addresses are now given out twice (what forgetting a live host does).
    let taken = all_attached(h1.attach_many("lost", 32));
    assert_eq!(taken.len(), 32);
    // A join again notices, joins with a new epoch and registers what is
    // still live: "keep"'s block is free, so it is claimed back.
    let out = h0.netattach(&[
        "network",
        "join",
        "--etcd",
        &etcd.url(),
        "--host-id",
        &h0.id,
        "-o",
        "parent=lan0",
        "keep",
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let e = common::stderr(&out);
    assert!(
        e.contains("this host was forgotten; it joined again"),
        "{e}"
    );
    assert!(e.contains("claimed again with its 3 live lease(s)"), "{e}");
    assert_leases_accounted(&lan, &etcd, "keep", h0);
    keep.extend(h0.attach_many("keep", 2).into_iter().map(|r| r.unwrap()));
    assert_leases_accounted(&lan, &etcd, "keep", h0);
    assert_distinct(&keep);
    lan.assert_unique_on_wire(&keep);
    // On "lost", each live address is reported, by address and container.
    let out = h0.netattach(&[
        "network",
        "join",
        "--etcd",
        &etcd.url(),
        "--host-id",
        &h0.id,
        "-o",
        "parent=lan0",
        "lost",
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let e = common::stderr(&out);
    for a in &lost {
        assert!(
            e.contains(&format!(
                "{} of {} lies in block 192.168.34.",
                a.address, a.id
            )) && e.contains("which host host1 now holds: restart that container"),
            "{e}"
        );
    }
    // A join when nothing changed says nothing.
    let out = h0.netattach(&[
        "network",
        "join",
        "--etcd",
        &etcd.url(),
        "--host-id",
        &h0.id,
        "-o",
        "parent=lan0",
        "keep",
    ]);
    assert!(
        out.status.success() && common::stderr(&out).is_empty(),
        "{}",
        common::text(&out)
    );
}
