//! A real containerd 1.7 (CRI and NRI built in) for the tests that drive one,
//! run on a [`FakeLan`](crate::common::FakeLan): containerd lives in the fake
//! LAN's host-side netns (`nsenter --net=`, so its mounts stay visible to the
//! test and to the NRI plugin), with everything it owns under
//! `<lan dir>/ctrd/` and removed on drop, also when the test panics.
//!
//! The binaries come from scripts/containerd.sh (trixie's package, cached in
//! /var/cache/netattach/containerd or `$NETATTACH_CONTAINERD_DIR`); runc is the
//! machine's, the CNI plugins are containernetworking-plugins' (/usr/lib/cni).
//! No registry is reachable: the pause and test images are built from
//! busybox-static by scripts/oci-image.sh and imported at [`Containerd::start`].
//!
//! Use it from a test file with `mod common; mod real_containerd;`:
//!
//! ```ignore
//! let lan = common::FakeLan::new();
//! if common::skip_unless(Containerd::available(), "needs scripts/containerd.sh") {
//!     return;
//! }
//! // Declared after `lan`, so that it is dropped first.
//! let mut ctrd = Containerd::start(&lan, Plugin::Launched);
//! let out = ctrd.ctr(&["plugins", "ls"]);
//! ctrd.restart();
//! ```
//!
//! Outside containerd's dir it touches only: the shim sockets in
//! /run/containerd/s (removed on drop), the CNI result cache
//! /var/lib/cni/results/<network>-* (removed on drop) and the containers'
//! cgroups (left to runc, removed on drop if a killed container left them).
#![allow(dead_code)]

pub mod cri;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;

/// How the netattach NRI plugin runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// No plugin (NRI is still on, its socket is [`Containerd::nri_socket`]).
    None,
    /// The test starts `netattach nri --socket <nri socket>` itself, e.g. with
    /// [`Containerd::external_plugin`]; the harness configures NRI as for
    /// `None`.
    External,
    /// containerd launches the plugin from its plugin dir: `10-netattach`, a
    /// script exec'ing `netattach nri`, with the conf.d file
    /// `10-netattach.conf` naming the FakeLan's config and state dirs and
    /// [`Containerd::plugin_log`] as its log file.
    Launched,
}

/// A running containerd; see the module doc.
pub struct Containerd {
    /// Everything containerd owns: `<lan dir>/ctrd`.
    pub dir: PathBuf,
    /// containerd's gRPC socket (CRI and the containerd API; `ctr --address`).
    pub cri_socket: PathBuf,
    /// The NRI socket external plugins connect to.
    pub nri_socket: PathBuf,
    /// The launched plugin's log file (`log_file` of its conf.d file); the
    /// natural `--log-file` for an external one.
    pub plugin_log: PathBuf,
    /// containerd's stdout and stderr, appended over restarts.
    pub log_path: PathBuf,
    /// The CNI network name (also the prefix of its result cache files).
    pub cni_network: String,
    pub plugin: Plugin,
    host_netns: PathBuf,
    config_dir: PathBuf,
    state_dir: PathBuf,
    child: Option<Child>,
}

/// Where scripts/containerd.sh put the binaries.
pub fn bin_dir() -> PathBuf {
    let top = std::env::var_os("NETATTACH_CONTAINERD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/netattach/containerd"));
    top.join("bin")
}

/// Path of the cached `ctr`.
pub fn ctr_bin() -> PathBuf {
    bin_dir().join("ctr")
}

