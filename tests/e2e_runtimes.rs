//! End to end through the real runtimes: runc and crun (hooks in the bundle's
//! config.json) and podman (hooks.d). Each test builds its own fake LAN
//! (tests/common), starts one container that holds a static address and must
//! reach the gateway, then checks that bad requests make the runtime refuse
//! to start the container with the reason, leaving no lease, link or netns.
//!
//! Needs root, iproute2, nsenter and the runtimes (scripts/install-deps.sh).
//! Without them a test prints `SKIP: ...` and passes, unless
//! `NETATTACH_TESTS_STRICT=1` (scripts/test.sh) makes that a failure.

mod common;

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{stderr, stdout, text, FakeLan};

/// The container that holds an address while the refusals are tried.
const HOLDER_IP: &str = "192.168.32.140";
const HOLDER_MAC: &str = "02:00:c0:a8:20:8c";
/// Printed by the holder once it has looked at its network and pinged the gateway.
const DONE_MARK: &str = "NETATTACH-E2E-DONE";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runtime {
    Runc,
    Crun,
    Podman,
}

impl Runtime {
    fn program(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Podman => "podman",
        }
    }
}

/// One runtime on one fake LAN with network `lan` defined. Containers it
/// started are force-removed on drop, before the LAN's netns and dirs go.
struct Harness {
    rt: Runtime,
    /// Runtime state (`--root` of runc/crun) or podman's config+storage folder.
    rt_dir: PathBuf,
    rootfs: PathBuf,
    /// For podman: the generated hooks.d folder.
    hooks_dir: PathBuf,
    started: RefCell<Vec<String>>,
    lan: FakeLan,
}

