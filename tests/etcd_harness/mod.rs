//! A real etcd (Debian's `etcd-server`, 3.4) for tests: one member on
//! 127.0.0.1 with free ports and its data in a temporary folder, killed and
//! removed on drop, also when the test panics (and killed by the kernel if
//! the test process dies: `PR_SET_PDEATHSIG`).
//!
//! ```ignore
//! mod common; // the harness skips through common::skip_unless
//! mod etcd_harness;
//! let Some(etcd) = etcd_harness::Etcd::start_or_skip() else { return };
//! let client = netattach::etcd::Client::new(&[etcd.url()], Default::default()).unwrap();
//! ```
//!
//! Without the `etcd` binary a test prints `SKIP: ...` and passes, unless
//! `NETATTACH_TESTS_STRICT=1` (scripts/test.sh, CI), where it fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a starting etcd may take to answer `/health`.
const READY_WAIT: Duration = Duration::from_secs(20);

/// The etcd binary: `$NETATTACH_ETCD`, else `etcd` on PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NETATTACH_ETCD") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// One etcd member for one test.
pub struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    /// The address it listens on (127.0.0.1 unless started in a netns).
    ip: String,
    /// The named network namespace it runs in, if not the test's own.
    netns: Option<String>,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Runs `f` on a thread inside the named network namespace
/// (`/run/netns/NAME`): how the test itself reaches an etcd started there.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(Path::new("/run/netns").join(netns))
                .unwrap_or_else(|e| panic!("open netns {netns}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an fd we own; it moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {netns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

impl Etcd {
    /// Starts etcd, or returns `None` after `SKIP:` when it is not installed.
    pub fn start_or_skip() -> Option<Etcd> {
        let binary = etcd_binary();
        if crate::common::skip_unless(
            binary.is_some(),
            "needs etcd 3.4 (apt-get install etcd-server)",
        ) {
            return None;
        }
        Some(Etcd::start(binary.unwrap()))
    }

    /// Like `start_or_skip`, but etcd runs in the named network namespace
    /// and listens on `ip` there (one of that namespace's addresses).
    pub fn start_in_netns_or_skip(netns: &str, ip: &str) -> Option<Etcd> {
        let binary = etcd_binary();
        if crate::common::skip_unless(
            binary.is_some(),
            "needs etcd 3.4 (apt-get install etcd-server)",
        ) {
            return None;
        }
        Some(Etcd::start_at(binary.unwrap(), ip, Some(netns)))
    }

    /// Starts etcd from `binary` and waits until it answers `/health`.
    pub fn start(binary: PathBuf) -> Etcd {
        Etcd::start_at(binary, "127.0.0.1", None)
    }

    fn start_at(binary: PathBuf, ip: &str, netns: Option<&str>) -> Etcd {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netattach-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd test dir");
        let mut etcd = Etcd {
            binary,
            dir,
            ip: ip.to_string(),
            netns: netns.map(str::to_string),
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        // Ports are picked free and then handed to etcd: another process may
        // take one in between, so a failed start is retried on new ports.
        for attempt in 0..3 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(e) if attempt < 2 => eprintln!("etcd start failed, retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// `http://IP:PORT` (IP is 127.0.0.1 unless started in a netns)
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Kills etcd (SIGKILL, like a crash); its data stays for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether `/health` answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let (ip, port) = (self.ip.as_str(), self.client_port);
        match &self.netns {
            Some(ns) => in_netns(ns, || health(ip, port)),
            None => health(ip, port),
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let client = self.url();
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let mut cmd = match &self.netns {
            // `ip netns exec` enters the namespace and execs etcd: the
            // child is etcd itself (killed by `kill`, and on our death).
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let start = Instant::now();
        while start.elapsed() < READY_WAIT {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "etcd exited ({status}) before answering; its log:\n{}",
                    tail(&log_path)
                ));
            }
            if self.healthy() {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "etcd not healthy after {READY_WAIT:?}; its log:\n{}",
            tail(&log_path)
        ))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One `GET /health` with std only (the harness must not depend on the
/// client under test).
fn health(ip: &str, port: u16) -> bool {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let addr = std::net::SocketAddr::from((ip, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains("\"health\":\"true\"")
}
