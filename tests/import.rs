//! `netattach network import` end to end: the built binary reads `docker
//! network inspect` output (Docker's documented shape) from a file or stdin
//! and writes definitions that `network inspect` then shows. Nothing here
//! touches the host's interfaces (a definition names its parent, `create`
//! does not look for it), so these tests need no root.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// A private config and state dir, as a host's would be (a directory other
/// users can write is refused, whatever the umask of the test run).
struct Host {
    dir: common::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = common::TempDir::new(&format!("netattach-import-{}", common::unique_tag()));
        for sub in ["", "config", "state"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Host { dir }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::bin());
        cmd.arg("--config-dir")
            .arg(self.config_dir())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args);
        cmd
    }

    fn netattach(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run netattach")
    }

    /// `netattach args...` with `input` on stdin.
    fn netattach_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run netattach");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Writes `networks` as a file of inspect output; its path.
    fn inspect_file(&self, networks: &Value) -> String {
        let path = self.dir.path().join("docker-networks.json");
        std::fs::write(&path, serde_json::to_string_pretty(networks).unwrap()).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// `network inspect NAME`: its one definition.
    fn definition(&self, name: &str) -> Value {
        let out = self.netattach(&["network", "inspect", name]);
        assert!(out.status.success(), "{}", common::text(&out));
        let mut all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all[0].take()
    }

    fn defined_names(&self) -> Vec<String> {
        let out = self.netattach(&["network", "ls", "--json"]);
        assert!(out.status.success(), "{}", common::text(&out));
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The default bridge, as every `docker network inspect $(docker network ls -q)` has it.
fn docker_bridge() -> Value {
    json!({
        "Name": "bridge",
        "Id": "2d4f0d8b8c2a61b7e8f1a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a090",
        "Created": "2024-05-01T10:00:00.000000000Z",
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": {
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            "com.docker.network.bridge.name": "docker0",
            "com.docker.network.driver.mtu": "1500"
        },
        "Labels": {}
    })
}

/// `docker network create -d macvlan --subnet 192.168.10.0/24 --gateway
/// 192.168.10.1 --ip-range 192.168.10.128/25 --aux-address nas=192.168.10.129
/// --aux-address printer=192.168.10.130 -o parent=eth0.10 -o
/// macvlan_mode=bridge lan10`, with a container on it.
fn docker_macvlan_vlan() -> Value {
    json!({
        "Name": "lan10",
        "Id": "7b2c1e0f9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b",
        "Created": "2024-05-01T10:05:00.000000000Z",
        "Scope": "local",
        "Driver": "macvlan",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{
                "Subnet": "192.168.10.0/24",
                "IPRange": "192.168.10.128/25",
                "Gateway": "192.168.10.1",
                "AuxiliaryAddresses": {"nas": "192.168.10.129", "printer": "192.168.10.130"}
            }]
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {
            "4a1bc0ffee": {
                "Name": "web",
                "EndpointID": "e1e1",
                "MacAddress": "02:42:c0:a8:0a:80",
                "IPv4Address": "192.168.10.128/24",
                "IPv6Address": ""
            }
        },
        "Options": {"macvlan_mode": "bridge", "parent": "eth0.10"},
        "Labels": {}
    })
}

/// `docker network create -d ipvlan --subnet 10.20.0.0/24 -o parent=eth1 -o
/// ipvlan_mode=l3 -o ipvlan_flag=private routed`.
fn docker_ipvlan_l3() -> Value {
    json!({
        "Name": "routed",
        "Id": "a1b2c3",
        "Created": "2024-05-01T10:06:00.000000000Z",
        "Scope": "local",
        "Driver": "ipvlan",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet": "10.20.0.0/24"}]},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": {"ipvlan_flag": "private", "ipvlan_mode": "l3", "parent": "eth1"},
        "Labels": {}
    })
}

