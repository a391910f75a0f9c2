//! The NRI face against a runtime side written in this test suite
//! (`nri_runtime/`, from the protocol facts only): a real unix socket or a
//! socketpair as fd 3, the real mux and ttrpc framing, the real sequence and
//! timeouts. The root tests drive pods through run/stop/remove on real netns
//! of a fake LAN and check interfaces and leases; the others feed the plugin
//! malformed input and check it neither crashes, hangs nor leaks.

mod common;
mod etcd_harness;
mod nri_runtime;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeLan, TempDir};
use nri_runtime::pb::Enc;
use nri_runtime::wire::{self, frame, go_frames, ttrpc_message, PLUGIN_CONN, T_REQUEST};
use nri_runtime::{Options, Pod, Runtime, Version, UNIMPLEMENTED};

const ANNOTATION: &str = "netattach/networks";

/// A plugin process we started; killed (by its pid) on drop.
struct PluginProc {
    child: Child,
    log: PathBuf,
}

impl PluginProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Open fds and threads of the plugin process.
    fn resources(&self) -> (usize, usize) {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0);
        let threads = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|t| t.trim().parse().unwrap())
            })
            .unwrap_or(0);
        (fds, threads)
    }
}

impl Drop for PluginProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}", self.log());
        }
    }
}

/// `netattach --config-dir .. --state-dir .. nri --socket SOCK` as an external
/// plugin, in the fake LAN's host netns when there is one; stderr to a file.
fn start_external(lan: Option<&FakeLan>, dir: &Path, sock: &Path) -> PluginProc {
    let log = dir.join("plugin.log");
    let (config, state) = match lan {
        Some(lan) => (lan.config_dir.clone(), lan.state_dir.clone()),
        None => (dir.join("config"), dir.join("state")),
    };
    let mut cmd = match lan {
        Some(lan) => lan.command_in_host(common::bin()),
        None => Command::new(common::bin()),
    };
    cmd.arg("--config-dir")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["nri", "--name", "netattach", "--idx", "10", "--socket"])
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    PluginProc {
        child: cmd.spawn().expect("start netattach nri"),
        log,
    }
}

fn listen(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).expect("bind the runtime socket")
}

/// The one connection of an external plugin, registered.
fn accept(listener: &UnixListener, opts: &Options) -> Runtime {
    Runtime::accept(listener, Duration::from_secs(15), opts).expect("plugin registers")
}

fn assert_clean_framing(rt: &Runtime) {
    let v = rt.violations();
    assert!(v.is_empty(), "frames Go could not read: {v:?}");
}

fn in_lan(addrs: &[String]) -> bool {
    addrs.len() == 1 && addrs[0].starts_with("192.168.32.") && addrs[0].ends_with("/24")
}

/// Polls `f` until it holds or `limit` passes (a wait, not a timing check).
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lan_with_network() -> FakeLan {
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    lan
}

/// Run, repeat, stop, remove one pod and a host-network one; `version` picks
/// how the runtime delivers the events.
fn pod_lifecycle(version: Version) {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(
        &listener,
        &Options {
            version,
            ..Options::default()
        },
    );
    assert_eq!(rt.registration.name, "netattach");
    assert_eq!(rt.registration.idx, "10");
    assert_eq!(rt.registration.events, 0x7, "pod events only");

    let ns = lan.container_ns("p1");
    let pod = Pod::new("p1aaaa", ns.path_str()).annotate(ANNOTATION, "lan@eth1");
    rt.run_pod(&pod).expect("RunPodSandbox");
    let addrs = common::addrs(&ns.name, "eth1");
    assert!(in_lan(&addrs), "eth1 in the pod: {addrs:?}");
    assert!(
        common::ping_from(&ns.name, common::GW4),
        "pod reaches the gateway"
    );
    assert_eq!(lan.addresses_of("p1aaaa").len(), 1);
    // A repeated event changes nothing.
    rt.run_pod(&pod).expect("RunPodSandbox again");
    assert_eq!(common::addrs(&ns.name, "eth1"), addrs);
    assert_eq!(lan.addresses_of("p1aaaa").len(), 1);

    // Host network (no netns path) and no annotation: nothing to do.
    let host = Pod::new("hostnet", "").annotate(ANNOTATION, "lan");
    rt.run_pod(&host).expect("host-network pod");
    let plain_ns = lan.container_ns("p2");
    let plain = Pod::new("plain", plain_ns.path_str());
    rt.run_pod(&plain).expect("pod without annotation");
    assert!(lan.addresses_of("hostnet").is_empty());
    assert_eq!(common::link_names(&plain_ns.name), vec!["lo"]);

    // containerd 1.7 sends Stop/Remove with no netns path and pid 0.
    let gone = pod.as_sent_on_removal();
    rt.stop_pod(&gone).expect("StopPodSandbox");
    assert_eq!(lan.addresses_of("p1aaaa").len(), 1, "stop keeps the lease");
    rt.remove_pod(&gone).expect("RemovePodSandbox");
    assert!(lan.addresses_of("p1aaaa").is_empty(), "remove frees it");
    rt.remove_pod(&host.as_sent_on_removal()).unwrap();
    rt.remove_pod(&plain.as_sent_on_removal()).unwrap();
    assert_clean_framing(&rt);

    let log = plugin.log();
    assert!(log.contains("registered as 10-netattach"), "{log}");
    assert!(log.contains("attached lan eth1 192.168.32."), "{log}");
    let first = log.lines().next().unwrap_or("");
    assert!(
        first.len() > 24 && first.as_bytes()[10] == b'T' && first[..24].ends_with('Z'),
        "timestamped log line: {first}"
    );
}

#[test]
fn pod_lifecycle_through_state_change() {
    pod_lifecycle(Version::V08);
}

#[test]
fn pod_lifecycle_through_dedicated_v012_rpcs() {
    pod_lifecycle(Version::V012);
}

#[test]
fn bad_requests_fail_the_pod_with_the_message() {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());

    let check = |id: &str, value: &str, expect: &[&str]| {
        let ns = lan.container_ns(id);
        let pod = Pod::new(id, ns.path_str()).annotate(ANNOTATION, value);
        let (code, message) = rt.run_pod(&pod).expect_err("the pod must fail");
        assert!(
            code != 0 && code != UNIMPLEMENTED,
            "plain error, got {code}"
        );
        for e in expect {
            assert!(message.contains(e), "{message:?} should name {e:?}");
        }
        assert_eq!(
            common::link_names(&ns.name),
            vec!["lo"],
            "nothing left in the pod"
        );
        assert!(lan.addresses_of(id).is_empty());
        rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
    };
    check(
        "typo",
        r#"[{"name":"lan","iface":"eth1"}]"#,
        &["netattach/networks", "iface", "default/pod-typo"],
    );
    check("unknown", "nosuch", &["nosuch"]);
    check("syntax", "lan@", &["netattach/networks"]);

    // An address someone holds: the message names it and the holder.
    let ns = lan.container_ns("holder");
    let holder = Pod::new("holder", ns.path_str())
        .annotate(ANNOTATION, r#"[{"name":"lan","ips":["192.168.32.77/24"]}]"#);
    rt.run_pod(&holder).unwrap();
    check(
        "thief",
        r#"[{"name":"lan","ips":["192.168.32.77/24"]}]"#,
        &["192.168.32.77", "holder"],
    );
    // The plugin goes on serving.
    rt.remove_pod(&holder.as_sent_on_removal()).unwrap();
    assert!(lan.addresses_of("holder").is_empty());
    assert_clean_framing(&rt);
}

