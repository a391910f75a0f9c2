//! Shared fixture for the root-only integration tests: a fake LAN in network
//! namespaces of the test's own, so nothing touches the host's interfaces.
//!
//! ```text
//!  na<tag>h ("host side")                na<tag>x ("ext", the LAN)
//!  lan0 (veth, macvlan parent) <------> gw0 192.168.32.254/24
//!                                           2001:db8:32::fe/64 (nodad)
//! ```
//!
//! `netattach` and the runtimes run in the host-side netns with
//! `nsenter --net=/run/netns/na<tag>h` (not `ip netns exec`, which remounts
//! /sys and hides the cgroup mounts runc needs). Everything a fixture created
//! is removed in `Drop`, also when the test panics.
//!
//! Use it from a test file with `mod common;`:
//!
//! ```ignore
//! #[test]
//! fn attaches() {
//!     if common::skip_unless_root() {
//!         return;
//!     }
//!     let lan = common::FakeLan::new();
//!     lan.create_network("lan", &[]);
//!     let c = lan.container_ns("c1");
//!     let out = lan.netattach(&["attach", "--netns", c.path_str(), "lan", "--ip", "192.168.32.10"]);
//!     assert!(out.status.success(), "{}", common::text(&out));
//!     assert!(common::ping_from(&c.name, common::GW4));
//! }
//! ```
#![allow(dead_code)]

pub mod dnsmasq;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The fake LAN's IPv4 subnet and gateway (the gateway lives in the ext netns).
pub const SUBNET4: &str = "192.168.32.0/24";
pub const GW4: &str = "192.168.32.254";
/// The fake LAN's IPv6 subnet and gateway.
pub const SUBNET6: &str = "2001:db8:32::/64";
pub const GW6: &str = "2001:db8:32::fe";
/// Name of the macvlan parent in the host-side netns.
pub const PARENT: &str = "lan0";

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_netattach")
}

/// True when the tests run as root (read from /proc, std only).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// True if `prog` is found on PATH (or is an executable path).
pub fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Returns true (after printing `SKIP: reason`) when the test should return
/// early because `ok` is false. With `NETATTACH_TESTS_STRICT=1` (set by
/// scripts/test.sh and CI) a missing prerequisite is a failure instead.
pub fn skip_unless(ok: bool, reason: &str) -> bool {
    if ok {
        return false;
    }
    if std::env::var("NETATTACH_TESTS_STRICT").is_ok_and(|v| v == "1") {
        panic!("prerequisite missing (NETATTACH_TESTS_STRICT=1): {reason}");
    }
    eprintln!("SKIP: {reason}");
    true
}

/// `if common::skip_unless_root() { return; }` at the top of a root-only test.
pub fn skip_unless_root() -> bool {
    skip_unless(is_root(), "needs root (network namespaces)")
        || skip_unless(have("ip"), "needs iproute2 `ip`")
        || skip_unless(have("nsenter"), "needs util-linux `nsenter`")
}

/// A unique tag for this process and call: `<pid hex>-<n>`.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{n}", std::process::id())
}

/// Runs a command and returns its output (stdin closed).
pub fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs a command and panics with its output if it fails.
pub fn run_ok(prog: &str, args: &[&str]) -> Output {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "`{prog} {}` failed: {}",
        args.join(" "),
        text(&out)
    );
    out
}

/// stdout and stderr of an output, for assertion messages and matching.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    /// Creates the netns (replacing a stale one of the same name) with `lo` up.
    pub fn new(name: &str) -> Netns {
        let path = PathBuf::from("/run/netns").join(name);
        if path.exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
        run_ok("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
            path,
        };
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 netns path")
    }

    /// `ip -n NAME args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's fake LAN: the host-side netns holding the parent `lan0`, the
