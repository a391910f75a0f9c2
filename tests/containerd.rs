//! Root integration tests of the NRI face under a real containerd 1.7
//! (Debian trixie's package, fetched by `scripts/containerd.sh`), driven over
//! CRI as kubelet drives it: pods on the fake LAN, their networks attached by
//! `netattach nri` as an external plugin or launched by containerd.

mod common;
mod real_containerd;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::FakeLan;
use real_containerd::cri::{Cri, PodConfig, SandboxState};
use real_containerd::{Containerd, Plugin};

/// What the runtime allows a plugin per request (`plugin_request_timeout`).
const NRI_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn skip() -> bool {
    common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "no containerd 1.7 (scripts/containerd.sh fetches it)",
        )
}

/// `netattach nri --socket SOCK`, started by the test in the LAN's host netns
/// (its log is the harness's `plugin_log`); killed on drop.
struct ExternalPlugin(Child);

impl ExternalPlugin {
    fn start(ctrd: &Containerd) -> ExternalPlugin {
        let child = ctrd
            .external_plugin()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start netattach nri");
        ExternalPlugin(child)
    }
}

impl Drop for ExternalPlugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the plugin's log says it was configured by containerd `times`
/// times: from then on it gets the pod events. (containerd 1.7.24 sends no
/// Synchronize to a plugin it launches, so "registered" comes only later.)
fn wait_configured(ctrd: &Containerd, times: usize) {
    real_containerd::wait_until(
        &format!("the plugin configured by containerd {times} time(s)"),
        Duration::from_secs(20),
        || ctrd.plugin_log_text().matches("configured by").count() >= times,
    );
}

fn pod(name: &str, request: Option<&str>) -> PodConfig {
    let mut annotations = BTreeMap::new();
    if let Some(r) = request {
        annotations.insert("netattach/networks".to_string(), r.to_string());
    }
    PodConfig {
        name: name.to_string(),
        namespace: "default".to_string(),
        uid: format!("uid-{name}"),
        attempt: 0,
        annotations,
        host_network: false,
        log_directory: None,
    }
}

/// A pod with a running test container; the container's id.
fn pod_with_container(cri: &Cri, config: &PodConfig) -> (String, String) {
    let id = cri
        .run_pod_sandbox(config)
        .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", config.name));
    let container = cri
        .create_container(
            &id,
            config,
            "box",
            Containerd::TEST_IMAGE,
            &["sleep", "3600"],
        )
        .expect("CreateContainer");
    cri.start_container(&container).expect("StartContainer");
    (id, container)
}

