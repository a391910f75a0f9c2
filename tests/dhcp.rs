//! `ipam dhcp` against a real DHCP server: dnsmasq in the fake LAN's gateway
//! netns, serving the LAN's subnet with its shortest lease (2 minutes).
//! What is checked is what an operator would: the address and route in the
//! container, the gateway answering, dnsmasq's own lease file (granted,
//! renewed, released), its log (no new DISCOVER after a restart), and ARP.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::dnsmasq::{wait_for, Dnsmasq};
use common::*;

/// `netattach dhcp`, the hooks' resident client, in the host netns; stopped
/// (SIGKILL, as a crash would) on drop or by `stop`.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(lan: &FakeLan) -> Service {
        let log = lan
            .dir
            .path()
            .join(format!("dhcp-service-{}.log", unique_tag()));
        let child = lan
            .command_in_host(bin())
            .args(["--config-dir", lan.config_dir_str()])
            .args(["--state-dir", lan.state_dir_str(), "dhcp"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start netattach dhcp");
        let s = Service { child, log };
        wait_for(Duration::from_secs(5), "the dhcp service to listen", || {
            s.log_text().contains("listening on")
        });
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skip() -> bool {
    skip_unless_root() || skip_unless(have("dnsmasq"), "needs dnsmasq (dnsmasq-base)")
}

fn dhcp_lan() -> FakeLan {
    dhcp_lan_with(&[])
}

fn dhcp_lan_with(options: &[&str]) -> FakeLan {
    let lan = FakeLan::new();
    let mut args = vec!["network", "create", "-d", "macvlan", "-o", "parent=lan0"];
    args.extend(options);
    args.extend(["--ipam", "dhcp", "lan"]);
    lan.netattach_ok(&args);
    lan
}

fn mac_of(ns: &str, ifname: &str) -> String {
    link_json(ns, ifname)["address"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ipv4_of(ns: &str, ifname: &str) -> Vec<String> {
    addrs(ns, ifname)
        .into_iter()
        .filter(|a| !a.contains(':'))
        .collect()
}

fn dhcp_records(lan: &FakeLan) -> Vec<String> {
    std::fs::read_dir(lan.state_dir.join("dhcp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_container_gets_its_address_and_route_from_the_lan_and_its_stop_releases_it() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let _service = Service::start(&lan);
    let c = lan.container_ns("a");
    let out = hook(&lan, "attach", "ctr-a", &c, "lan");
    assert!(out.status.success(), "attach: {}", text(&out));

    let mac = mac_of(&c.name, "eth0");
    let (leased, _) = dnsmasq
        .lease_of(&mac)
        .expect("dnsmasq granted a lease to the link's MAC");
    assert_eq!(ipv4_of(&c.name, "eth0"), vec![format!("{leased}/24")]);
    assert!(
        leased.starts_with("192.168.32.1"),
        "from dnsmasq's range: {leased}"
    );
    assert_eq!(default_gateway(&c.name, false).as_deref(), Some(GW4));
    assert!(ping_from(&c.name, GW4), "the gateway answers");
    assert_eq!(
        lan.addresses_of("ctr-a"),
        vec![leased.clone()],
        "the lease store has it"
    );
    let listed = lan.netattach_ok(&["lease", "ls"]);
    assert!(
        listed.contains(&format!("{GW4}, 1m5")) || listed.contains(&format!("{GW4}, 2m00s")),
        "lease ls shows the server and the time left: {listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&lan.netattach_ok(&["lease", "ls", "--json"])).unwrap();
    assert_eq!(json[0]["dhcp"]["server"], GW4);
    assert_eq!(
        arp_answerers(&lan, &leased),
        BTreeSet::from([mac.clone()]),
        "one link answers for the address"
    );

    // The container stops: its netns goes first, as under runc.
    let path = c.path_str().to_string();
    drop(c);
    let out = spawn_hook(&lan, "release", "ctr-a", &path, "lan", None)
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "release: {}", text(&out));
    assert_eq!(
        dnsmasq.lease_of(&mac),
        None,
        "dnsmasq was told (DHCPRELEASE)"
    );
    assert!(lan.addresses_of("ctr-a").is_empty());
    assert!(dhcp_records(&lan).is_empty(), "{:?}", dhcp_records(&lan));
}

#[test]
fn a_reservation_by_mac_on_the_server_is_honoured() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &["--dhcp-host=02:42:c0:a8:20:4d,192.168.32.77"]);
    let _service = Service::start(&lan);
    let c = lan.container_ns("r");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "r",
        "--mac",
        "02:42:c0:a8:20:4d",
        "lan",
    ]);
    assert_eq!(
        ipv4_of(&c.name, "eth0"),
        vec!["192.168.32.77/24".to_string()]
    );
    assert_eq!(
        dnsmasq
            .lease_of("02:42:c0:a8:20:4d")
            .map(|l| l.0)
            .as_deref(),
        Some("192.168.32.77")
    );
    assert!(ping_from(&c.name, GW4));
    // Detached while the netns lives: the release goes from the link itself.
    lan.netattach_ok(&["detach", "--netns", c.path_str(), "--id", "r"]);
    assert_eq!(dnsmasq.lease_of("02:42:c0:a8:20:4d"), None);
    assert!(link_names(&c.name).iter().all(|n| n == "lo"));
}

#[test]
fn no_server_fails_within_the_deadline_with_one_line_and_leaves_nothing() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let _service = Service::start(&lan);
    let c = lan.container_ns("n");
    let started = Instant::now();
    let out = hook(&lan, "attach", "ctr-n", &c, "lan");
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("network lan: no DHCP offer after "), "{err}");
    // The hook has no timeout from the runtime: its 5 s, less the time spent
    // before the server was asked and 1 s kept to roll back.
    let waited: f64 = err
        .split("no DHCP offer after ")
        .nth(1)
        .and_then(|r| r.split(" s").next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((3.0..=4.0).contains(&waited), "{err}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(
        link_names(&c.name).iter().all(|n| n == "lo"),
        "{:?}",
        link_names(&c.name)
    );
    assert!(lan.leases_json().as_array().unwrap().is_empty());
    assert!(dhcp_records(&lan).is_empty());
}

#[test]
fn without_the_service_the_hook_says_so_and_leaves_nothing() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let _dnsmasq = Dnsmasq::start(&lan, &[]);
    let c = lan.container_ns("s");
    let out = hook(&lan, "attach", "ctr-s", &c, "lan");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("network lan uses DHCP but the netattach dhcp service is not running"),
        "{err}"
    );
    assert!(link_names(&c.name).iter().all(|n| n == "lo"));
    assert!(lan.leases_json().as_array().unwrap().is_empty());
    // doctor says what is missing, and is content once the service runs.
    let dhcp_check = || {
        let out = lan.netattach(&["doctor", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["host"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "DHCP client")
            .cloned()
            .unwrap()
    };
    let missing = dhcp_check();
    assert!(
        missing["problems"][0]
            .as_str()
            .unwrap()
            .contains("network(s) lan use DHCP: hooks fail until the netattach dhcp service runs"),
        "{missing}"
    );
    let _service = Service::start(&lan);
    assert_eq!(dhcp_check()["problems"], serde_json::json!([]));
}

#[test]
fn sixteen_containers_at_once_get_sixteen_distinct_leases() {
    if skip() {
        return;
    }
    let lan = dhcp_lan_with(&["-o", "dhcp_timeout=60"]);
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let _service = Service::start(&lan);
    let started = Instant::now();
    let namespaces: Vec<Netns> = (0..16)
        .map(|i| lan.container_ns(&format!("m{i}")))
        .collect();
    let hooks: Vec<_> = namespaces
        .iter()
        .enumerate()
        // dnsmasq pings each new address before offering it, one at a
        // time: the last of 16 waits its turn, which dhcp_timeout=60 and a
        // hook timeout of 90 s (podman's hooks.d `timeout`) allow.
        .map(|(i, ns)| {
            let id = format!("m{i}");
            spawn_hook(&lan, "attach", &id, ns.path_str(), "lan", Some(90))
        })
        .collect();
    for h in hooks {
        let out = h.wait_with_output().unwrap();
        assert!(out.status.success(), "attach: {}", text(&out));
    }
    let mut seen = BTreeSet::new();
    for ns in &namespaces {
        let mac = mac_of(&ns.name, "eth0");
        let (leased, _) = dnsmasq.lease_of(&mac).expect("a lease per MAC");
        assert_eq!(ipv4_of(&ns.name, "eth0"), vec![format!("{leased}/24")]);
        assert!(seen.insert(leased.clone()), "{leased} given twice");
    }
    assert_eq!(seen.len(), 16);
    eprintln!("16 at once took {:?}", started.elapsed());
    assert_eq!(dnsmasq.leases().len(), 16);
    for addr in seen.iter().take(4) {
        assert_eq!(arp_answerers(&lan, addr).len(), 1, "{addr}");
    }
}

/// The lease outlives the service: a restart takes it up, and at T1 (a
/// minute into dnsmasq's 2-minute lease) it is renewed by unicast REQUEST,
/// with no new DISCOVER, keeping the same address.
#[test]
fn a_lease_is_renewed_after_a_restart_of_the_service_without_a_new_discover() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let service = Service::start(&lan);
    let c = lan.container_ns("k");
    let out = hook(&lan, "attach", "ctr-k", &c, "lan");
    assert!(out.status.success(), "attach: {}", text(&out));
    let mac = mac_of(&c.name, "eth0");
    let (leased, first_expiry) = dnsmasq.lease_of(&mac).unwrap();
    let discovers = dnsmasq.count("DHCPDISCOVER", &mac);
    let requests = dnsmasq.count("DHCPREQUEST", &mac);
    assert!(discovers >= 1 && requests >= 1);

    let log = service.stop();
    assert!(log.contains(&format!("bound {leased}")), "{log}");
    let service = Service::start(&lan);
    assert!(
        service
            .log_text()
            .contains(&format!("took up the lease of {leased} on ctr-k")),
        "{}",
        service.log_text()
    );
    // T1 is 60 s after the bind; give it 20 s more.
    wait_for(
        Duration::from_secs(85),
        "the renewal in dnsmasq's lease file",
        || {
            dnsmasq
                .lease_of(&mac)
                .is_some_and(|(_, e)| e > first_expiry)
        },
    );
    assert_eq!(
        dnsmasq.lease_of(&mac).unwrap().0,
        leased,
        "the same address"
    );
    assert_eq!(
        dnsmasq.count("DHCPDISCOVER", &mac),
        discovers,
        "no new DISCOVER"
    );
    assert!(dnsmasq.count("DHCPREQUEST", &mac) > requests);
    assert!(
        service.log_text().contains(&format!("renewed {leased}")),
        "{}",
        service.log_text()
    );
    assert_eq!(ipv4_of(&c.name, "eth0"), vec![format!("{leased}/24")]);
    assert!(ping_from(&c.name, GW4));
}