/// ext netns holding the gateway, and private config and state dirs.
pub struct FakeLan {
    /// Unique tag of this fixture; names start with `na<tag>`.
    pub tag: String,
    /// Host-side netns (`na<tag>h`): the macvlan parent lives here and
    /// netattach and the runtimes run here.
    pub host: Netns,
    /// The LAN with the gateway (`na<tag>x`); its veth end is `gw0`.
    pub ext: Netns,
    /// Name of the macvlan parent in `host`.
    pub parent: String,
    pub gw4: String,
    pub gw6: String,
    /// Work dir of the test (config, state, bundles...), removed on drop.
    pub dir: TempDir,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl FakeLan {
    pub fn new() -> FakeLan {
        let tag = unique_tag();
        let host = Netns::new(&format!("na{tag}h"));
        let ext = Netns::new(&format!("na{tag}x"));
        host.ip(&[
            "link", "add", PARENT, "type", "veth", "peer", "name", "gw0", "netns", &ext.name,
        ]);
        ext.ip(&["addr", "add", &format!("{GW4}/24"), "dev", "gw0"]);
        ext.ip(&["addr", "add", &format!("{GW6}/64"), "dev", "gw0", "nodad"]);
        ext.ip(&["link", "set", "gw0", "up"]);
        host.ip(&["link", "set", PARENT, "up"]);
        let dir = TempDir::new(&format!("netattach-test-{tag}"));
        let config_dir = dir.path().join("config");
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        FakeLan {
            tag,
            host,
            ext,
            parent: PARENT.to_string(),
            gw4: GW4.to_string(),
            gw6: GW6.to_string(),
            dir,
            config_dir,
            state_dir,
        }
    }

    pub fn host_ns(&self) -> &str {
        &self.host.name
    }

    pub fn host_ns_path(&self) -> &str {
        self.host.path_str()
    }

    pub fn ext_ns(&self) -> &str {
        &self.ext.name
    }

    pub fn config_dir_str(&self) -> &str {
        self.config_dir.to_str().expect("utf-8 path")
    }

    pub fn state_dir_str(&self) -> &str {
        self.state_dir.to_str().expect("utf-8 path")
    }

    /// `NETATTACH_CONFIG_DIR=..` and `NETATTACH_STATE_DIR=..`, e.g. for a hook's `env`.
    pub fn env_vars(&self) -> Vec<String> {
        vec![
            format!("NETATTACH_CONFIG_DIR={}", self.config_dir_str()),
            format!("NETATTACH_STATE_DIR={}", self.state_dir_str()),
        ]
    }

    /// A command that runs `prog` in the host-side netns (`nsenter --net=`),
    /// for callers that need stdin or extra env.
    pub fn command_in_host(&self, prog: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host_ns_path()))
            .arg(prog)
            .stdin(Stdio::null());
        cmd
    }

    /// `nsenter --net=<hostns> netattach --config-dir .. --state-dir .. args...`
    pub fn netattach(&self, args: &[&str]) -> Output {
        self.command_in_host(bin())
            .args(["--config-dir", self.config_dir_str()])
            .args(["--state-dir", self.state_dir_str()])
            .args(args)
            .output()
            .expect("run netattach")
    }

    /// Like `netattach`, panicking unless it succeeds; returns stdout.
    pub fn netattach_ok(&self, args: &[&str]) -> String {
        let out = self.netattach(args);
        assert!(
            out.status.success(),
            "netattach {} failed: {}",
            args.join(" "),
            text(&out)
        );
        stdout(&out)
    }

    /// `network create -d macvlan -o parent=lan0 [extra] NAME`; without a
    /// `--subnet` in `extra`, the IPv4 subnet and gateway of the fake LAN are added.
    pub fn create_network(&self, name: &str, extra: &[&str]) -> Output {
        self.create_network_on("macvlan", &self.parent, name, extra)
    }

    /// `create_network` with the fake LAN's IPv4 and IPv6 subnets and gateways.
    pub fn create_dual_stack(&self, name: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "--subnet",
            SUBNET4,
            "--gateway",
            GW4,
            "--subnet",
            SUBNET6,
            "--gateway",
            GW6,
        ];
        args.extend_from_slice(extra);
        self.create_network(name, &args)
    }

    /// `network create ARGS...`, which must be refused: its stderr.
    pub fn create_refused(&self, args: &[&str]) -> String {
        let mut all = vec!["network", "create"];
        all.extend_from_slice(args);
        let out = self.netattach(&all);
        assert!(!out.status.success(), "accepted: {}", text(&out));
        stderr(&out)
    }

    /// `network create -d DRIVER -o parent=PARENT [extra] NAME`, with the
    /// fake LAN's IPv4 subnet and gateway unless `extra` has a `--subnet`.
    pub fn create_network_on(
        &self,
        driver: &str,
        parent: &str,
        name: &str,
        extra: &[&str],
    ) -> Output {
        let mut args = vec!["network", "create", "-d", driver];
        let parent = format!("parent={parent}");
        args.extend_from_slice(&["-o", &parent]);
        if !extra.contains(&"--subnet") {
            args.extend_from_slice(&["--subnet", SUBNET4, "--gateway", GW4]);
        }
        args.extend_from_slice(extra);
        args.push(name);
        let out = self.netattach(&args);
        assert!(
            out.status.success(),
            "network create {name} failed: {}",
            text(&out)
        );
        out
    }

    /// `lease ls --json` parsed (an array of leases).
    pub fn leases_json(&self) -> Value {
        let out = self.netattach_ok(&["lease", "ls", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lease ls --json: {e}: {out}"))
    }

    /// The addresses `lease ls` shows for `owner`, without prefix lengths.
    pub fn addresses_of(&self, owner: &str) -> Vec<String> {
        self.leases_json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["owner"] == owner)
            .map(|l| l["address"].as_str().unwrap().to_string())
            .collect()
    }

    /// An extra netns `na<tag>c<name>` (e.g. a container's), deleted on drop.
    pub fn container_ns(&self, name: &str) -> Netns {
        Netns::new(&format!("na{}c{name}", self.tag))
    }

    /// Deletes the parent (the kernel deletes every macvlan on it with it)
    /// and makes it again with the gateway's addresses, as a NIC reset or a
    /// re-created VLAN does.
    pub fn recreate_parent(&self) {
        self.host.ip(&["link", "del", &self.parent]);
        self.host.ip(&[
            "link",
            "add",
            &self.parent,
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
            "netns",
            &self.ext.name,
        ]);
        self.ext
            .ip(&["addr", "add", &format!("{GW4}/24"), "dev", "gw0"]);
        self.ext
            .ip(&["addr", "add", &format!("{GW6}/64"), "dev", "gw0", "nodad"]);
        self.ext.ip(&["link", "set", "gw0", "up"]);
        self.host.ip(&["link", "set", &self.parent, "up"]);
    }

    /// Names of the links in the host-side netns (normally `lo` and `lan0`).
    pub fn host_links(&self) -> Vec<String> {
        link_names(self.host_ns())
    }
}