/// `cmd` in the container, its stdout; panics unless it exits 0.
fn exec_ok(cri: &Cri, container: &str, cmd: &[&str]) -> String {
    let out = cri
        .exec_sync(container, cmd, Duration::from_secs(10))
        .expect("ExecSync");
    assert_eq!(
        out.exit_code,
        0,
        "{cmd:?} in the container: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ifname` in the pod: its `ip -d` line, seen from the host through the
/// pod's netns (the container's busybox `ip` shows no link kind), and its
/// global IPv4 addresses as the container sees them.
fn interface_in(cri: &Cri, pod: &str, container: &str, ifname: &str) -> (String, Vec<String>) {
    let netns = cri
        .pod_sandbox_status(pod)
        .expect("PodSandboxStatus")
        .netns_path()
        .expect("the pod's netns path");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-d", "-o", "link", "show", ifname])
        .output()
        .expect("run nsenter ip");
    assert!(
        out.status.success(),
        "{ifname} in the pod: {}",
        common::text(&out)
    );
    let link = common::stdout(&out);
    let addrs = exec_ok(
        cri,
        container,
        &[
            "ip", "-o", "-4", "addr", "show", "dev", ifname, "scope", "global",
        ],
    );
    let addrs = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    (link, addrs)
}

/// The host netns's links but the pods' CNI bridge.
fn host_links(lan: &FakeLan, ctrd: &Containerd) -> Vec<String> {
    let bridge = ctrd.cni_bridge();
    let mut links = common::link_names(&lan.host.name);
    links.retain(|l| *l != bridge);
    links
}

fn stop_and_remove(cri: &Cri, id: &str) {
    cri.stop_pod_sandbox(id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(id).expect("RemovePodSandbox");
}

/// The whole user path through one plugin face: the annotated pod gets its
/// macvlan with a pooled lease, reaches the gateway from its container, and
/// its removal frees the lease.
fn a_pod_on_the_lan(plugin: Plugin) {
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let ctrd = Containerd::start(&lan, plugin);
    let _external = (plugin == Plugin::External).then(|| ExternalPlugin::start(&ctrd));
    // Registered means past the registration deadline too: containerd 1.7.24
    // never synchronizes a plugin it launched, and such a plugin must go on
    // serving after that deadline instead of exiting.
    real_containerd::wait_until(
        "the plugin registered with containerd",
        Duration::from_secs(20),
        || ctrd.plugin_log_text().contains("registered as"),
    );
    let cri = Cri::connect(&ctrd.cri_socket, Duration::from_secs(10)).expect("CRI");

    let config = pod("web", Some("lan@net1"));
    let (id, container) = pod_with_container(&cri, &config);
    let (link, addrs) = interface_in(&cri, &id, &container, "net1");
    assert!(link.contains("macvlan"), "{link}");
    let leased = lan.addresses_of(&id);
    assert_eq!(leased.len(), 1, "one lease for the pod: {leased:?}");
    assert_eq!(addrs, vec![format!("{}/24", leased[0])]);
    exec_ok(&cri, &container, &["ping", "-c1", "-W2", common::GW4]);

    stop_and_remove(&cri, &id);
    assert!(
        lan.addresses_of(&id).is_empty(),
        "RemovePodSandbox freed the lease"
    );
    assert!(lan.leases_json().as_array().unwrap().is_empty());
}

#[test]
fn an_external_plugin_attaches_a_pod_that_reaches_the_gateway() {
    if skip() {
        return;
    }
    a_pod_on_the_lan(Plugin::External);
}

#[test]
fn a_plugin_launched_by_containerd_attaches_a_pod_that_reaches_the_gateway() {
    if skip() {
        return;
    }
    a_pod_on_the_lan(Plugin::Launched);
}

/// Starts containerd with an external plugin and a CRI client, the plugin
/// registered.
fn containerd_with_external_plugin(lan: &FakeLan) -> (Containerd, ExternalPlugin, Cri) {
    let ctrd = Containerd::start(lan, Plugin::External);
    let plugin = ExternalPlugin::start(&ctrd);
    wait_configured(&ctrd, 1);
    let cri = Cri::connect(&ctrd.cri_socket, Duration::from_secs(10)).expect("CRI");
    (ctrd, plugin, cri)
}

#[test]
fn two_networks_with_a_static_address_and_mac() {
    if skip() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    lan.create_network("other", &[]);
    let (_ctrd, _plugin, cri) = containerd_with_external_plugin(&lan);

    let request = r#"[{"name":"lan","interface":"net1"},{"name":"other","interface":"net2","ips":["192.168.32.140/24"],"mac":"02:00:c0:a8:20:8c"}]"#;
    let config = pod("two", Some(request));
    let (id, container) = pod_with_container(&cri, &config);
    let (link1, addrs1) = interface_in(&cri, &id, &container, "net1");
    let (link2, addrs2) = interface_in(&cri, &id, &container, "net2");
    assert!(
        link1.contains("macvlan") && link2.contains("macvlan"),
        "{link1}\n{link2}"
    );
    assert!(link2.contains("link/ether 02:00:c0:a8:20:8c"), "{link2}");
    assert_eq!(addrs2, vec!["192.168.32.140/24"]);
    assert_eq!(addrs1.len(), 1, "{addrs1:?}");
    assert_ne!(addrs1[0], addrs2[0]);
    let mut leased = lan.addresses_of(&id);
    leased.sort();
    let mut seen: Vec<String> = [&addrs1[0], &addrs2[0]]
        .iter()
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect();
    seen.sort();
    assert_eq!(leased, seen);
    for ifname in ["net1", "net2"] {
        exec_ok(
            &cri,
            &container,
            &["ping", "-c1", "-W2", "-I", ifname, common::GW4],
        );
    }
    stop_and_remove(&cri, &id);
    assert!(lan.leases_json().as_array().unwrap().is_empty());
}

#[test]
fn a_bad_request_fails_the_pod_naming_the_address_and_leaves_nothing() {
    if skip() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (ctrd, _plugin, cri) = containerd_with_external_plugin(&lan);
    let links_before = host_links(&lan, &ctrd);

    let config = pod("bad", Some(r#"[{"name":"lan","ips":["10.9.9.9/24"]}]"#));
    let err = cri
        .run_pod_sandbox(&config)
        .expect_err("a pod asking for an address outside its network must not start");
    assert!(err.message.contains("10.9.9.9"), "names the address: {err}");
    assert!(lan.leases_json().as_array().unwrap().is_empty());
    let ready: Vec<_> = cri
        .list_pod_sandbox()
        .expect("ListPodSandbox")
        .into_iter()
        .filter(|p| p.name == "bad" && p.state == SandboxState::Ready)
        .collect();
    assert!(ready.is_empty(), "no ready sandbox: {ready:?}");
    assert_eq!(host_links(&lan, &ctrd), links_before);

    // The same pod with a good request starts.
    let config = pod(
        "bad",
        Some(r#"[{"name":"lan","ips":["192.168.32.77/24"]}]"#),
    );
    let (id, container) = pod_with_container(&cri, &config);
    assert_eq!(
        interface_in(&cri, &id, &container, "eth1").1,
        vec!["192.168.32.77/24"]
    );
    stop_and_remove(&cri, &id);
}

#[test]
fn a_pod_removed_while_the_plugin_is_down_is_released_at_the_next_synchronize() {
    if skip() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (ctrd, plugin, cri) = containerd_with_external_plugin(&lan);
    let (id, _container) = pod_with_container(&cri, &pod("gone", Some("lan")));
    let (kept, _kept_container) = pod_with_container(&cri, &pod("kept", Some("lan")));
    assert_eq!(lan.addresses_of(&id).len(), 1);

    drop(plugin);
    stop_and_remove(&cri, &id);
    assert_eq!(lan.addresses_of(&id).len(), 1, "nobody freed it yet");

    let _plugin = ExternalPlugin::start(&ctrd);
    wait_configured(&ctrd, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lan.addresses_of(&id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the removed pod's lease outlived the next Synchronize by 10 s:\n{}",
            ctrd.plugin_log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        lan.addresses_of(&kept).len(),
        1,
        "the live pod keeps its lease"
    );
    stop_and_remove(&cri, &kept);
}

#[test]
fn the_plugin_reconnects_after_containerd_restarts() {
    if skip() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (mut ctrd, _plugin, _cri) = containerd_with_external_plugin(&lan);
    ctrd.restart();
    wait_configured(&ctrd, 2);
    let cri = Cri::connect(&ctrd.cri_socket, Duration::from_secs(10)).expect("CRI");
    let (id, container) = pod_with_container(&cri, &pod("after", Some("lan@net1")));
    exec_ok(&cri, &container, &["ping", "-c1", "-W2", common::GW4]);
    assert_eq!(lan.addresses_of(&id).len(), 1);
    stop_and_remove(&cri, &id);
}

#[test]
fn sixteen_pods_started_at_once_get_sixteen_addresses() {
    if skip() {
        return;
    }
    const PODS: usize = 16;
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (ctrd, _plugin, _cri) = containerd_with_external_plugin(&lan);
    let socket = ctrd.cri_socket.clone();
    let started: Vec<(String, Duration)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..PODS)
            .map(|n| {
                let socket = &socket;
                s.spawn(move || {
                    let cri = Cri::connect(socket, Duration::from_secs(10)).expect("CRI");
                    let config = pod(&format!("p{n}"), Some("lan@net1"));
                    let t = Instant::now();
                    let id = cri
                        .run_pod_sandbox(&config)
                        .unwrap_or_else(|e| panic!("RunPodSandbox p{n}: {e}"));
                    (id, t.elapsed())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut addresses: Vec<String> = started
        .iter()
        .flat_map(|(id, _)| lan.addresses_of(id))
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), PODS, "distinct addresses: {addresses:?}");
    let mut took: Vec<Duration> = started.iter().map(|(_, t)| *t).collect();
    took.sort();
    eprintln!(
        "RunPodSandbox of {PODS} pods at once, from the runtime's view: p50 {:?}, max {:?} \
         (the plugin's request timeout is {NRI_REQUEST_TIMEOUT:?})",
        took[PODS / 2],
        took[PODS - 1]
    );
    let cri = Cri::connect(&ctrd.cri_socket, Duration::from_secs(10)).expect("CRI");
    for (id, _) in &started {
        stop_and_remove(&cri, id);
    }
    assert!(lan.leases_json().as_array().unwrap().is_empty());
}

#[test]
fn a_host_network_pod_is_left_alone() {
    if skip() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (ctrd, _plugin, cri) = containerd_with_external_plugin(&lan);
    let links_before = host_links(&lan, &ctrd);
    let mut config = pod("hostnet", Some("lan@net1"));
    config.host_network = true;
    let id = cri.run_pod_sandbox(&config).expect("RunPodSandbox");
    assert!(
        lan.leases_json().as_array().unwrap().is_empty(),
        "{}",
        ctrd.plugin_log_text()
    );
    assert_eq!(host_links(&lan, &ctrd), links_before);
    stop_and_remove(&cri, &id);
}

/// RunPodSandbox and StopPodSandbox + RemovePodSandbox through the real
/// containerd, pods without and with a network interleaved, for
/// bench/attach.py, which runs it as `cargo test --release --test containerd
/// -- --ignored --exact run_pod_sandbox_latency --nocapture` and reads the
/// `BENCH-JSON` lines (samples in ms). NETATTACH_BENCH_RUNS sets the number of
/// pods per case (default 50).
#[test]
#[ignore = "a benchmark: bench/attach.py runs it"]
fn run_pod_sandbox_latency() {
    if skip() {
        return;
    }
    let runs: usize = std::env::var("NETATTACH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let (_ctrd, _plugin, cri) = containerd_with_external_plugin(&lan);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cases = [("no-network", None), ("lan", Some("lan"))];
    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        for (case, request) in cases {
            let config = pod(&format!("{case}-{i}"), request);
            let t = Instant::now();
            let id = cri.run_pod_sandbox(&config).expect("RunPodSandbox");
            samples
                .entry(("RunPodSandbox", case))
                .or_default()
                .push(ms(t.elapsed()));
            let t = Instant::now();
            stop_and_remove(&cri, &id);
            samples
                .entry(("StopPodSandbox+RemovePodSandbox", case))
                .or_default()
                .push(ms(t.elapsed()));
        }
    }
    for ((rpc, case), samples) in samples {
        let line = serde_json::json!({ "rpc": rpc, "case": case, "samples_ms": samples });
        println!("BENCH-JSON {line}");
    }
}

// The harness itself: containerd up with CRI and NRI, a container runs, and
// nothing is left behind, also when containerd is gone before the drop.

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn plugin_ok(ctrd: &Containerd, kind: &str, id: &str) -> bool {
    let out = ctrd.ctr(&["plugins", "ls"]);
    common::stdout(&out).lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4 && f[0] == kind && f[1] == id && f[f.len() - 1] == "ok"
    })
}

#[test]
fn containerd_starts_runs_a_container_restarts_and_cleans_up() {
    if common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "needs containerd 1.7 (scripts/containerd.sh) and runc",
        )
    {
        return;
    }
    let before = netns_names();
    let lan = common::FakeLan::new();
    let dir;
    {
        let mut ctrd = Containerd::start(&lan, Plugin::Launched);
        dir = ctrd.dir.clone();
        assert!(
            plugin_ok(&ctrd, "io.containerd.grpc.v1", "cri"),
            "{}",
            common::text(&ctrd.ctr(&["plugins", "ls"]))
        );
        assert!(plugin_ok(&ctrd, "io.containerd.nri.v1", "nri"));
        assert!(ctrd.nri_socket.exists());

        // containerd 1.7.24 (NRI v0.6.1) configures a launched plugin but
        // never sends it Synchronize: only the launch and Configure are
        // checked here.
        real_containerd::wait_until(
            "the launched plugin to be configured",
            Duration::from_secs(10),
            || ctrd.plugin_log_text().contains("configured by containerd"),
        );

        let flags = ctrd.ctr_run_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let t = Instant::now();
        let out = ctrd.ctr_ok(
            &[
                &["run", "--rm"][..],
                &flags,
                &[
                    Containerd::TEST_IMAGE,
                    "check1",
                    "sh",
                    "-c",
                    "echo hello from the test image; cat /etc/hosts",
                ],
            ]
            .concat(),
        );
        eprintln!("ctr run --rm: {} ms", t.elapsed().as_millis());
        assert!(out.contains("hello from the test image"), "{out}");

        // A container that outlives a restart, killed by the drop.
        ctrd.ctr_ok(
            &[
                &["run", "-d"][..],
                &flags,
                &[Containerd::TEST_IMAGE, "sleeper", "sleep", "3600"],
            ]
            .concat(),
        );
        let t = Instant::now();
        ctrd.restart();
        eprintln!("restart: {} ms", t.elapsed().as_millis());
        assert!(plugin_ok(&ctrd, "io.containerd.grpc.v1", "cri"));
        let tasks = ctrd.ctr_ok(&["tasks", "ls"]);
        assert!(
            tasks.contains("sleeper") && tasks.contains("RUNNING"),
            "{tasks}"
        );
        let images = ctrd.ctr_ok(&["images", "ls", "-q"]);
        assert!(images.contains(Containerd::PAUSE_IMAGE), "{images}");
        // The plugin is launched again by the new containerd.
        real_containerd::wait_until(
            "the launched plugin to be configured again",
            Duration::from_secs(10),
            || {
                ctrd.plugin_log_text()
                    .matches("configured by containerd")
                    .count()
                    >= 2
            },
        );
        let t = Instant::now();
        drop(ctrd);
        eprintln!("drop: {} ms", t.elapsed().as_millis());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.to_str().unwrap()),
        "mounts left:\n{mountinfo}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    for pid in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(pid.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(!cmd.contains(dir.to_str().unwrap()), "process left: {cmd}");
    }
    let tag = lan.tag.clone();
    drop(lan);
    // Other tests may make netns meanwhile: only ours and CNI's count.
    let new: Vec<String> = netns_names()
        .difference(&before)
        .filter(|n| n.contains(&tag) || n.starts_with("cni-"))
        .cloned()
        .collect();
    assert!(new.is_empty(), "netns left: {new:?}");
}

#[test]
fn drop_cleans_up_containers_whose_containerd_is_gone() {
    if common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "needs containerd 1.7 (scripts/containerd.sh) and runc",
        )
    {
        return;
    }
    let lan = common::FakeLan::new();
    let mut ctrd = Containerd::start(&lan, Plugin::None);
    let dir = ctrd.dir.clone();
    let flags = ctrd.ctr_run_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ctrd.ctr_ok(
        &[
            &["run", "-d"][..],
            &flags,
            &[Containerd::TEST_IMAGE, "orphan", "sleep", "3600"],
        ]
        .concat(),
    );
    // Without containerd the drop cannot ask it to kill the task: it must
    // kill the shim and the container itself and unmount the rootfs.
    ctrd.stop();
    drop(ctrd);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.to_str().unwrap()),
        "mounts left:\n{mountinfo}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    let leaf = std::path::Path::new("/sys/fs/cgroup/memory/k8s.io/orphan");
    assert!(!leaf.exists(), "{} left", leaf.display());
}
