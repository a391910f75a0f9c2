//! Feeds arbitrary UTF-8 to `netattach::request::parse`, the parser of the
//! untrusted `netattach/networks` annotation value (short form `lan,st@st0`
//! and the JSON list form).
//!
//! Checks beyond "no panic": an error is one line; an accepted request obeys
//! the documented bounds (at most MAX_NETWORKS, valid names and interface
//! names, assignable MACs, usable addresses, at most one default-route), and
//! written back as the JSON form it parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netattach::config::{valid_ifname, valid_network_name};
use netattach::request::{self, MAX_NETWORKS};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match request::parse(value) {
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("netattach/networks: "), "{shown:?}");
            assert!(
                !shown.contains('\n') && !shown.contains('\r'),
                "error is not one line: {shown:?}"
            );
        }
        Ok(nets) => {
            let _ = format!("{nets:?}");
            assert!(nets.len() <= MAX_NETWORKS);
            assert!(nets.iter().filter(|n| n.default_route.is_some()).count() <= 1);
            let mut json = Vec::new();
            for n in &nets {
                assert!(valid_network_name(&n.name), "{:?}", n.name);
                if let Some(i) = &n.interface {
                    assert!(valid_ifname(i), "{i:?}");
                }
                for ip in &n.ips {
                    assert!(request::unusable_reason(ip.addr).is_none(), "{ip}");
                }
                if let Some(mac) = n.mac {
                    assert!(mac.check_assignable().is_ok(), "{mac}");
                }
                let mut o = serde_json::Map::new();
                o.insert("name".into(), n.name.clone().into());
                if let Some(i) = &n.interface {
                    o.insert("interface".into(), i.clone().into());
                }
                if !n.ips.is_empty() {
                    let ips: Vec<String> = n.ips.iter().map(ToString::to_string).collect();
                    o.insert("ips".into(), ips.into());
                }
                if let Some(mac) = n.mac {
                    o.insert("mac".into(), mac.to_string().into());
                }
                if let Some(gws) = &n.default_route {
                    let gws: Vec<String> = gws.iter().map(ToString::to_string).collect();
                    o.insert("default-route".into(), gws.into());
                }
                json.push(serde_json::Value::Object(o));
            }
            let text = serde_json::Value::Array(json).to_string();
            if text.len() > request::MAX_BYTES {
                return; // escaping can lengthen a value near the limit
            }
            match request::parse(&text) {
                Ok(again) => assert_eq!(again, nets, "JSON form {text:?} parses differently"),
                Err(e) => panic!("accepted request written as JSON {text:?} is refused: {e}"),
            }
        }
    }
});