/// Polls `ready` every 20 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Containerd {
    /// The sandbox (pause) image: PID 1 sleeps until it is killed.
    pub const PAUSE_IMAGE: &'static str = "localhost/netattach-pause:1";
    /// The test image: busybox (sh, sleep, ip, ping, cat, ...); Cmd `/bin/sh`.
    pub const TEST_IMAGE: &'static str = "localhost/netattach-test:1";
    /// The containerd namespace of CRI.
    pub const NAMESPACE: &'static str = "k8s.io";
    /// The pods' CNI subnet. It can be the same for every test: the bridge
    /// lives in each FakeLan's own host-side netns.
    pub const POD_SUBNET: &'static str = "10.88.77.0/24";

    /// True when scripts/containerd.sh has fetched the binaries and runc is installed.
    /// The pods' CNI bridge, in the FakeLan's host netns (created by the
    /// first pod).
    pub fn cni_bridge(&self) -> String {
        Self::cni_bridge_of(self.cni_network.trim_start_matches("na"))
    }

    fn cni_bridge_of(tag: &str) -> String {
        format!("na{tag}b").chars().take(15).collect()
    }

    pub fn available() -> bool {
        let bin = bin_dir();
        ["containerd", "ctr", "containerd-shim-runc-v2"]
            .iter()
            .all(|b| bin.join(b).is_file())
            && common::have("runc")
            && Path::new("/usr/lib/cni/bridge").is_file()
            && Path::new("/usr/lib/cni/host-local").is_file()
    }

    /// Writes the configuration under `<lan dir>/ctrd`, starts containerd in
    /// the LAN's host-side netns, waits (bounded) until its gRPC socket
    /// answers `ctr version`, and imports [`Self::PAUSE_IMAGE`] and
    /// [`Self::TEST_IMAGE`] into the `k8s.io` namespace.
    pub fn start(lan: &common::FakeLan, plugin: Plugin) -> Containerd {
        let images = images();
        let dir = lan.dir.path().join("ctrd");
        let _ = fs::remove_dir_all(&dir);
        for sub in [
            "root",
            "state",
            "cni",
            "netns",
            "nri-plugins",
            "nri-conf.d",
            "opt",
            "fifo",
        ] {
            fs::create_dir_all(dir.join(sub)).expect("containerd dirs");
        }
        let mut ctrd = Containerd {
            cri_socket: dir.join("c.sock"),
            nri_socket: dir.join("nri.sock"),
            plugin_log: dir.join("plugin.log"),
            log_path: dir.join("containerd.log"),
            cni_network: format!("na{}", lan.tag),
            plugin,
            host_netns: lan.host.path.clone(),
            config_dir: lan.config_dir.clone(),
            state_dir: lan.state_dir.clone(),
            child: None,
            dir,
        };
        assert!(
            ctrd.cri_socket.as_os_str().len() < 100,
            "socket path too long for a unix socket: {}",
            ctrd.cri_socket.display()
        );
        ctrd.write_config(&lan.tag);
        let t0 = Instant::now();
        ctrd.spawn();
        let started = t0.elapsed();
        for (image, archive) in [
            (Self::PAUSE_IMAGE, &images.0),
            (Self::TEST_IMAGE, &images.1),
        ] {
            let out = ctrd.ctr(&["-n", Self::NAMESPACE, "images", "import", path_str(archive)]);
            assert!(
                out.status.success(),
                "ctr images import {image}: {}\ncontainerd log:\n{}",
                common::text(&out),
                ctrd.log()
            );
        }
        eprintln!(
            "containerd: ready in {} ms, images imported in {} ms",
            started.as_millis(),
            (t0.elapsed() - started).as_millis()
        );
        ctrd
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and starts it again
    /// with the same config and dirs. Shims and containers live on, as with a
    /// real restart; a launched plugin is launched again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s); shims and
    /// containers live on. [`Self::restart`] = `stop` + start again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(10));
        }
    }

    /// True while the containerd process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// PID of the running containerd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// containerd's log so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The plugin's log so far (empty if it wrote none).
    pub fn plugin_log_text(&self) -> String {
        fs::read_to_string(&self.plugin_log).unwrap_or_default()
    }

    /// `ctr --address <socket> args...` (stdin closed), killed after 30 s.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(ctr_bin());
        cmd.arg("--address").arg(&self.cri_socket).args(args);
        output_within(cmd, Duration::from_secs(30))
    }

    /// `ctr` in the `k8s.io` namespace, panicking unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", Self::NAMESPACE];
        all.extend_from_slice(args);
        let out = self.ctr(&all);
        assert!(
            out.status.success(),
            "ctr {} failed: {}",
            all.join(" "),
            common::text(&out)
        );
        common::stdout(&out)
    }

    /// Flags for `ctr run` that keep its FIFOs and runc's state under our dir
    /// (ctr's defaults are /run/containerd/fifo and /run/containerd/runc).
    pub fn ctr_run_flags(&self) -> Vec<String> {
        vec![
            "--fifo-dir".into(),
            self.dir.join("fifo").display().to_string(),
            "--runc-root".into(),
            self.dir.join("runc").display().to_string(),
        ]
    }

    /// `nsenter --net=<host netns> netattach --config-dir .. --state-dir .. nri
    /// --socket <nri socket> --log-file <plugin log>`, for [`Plugin::External`]:
    /// the caller spawns (and kills) it.
    pub fn external_plugin(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host_netns.display()))
            .arg(common::bin())
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("nri")
            .arg("--socket")
            .arg(&self.nri_socket)
            .arg("--log-file")
            .arg(&self.plugin_log)
            .stdin(Stdio::null());
        cmd
    }

    fn write_config(&self, tag: &str) {
        let d = path_str(&self.dir);
        let snapshotter = snapshotter();
        let config = format!(
            r#"# containerd 1.7 for one test: everything under {d}.
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
# (io.containerd.runtime.v1.linux stays: 1.7's tasks service, and so CRI,
# fail to load without it.)

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[debug]
  level = "info"

# Its default is /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root here lacks CAP_SYS_RESOURCE: runc fails on the sandbox's -998.
  restrict_oom_score_adj = true
  # 1.7 knows no netns_mounts_under: this puts the pods' netns under the
  # state dir (removed on drop) instead of /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # The shim's default is /run/containerd/runc.
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
    max_conf_num = 1

[plugins."io.containerd.nri.v1.nri"]
  disable = false
  disable_connections = false
  socket_path = "{d}/nri.sock"
  plugin_path = "{d}/nri-plugins"
  plugin_config_path = "{d}/nri-conf.d"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "2s"
"#,
            pause = Self::PAUSE_IMAGE,
        );
        fs::write(self.dir.join("config.toml"), config).expect("write config.toml");

        // The bridge lives in the FakeLan's host netns: a per-test name keeps
        // it recognisable; host-local keeps its leases in the test dir.
        let bridge = Self::cni_bridge_of(tag);
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.cni_network,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": format!("{d}/cni-ipam"),
                    "ranges": [[{ "subnet": Self::POD_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            }]
        });
        fs::write(
            self.dir.join("cni/10-netattach-test.conflist"),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .expect("write CNI conflist");

        if self.plugin == Plugin::Launched {
            // The runtime passes no arguments and no PATH.
            let script = self.dir.join("nri-plugins/10-netattach");
            fs::write(&script, format!("#!/bin/sh\nexec {} nri\n", common::bin()))
                .expect("write plugin script");
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(
                self.dir.join("nri-conf.d/10-netattach.conf"),
                format!(
                    "config_dir = {}\nstate_dir = {}\nlog_file = {}\n",
                    self.config_dir.display(),
                    self.state_dir.display(),
                    self.plugin_log.display()
                ),
            )
            .expect("write plugin conf");
        }
    }

    /// Starts containerd and waits until its socket answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("containerd log");
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir().display()
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host_netns.display()))
            .arg(bin_dir().join("containerd"))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Not in the test's process group: a ^C reaches the test, whose
            // Drop then stops containerd.
            .process_group(0);
        let child = cmd.spawn().expect("spawn containerd");
        self.child = Some(child);
        let start = Instant::now();
        let timeout = Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "containerd exited ({status}) while starting:\n{}",
                    self.log()
                );
            }
            if self.cri_socket.exists() && self.ctr(&["version"]).status.success() {
                break;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for containerd to answer `ctr version` on {}:\n{}",
                    self.cri_socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every task containerd still knows (so that runc removes their
    /// cgroups and the shims exit cleanly); best effort, bounded.
    fn kill_tasks(&self) {
        let Some(namespaces) = ok_stdout(self.ctr(&["namespaces", "ls", "-q"])) else {
            return;
        };
        for ns in namespaces.lines().filter(|l| !l.is_empty()) {
            let tasks = ok_stdout(self.ctr(&["-n", ns, "tasks", "ls", "-q"])).unwrap_or_default();
            for id in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["-n", ns, "tasks", "delete", "-f", id]);
            }
            let containers =
                ok_stdout(self.ctr(&["-n", ns, "containers", "ls", "-q"])).unwrap_or_default();
            for id in containers.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["-n", ns, "containers", "delete", id]);
            }
        }
    }

    /// The shims of this containerd: containerd-shim-runc-v2 processes whose
    /// `-address` is our socket.
    fn shims(&self) -> Vec<i32> {
        let ours = path_str(&self.cri_socket);
        processes()
            .into_iter()
            .filter(|&pid| {
                let args = cmdline(pid);
                args.first()
                    .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                    && args
                        .windows(2)
                        .any(|w| (w[0] == "-address" || w[0] == "--address") && w[1] == ours)
            })
            .collect()
    }

    /// The containers' processes: children of our shims, and every process
    /// whose root mount comes from under our dir (found through its
    /// mountinfo: `/proc/PID/root` of another mount namespace does not show
    /// the path), which also finds the containers of a shim already gone.
    fn container_processes(&self, shims: &[i32]) -> Vec<i32> {
        let ours = path_str(&self.dir);
        processes()
            .into_iter()
            .filter(|&pid| {
                shims.contains(&parent_of(pid))
                    || fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.split_whitespace().nth(4) == Some("/") && l.contains(ours))
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
            if self.plugin == Plugin::Launched || self.plugin_log.exists() {
                eprintln!(
                    "---- NRI plugin log ({}) ----\n{}",
                    self.plugin_log.display(),
                    self.plugin_log_text()
                );
            }
        }
        // Politely first, while containerd runs.
        if self.running() {
            self.kill_tasks();
        }
        // The shims' sockets are in /run/containerd/s, bound in containerd's
        // netns (our host-side one): read them from /proc/<pid>/net/unix
        // before the shims go.
        let mut sockets = BTreeSet::new();
        let mut witnesses: Vec<i32> = self.shims();
        witnesses.extend(self.pid().map(|p| p as i32));
        for pid in witnesses {
            sockets.extend(shim_sockets(pid));
        }
        self.stop();

        // Then by force: container processes (collecting their cgroups),
        // then the shims.
        let mut cgroups = BTreeSet::new();
        for _ in 0..3 {
            let shims = self.shims();
            let victims = self.container_processes(&shims);
            for &pid in &victims {
                cgroups.extend(cgroup_dirs(pid));
            }
            if victims.is_empty() && shims.is_empty() {
                break;
            }
            for &pid in victims.iter().chain(&shims) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let all: Vec<i32> = victims.into_iter().chain(shims).collect();
            let deadline = Instant::now() + Duration::from_secs(5);
            while all.iter().any(|&p| alive(p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for cg in cgroups.iter().rev() {
            let _ = fs::remove_dir(cg);
        }
        for socket in sockets {
            let _ = fs::remove_file(socket);
        }

        unmount_under(&self.dir);

        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.cni_network);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "containerd harness: cannot remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The pause and the test image archives, built once per test process with
/// scripts/oci-image.sh under the cargo target's tmp dir.
fn images() -> &'static (PathBuf, PathBuf) {
    static IMAGES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("netattach-oci");
        fs::create_dir_all(&dir).expect("image dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oci-image.sh");
        let build = |file: &str, name: &str, cmd: &[&str]| {
            let out = dir.join(file);
            // Unique per process, then renamed: other test binaries may build
            // the same file at the same time.
            let tmp = dir.join(format!("{file}.{}", std::process::id()));
            let o = Command::new(&script)
                .arg(&tmp)
                .arg(name)
                .args(cmd)
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/oci-image.sh");
            assert!(
                o.status.success(),
                "scripts/oci-image.sh {name}: {}",
                common::text(&o)
            );
            fs::rename(&tmp, &out).expect("rename image archive");
            out
        };
        let pause = build(
            "pause.tar",
            Containerd::PAUSE_IMAGE,
            // CRI stops a sandbox with SIGKILL, so PID 1 needs no handler.
            &["/bin/sleep", "2147483647"],
        );
        let test = build("test.tar", Containerd::TEST_IMAGE, &["/bin/sh"]);
        (pause, test)
    })
}