#[test]
fn messages_larger_than_4096_bytes_both_ways() {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());

    // A pod event of ~200 KB (labels), sent as Go frames it (4096 + rest).
    let ns = lan.container_ns("big");
    let mut pod = Pod::new("bigpod", ns.path_str()).annotate(ANNOTATION, "lan@net0");
    for i in 0..100 {
        pod.labels.push((format!("label-{i}"), "x".repeat(2000)));
    }
    rt.run_pod(&pod).expect("big RunPodSandbox");
    assert!(in_lan(&common::addrs(&ns.name, "net0")));
    rt.remove_pod(&pod.as_sent_on_removal()).unwrap();

    // The same in frames of odd sizes: the plugin reassembles.
    let ns2 = lan.container_ns("frag");
    let pod2 = Pod::new("fragpod", ns2.path_str()).annotate(ANNOTATION, "lan");
    let event = Enc::new().uint(1, 1).message(2, pod2.encode());
    for chunk in [1, 7, 4095, 4097, 100_000] {
        rt.call_framed("StateChange", &event.0, chunk)
            .unwrap_or_else(|e| panic!("frames of {chunk}: {e:?}"));
    }
    assert!(in_lan(&common::addrs(&ns2.name, "eth0")));

    // A response larger than 4096 bytes from the plugin: split for Go's reader.
    let long = format!("Method{}", "X".repeat(10_000));
    let (code, message) = rt.call(&long, &[]).unwrap_err();
    assert_eq!(code, UNIMPLEMENTED);
    assert!(message.contains(&long));
    assert_clean_framing(&rt);
}

/// Filler pods adding up to about `bytes` of Synchronize payload.
fn filler_pods(bytes: usize) -> Vec<Pod> {
    let mut pods = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < bytes {
        let mut p = Pod::new(
            &format!("filler{i:06}"),
            &format!("/run/netns/nonexistent-{i}"),
        );
        p.labels.push(("payload".into(), "f".repeat(8000)));
        size += p.encode().0.len() + 4;
        pods.push(p);
        i += 1;
    }
    pods
}

#[test]
fn restart_reconnects_and_synchronize_reconciles() {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());
    let ns_a = lan.container_ns("a");
    let ns_b = lan.container_ns("b");
    let ns_c = lan.container_ns("c");
    let a = Pod::new("podaaaa", ns_a.path_str()).annotate(ANNOTATION, "lan@eth1");
    let b = Pod::new("podbbbb", ns_b.path_str()).annotate(ANNOTATION, "lan@eth1");
    let c = Pod::new("podcccc", ns_c.path_str()).annotate(ANNOTATION, "lan@eth1");
    rt.run_pod(&a).unwrap();
    rt.run_pod(&b).unwrap();
    rt.run_pod(&c).unwrap();
    let c_leases = lan.addresses_of("podcccc");
    let a_leases = lan.addresses_of("podaaaa");
    let c_addrs = common::addrs(&ns_c.name, "eth1");
    // A hand attach shares the store: reconciliation must not touch it.
    let ns_h = lan.container_ns("h");
    lan.netattach_ok(&[
        "attach",
        "--netns",
        ns_h.path_str(),
        "--id",
        "handmade",
        "lan",
    ]);

    // The runtime goes away. While it is down, pod b is removed and pod a's
    // interface is lost.
    drop(rt);
    drop(listener);
    std::fs::remove_file(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ns_a.ip(&["link", "del", "eth1"]);

    // It comes back: a 4 MiB Synchronize (one message just below the limit,
    // `more` set) then the rest with pod a; b is not listed anymore.
    let listener = listen(&sock);
    let mut big = filler_pods(4 * 1024 * 1024 - 64 * 1024);
    let big_len: usize = big.iter().map(|p| p.encode().0.len() + 4).sum();
    assert!(big_len > 4 * 1024 * 1024 - 64 * 1024 && big_len < 4 * 1024 * 1024 - 200);
    let tail = vec![a.clone(), c.clone(), big.pop().unwrap()];
    let rt = accept(
        &listener,
        &Options {
            sync_chunks: vec![big, tail],
            ..Options::default()
        },
    );
    assert!(lan.addresses_of("podbbbb").is_empty(), "gone pod released");
    assert_eq!(lan.addresses_of("podcccc"), c_leases, "live pod kept");
    assert_eq!(
        lan.addresses_of("handmade").len(),
        1,
        "hand attach untouched"
    );
    // The re-check makes the lost link again, with the address pod a holds.
    assert!(
        eventually(Duration::from_secs(10), || in_lan(&common::addrs(
            &ns_a.name, "eth1"
        ))),
        "re-check restores pod a's interface"
    );
    let leased = lan.addresses_of("podaaaa");
    assert_eq!(leased, a_leases, "the same address, not a new one");
    assert_eq!(
        common::addrs(&ns_a.name, "eth1"),
        vec![format!("{}/24", leased[0])]
    );
    assert_eq!(
        common::addrs(&ns_c.name, "eth1"),
        c_addrs,
        "intact pod untouched"
    );
    // Events work on the new connection.
    rt.remove_pod(&a.as_sent_on_removal()).unwrap();
    assert!(lan.addresses_of("podaaaa").is_empty());
    assert_clean_framing(&rt);
    let log = plugin.log();
    assert!(log.contains("reconnecting"), "{log}");
    assert!(log.contains("pod podbbbb is gone"), "{log}");
    assert!(!log.contains("pod podaaaa is gone"), "{log}");
    assert!(!log.contains("pod podcccc is gone"), "{log}");
}

/// The checker of the test runtime catches what Go's reader cannot take.
#[test]
fn go_reader_emulation_flags_bad_framing() {
    let msg = |id: u32, n: usize| ttrpc_message(id, wire::T_RESPONSE, &vec![1u8; n]);
    // Good: small messages whole, big ones as 4096 + rest.
    let mut r = wire::GoReader::new(1);
    let mut got = r.push(msg(1, 100));
    let big = msg(3, 9000);
    got.extend(r.push(big[..4096].to_vec()));
    got.extend(r.push(big[4096..].to_vec()));
    assert_eq!(got.len(), 2);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // Bad: a first frame over 4096 bytes.
    let mut r = wire::GoReader::new(1);
    r.push(msg(1, 5000));
    assert!(!r.violations.is_empty());
    // Bad: two messages in one frame.
    let mut r = wire::GoReader::new(1);
    let mut two = msg(1, 10);
    two.extend(msg(3, 10));
    assert_eq!(r.push(two).len(), 2);
    assert!(!r.violations.is_empty());
    // Bad: the rest of a message and the next one in one big frame.
    let mut r = wire::GoReader::new(1);
    let m = msg(1, 9000);
    r.push(m[..4096].to_vec());
    let mut rest = m[4096..].to_vec();
    rest.extend(msg(3, 10));
    r.push(rest);
    assert!(!r.violations.is_empty());
}