impl Default for FakeLan {
    fn default() -> Self {
        FakeLan::new()
    }
}

/// `ip netns exec NS cmd...` (cmd[0] is the program).
pub fn exec_in(ns: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    run("ip", &args)
}

/// One ICMP echo from netns `ns` to `addr` (IPv4 or IPv6), 1 s timeout.
pub fn ping_from(ns: &str, addr: &str) -> bool {
    exec_in(ns, &["ping", "-c1", "-W1", addr]).status.success()
}

fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut all = vec!["-n", ns, "-j"];
    all.extend_from_slice(args);
    let out = run("ip", &all);
    if !out.status.success() {
        return Value::Null;
    }
    let s = stdout(&out);
    if s.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("ip {}: bad JSON {e}: {s}", all.join(" ")))
}

/// `ip -j -d link show dev IF` in `ns`: the link object, or `Null` if absent.
/// Useful keys: `ifname`, `address`, `mtu`, `operstate`, `flags`,
/// `linkinfo.info_kind` ("macvlan"), `linkinfo.info_data.mode` ("bridge").
pub fn link_json(ns: &str, ifname: &str) -> Value {
    match ip_json(ns, &["-d", "link", "show", "dev", ifname]) {
        Value::Array(mut v) if !v.is_empty() => v.swap_remove(0),
        _ => Value::Null,
    }
}

/// `ip -j -d link show` in `ns`: every link.
pub fn links_json(ns: &str) -> Value {
    ip_json(ns, &["-d", "link", "show"])
}