/// overlayfs if this kernel and file system take an overlay mount (checked
/// once), else native.
fn snapshotter() -> &'static str {
    static SNAPSHOTTER: OnceLock<&'static str> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("netattach-ovl-{}", std::process::id()));
        let dirs: Vec<PathBuf> = ["lower", "upper", "work", "merged"]
            .iter()
            .map(|d| base.join(d))
            .collect();
        for d in &dirs {
            let _ = fs::create_dir_all(d);
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        );
        let ok = nix::mount::mount(
            Some("overlay"),
            &dirs[3],
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .is_ok();
        if ok {
            let _ = nix::mount::umount(&dirs[3]);
        }
        let _ = fs::remove_dir_all(&base);
        if ok {
            "overlayfs"
        } else {
            "native"
        }
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ok_stdout(out: Output) -> Option<String> {
    out.status.success().then(|| common::stdout(&out))
}

/// Runs `cmd` (stdin closed) and returns its output; kills it after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain the pipes in threads so that a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let _ = std::io::stderr()
                .write_all(format!("killed after {timeout:?}: {cmd:?}\n").as_bytes());
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("containerd did not stop within {grace:?} of SIGTERM: SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// All PIDs in /proc.
fn processes() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent PID of `pid` (0 if unknown).
fn parent_of(pid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Paths of the shim sockets (/run/containerd/s/...) bound in `pid`'s netns.
fn shim_sockets(pid: i32) -> Vec<PathBuf> {
    fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with("/run/containerd/s/"))
        .map(PathBuf::from)
        .collect()
}

/// The cgroup dirs of `pid` other than the root ones, in every hierarchy
/// mounted (cgroup v1 and v2).
fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let mounts = cgroup_mounts();
    let mut dirs = Vec::new();
    for line in fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
    {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        // v1: the mount whose options name all the line's controllers (or
        // its name=...); v2: the cgroup2 mount.
        let found = mounts.iter().find(|m| {
            if controllers.is_empty() {
                m.v2
            } else {
                !m.v2
                    && controllers
                        .split(',')
                        .all(|c| m.opts.iter().any(|o| o == c))
            }
        });
        if let Some(m) = found {
            dirs.push(m.point.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

struct CgroupMount {
    v2: bool,
    /// Super options, e.g. `rw`, `cpu`, `cpuacct`, `name=systemd`.
    opts: Vec<String>,
    point: PathBuf,
}

fn cgroup_mounts() -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let point = PathBuf::from(left.split_whitespace().nth(4).unwrap_or_default());
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or_default();
        let opts = r
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .map(String::from)
            .collect();
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push(CgroupMount {
                v2: fstype == "cgroup2",
                opts,
                point,
            });
        }
    }
    out
}

/// Unmounts every mount at or under `dir`, deepest first (lazily if busy).
fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mut points: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            if nix::mount::umount(&p).is_err() {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    eprintln!("containerd harness: mounts left under {}", dir.display());
}
