//! dnsmasq as the LAN's DHCP server, in a fake LAN's gateway netns.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{unique_tag, FakeLan};

/// dnsmasq serving DHCP on the gateway's veth, with its lease file and log
/// in the test's folder; stopped on drop.
pub struct Dnsmasq {
    child: Child,
    pub leases: PathBuf,
    pub log: PathBuf,
}

impl Dnsmasq {
    pub fn start(lan: &FakeLan, extra: &[&str]) -> Dnsmasq {
        Dnsmasq::start_serving(lan, "192.168.32.100,192.168.32.149", extra)
    }

    pub fn start_serving(lan: &FakeLan, range: &str, extra: &[&str]) -> Dnsmasq {
        let leases = lan.dir.path().join("dnsmasq.leases");
        let log = lan.dir.path().join(format!("dnsmasq-{}.log", unique_tag()));
        let child = Command::new("ip")
            .args(["netns", "exec", lan.ext_ns(), "dnsmasq", "--no-daemon"])
            .args([
                "--conf-file=/dev/null",
                "--interface=gw0",
                "--bind-interfaces",
            ])
            .args(["--port=0", "--log-dhcp"])
            .arg(format!("--dhcp-range={range},2m"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg("--pid-file=")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let d = Dnsmasq { child, leases, log };
        wait_for(Duration::from_secs(5), "dnsmasq to log its start", || {
            d.log_text().contains("DHCP, IP range")
        });
        d
    }

    /// dnsmasq's lease file: (MAC, address, expiry) per line.
    pub fn leases(&self) -> Vec<(String, String, u64)> {
        std::fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(1)?.to_string(),
                    f.get(2)?.to_string(),
                    f.first()?.parse().ok()?,
                ))
            })
            .collect()
    }

    pub fn lease_of(&self, mac: &str) -> Option<(String, u64)> {
        self.leases()
            .into_iter()
            .find(|(m, _, _)| m == mac)
            .map(|(_, a, e)| (a, e))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many messages of `kind` (DHCPDISCOVER, DHCPREQUEST, ...) came from `mac`.
    pub fn count(&self, kind: &str, mac: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(&format!("{kind}(gw0)")) && l.contains(mac))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ok` until it holds, panicking after `limit` with `what`.
pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