/// Names of all links in `ns`.
pub fn link_names(ns: &str) -> Vec<String> {
    links_json(ns)
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|l| l["ifname"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -j addr show dev IF` in `ns`: the `addr_info` array (objects with
/// `family`, `local`, `prefixlen`, `scope`, ...), or `Null` if no such link.
pub fn addrs_json(ns: &str, ifname: &str) -> Value {
    match ip_json(ns, &["addr", "show", "dev", ifname]) {
        Value::Array(mut v) if !v.is_empty() => v.swap_remove(0)["addr_info"].take(),
        _ => Value::Null,
    }
}

/// The global addresses of IF in `ns` as `addr/prefixlen` strings.
pub fn addrs(ns: &str, ifname: &str) -> Vec<String> {
    addrs_json(ns, ifname)
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|a| a["scope"] == "global")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -j [-6] route show` in `ns` (main table): objects with `dst`
/// ("default" or a prefix), `gateway`, `dev`, ...
pub fn routes_json(ns: &str, ipv6: bool) -> Value {
    let family = if ipv6 { "-6" } else { "-4" };
    ip_json(ns, &[family, "route", "show"])
}

/// The default route's gateway in `ns`, if any.
pub fn default_gateway(ns: &str, ipv6: bool) -> Option<String> {
    routes_json(ns, ipv6).as_array().and_then(|v| {
        v.iter()
            .find(|r| r["dst"] == "default")
            .and_then(|r| r["gateway"].as_str().map(String::from))
    })
}

/// Names of the network namespaces in /run/netns.
pub fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// `netattach hook VERB` as runc calls it: the state on stdin (without pid),
/// the netns given by the bundle's config.json, which carries `annotation`.
pub fn hook(lan: &FakeLan, verb: &str, id: &str, netns: &Netns, annotation: &str) -> Output {
    hook_with_timeout(lan, verb, id, netns, annotation, None)
}

/// `hook`, with the bundle giving netattach's hook entry `timeout` seconds
/// (as podman copies it from `hooks.d`).
pub fn hook_with_timeout(
    lan: &FakeLan,
    verb: &str,
    id: &str,
    netns: &Netns,
    annotation: &str,
    timeout: Option<u64>,
) -> Output {
    spawn_hook(lan, verb, id, netns.path_str(), annotation, timeout)
        .wait_with_output()
        .unwrap()
}

/// Starts `hook_with_timeout` without waiting: the state is written and
/// stdin closed; stdout and stderr are piped. `netns` is the path the bundle
/// names (for `release` it may be gone already, as after a container's end).
pub fn spawn_hook(
    lan: &FakeLan,
    verb: &str,
    id: &str,
    netns: &str,
    annotation: &str,
    timeout: Option<u64>,
) -> std::process::Child {
    let bundle = lan.dir.path().join(format!("bundle-{id}"));
    std::fs::create_dir_all(&bundle).unwrap();
    let phase = if verb == "release" {
        "poststop"
    } else {
        "createRuntime"
    };
    let entry = serde_json::json!({ "path": bin(), "args": ["netattach", "hook", verb], "timeout": timeout });
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": { "netattach/networks": annotation },
        "hooks": { phase: [entry] },
        "linux": { "namespaces": [ { "type": "network", "path": netns } ] }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    let state = serde_json::json!({
        "ociVersion": "1.0.2-dev", "id": id,
        "status": if verb == "release" { "stopped" } else { "creating" },
        "bundle": bundle,
    });
    let mut child = lan
        .command_in_host(bin())
        .args(["--config-dir", lan.config_dir_str()])
        .args(["--state-dir", lan.state_dir_str()])
        .args(["hook", verb])
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
    child
}

/// The netns holds only `lo`: nothing half-configured was left.
pub fn assert_bare(ns: &Netns) {
    assert_eq!(
        link_names(&ns.name),
        vec!["lo".to_string()],
        "links left in {}",
        ns.name
    );
}

/// The distinct MACs (lower case) that answer an ARP request for `addr`
/// sent from the fake LAN's gateway netns (three requests, 3 s at most).
pub fn arp_answerers(lan: &FakeLan, addr: &str) -> BTreeSet<String> {
    arp_answerers_from(lan.ext_ns(), "gw0", 3, addr)
}

/// The distinct MACs (lower case) that answer `count` ARP requests for
/// `addr` sent on `iface` of netns `ns` (`count` seconds at most).
pub fn arp_answerers_from(ns: &str, iface: &str, count: u32, addr: &str) -> BTreeSet<String> {
    let n = count.to_string();
    let out = exec_in(ns, &["arping", "-c", &n, "-w", &n, "-I", iface, addr]);
    // Lines look like: "Unicast reply from 192.168.32.50 [02:00:00:00:00:51]  0.6ms"
    stdout(&out)
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let open = l.find('[')?;
            let close = l[open..].find(']')? + open;
            Some(l[open + 1..close].to_ascii_lowercase())
        })
        .collect()
}

/// A process holding an exclusive flock on a file (util-linux `flock`), as a
/// stuck netattach would hold the lease store's write lock; killed on drop.
pub struct LockHolder {
    child: std::process::Child,
}

impl LockHolder {
    /// An flock on `path`; returns once the lock is held.
    pub fn new(path: &Path) -> LockHolder {
        let mut flock = Command::new("flock");
        flock
            .arg("--close")
            .arg(path)
            .args(["sh", "-c", "echo locked; exec sleep 600"]);
        LockHolder::start(flock)
    }

    /// A process outside netattach's queue (a sqlite3 shell, a backup tool)
    /// holding an exclusive transaction on the SQLite database at `path`.
    pub fn sqlite_writer(path: &Path) -> LockHolder {
        let mut python = Command::new("python3");
        python.arg("-c").arg(
            "import sqlite3, sys, time\n\
             db = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             db.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(600)\n",
        );
        python.arg(path);
        LockHolder::start(python)
    }

    fn start(mut command: Command) -> LockHolder {
        let mut child = command
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start the lock holder");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let holder = LockHolder { child };
        assert_eq!(line.trim(), "locked");
        holder
    }

    /// The pid that holds the lock (`flock` or `python3`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        run_ok("kill", &[&format!("-{signal}"), &self.pid().to_string()]);
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        // The whole group: flock and its sleep, or python.
        let _ = run("kill", &["-KILL", "--", &format!("-{}", self.pid())]);
        let _ = self.child.wait();
    }
}

/// A small xorshift generator: the tests need spread, not quality.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock (print the seed to replay a run).
    pub fn from_clock() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos | 1)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