/// Full path of a program on PATH (the launched plugin gets no PATH).
fn which(prog: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{prog} not found"))
}

#[test]
fn launched_by_the_runtime_on_fd_3() {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let early_log = lan.dir.path().join("early.log");
    let log = lan.dir.path().join("launched.log");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(which("nsenter"));
    cmd.arg(format!("--net={}", lan.host_ns_path()))
        .arg(common::bin())
        .arg("nri")
        .arg("--log-file")
        .arg(&early_log)
        .env_clear()
        // containerd 1.7.0-1.7.6 passed the full file name.
        .env("NRI_PLUGIN_NAME", "10-netattach")
        .env("NRI_PLUGIN_IDX", "10")
        .env("NRI_PLUGIN_SOCKET", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the new fd 3 has no CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut plugin = PluginProc {
        child: cmd.spawn().unwrap(),
        log: log.clone(),
    };
    drop(theirs);
    // The conf.d file arrives in Configure: it moves the dirs and the log.
    let config = format!(
        "# /etc/nri/conf.d/10-netattach.conf\nconfig_dir = {}\nstate_dir = \"{}\"\nlog_file = {}\n",
        lan.config_dir_str(),
        lan.state_dir_str(),
        log.display()
    );
    let rt = Runtime::register(
        ours,
        &Options {
            config,
            ..Options::default()
        },
    )
    .expect("launched plugin registers");
    assert_eq!(rt.registration.name, "netattach");
    assert_eq!(rt.registration.idx, "10");

    let ns = lan.container_ns("l1");
    let pod = Pod::new("launched1", ns.path_str()).annotate(ANNOTATION, "lan");
    rt.run_pod(&pod).expect("RunPodSandbox");
    assert!(in_lan(&common::addrs(&ns.name, "eth0")));
    assert_eq!(lan.addresses_of("launched1").len(), 1);
    rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
    assert!(lan.addresses_of("launched1").is_empty());
    assert_clean_framing(&rt);

    // The runtime closes the socket: a launched plugin exits.
    rt.close();
    assert!(
        eventually(Duration::from_secs(10), || !plugin.alive()),
        "plugin exits when the runtime closes the connection"
    );
    let status = plugin.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let text = plugin.log();
    assert!(text.contains("attached lan eth0"), "{text}");
    assert!(text.contains("exiting"), "{text}");
    let early = std::fs::read_to_string(&early_log).unwrap();
    assert!(early.contains("starting"), "{early}");
}

// ---- Malformed input (no root needed: no netns is touched) ----

/// A raw connection accepted from the plugin, before any registration.
fn accept_raw(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(false).unwrap();
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Whether the plugin closed `s` (EOF) within the read timeout, skipping
/// whatever it sends first.
fn closed_by_plugin(s: &mut UnixStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn malformed_input_neither_crashes_hangs_nor_leaks() {
    let dir = TempDir::new(&format!("netattach-test-{}-nri-robust", std::process::id()));
    let sock = dir.path().join("nri.sock");
    let listener = listen(&sock);
    let mut plugin = start_external(None, dir.path(), &sock);
    let rt = accept(&listener, &Options::default());

    // Unknown service and method: UNIMPLEMENTED (a v0.12 runtime's fallback).
    let e = rt
        .call_raw("some.Other", "Configure", &[], Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(e.0, UNIMPLEMENTED, "{e:?}");
    assert_eq!(
        rt.call("PostStartContainer", &[]).unwrap_err().0,
        UNIMPLEMENTED
    );

    // A request body that is not protobuf, and a payload that is not one.
    let id = rt.fresh_id();
    let rx = rt.expect(id);
    rt.send_bytes(&go_frames(
        PLUGIN_CONN,
        &ttrpc_message(id, T_REQUEST, &[0xff; 16]),
    ));
    let e = rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.0, nri_runtime::INVALID_ARGUMENT, "{e:?}");
    assert_eq!(
        rt.call("StateChange", &[0x12, 0x50, 1]).unwrap_err().0,
        nri_runtime::INVALID_ARGUMENT
    );

    // Frames for an unopened conn, a data message, a stray response: ignored.
    rt.send_bytes(&frame(7, b"garbage for conn seven"));
    rt.send_bytes(&frame(0, &[]));
    rt.send_bytes(&go_frames(PLUGIN_CONN, &ttrpc_message(99, 3, b"data")));
    rt.send_bytes(&go_frames(PLUGIN_CONN, &ttrpc_message(101, 2, b"")));
    rt.call("CreateContainer", &[]).expect("still serving");

    // A ttrpc message over 4 MiB: skipped, answered RESOURCE_EXHAUSTED.
    let id = rt.fresh_id();
    let rx = rt.expect(id);
    let mut msg = Vec::new();
    msg.extend_from_slice(&((wire::MAX_MESSAGE + 1) as u32).to_be_bytes());
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[T_REQUEST, 0]);
    msg.resize(wire::TTRPC_HEADER + wire::MAX_MESSAGE + 1, 0);
    for part in msg.chunks(wire::MAX_FRAME) {
        rt.send_bytes(&frame(PLUGIN_CONN, part));
    }
    let e = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.0, nri_runtime::RESOURCE_EXHAUSTED, "{e:?}");
    rt.call("CreateContainer", &[]).expect("still serving");
    assert_clean_framing(&rt);
    let baseline = plugin.resources();

    // Ways to break a connection; after each the plugin reconnects.
    let breakers: Vec<(&str, Breaker)> = vec![
        (
            "oversized frame",
            Box::new(|rt: &Runtime| {
                let mut f = PLUGIN_CONN.to_be_bytes().to_vec();
                f.extend_from_slice(&u32::MAX.to_be_bytes());
                f.extend_from_slice(&[0; 64]);
                rt.send_bytes(&f);
            }),
        ),
        (
            "dropped mid-frame",
            Box::new(|rt: &Runtime| {
                let f = frame(PLUGIN_CONN, &[1u8; 100]);
                rt.send_bytes(&f[..40]);
                rt.close();
            }),
        ),
        (
            "dropped mid-message",
            Box::new(|rt: &Runtime| {
                let body = wire::request_body(wire::PLUGIN_SERVICE, "Configure", &[], 1);
                let msg = ttrpc_message(rt.fresh_id(), T_REQUEST, &body);
                rt.send_bytes(&frame(PLUGIN_CONN, &msg[..msg.len() / 2]));
                rt.close();
            }),
        ),
        (
            "stalled mid-frame",
            Box::new(|rt: &Runtime| {
                let f = frame(PLUGIN_CONN, &[1u8; 100]);
                rt.send_bytes(&f[..20]);
            }),
        ),
    ];
    let mut rt = rt;
    for round in 0..2 {
        for (what, breaker) in &breakers {
            breaker(&rt);
            assert!(
                rt.wait_closed(Duration::from_secs(20)),
                "round {round}, {what}: the connection ends"
            );
            rt = accept(&listener, &Options::default());
            rt.call("CreateContainer", &[])
                .unwrap_or_else(|e| panic!("after {what}: {e:?}"));
            assert!(plugin.alive(), "plugin alive after {what}");
        }
    }

    // Registration that never completes: no answer to RegisterPlugin, or no
    // Configure after it. The plugin gives up and comes back.
    drop(rt);
    let mut silent = accept_raw(&listener);
    assert!(
        closed_by_plugin(&mut silent),
        "gives up on an unanswered RegisterPlugin"
    );
    let mut half = accept_raw(&listener);
    answer_register(&mut half);
    assert!(closed_by_plugin(&mut half), "gives up without Configure");
    let rt = accept(&listener, &Options::default());
    rt.call("CreateContainer", &[]).expect("serving again");

    // Nothing leaked: the plugin is back to the fds and threads it had.
    let within = |(fds, threads): (usize, usize)| fds <= baseline.0 && threads <= baseline.1;
    assert!(
        eventually(Duration::from_secs(10), || within(plugin.resources())),
        "fds/threads {:?}, were {baseline:?}",
        plugin.resources()
    );
    assert!(plugin.alive());
    assert_clean_framing(&rt);
}

/// Something that breaks a runtime connection.
type Breaker = Box<dyn Fn(&Runtime)>;

/// Reads frames until the plugin's RegisterPlugin request and answers it OK.
fn answer_register(s: &mut UnixStream) {
    use std::io::{Read, Write};
    let mut reader = wire::GoReader::new(wire::RUNTIME_CONN);
    loop {
        let mut hdr = [0u8; 8];
        s.read_exact(&mut hdr).unwrap();
        let len = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        if u32::from_be_bytes(hdr[0..4].try_into().unwrap()) != wire::RUNTIME_CONN {
            continue;
        }
        if let Some((h, _)) = reader.push(payload).into_iter().next() {
            let resp = wire::response_body(0, "", &[]);
            let msg = ttrpc_message(h.stream_id, wire::T_RESPONSE, &resp);
            s.write_all(&go_frames(wire::RUNTIME_CONN, &msg)).unwrap();
            return;
        }
    }
}

/// RunPodSandbox and RemovePodSandbox latency as the runtime sees it (with and
/// without networks), for bench/attach.py, which runs it as
/// `cargo test --release --test nri -- --ignored --exact run_pod_sandbox_latency --nocapture`
/// and reads the `BENCH-JSON` lines (samples in ms). NETATTACH_BENCH_RUNS sets
/// the number of pods per case (default 200).
#[test]
#[ignore = "a benchmark: bench/attach.py runs it"]
fn run_pod_sandbox_latency() {
    if common::skip_unless_root() {
        return;
    }
    let runs: usize = std::env::var("NETATTACH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (case, annotation) in [("no-network", None), ("lan", Some("lan"))] {
        let (mut run, mut remove) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let ns = lan.container_ns(&format!("l{i}"));
            let mut pod = Pod::new(&format!("lat{i:04}"), ns.path_str());
            if let Some(a) = annotation {
                pod = pod.annotate(ANNOTATION, a);
            }
            let t = Instant::now();
            rt.run_pod(&pod).unwrap();
            run.push(ms(t.elapsed()));
            let t = Instant::now();
            rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
            remove.push(ms(t.elapsed()));
        }
        for (rpc, samples) in [("RunPodSandbox", run), ("RemovePodSandbox", remove)] {
            let line = serde_json::json!({ "rpc": rpc, "case": case, "samples_ms": samples });
            println!("BENCH-JSON {line}");
        }
    }
    // Pods started together, as a node does after a reboot or a scale-up:
    // each pod's own round trip while 15 others are in flight.
    const AT_ONCE: usize = 16;
    let mut run = Vec::new();
    for round in 0..runs.div_ceil(AT_ONCE) {
        let pods: Vec<(Pod, common::Netns)> = (0..AT_ONCE)
            .map(|i| {
                let ns = lan.container_ns(&format!("b{round}-{i}"));
                let pod = Pod::new(&format!("burst{round:03}-{i:02}"), ns.path_str())
                    .annotate(ANNOTATION, "lan");
                (pod, ns)
            })
            .collect();
        std::thread::scope(|scope| {
            let rt = &rt;
            let timed: Vec<_> = pods
                .iter()
                .map(|(pod, _)| {
                    scope.spawn(move || {
                        let t = Instant::now();
                        rt.run_pod(pod).unwrap();
                        ms(t.elapsed())
                    })
                })
                .collect();
            run.extend(timed.into_iter().map(|t| t.join().unwrap()));
        });
        for (pod, _) in &pods {
            rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
        }
    }
    let case = format!("lan, {AT_ONCE} at once");
    let line = serde_json::json!({ "rpc": "RunPodSandbox", "case": case, "samples_ms": run });
    println!("BENCH-JSON {line}");
}

