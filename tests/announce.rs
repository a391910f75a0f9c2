//! Root integration tests of the announcements of new addresses
//! (src/announce.rs): a packet socket in the gateway's netns sees the
//! gratuitous ARPs and unsolicited neighbour advertisements, and a stale
//! neighbour entry of the gateway is replaced without the container sending
//! anything itself.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{FakeLan, GW4, SUBNET4};
use serde_json::Value;

/// Captures ARP and ICMPv6 neighbour advertisements arriving on `gw0` of
/// the gateway's netns for `secs` seconds; prints one JSON object per frame.
const CAPTURE: &str = r#"
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("gw0", 0))
s.settimeout(0.1)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    src = f[6:12].hex(":")
    kind = struct.unpack("!H", f[12:14])[0]
    if kind == 0x0806:
        op = struct.unpack("!H", f[20:22])[0]
        spa = socket.inet_ntoa(f[28:32]); tpa = socket.inet_ntoa(f[38:42])
        print(json.dumps({"t": time.time(), "arp": op, "src": src, "spa": spa, "tpa": tpa}), flush=True)
    elif kind == 0x86dd and f[20] == 58 and f[54] == 136:
        target = socket.inet_ntop(socket.AF_INET6, f[62:78])
        print(json.dumps({"t": time.time(), "na": target, "src": src, "flags": f[58]}), flush=True)
"#;

fn start_capture(lan: &FakeLan, secs: f64) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", lan.ext_ns(), "python3", "-c", CAPTURE])
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the capture");
    // Wait for its "ready" line: the socket is bound before the attach.
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(out);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child.stdout = Some(reader.into_inner());
    child
}

fn frames(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn new_addresses_are_announced_at_once_and_twice_more() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_dual_stack("lan", &[]);
    let capture = start_capture(&lan, 3.5);
    let c = lan.container_ns("1");
    let mac = "02:00:c0:a8:20:0a";
    lan.netattach_ok(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "ctr1",
        "--mac",
        mac,
        "--ip",
        "192.168.32.10",
        "--ip",
        "2001:db8:32::10",
        "lan",
    ]);
    let seen = frames(capture);
    let ours = |f: &&Value| f["src"] == mac;
    let requests: Vec<&Value> = seen
        .iter()
        .filter(ours)
        .filter(|f| f["arp"] == 1 && f["spa"] == "192.168.32.10" && f["tpa"] == "192.168.32.10")
        .collect();
    let replies: Vec<&Value> = seen
        .iter()
        .filter(ours)
        .filter(|f| f["arp"] == 2 && f["spa"] == "192.168.32.10")
        .collect();
    let adverts: Vec<&Value> = seen
        .iter()
        .filter(ours)
        .filter(|f| f["na"] == "2001:db8:32::10" && f["flags"].as_u64().unwrap() & 0x20 != 0)
        .collect();
    // Three rounds of ours (the kernel's arp_notify may add a request).
    assert!(requests.len() >= 3, "{seen:#?}");
    assert_eq!(replies.len(), 3, "{seen:#?}");
    assert!(adverts.len() >= 3, "{seen:#?}");
    // A second apart, the first at once.
    let t: Vec<f64> = replies.iter().map(|f| f["t"].as_f64().unwrap()).collect();
    assert!(t[1] - t[0] > 0.8 && t[2] - t[1] > 0.8, "{t:?}");
}

#[test]
fn a_stale_gateway_entry_is_replaced_and_announce_0_sends_none() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &["--subnet", SUBNET4, "--gateway", GW4]);
    // The gateway still has 192.168.32.10 at the MAC of a container gone.
    lan.ext.ip(&[
        "neigh",
        "replace",
        "192.168.32.10",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "gw0",
        "nud",
        "stale",
    ]);
    let c = lan.container_ns("1");
    let mac = "02:00:c0:a8:20:0a";
    lan.netattach_ok(&[
        "attach",
        "--netns",
        c.path_str(),
        "--id",
        "ctr1",
        "--mac",
        mac,
        "--ip",
        "192.168.32.10",
        "lan",
    ]);
    let learned = || {
        let out = common::exec_in(
            lan.ext_ns(),
            &["ip", "-j", "neigh", "show", "192.168.32.10"],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v[0]["lladdr"].as_str().unwrap_or("").to_string()
    };
    let mut got = learned();
    for _ in 0..20 {
        if got == mac {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        got = learned();
    }
    assert_eq!(got, mac);

    // -o announce=0: nothing of ours (the kernel's own arp_notify remains).
    lan.create_network(
        "quiet",
        &["--subnet", "192.168.40.0/24", "-o", "announce=0"],
    );
    let capture = start_capture(&lan, 1.5);
    let q = lan.container_ns("2");
    let qmac = "02:00:c0:a8:28:0a";
    lan.netattach_ok(&[
        "attach",
        "--netns",
        q.path_str(),
        "--id",
        "ctr2",
        "--mac",
        qmac,
        "--ip",
        "192.168.40.10",
        "quiet",
    ]);
    let seen = frames(capture);
    assert!(
        !seen.iter().any(|f| f["src"] == qmac && f["arp"] == 2),
        "{seen:#?}"
    );
}