/// The server takes the lease back (a NAK to the renewal: its range moved):
/// the address leaves the container's link at once, so that it is never on
/// the wire twice once the server hands it to someone else.
#[test]
fn a_lease_the_server_takes_back_leaves_the_link() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let service = Service::start(&lan);
    let c = lan.container_ns("l");
    let out = hook(&lan, "attach", "ctr-l", &c, "lan");
    assert!(out.status.success(), "attach: {}", text(&out));
    let mac = mac_of(&c.name, "eth0");
    let (leased, _) = dnsmasq.lease_of(&mac).unwrap();
    drop(dnsmasq);
    let moved = Dnsmasq::start_serving(
        &lan,
        "192.168.32.150,192.168.32.199",
        &["--dhcp-authoritative"],
    );
    let start = Instant::now();
    while !ipv4_of(&c.name, "eth0").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(85),
            "the address stayed on the link; the service: {}; dnsmasq: {}",
            service.log_text(),
            moved.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        service.log_text().contains(&format!(
            "lost the lease of {leased} on ctr-l; the address was removed"
        )),
        "{}",
        service.log_text()
    );
    assert!(
        arp_answerers(&lan, &leased).is_empty(),
        "nobody answers for {leased}"
    );
}

/// The client id is the owner's identity: a container re-created under the
/// same identity (after its predecessor died without a stop) gets the same
/// lease from the server, and the predecessor's clean-up (gc, a restart of
/// the service) does not release it from under it.
#[test]
fn a_recreated_container_gets_its_lease_back_and_keeps_it() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let service = Service::start(&lan);
    let first = lan.container_ns("i1");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        first.path_str(),
        "--id",
        "first",
        "--identity",
        "shop/web",
        "lan",
    ]);
    let leased = ipv4_of(&first.name, "eth0");
    drop(first);
    let again = lan.container_ns("i2");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        again.path_str(),
        "--id",
        "second",
        "--identity",
        "shop/web",
        "lan",
    ]);
    assert_eq!(ipv4_of(&again.name, "eth0"), leased, "the same lease");
    let mac = mac_of(&again.name, "eth0");
    lan.netattach_ok(&["gc"]);
    drop(service.stop());
    let service = Service::start(&lan);
    assert!(
        service.log_text().contains("not releasing"),
        "{}",
        service.log_text()
    );
    let address = leased[0].trim_end_matches("/24");
    assert_eq!(
        dnsmasq.lease_of(&mac).map(|l| l.0).as_deref(),
        Some(address)
    );
    assert!(ping_from(&again.name, GW4));
    assert_eq!(lan.addresses_of("second"), vec![address.to_string()]);
    assert!(lan.addresses_of("first").is_empty());
}

/// `gc` frees a dead owner's DHCP lease at the server too.
#[test]
fn gc_releases_the_lease_of_a_container_that_died_without_a_stop() {
    if skip() {
        return;
    }
    let lan = dhcp_lan();
    let dnsmasq = Dnsmasq::start(&lan, &[]);
    let _service = Service::start(&lan);
    let c = lan.container_ns("g");
    let out = hook(&lan, "attach", "ctr-g", &c, "lan");
    assert!(out.status.success(), "attach: {}", text(&out));
    let mac = mac_of(&c.name, "eth0");
    assert!(dnsmasq.lease_of(&mac).is_some());
    drop(c);
    let freed = lan.netattach_ok(&["gc"]);
    assert!(freed.contains("ctr-g"), "{freed}");
    assert_eq!(dnsmasq.lease_of(&mac), None, "released at the server");
    assert!(dhcp_records(&lan).is_empty());
}