#[test]
fn one_address_on_the_wire_through_two_networks_and_after_removal() {
    if common::skip_unless_root()
        || common::skip_unless(
            common::have("arping"),
            "arping (iputils-arping) is not installed",
        )
    {
        return;
    }
    let lan = lan_with_network();
    lan.create_network("other", &[]);
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());

    let ns_a = lan.container_ns("a");
    let a = Pod::new("poda", ns_a.path_str())
        .annotate(ANNOTATION, r#"[{"name":"lan","ips":["192.168.32.78/24"]}]"#);
    rt.run_pod(&a).expect("RunPodSandbox a");
    let ns_b = lan.container_ns("b");
    let b = Pod::new("podb", ns_b.path_str()).annotate(
        ANNOTATION,
        r#"[{"name":"other","ips":["192.168.32.78/24"]}]"#,
    );
    let (_, message) = rt
        .run_pod(&b)
        .expect_err("the same address through another network");
    assert!(
        message.contains("192.168.32.78") && message.contains("poda"),
        "{message}"
    );
    assert_eq!(common::link_names(&ns_b.name), vec!["lo"]);
    let mac_a = common::link_json(&ns_a.name, "eth0")["address"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(
        common::arp_answerers(&lan, "192.168.32.78"),
        std::collections::BTreeSet::from([mac_a])
    );

    // The pod's netns outlives the RemovePodSandbox (it is bind-mounted here):
    // the interface goes with the lease, so the address leaves the wire.
    rt.remove_pod(&a.as_sent_on_removal()).unwrap();
    assert!(lan.addresses_of("poda").is_empty());
    assert_eq!(common::link_names(&ns_a.name), vec!["lo"]);
    assert!(common::arp_answerers(&lan, "192.168.32.78").is_empty());
    rt.run_pod(&b).expect("the freed address for pod b");
    assert_eq!(common::addrs(&ns_b.name, "eth0"), vec!["192.168.32.78/24"]);
    rt.remove_pod(&b.as_sent_on_removal()).unwrap();
    assert_clean_framing(&rt);
}

/// With the lease store's lock held by a stopped process, a pod start fails
/// inside the runtime's budget with what it waited for; requests are served in
/// the order they came, and a pod removed while its RunPodSandbox waited is
/// never attached afterwards.
#[test]
fn stuck_store_fails_pods_in_budget_and_a_removed_pod_stays_detached() {
    if common::skip_unless_root() || common::skip_unless(common::have("flock"), "no flock(1)") {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = std::sync::Arc::new(accept(&listener, &Options::default()));
    let warm_ns = lan.container_ns("warm");
    let warm = Pod::new("warmpod", warm_ns.path_str()).annotate(ANNOTATION, "lan");
    rt.run_pod(&warm).expect("a first pod opens the store");

    let holder = common::LockHolder::new(&lan.state_dir.join("leases.lock"));
    holder.signal("STOP");
    let ns1 = lan.container_ns("one");
    let one = Pod::new("podone", ns1.path_str()).annotate(ANNOTATION, "lan");
    let (code, message) = rt.run_pod(&one).expect_err("no turn of the store");
    assert_ne!(code, -2, "answered inside the runtime's budget: {message}");
    assert!(
        message.contains("leases.lock") && message.contains(&format!("pid {}", holder.pid())),
        "{message}"
    );
    common::assert_bare(&ns1);
    assert!(lan.addresses_of("podone").is_empty());

    // Pod three waits on the store; pod two's start queues behind it, then pod
    // two is removed. Once the store is free, three attaches and two does not.
    let ns2 = lan.container_ns("two");
    let ns3 = lan.container_ns("three");
    let two = Pod::new("podtwo", ns2.path_str()).annotate(ANNOTATION, "lan");
    let three = Pod::new("podthree", ns3.path_str()).annotate(ANNOTATION, "lan");
    let send = |pod: &Pod, remove: bool| {
        let (rt, pod) = (rt.clone(), pod.clone());
        let t = std::thread::spawn(move || {
            if remove {
                rt.remove_pod(&pod.as_sent_on_removal())
            } else {
                rt.run_pod(&pod)
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        t
    };
    let run3 = send(&three, false);
    let run2 = send(&two, false);
    let remove2 = send(&two, true);
    drop(holder);
    run3.join()
        .unwrap()
        .expect("pod three attaches once the store is free");
    let (_, message) = run2.join().unwrap().expect_err("pod two was removed");
    assert!(message.contains("removed"), "{message}");
    remove2.join().unwrap().expect("RemovePodSandbox");
    assert!(lan.addresses_of("podtwo").is_empty());
    common::assert_bare(&ns2);
    assert!(in_lan(&common::addrs(&ns3.name, "eth0")));
    for pod in [&warm, &three] {
        rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
    }
    assert_eq!(lan.leases_json().as_array().unwrap().len(), 0);
    assert_clean_framing(&rt);
}

/// A plugin launched the way a runtime launches one: `netattach nri` (in the
/// fake LAN's host netns) with one end of a socketpair as fd 3 and the NRI
/// environment, registered by the test runtime with a Configure that names
/// the dirs and the log, and a Synchronize listing `pods`. Its stderr (the
/// `NETATTACH_TRACE=1` phase marks of every attach) goes to `<name>.trace`.
struct Launched {
    rt: Runtime,
    proc: PluginProc,
    trace: PathBuf,
}

fn launch(lan: &FakeLan, name: &str, pods: Vec<Pod>) -> Launched {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let log = lan.dir.path().join(format!("{name}.log"));
    let trace = lan.dir.path().join(format!("{name}.trace"));
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(which("nsenter"));
    cmd.arg(format!("--net={}", lan.host_ns_path()))
        .arg(common::bin())
        .arg("nri")
        .arg("--log-file")
        .arg(&log)
        .env_clear()
        .env("NRI_PLUGIN_NAME", "netattach")
        .env("NRI_PLUGIN_IDX", "10")
        .env("NRI_PLUGIN_SOCKET", "3")
        .env("NETATTACH_TRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&trace).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; fd 3 ends up without
    // CLOEXEC (dup2 onto itself would keep the flag, hence the fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = PluginProc {
        child: cmd.spawn().unwrap(),
        log: log.clone(),
    };
    drop(theirs);
    let config = format!(
        "config_dir = {}\nstate_dir = {}\nlog_file = {}\n",
        lan.config_dir_str(),
        lan.state_dir_str(),
        log.display()
    );
    let rt = Runtime::register(
        ours,
        &Options {
            config,
            sync_chunks: vec![pods],
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name} registers: {e}\n{}", proc.log()));
    Launched { rt, proc, trace }
}

impl Launched {
    /// Waits (bounded) for the background re-check the registration's
    /// Synchronize started to log that it is over; returns its line.
    fn rechecked(&self, limit: Duration) -> String {
        let mut line = None;
        let done = eventually(limit, || {
            line = self
                .proc
                .log()
                .lines()
                .find(|l| l.contains("re-check of ") && l.contains(" done in "))
                .map(String::from);
            line.is_some()
        });
        assert!(done, "no end of the re-check within {limit:?}");
        line.unwrap()
    }

    fn trace_len(&self) -> usize {
        std::fs::read(&self.trace).map(|t| t.len()).unwrap_or(0)
    }

    /// The phase marks (ms since the plugin started, phase) the plugin traced
    /// after byte `from` of its stderr.
    fn marks_since(&self, from: usize) -> Vec<(f64, String)> {
        let text = std::fs::read(&self.trace).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned();
        text.lines()
            .filter_map(|l| l.strip_prefix("netattach trace:"))
            .filter_map(|l| l.trim_start().split_once(" ms "))
            .filter_map(|(t, p)| Some((t.trim().parse().ok()?, p.trim().to_string())))
            .collect()
    }

    fn last_phase_since(&self, from: usize) -> Option<String> {
        self.marks_since(from).pop().map(|(_, p)| p)
    }
}

/// The trace mark of an attach's lease commit.
const COMMITTED: &str = "leases committed";

/// A name made by the engine for a link between its creation and its rename
/// (`na<pid hex>t<n>`).
fn temporary_link_name(name: &str) -> bool {
    name.strip_prefix("na")
        .and_then(|r| r.split_once('t'))
        .is_some_and(|(pid, n)| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_hexdigit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        })
}

/// What a killed attach left, seen from the store and the pod's netns.
fn state_left(lan: &FakeLan, ns: &common::Netns, id: &str) -> &'static str {
    let leases = lan.addresses_of(id).len();
    let links = common::link_names(&ns.name);
    let eth1 = common::link_json(&ns.name, "eth1");
    let up = eth1["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP"));
    if links.iter().any(|l| temporary_link_name(l)) {
        "a link under its temporary name"
    } else if eth1.is_null() && leases == 0 {
        "nothing (killed before the lease commit)"
    } else if eth1.is_null() {
        "leases committed, no link yet"
    } else if !up || common::addrs(&ns.name, "eth1").len() < 2 {
        "eth1 renamed, being configured"
    } else if common::default_gateway(&ns.name, false).is_none()
        || common::default_gateway(&ns.name, true).is_none()
    {
        "eth1 up with its addresses, default route(s) missing"
    } else {
        "complete"
    }
}

/// SIGKILLs a launched plugin at spread points of RunPodSandbox attaches (a
/// random delay within the measured attach time after sending the request),
/// then launches it again the way the runtime would, with a Synchronize that
/// still lists the pod and its live netns, and checks what a user would once
/// the background re-check is over: exactly the requested interface with the
/// leased addresses, a unique MAC and the default routes, one lease per
/// family, no link under a temporary name in the pod or on the host side, one
/// ARP answer for the address. Every fourth pod is instead removed while the
/// plugin is dead (not listed anymore; its netns kept or gone): its leases and
/// owner mark are freed and nothing of it remains. `NETATTACH_NRI_KILL_ROUNDS`
/// (default 24) sets the rounds, `NETATTACH_NRI_KILL_SEED` the seed.
#[test]
fn a_killed_launched_plugin_leaves_nothing_its_next_start_does_not_repair() {
    if common::skip_unless_root()
        || common::skip_unless(
            common::have("arping"),
            "arping (iputils-arping) is not installed",
        )
    {
        return;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("NETATTACH_NRI_KILL_ROUNDS").unwrap_or(24) as usize;
    let seed = env("NETATTACH_NRI_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }) | 1;
    let mut rng = Rng(seed);
    let lan = FakeLan::new();
    lan.create_network(
        "pool",
        &[
            "--subnet",
            common::SUBNET4,
            "--gateway",
            common::GW4,
            "--subnet",
            common::SUBNET6,
            "--gateway",
            common::GW6,
        ],
    );
    let annotate = |pod: Pod| pod.annotate(ANNOTATION, "pool@eth1");
    let marks_dir = lan.state_dir.join("nri").join("fake-containerd");
    let marks = || -> Vec<String> {
        let mut m: Vec<String> = std::fs::read_dir(&marks_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        m.sort();
        m
    };
    let parent_mac = common::link_json(lan.host_ns(), common::PARENT)["address"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();

    // How long a RunPodSandbox takes here, warm, so the kills land all along it.
    let mut plugin = launch(&lan, "plugin-0", Vec::new());
    // Also how long it goes on after its lease commit (from its trace).
    let mut times = Vec::new();
    let mut after_commit = Vec::new();
    for i in 0..5 {
        let ns = lan.container_ns(&format!("probe{i}"));
        let pod = annotate(Pod::new(&format!("probe{i}"), ns.path_str()));
        let from = plugin.trace_len();
        let start = Instant::now();
        plugin.rt.run_pod(&pod).expect("probe RunPodSandbox");
        times.push(start.elapsed().as_micros() as u64);
        let marks = plugin.marks_since(from);
        let at = |phase: &str| marks.iter().find(|(_, p)| p == phase).map(|m| m.0);
        if let (Some(c), Some(end)) = (at(COMMITTED), at("default routes")) {
            after_commit.push(((end - c) * 1e3) as u64);
        }
        plugin.rt.remove_pod(&pod.as_sent_on_removal()).unwrap();
    }
    // The fastest: on a loaded machine most attaches take longer, and the
    // kills are to land inside them, not after.
    times.sort();
    after_commit.sort();
    let span = times[0];
    let tail = after_commit.last().copied().unwrap_or(2000) * 5 / 4;
    eprintln!(
        "seed {seed}, {rounds} rounds; attach {times:?} us, of which after the commit \
         {after_commit:?} us; kill windows: {span} us from the request, {tail} us from the commit"
    );

    // Pods alive (listed by the runtime) with their netns; netns kept of pods
    // removed while the plugin was dead.
    let mut live: Vec<(Pod, common::Netns)> = Vec::new();
    let mut removed_kept: Vec<common::Netns> = Vec::new();
    let mut left: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut phases: std::collections::BTreeMap<String, usize> = Default::default();
    let mut killed = 0;
    std::thread::scope(|scope| {
        let mut arp_checks = Vec::new();
        for round in 0..rounds {
            let ns = lan.container_ns(&format!("k{round}"));
            let pod = annotate(Pod::new(&format!("kill{round:03}"), ns.path_str()));
            let from = plugin.trace_len();
            // Even rounds: a delay from the request (most land before the
            // commit, which takes most of the time); odd ones: a delay from
            // the commit as the plugin traces it (link, configuration, route).
            let from_commit = round % 2 == 1;
            let delay = Duration::from_micros(rng.below(if from_commit { tail } else { span }));
            let answer = std::thread::scope(|s| {
                let rt = &plugin.rt;
                let run = s.spawn(|| rt.run_pod(&pod));
                if from_commit {
                    let limit = Instant::now() + Duration::from_secs(2);
                    while !plugin.marks_since(from).iter().any(|(_, p)| p == COMMITTED)
                        && !run.is_finished()
                        && Instant::now() < limit
                    {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
                std::thread::sleep(delay);
                let _ = plugin.proc.child.kill();
                let _ = plugin.proc.child.wait();
                run.join().unwrap()
            });
            if answer.is_err() {
                killed += 1;
            }
            let phase = plugin
                .last_phase_since(from)
                .unwrap_or_else(|| "(none)".into());
            *phases.entry(phase.clone()).or_default() += 1;
            let what = state_left(&lan, &ns, &pod.id);
            *left.entry(what).or_default() += 1;
            let leased_at_kill = lan.addresses_of(&pod.id);
            eprintln!(
                "round {round}: killed {} us after {} ({}), last mark {phase:?}: {what}",
                delay.as_micros(),
                if from_commit { "the commit" } else { "sending" },
                if answer.is_ok() {
                    "answered first"
                } else {
                    "unanswered"
                },
            );

            // The runtime's view when it launches the plugin again.
            let removed = round % 4 == 3;
            if removed {
                if (round / 4) % 2 == 0 {
                    removed_kept.push(ns);
                } else {
                    drop(ns);
                }
            } else {
                live.push((pod.clone(), ns));
            }
            let listed: Vec<Pod> = live.iter().map(|(p, _)| p.clone()).collect();
            plugin = launch(&lan, &format!("plugin-{}", round + 1), listed);
            let done = plugin.rechecked(Duration::from_secs(20));
            let log = plugin.proc.log();
            assert!(
                !log.contains(" WARN ") && !log.contains(" ERROR "),
                "round {round}: {done}\n{log}"
            );

            check_restarted(
                &lan,
                &format!("round {round}"),
                &live,
                &removed_kept,
                &marks(),
                &parent_mac,
            );
            if removed {
                // Its addresses left the wire with its leases.
                for a in leased_at_kill.iter().filter(|a| !a.contains(':')) {
                    let (lan, a) = (&lan, a.clone());
                    arp_checks.push(scope.spawn(move || {
                        (
                            a.clone(),
                            Default::default(),
                            common::arp_answerers(lan, &a),
                        )
                    }));
                }
            } else {
                let v4: Vec<String> = lan
                    .addresses_of(&pod.id)
                    .into_iter()
                    .filter(|a| !a.contains(':'))
                    .collect();
                let mac = common::link_json(&live.last().unwrap().1.name, "eth1")["address"]
                    .as_str()
                    .unwrap()
                    .to_ascii_lowercase();
                let (lan, a) = (&lan, v4[0].clone());
                arp_checks.push(scope.spawn(move || {
                    (
                        a.clone(),
                        std::collections::BTreeSet::from([mac]),
                        common::arp_answerers(lan, &a),
                    )
                }));
            }
        }
        for check in arp_checks {
            let (address, expected, answered) = check.join().unwrap();
            assert_eq!(answered, expected, "ARP answers for {address}");
        }
    });
    eprintln!("{killed} of {rounds} RunPodSandbox killed unanswered");
    eprintln!("last phase mark at the kill: {phases:?}");
    eprintln!("what the kills left: {left:?}");
    assert!(killed > rounds / 3, "the kills must land inside attaches");

    // The narrowest windows, made by hand as a kill leaves them, so that they
    // are checked on every run: pod A's link up with its addresses and no
    // default route yet; a link under a dead plugin's temporary name beside
    // pod B's interface, and in the netns of pod C, removed meanwhile.
    if live.len() >= 3 {
        let dead = plugin.proc.pid();
        let _ = plugin.proc.child.kill();
        let _ = plugin.proc.child.wait();
        let a = &live[0].1;
        a.ip(&["route", "del", "default"]);
        a.ip(&["-6", "route", "del", "default"]);
        let (_, c) = live.pop().unwrap();
        for (i, ns) in [&live[1].1, &c].into_iter().enumerate() {
            let temporary = format!("na{dead:x}t{}", 9990 + i);
            lan.host.ip(&[
                "link",
                "add",
                "link",
                common::PARENT,
                "name",
                &temporary,
                "netns",
                &ns.name,
                "type",
                "macvlan",
            ]);
        }
        removed_kept.push(c);
        let listed: Vec<Pod> = live.iter().map(|(p, _)| p.clone()).collect();
        plugin = launch(&lan, "plugin-last", listed);
        let done = plugin.rechecked(Duration::from_secs(20));
        let log = plugin.proc.log();
        assert!(
            !log.contains(" WARN ") && !log.contains(" ERROR "),
            "{done}\n{log}"
        );
        check_restarted(
            &lan,
            "hand-made windows",
            &live,
            &removed_kept,
            &marks(),
            &parent_mac,
        );
    }

    // The last plugin serves the runtime: removals free everything.
    for (p, _) in &live {
        plugin.rt.remove_pod(&p.as_sent_on_removal()).unwrap();
    }
    assert_eq!(lan.leases_json().as_array().unwrap().len(), 0);
    assert!(marks().is_empty(), "{:?}", marks());
    for (_, pns) in &live {
        common::assert_bare(pns);
    }
    assert_clean_framing(&plugin.rt);
    plugin.rt.close();
    assert!(
        eventually(Duration::from_secs(10), || !plugin.proc.alive()),
        "the launched plugin exits when the runtime closes the connection"
    );
}

/// What a user checks once the re-check of a restarted plugin is over: each
/// listed pod has exactly its interface with the leased addresses (one per
/// family), a MAC of its own and the default routes; the store holds leases
/// and owner marks of the listed pods only; the netns kept of removed pods
/// and the host side hold nothing of ours.
fn check_restarted(
    lan: &FakeLan,
    label: &str,
    live: &[(Pod, common::Netns)],
    removed_kept: &[common::Netns],
    marks: &[String],
    parent_mac: &str,
) {
    // The store: one lease per family for each listed pod, nothing else.
    let leases = lan.leases_json();
    let leases = leases.as_array().unwrap();
    let mut owners: Vec<&str> = leases
        .iter()
        .map(|l| l["owner"].as_str().unwrap())
        .collect();
    owners.sort();
    owners.dedup();
    let mut expected: Vec<&str> = live.iter().map(|(p, _)| p.id.as_str()).collect();
    expected.sort();
    assert_eq!(owners, expected, "{label}: lease owners");
    assert_eq!(leases.len(), 2 * live.len(), "{label}: {leases:?}");
    let addresses: std::collections::HashSet<&str> = leases
        .iter()
        .map(|l| l["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses.len(), leases.len(), "{label}: duplicates");
    let ids: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(marks, ids, "{label}: owner marks");

    // Each listed pod: exactly its interface, as leased, routed.
    let mut macs = std::collections::HashSet::new();
    for (p, pns) in live {
        let mut names = common::link_names(&pns.name);
        names.sort();
        assert_eq!(names, vec!["eth1", "lo"], "{label}: pod {}", p.id);
        let link = common::link_json(&pns.name, "eth1");
        assert_eq!(link["linkinfo"]["info_kind"], "macvlan");
        assert!(
            link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{label}: pod {} eth1 down: {link}",
            p.id
        );
        let mac = link["address"].as_str().unwrap().to_ascii_lowercase();
        assert_ne!(mac, parent_mac);
        assert!(macs.insert(mac.clone()), "{label}: MAC {mac} twice");
        let mut inside = common::addrs(&pns.name, "eth1");
        inside.sort();
        let mut leased: Vec<String> = leases
            .iter()
            .filter(|l| l["owner"] == p.id.as_str())
            .map(|l| format!("{}/{}", l["address"].as_str().unwrap(), l["prefix_len"]))
            .collect();
        leased.sort();
        assert_eq!(inside, leased, "{label}: pod {} addresses", p.id);
        for (v6, gw) in [(false, common::GW4), (true, common::GW6)] {
            let routes = common::routes_json(&pns.name, v6);
            let defaults: Vec<_> = routes
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["dst"] == "default")
                .collect();
            assert!(
                defaults.len() == 1 && defaults[0]["gateway"] == gw && defaults[0]["dev"] == "eth1",
                "{label}: pod {} default route (v6 {v6}): {routes}",
                p.id
            );
        }
    }
    // Nothing of the removed pods, nothing on the host side.
    for kept in removed_kept {
        assert_eq!(
            common::link_names(&kept.name),
            vec!["lo"],
            "{label}: links left in {} of a removed pod",
            kept.name
        );
    }
    let mut host = lan.host_links();
    host.sort();
    assert_eq!(host, vec!["lan0", "lo"], "{label}: host side");
}

/// A small xorshift generator: the test needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The host key's `mod_revision` in etcd (changes with every heartbeat).
fn host_key_revision(lan: &FakeLan, etcd: &etcd_harness::Etcd, network: &str, host: &str) -> i64 {
    let url = etcd.url();
    let key = format!("/netattach/v1/networks/{network}/hosts/{host}");
    etcd_harness::in_netns(lan.host_ns(), || {
        let client = netattach::etcd::Client::new(&[url], Default::default()).unwrap();
        client
            .get(key.as_bytes())
            .unwrap()
            .map_or(0, |kv| kv.mod_revision)
    })
}

#[test]
fn the_plugin_heartbeats_shared_networks_from_its_own_thread() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.host.ip(&["link", "set", "lo", "up"]);
    let Some(etcd) = etcd_harness::Etcd::start_in_netns_or_skip(lan.host_ns(), "127.0.0.1") else {
        return;
    };
    let url = etcd.url();
    lan.netattach_ok(&[
        "network",
        "create",
        "--etcd",
        &url,
        "--host-id",
        "node1",
        "--subnet",
        "192.168.32.0/24",
        "--ip-range",
        "192.168.32.64/26",
        "-o",
        &format!("parent={}", lan.parent),
        "shared",
    ]);
    let joined = host_key_revision(&lan, &etcd, "shared", "node1");
    assert!(joined > 0);
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    // Registration ends with Synchronize, which asks the etcd thread for a
    // round: a heartbeat, with no pod started.
    let rt = accept(&listener, &Options::default());
    assert!(
        eventually(Duration::from_secs(5), || {
            host_key_revision(&lan, &etcd, "shared", "node1") > joined
        }),
        "no heartbeat after Synchronize; log:\n{}",
        plugin.log()
    );
    // A pod on the shared network gets an address of this host's block.
    let ns = lan.container_ns("p");
    let pod = Pod::new("podshared", ns.path_str()).annotate(ANNOTATION, "shared");
    rt.run_pod(&pod).unwrap();
    let addrs = common::addrs(&ns.name, "eth0");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(addrs[0].starts_with("192.168.32."), "{addrs:?}");
    let ls = lan.netattach_ok(&["host", "ls", "--json", "shared"]);
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let blocks = v[0]["hosts"][0]["blocks"].as_array().unwrap().clone();
    assert_eq!(blocks.len(), 1, "{ls}");
    rt.remove_pod(&pod).unwrap();
    assert!(lan.addresses_of("podshared").is_empty());
    assert!(
        !plugin.log().contains("ERROR"),
        "plugin log:\n{}",
        plugin.log()
    );
    assert_clean_framing(&rt);
}

#[test]
fn the_plugin_repairs_pods_when_their_parent_comes_back() {
    if common::skip_unless_root() {
        return;
    }
    let lan = lan_with_network();
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());
    let ns = lan.container_ns("p");
    let pod = Pod::new("podrepair", ns.path_str()).annotate(ANNOTATION, "lan@eth1");
    rt.run_pod(&pod).unwrap();
    let before = common::addrs(&ns.name, "eth1");
    let mac = common::link_json(&ns.name, "eth1")["address"].clone();
    assert!(in_lan(&before), "{before:?}");
    // The parent goes away (its macvlans with it) and comes back.
    lan.recreate_parent();
    assert!(
        eventually(Duration::from_secs(5), || common::addrs(&ns.name, "eth1")
            == before),
        "not repaired; log:\n{}",
        plugin.log()
    );
    assert_eq!(common::link_json(&ns.name, "eth1")["address"], mac);
    assert!(common::ping_from(&ns.name, &lan.gw4));
    assert!(
        plugin.log().contains("repair: pod podrepair"),
        "{}",
        plugin.log()
    );
    rt.remove_pod(&pod).unwrap();
    assert_clean_framing(&rt);
}

#[test]
fn a_recreated_pod_gets_its_stable_mac_back() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &["-o", "mac_policy=stable"]);
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let _plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());
    // The same pod (namespace/name) twice, with new sandbox ids.
    let first_ns = lan.container_ns("p1");
    let first = Pod {
        name: "web-0".into(),
        ..Pod::new("sandbox1", first_ns.path_str()).annotate(ANNOTATION, "lan@eth1")
    };
    rt.run_pod(&first).unwrap();
    let mac = common::link_json(&first_ns.name, "eth1")["address"].clone();
    rt.remove_pod(&first).unwrap();
    let again_ns = lan.container_ns("p2");
    let again = Pod {
        name: "web-0".into(),
        ..Pod::new("sandbox2", again_ns.path_str()).annotate(ANNOTATION, "lan@eth1")
    };
    rt.run_pod(&again).unwrap();
    assert_eq!(common::link_json(&again_ns.name, "eth1")["address"], mac);
    // Another pod of that namespace gets another MAC.
    let other_ns = lan.container_ns("p3");
    let other = Pod::new("sandbox3", other_ns.path_str()).annotate(ANNOTATION, "lan@eth1");
    rt.run_pod(&other).unwrap();
    assert_ne!(common::link_json(&other_ns.name, "eth1")["address"], mac);
    assert_clean_framing(&rt);
}

/// An `ipam dhcp` network under NRI: the plugin is its own DHCP client. The
/// runtime's default request timeout (2 s, of which the plugin keeps a
/// quarter and 1 s to roll back) leaves half a second for the server, so
/// dnsmasq answers without its ping check here; see docs/dhcp.md.
#[test]
fn a_pod_gets_its_address_from_the_lans_dhcp_server_and_gives_it_back() {
    if common::skip_unless_root()
        || common::skip_unless(common::have("dnsmasq"), "needs dnsmasq (dnsmasq-base)")
    {
        return;
    }
    let lan = FakeLan::new();
    lan.netattach_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=lan0",
        "--ipam",
        "dhcp",
        "lan",
    ]);
    let dnsmasq = common::dnsmasq::Dnsmasq::start(&lan, &["--no-ping"]);
    let sock = lan.dir.path().join("nri.sock");
    let listener = listen(&sock);
    let plugin = start_external(Some(&lan), lan.dir.path(), &sock);
    let rt = accept(&listener, &Options::default());
    let ns = lan.container_ns("d1");
    let pod = Pod {
        name: "web-0".into(),
        ..Pod::new("sandbox-d1", ns.path_str()).annotate(ANNOTATION, "lan@eth1")
    };
    rt.run_pod(&pod).unwrap();
    let mac = common::link_json(&ns.name, "eth1")["address"]
        .as_str()
        .unwrap()
        .to_string();
    let (leased, _) = dnsmasq
        .lease_of(&mac)
        .expect("dnsmasq leased to the pod's MAC");
    assert_eq!(common::addrs(&ns.name, "eth1")[0], format!("{leased}/24"));
    assert_eq!(
        common::default_gateway(&ns.name, false).as_deref(),
        Some(common::GW4)
    );
    assert!(common::ping_from(&ns.name, common::GW4));
    // The pod name is the host name the server knows it by.
    assert!(
        dnsmasq.log_text().contains("client provides name: web-0"),
        "{}",
        dnsmasq.log_text()
    );
    rt.stop_pod(&pod).unwrap();
    rt.remove_pod(&pod).unwrap();
    assert_eq!(
        dnsmasq.lease_of(&mac),
        None,
        "released at stop: {}",
        plugin.log()
    );
    assert!(lan.leases_json().as_array().unwrap().is_empty());
    assert_clean_framing(&rt);
}