impl Harness {
    fn new(rt: Runtime) -> Harness {
        let lan = FakeLan::new();
        lan.create_network("lan", &[]);
        let dir = lan.dir.path().to_path_buf();
        let rootfs = dir.join("rootfs");
        let rt_dir = dir.join(format!("{}-state", rt.program()));
        let hooks_dir = dir.join("hooks.d");
        std::fs::create_dir_all(&rt_dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-rootfs.sh");
        let mut args: Vec<&Path> = Vec::new();
        if rt == Runtime::Podman {
            args.push(Path::new("--podman"));
            args.push(&rt_dir);
        }
        args.push(&rootfs);
        let out = Command::new(&script)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/make-rootfs.sh");
        assert!(out.status.success(), "make-rootfs.sh: {}", text(&out));
        let h = Harness {
            rt,
            rt_dir,
            rootfs,
            hooks_dir,
            started: RefCell::new(Vec::new()),
            lan,
        };
        if rt == Runtime::Podman {
            h.write_hooks_dir();
        }
        h
    }

    /// The hook entries the runtime runs: the binary under test, the fake
    /// LAN's config and state dirs in the hook's env.
    fn hook(&self, verb: &str) -> Value {
        json!({
            "path": common::bin(),
            "args": ["netattach", "hook", verb],
            "env": self.lan.env_vars(),
        })
    }

    /// podman: hooks.d files like the shipped ones, pointing at the test binary.
    fn write_hooks_dir(&self) {
        std::fs::create_dir_all(&self.hooks_dir).unwrap();
        for (file, stage, verb) in [
            ("netattach.json", "createRuntime", "attach"),
            ("netattach-poststop.json", "poststop", "release"),
        ] {
            let doc = json!({
                "version": "1.0.0",
                "hook": self.hook(verb),
                "when": {"annotations": {"^netattach/networks$": ".+"}},
                "stages": [stage],
            });
            std::fs::write(
                self.hooks_dir.join(file),
                serde_json::to_string_pretty(&doc).unwrap(),
            )
            .unwrap();
        }
    }

    /// A runc/crun bundle for container `id` with the request annotation.
    fn bundle(&self, id: &str, request: &str, script: &str) -> PathBuf {
        let bundle = self.lan.dir.path().join(format!("bundle-{id}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = bundle.join("config.json");
        common::run_ok("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
        let mut config: Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
        config["root"] = json!({"path": self.rootfs, "readonly": true});
        config["hostname"] = json!(id);
        let process = &mut config["process"];
        process["terminal"] = json!(false);
        process["args"] = json!(["sh", "-c", script]);
        // busybox ping needs a raw socket.
        for set in ["bounding", "effective", "permitted"] {
            process["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_NET_RAW"));
        }
        let mut annotations = json!({"netattach/networks": request});
        if self.rt == Runtime::Crun {
            // crun discards a hook's stderr unless told where to write it.
            annotations["run.oci.hooks.stderr"] = json!("/dev/stderr");
        }
        config["annotations"] = annotations;
        config["hooks"] = json!({
            "createRuntime": [self.hook("attach")],
            "poststop": [self.hook("release")],
        });
        std::fs::write(&spec, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        bundle
    }

    /// The runtime's command line, run in the fake host's netns.
    fn command(&self, args: &[&str]) -> Command {
        let rt_dir = self.rt_dir.to_str().unwrap();
        match self.rt {
            Runtime::Runc => {
                let mut cmd = self.lan.command_in_host("runc");
                cmd.args(["--root", rt_dir]).args(args);
                cmd
            }
            Runtime::Crun => {
                // crun refuses hybrid cgroups: hide the cgroup2 mount in a
                // private mount namespace (TEST-ENV.md), for every verb.
                let mut cmd = self.lan.command_in_host("unshare");
                cmd.args([
                    "-m",
                    "sh",
                    "-c",
                    "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 1; fi; exec \"$0\" \"$@\"",
                    "crun",
                    "--root",
                    rt_dir,
                ])
                .args(args);
                cmd
            }
            Runtime::Podman => {
                let mut cmd = self.lan.command_in_host("podman");
                cmd.env("CONTAINERS_STORAGE_CONF", self.rt_dir.join("storage.conf"))
                    .env("CONTAINERS_CONF", self.rt_dir.join("containers.conf"))
                    .args(args);
                cmd
            }
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run the runtime")
    }

    /// podman run arguments shared by all podman starts.
    fn podman_run_args(&self, name: &str, request: &str) -> Vec<String> {
        vec![
            "run".into(),
            "--name".into(),
            name.into(),
            "--network=none".into(),
            "--hooks-dir".into(),
            self.hooks_dir.to_str().unwrap().into(),
            "--annotation".into(),
            podman_annotation("netattach/networks", request),
        ]
    }

    /// Starts `name` in the background running `script`; returns the
    /// container id (the lease owner).
    fn start_detached(&self, name: &str, request: &str, script: &str) -> String {
        self.started.borrow_mut().push(name.to_string());
        match self.rt {
            Runtime::Runc | Runtime::Crun => {
                let bundle = self.bundle(name, request, script);
                // Detached, the container keeps runc's stdio: give it a file,
                // not a pipe that `output()` would wait on.
                let log = self.log_path(name);
                let out = self
                    .command(&["run", "-d", "--bundle", bundle.to_str().unwrap(), name])
                    .stdout(File::create(&log).unwrap())
                    .stderr(File::options().append(true).open(&log).unwrap())
                    .status()
                    .expect("run the runtime");
                assert!(
                    out.success(),
                    "{} run -d {name} failed: {}",
                    self.rt.program(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                name.to_string()
            }
            Runtime::Podman => {
                let mut args = self.podman_run_args(name, request);
                args.insert(1, "-d".into());
                args.extend(["localhost/netattach-busybox", "sh", "-c", script].map(String::from));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = self.output(&args);
                assert!(out.status.success(), "podman run -d failed: {}", text(&out));
                stdout(&out).trim().to_string()
            }
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.lan.dir.path().join(format!("{name}.log"))
    }

    /// What the detached container printed so far.
    fn logs(&self, name: &str) -> String {
        match self.rt {
            Runtime::Runc | Runtime::Crun => {
                std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
            }
            Runtime::Podman => {
                let out = self.output(&["logs", name]);
                format!("{}{}", stdout(&out), stderr(&out))
            }
        }
    }

    /// Waits until the container printed `mark` (10 s at most).
    fn wait_logs(&self, name: &str, mark: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs(name);
            if logs.contains(mark) || Instant::now() > deadline {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `name` in the foreground (the way a user would) with a request
    /// that must be refused; returns the runtime's output.
    fn run_refused(&self, name: &str, request: &str) -> Output {
        self.started.borrow_mut().push(name.to_string());
        let out = match self.rt {
            Runtime::Runc | Runtime::Crun => {
                let bundle = self.bundle(name, request, "true");
                self.output(&["run", "--bundle", bundle.to_str().unwrap(), name])
            }
            Runtime::Podman => {
                let mut args = self.podman_run_args(name, request);
                args.insert(1, "--rm".into());
                args.extend(["localhost/netattach-busybox", "true"].map(String::from));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.output(&args)
            }
        };
        assert!(
            !out.status.success(),
            "{} started {name} with request {request}: {}",
            self.rt.program(),
            text(&out)
        );
        out
    }

    /// True if the runtime still knows container `name`.
    fn exists(&self, name: &str) -> bool {
        match self.rt {
            Runtime::Runc | Runtime::Crun => self.output(&["state", name]).status.success(),
            Runtime::Podman => self.output(&["container", "exists", name]).status.success(),
        }
    }

    /// Force-removes `name` (its poststop hook releases the leases).
    fn delete(&self, name: &str) -> Output {
        match self.rt {
            Runtime::Runc | Runtime::Crun => self.output(&["delete", "-f", name]),
            Runtime::Podman => self.output(&["rm", "-f", "-t", "0", name]),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for name in self.started.borrow().iter().rev() {
            if self.exists(name) {
                let _ = self.delete(name);
            }
        }
    }
}

/// podman parses `--annotation` as CSV (a string-slice flag): a value with
/// commas or quotes (the JSON form) must be quoted CSV-style, `"` doubled.
fn podman_annotation(key: &str, value: &str) -> String {
    let kv = format!("{key}={value}");
    if kv.contains([',', '"']) {
        format!("\"{}\"", kv.replace('"', "\"\""))
    } else {
        kv
    }
}

/// Leases as (owner, address) pairs.
fn leases(lan: &FakeLan) -> Vec<(String, String)> {
    lan.leases_json()
        .as_array()
        .expect("lease ls --json is an array")
        .iter()
        .map(|l| {
            (
                l["owner"].as_str().unwrap_or_default().to_string(),
                l["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Network namespaces that appeared since `before`, other than the fake
/// LANs of tests running in parallel (`na<pid>-<n>...`).
fn new_netns(before: &[String]) -> Vec<String> {
    common::netns_names()
        .into_iter()
        .filter(|n| !before.contains(n) && !n.starts_with("na"))
        .collect()
}

fn host_links_sorted(lan: &FakeLan) -> Vec<String> {
    let mut links = lan.host_links();
    links.sort();
    links
}

fn skip_without(rt: Runtime) -> bool {
    common::skip_unless_root()
        || common::skip_unless(
            common::have(rt.program()),
            &format!("{} not installed", rt.program()),
        )
        || common::skip_unless(common::have("busybox"), "busybox-static not installed")
        || (rt == Runtime::Crun && common::skip_unless(common::have("unshare"), "needs unshare"))
}

/// The whole scenario for one runtime.
fn scenario(rt: Runtime) {
    let h = Harness::new(rt);
    let lan = &h.lan;
    let tag = lan.tag.clone();
    let gw = lan.gw4.clone();

    // 1. A container with a static address and MAC reaches the gateway.
    let holder_name = format!("na{tag}hold");
    let request = json!([{
        "name": "lan",
        "interface": "eth0",
        "ips": [format!("{HOLDER_IP}/24")],
        "mac": HOLDER_MAC,
    }])
    .to_string();
    let script = format!(
        "ip -o link show eth0; ip -o addr show eth0; ip route; \
         if ping -c1 -W2 {gw}; then echo PING-OK; else echo PING-FAILED; fi; \
         echo {DONE_MARK}; exec sleep 600"
    );
    let holder = h.start_detached(&holder_name, &request, &script);
    let logs = h.wait_logs(&holder_name, DONE_MARK);
    assert!(
        logs.contains(DONE_MARK),
        "{rt:?}: holder printed no result: {logs}"
    );
    eprintln!("{rt:?} holder {holder}:\n{logs}");
    assert!(
        logs.contains(&format!("inet {HOLDER_IP}/24")),
        "{rt:?}: eth0 lacks {HOLDER_IP}/24: {logs}"
    );
    assert!(
        logs.contains(HOLDER_MAC),
        "{rt:?}: eth0 lacks MAC {HOLDER_MAC}: {logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.starts_with(&format!("default via {gw} dev eth0"))),
        "{rt:?}: no default route via {gw}: {logs}"
    );
    assert!(
        logs.contains("PING-OK"),
        "{rt:?}: ping to the gateway failed: {logs}"
    );
    // The LAN reaches the container too.
    assert!(
        common::ping_from(lan.ext_ns(), HOLDER_IP),
        "{rt:?}: gateway cannot ping {HOLDER_IP}"
    );
    let held = leases(lan);
    assert_eq!(
        held,
        vec![(holder.clone(), HOLDER_IP.to_string())],
        "{rt:?}: leases while the holder runs"
    );
    assert_eq!(
        host_links_sorted(lan),
        ["lan0", "lo"],
        "{rt:?}: host-side links"
    );

    // 2. Refusals, while the holder runs.
    let netns_before = common::netns_names();
    let long_if = "abcdefghijklmnop"; // 16 bytes
    let cases: [(&str, String, Vec<String>); 5] = [
        ("unknown", "nosuchnet".to_string(), vec!["nosuchnet".into()]),
        (
            "outside",
            json!([{"name": "lan", "ips": ["10.9.8.7/24"]}]).to_string(),
            vec!["10.9.8.7".into()],
        ),
        (
            "taken",
            json!([{"name": "lan", "ips": [format!("{HOLDER_IP}/24")]}]).to_string(),
            // names the address and who holds it
            vec![HOLDER_IP.into(), holder[..holder.len().min(12)].to_string()],
        ),
        (
            "badmac",
            json!([{"name": "lan", "mac": "03:00:00:00:00:01"}]).to_string(),
            vec!["03:00:00:00:00:01".into()],
        ),
        ("longif", format!("lan@{long_if}"), vec![long_if.into()]),
    ];
    for (case, request, reasons) in &cases {
        let name = format!("na{tag}{case}");
        let out = h.run_refused(&name, request);
        let err = stderr(&out);
        for reason in reasons {
            assert!(
                err.contains(reason.as_str()),
                "{rt:?} {case}: the runtime's message does not name `{reason}`: {}",
                text(&out)
            );
        }
        assert!(!h.exists(&name), "{rt:?} {case}: container left behind");
        assert_eq!(
            leases(lan),
            held,
            "{rt:?} {case}: leases changed by a refused container"
        );
        assert_eq!(
            host_links_sorted(lan),
            ["lan0", "lo"],
            "{rt:?} {case}: host-side links"
        );
        assert_eq!(
            new_netns(&netns_before),
            Vec::<String>::new(),
            "{rt:?} {case}: stray netns"
        );
        eprintln!("{rt:?} {case}: refused: {}", err.trim());
    }

    // 3. Removing the holder releases its lease.
    let out = h.delete(&holder_name);
    assert!(
        out.status.success(),
        "{rt:?}: delete holder: {}",
        text(&out)
    );
    assert!(!h.exists(&holder_name), "{rt:?}: holder still exists");
    assert_eq!(leases(lan), vec![], "{rt:?}: lease kept after delete");
    assert_eq!(
        host_links_sorted(lan),
        ["lan0", "lo"],
        "{rt:?}: host-side links at the end"
    );
}

#[test]
fn runc_attach_and_refusals() {
    if skip_without(Runtime::Runc) {
        return;
    }
    scenario(Runtime::Runc);
}

#[test]
fn crun_attach_and_refusals() {
    if skip_without(Runtime::Crun) {
        return;
    }
    scenario(Runtime::Crun);
}

#[test]
fn podman_attach_and_refusals() {
    if skip_without(Runtime::Podman) {
        return;
    }
    scenario(Runtime::Podman);
}

/// Pooled addressing through runc: two containers on one pool get different
/// addresses, reach each other and the gateway, and `runc delete` frees both.
#[test]
fn runc_two_pooled_containers() {
    if skip_without(Runtime::Runc) {
        return;
    }
    let h = Harness::new(Runtime::Runc);
    let lan = &h.lan;
    let script = format!("ip -o -4 addr show eth0; echo {DONE_MARK}; exec sleep 600");
    let names = [format!("na{}p1", lan.tag), format!("na{}p2", lan.tag)];
    let mut addresses = Vec::new();
    for name in &names {
        h.start_detached(name, "lan", &script);
        let logs = h.wait_logs(name, DONE_MARK);
        let leased = leases(lan)
            .into_iter()
            .filter(|(owner, _)| owner == name)
            .map(|(_, address)| address)
            .collect::<Vec<_>>();
        assert_eq!(leased.len(), 1, "{name}: {leased:?}");
        let address = leased[0].split('/').next().unwrap().to_string();
        assert!(
            logs.contains(&format!("inet {}/24 ", leased[0])),
            "{name} lacks {}: {logs}",
            leased[0]
        );
        addresses.push(address);
    }
    assert_ne!(addresses[0], addresses[1], "two containers, one address");
    // Traffic from inside each container's own netns.
    for (i, name) in names.iter().enumerate() {
        let state: Value = serde_json::from_slice(&h.output(&["state", name]).stdout).unwrap();
        let netns = format!("--net=/proc/{}/ns/net", state["pid"]);
        for target in [lan.gw4.as_str(), addresses[1 - i].as_str()] {
            let out = common::run("nsenter", &[&netns, "ping", "-c1", "-W2", target]);
            assert!(
                out.status.success(),
                "{name} cannot reach {target}: {}",
                text(&out)
            );
        }
    }
    for name in &names {
        let out = h.delete(name);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(
        leases(lan).is_empty(),
        "leases left after runc delete: {:?}",
        leases(lan)
    );
}

/// The shipped hooks.d files are oci-hooks 1.0.0 and fire only on the annotation.
#[test]
fn shipped_hooks_d_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d");
    for (file, stage, verb) in [
        ("netattach.json", "createRuntime", "attach"),
        ("netattach-poststop.json", "poststop", "release"),
    ] {
        let raw = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let doc: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(doc["version"], "1.0.0", "{file}");
        assert_eq!(doc["stages"], json!([stage]), "{file}");
        assert_eq!(doc["hook"]["path"], "/usr/local/bin/netattach", "{file}");
        assert_eq!(
            doc["hook"]["args"],
            json!(["netattach", "hook", verb]),
            "{file}"
        );
        assert_eq!(
            doc["when"]["annotations"],
            json!({"^netattach/networks$": ".+"}),
            "{file}"
        );
    }
}