/// A dual-stack macvlan as Docker 28 prints it (EnableIPv4, and the
/// families among the options too), with an MTU.
fn docker_dual_stack() -> Value {
    json!({
        "Name": "dual",
        "Id": "d4d4d4",
        "Created": "2025-03-01T09:00:00.000000000Z",
        "Scope": "local",
        "Driver": "macvlan",
        "EnableIPv4": true,
        "EnableIPv6": true,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [
                {"Subnet": "192.168.30.0/24", "Gateway": "192.168.30.254"},
                {"Subnet": "2001:db8:30::/64", "Gateway": "2001:db8:30::1",
                 "AuxiliaryAddresses": {"router2": "2001:db8:30::2"}}
            ]
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": {
            "com.docker.network.driver.mtu": "1400",
            "com.docker.network.enable_ipv4": "true",
            "com.docker.network.enable_ipv6": "true",
            "parent": "eth2"
        },
        "Labels": {}
    })
}

/// A macvlan with a generic option netattach has no equivalent of.
fn docker_unsupported_option() -> Value {
    json!({
        "Name": "odd",
        "Id": "0dd0dd",
        "Created": "2024-05-01T10:07:00.000000000Z",
        "Scope": "local",
        "Driver": "macvlan",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "192.168.40.0/24"}]},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": {"com.docker.network.container_iface_prefix": "lan", "parent": "eth3"},
        "Labels": {}
    })
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn imports_a_docker_hosts_macvlan_and_ipvlan_networks_from_a_file() {
    let host = Host::new();
    let file = host.inspect_file(&json!([
        docker_bridge(),
        docker_macvlan_vlan(),
        docker_ipvlan_l3(),
        docker_dual_stack(),
        docker_unsupported_option(),
    ]));
    let out = host.netattach(&["network", "import", &file]);
    let (stdout, stderr) = (common::stdout(&out), common::stderr(&out));
    // One network refused: the others are imported, and the exit says so.
    assert!(!out.status.success(), "{}", common::text(&out));
    assert_eq!(
        lines(&stdout),
        [
            "imported lan10: macvlan bridge on eth0.10, subnets 192.168.10.0/24",
            "imported routed: ipvlan l3 (private) on eth1, subnets 10.20.0.0/24",
            "imported dual: macvlan bridge on eth2, subnets 192.168.30.0/24, 2001:db8:30::/64",
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("netattach: skipped bridge: driver bridge is not macvlan or ipvlan\n"),
        "{stderr}"
    );
    let refusal: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("netattach: refused"))
        .collect();
    assert_eq!(refusal.len(), 1, "{stderr}");
    assert!(
        refusal[0].starts_with(
            "netattach: refused odd: option com.docker.network.container_iface_prefix=lan is not supported"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("lan10: Docker still has 1 container(s) on it (192.168.10.128)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 of 4 macvlan/ipvlan network(s) not imported"),
        "{stderr}"
    );
    assert_eq!(host.defined_names(), ["dual", "lan10", "routed"]);

    let lan10 = host.definition("lan10");
    assert_eq!(lan10["driver"], "macvlan");
    // The dotted parent as `create -o parent=eth0.10` keeps it: VLAN 10 on
    // eth0, made by the first attach when it is missing.
    assert_eq!(lan10["parent"], "eth0.10");
    assert_eq!(lan10["mode"], "bridge");
    assert_eq!(
        lan10["subnets"],
        json!([{
            "subnet": "192.168.10.0/24",
            "gateway": "192.168.10.1",
            "ip_range": "192.168.10.128/25",
            "aux_addresses": {"nas": "192.168.10.129", "printer": "192.168.10.130"}
        }])
    );
    assert!(lan10.get("mtu").is_none());

    let routed = host.definition("routed");
    assert_eq!(routed["driver"], "ipvlan");
    assert_eq!(routed["parent"], "eth1");
    assert_eq!(routed["mode"], "l3");
    assert_eq!(routed["flag"], "private");
    // No gateway in Docker's config: the first usable address, reserved
    // by Docker's IPAM too, written out.
    assert_eq!(
        routed["subnets"],
        json!([{"subnet": "10.20.0.0/24", "gateway": "10.20.0.1"}])
    );

    let dual = host.definition("dual");
    assert_eq!(dual["parent"], "eth2");
    assert_eq!(dual["mtu"], 1400);
    assert_eq!(
        dual["subnets"],
        json!([
            {"subnet": "192.168.30.0/24", "gateway": "192.168.30.254"},
            {"subnet": "2001:db8:30::/64", "gateway": "2001:db8:30::1",
             "aux_addresses": {"router2": "2001:db8:30::2"}}
        ])
    );

    let out = host.netattach(&["network", "inspect", "odd"]);
    assert!(!out.status.success(), "{}", common::text(&out));
}

#[test]
fn reads_stdin_without_an_argument_and_with_dash() {
    let host = Host::new();
    let out = host.netattach_with_stdin(
        &["network", "import"],
        &json!([docker_bridge(), docker_ipvlan_l3()]).to_string(),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        lines(&common::stdout(&out)),
        ["imported routed: ipvlan l3 (private) on eth1, subnets 10.20.0.0/24"]
    );
    // One object (docker network inspect -f '{{json .}}') is one network.
    let out = host.netattach_with_stdin(
        &["network", "import", "-"],
        &docker_dual_stack().to_string(),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(host.defined_names(), ["dual", "routed"]);
    assert_eq!(host.definition("dual")["mtu"], 1400);

    let out = host.netattach_with_stdin(&["network", "import", "-"], "[{\"Name\": ");
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("input is not JSON"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn dry_run_prints_the_definitions_and_writes_nothing() {
    let host = Host::new();
    let file = host.inspect_file(&json!([
        docker_bridge(),
        docker_macvlan_vlan(),
        docker_dual_stack(),
        docker_unsupported_option(),
    ]));
    let out = host.netattach(&["network", "import", "--dry-run", &file]);
    // The same verdict as the import itself would give.
    assert!(!out.status.success(), "{}", common::text(&out));
    assert!(common::stderr(&out).contains("netattach: refused odd: option"));
    let planned: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", common::text(&out)));
    let names: Vec<&str> = planned
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lan10", "dual"]);
    assert!(host.defined_names().is_empty());
    assert_eq!(
        std::fs::read_dir(host.config_dir()).unwrap().count(),
        0,
        "the dry run wrote into the config dir"
    );

    // What it printed is what the import writes.
    let out = host.netattach(&["network", "import", &file]);
    assert!(!out.status.success(), "{}", common::text(&out));
    assert_eq!(host.definition("lan10"), planned[0]);
    assert_eq!(host.definition("dual"), planned[1]);
}

#[test]
fn a_second_import_leaves_identical_definitions_and_refuses_changed_ones() {
    let host = Host::new();
    let file = host.inspect_file(&json!([docker_macvlan_vlan(), docker_ipvlan_l3()]));
    let out = host.netattach(&["network", "import", &file]);
    assert!(out.status.success(), "{}", common::text(&out));
    let before = host.definition("lan10");

    // Run again (after fixing a refusal, say): nothing to do, no error.
    let out = host.netattach(&["network", "import", &file]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::stdout(&out).is_empty(), "{}", common::text(&out));
    assert!(
        common::stderr(&out).contains("netattach: lan10: already defined the same: left as it is"),
        "{}",
        common::text(&out)
    );

    // The Docker network changed meanwhile: the definition here is not
    // overwritten, that one is refused, the others still go through.
    let mut changed = docker_macvlan_vlan();
    changed["IPAM"]["Config"][0]["Gateway"] = "192.168.10.254".into();
    let mut other = docker_dual_stack();
    other["Name"] = "dual2".into();
    let file = host.inspect_file(&json!([changed, other]));
    let out = host.netattach(&["network", "import", &file]);
    assert!(!out.status.success(), "{}", common::text(&out));
    assert!(
        common::stderr(&out).contains(
            "netattach: refused lan10: a network of that name is already defined differently"
        ),
        "{}",
        common::text(&out)
    );
    assert_eq!(host.definition("lan10"), before);
    assert_eq!(host.defined_names(), ["dual2", "lan10", "routed"]);
}
