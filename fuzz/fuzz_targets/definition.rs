//! Feeds arbitrary bytes as a network definition file (the JSON that
//! `netattach network create` writes to networks.d/) to
//! `serde_json::from_slice::<netattach::config::Network>`, then runs
//! `validate()` and the methods that walk a definition (mode, flag, segment,
//! each subnet's gateway, reserved addresses, pool bounds) and the warning a
//! broken file produces. The same bytes, as UTF-8, go to
//! `config::parse_vlan_parent` and the other string parsers of config.rs.
//!
//! Checks beyond "no panic": a definition survives a save/load round trip
//! unchanged; a valid one keeps its gateway and pool bounds inside its subnets;
//! a parsed VLAN parent is in 1-4094 and re-parses from its canonical form.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use netattach::config::{
    self, BrokenDefinition, ConfigError, Definitions, Gateway, Network, RequestedIps,
};
use netattach::ipam::pool;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        strings(text);
    }
    definition(data);
});

fn strings(text: &str) {
    match config::parse_vlan_parent(text) {
        Ok(Some(v)) => {
            assert!((1..=4094).contains(&v.vid), "{v:?}");
            assert!(config::valid_ifname(&v.base), "{v:?}");
            let canonical = format!("{}.{}", v.base, v.vid);
            assert_eq!(config::parse_vlan_parent(&canonical).unwrap(), Some(v));
        }
        Ok(None) | Err(_) => {}
    }
    let _ = config::valid_ifname(text);
    let _ = config::valid_network_name(text);
    let _ = text.parse::<Gateway>();
    let _ = text.parse::<RequestedIps>();
}

fn definition(data: &[u8]) {
    let net: Network = match serde_json::from_slice(data) {
        Ok(n) => n,
        Err(error) => {
            let broken = BrokenDefinition {
                name: "fuzz".into(),
                error: ConfigError::Parse {
                    path: PathBuf::from("/etc/netattach/networks.d/fuzz.json"),
                    error,
                },
            };
            let defs = Definitions {
                networks: Vec::new(),
                broken: vec![broken],
            };
            assert_eq!(defs.warnings().len(), 1);
            return;
        }
    };

    // What `network create` writes, loaded again, is the same definition.
    let saved = serde_json::to_vec_pretty(&net).expect("network serializes");
    let loaded: Network = match serde_json::from_slice(&saved) {
        Ok(n) => n,
        Err(e) => panic!(
            "saved definition does not load: {e}\n{}",
            String::from_utf8_lossy(&saved)
        ),
    };
    assert_eq!(loaded, net, "round trip changed the definition");

    let _ = (net.mode(), net.flag(), net.segment());
    let valid = net.validate();
    for s in &net.subnets {
        let gw = s.gateway();
        let _ = s.reserved_addresses().count();
        let _ = s.reserved_reason(s.subnet.network());
        if let Some(gw) = gw {
            let _ = s.unavailable_reason(gw);
            let _ = net.may_request(gw);
            let _ = net.subnet_of(gw);
        }
        let _ = config::first_usable(s.subnet);
        let range = s.ip_range.unwrap_or(s.subnet);
        let bounds = pool::usable_bounds(s.subnet, range);
        if valid.is_ok() {
            if let Some(gw) = gw {
                assert!(s.subnet.contains(&gw), "gateway {gw} outside {}", s.subnet);
                assert!(s.reserved_reason(gw).is_none(), "gateway {gw}");
            }
            if let Some((lo, hi)) = bounds {
                assert!(lo <= hi);
                let v6 = s.subnet.addr().is_ipv6();
                for x in [lo, hi] {
                    let a = pool::u128_to_addr(x, v6).expect("bound fits its family");
                    assert!(s.subnet.contains(&a) && range.contains(&a), "{a} {s:?}");
                    assert!(s.reserved_reason(a).is_none(), "{a} {s:?}");
                }
            }
        }
    }
    let _ = pool::pools_of(&net);
    match valid {
        Ok(()) => {
            assert!(config::parse_vlan_parent(&net.parent).is_ok());
            let defs = Definitions {
                networks: vec![net],
                broken: Vec::new(),
            };
            assert!(defs.warnings().is_empty());
        }
        Err(error) => {
            let _ = error.to_string();
            let defs = Definitions {
                networks: Vec::new(),
                broken: vec![BrokenDefinition {
                    name: net.name.clone(),
                    error: ConfigError::Invalid {
                        path: PathBuf::from("/etc/netattach/networks.d/fuzz.json"),
                        error,
                    },
                }],
            };
            assert_eq!(defs.warnings().len(), 1);
        }
    }
}
