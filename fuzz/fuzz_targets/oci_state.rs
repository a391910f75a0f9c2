//! Feeds the OCI hook's stdin to `netattach::hook::read_input(verb, input)`:
//! the container state document a runtime (runc, crun, podman) writes to
//! `netattach hook attach|release`.
//!
//! Input layout: byte 0 picks the verb (bits 0-1: none / attach / release /
//! none) and the mode (bit 2). In the plain mode the rest is the state. In
//! the bundle mode the rest is `STATE \0 CONFIG`: CONFIG is written as the
//! bundle's `config.json` into a private scratch directory (on /dev/shm) and
//! every `@BUNDLE@` in STATE is replaced by that directory, so the bundle
//! paths of read_input (annotations, netns and hook timeout from config.json)
//! are reached as well. Nothing else on the machine is written.
//!
//! Checks beyond "no panic": the verb given is the verb returned; no request
//! means no netns and no timeout; an attach with a request has a netns; the
//! request found then goes to `request::parse`, as the hook does next.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netattach::hook::{read_input, Verb};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("netattach-fuzz-oci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch bundle");
        dir
    })
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let verb = match control & 3 {
        1 => Some(Verb::Attach),
        2 => Some(Verb::Release),
        _ => None,
    };
    let state: Vec<u8> = if control & 4 == 0 {
        rest.to_vec()
    } else {
        let dir = scratch();
        let (state, config) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        std::fs::write(dir.join("config.json"), config).expect("write the scratch config.json");
        replace(state, b"@BUNDLE@", dir.as_os_str().as_encoded_bytes())
    };
    let Ok(input) = read_input(verb, &state[..]) else {
        return;
    };
    let _ = format!("{input:?}");
    assert!(!input.container_id.is_empty());
    if let Some(v) = verb {
        assert_eq!(input.verb, v);
    }
    match &input.request {
        None => {
            assert!(input.netns.is_none(), "{input:?}");
            assert!(input.timeout.is_none(), "{input:?}");
        }
        Some(value) => {
            if input.verb == Verb::Attach {
                assert!(input.netns.is_some(), "{input:?}");
            }
            let _ = netattach::request::parse(value);
        }
    }
});
