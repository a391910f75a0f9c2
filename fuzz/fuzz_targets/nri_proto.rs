//! Feeds protobuf payloads of the NRI requests the plugin handles.
//!
//! 1. Every bytes input is decoded with `protobuf::Message::parse_from_bytes`
//!    as each message type of `proto/nri.proto` and `proto/ttrpc.proto`
//!    (ConfigureRequest, SynchronizeRequest, StateChangeEvent,
//!    PodSandboxRequest, PodSandbox, Container, RegisterPluginRequest,
//!    ttrpc Request/Response, ...); what decodes must re-encode and decode to
//!    the same message. The conversions the plugin applies to decoded
//!    messages that are public get the decoded values: `settings::parse_config`
//!    on `ConfigureRequest.config`, `request::parse` on the pods'
//!    `netattach/networks` annotation. (`Pod::from_proto` is private.)
//! 2. The same bytes minus byte 0 go as the payload of one Plugin-service
//!    method (byte 0 picks it) to `nri::plugin::Connection::call`, the public
//!    entry the session hands each request to. It runs with its paths under
//!    `/dev/null/`, so the lease store can never open: every path that would
//!    reach the store, a netns or netlink fails there instead (no root, no
//!    state, nothing written). A `Configure` whose plugin config would name a
//!    log file or move the state dir elsewhere is not passed on (that would
//!    create files); the log goes to /dev/null.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netattach::nri::plugin::{Connection, Paths, Plugin};
use netattach::nri::proto::{nri, ttrpc};
use netattach::nri::session::Service;
use netattach::nri::settings::parse_config;
use netattach::request;
use protobuf::Message;

/// Decodes `data` as `M`; on success checks the round trip and returns it.
fn decode<M: Message + PartialEq>(data: &[u8]) -> Option<M> {
    let m = M::parse_from_bytes(data).ok()?;
    let bytes = m.write_to_bytes().expect("a decoded message encodes");
    let again = M::parse_from_bytes(&bytes).expect("a re-encoded message decodes");
    assert!(again == m, "{} changed in a round trip", M::NAME);
    Some(m)
}

fn pod(p: &nri::PodSandbox) {
    if let Some(v) = p.annotations.get(request::ANNOTATION) {
        let _ = request::parse(v);
    }
    let _ = p
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.iter().find(|ns| ns.type_ == "network"))
        .map(|ns| ns.path.clone());
}

const METHODS: [&str; 16] = [
    "Configure",
    "Synchronize",
    "StateChange",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "Shutdown",
    "CreateContainer",
    "UpdateContainer",
    "StopContainer",
    "UpdatePodSandbox",
    "ValidateContainerAdjustment",
    "PostCreateContainer",
    "StartContainer",
    "",
    "configure",
];

const SANDBOX: &str = "/dev/null/netattach-fuzz";

/// Whether `Connection::call` may get this Configure without writing anywhere.
fn configure_is_harmless(payload: &[u8]) -> bool {
    let Ok(req) = nri::ConfigureRequest::parse_from_bytes(payload) else {
        return true; // refused as malformed
    };
    if req.config.trim().is_empty() {
        return true;
    }
    match parse_config(&req.config) {
        Err(_) => true, // refused
        Ok(file) => {
            file.log_file.is_none()
                && file.state_dir.as_deref().is_none_or(|d| {
                    d.starts_with(SANDBOX) && !d.components().any(|c| c.as_os_str() == "..")
                })
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static LOG: Once = Once::new();
    LOG.call_once(|| {
        netattach::nri::log::to_file(Path::new("/dev/null")).expect("log to /dev/null");
    });

    // 1. Decoding.
    if let Some(c) = decode::<nri::ConfigureRequest>(data) {
        let _ = parse_config(&c.config);
    }
    if let Some(s) = decode::<nri::SynchronizeRequest>(data) {
        s.pods.iter().for_each(pod);
    }
    if let Some(e) = decode::<nri::StateChangeEvent>(data) {
        let _ = e.event.enum_value();
        if let Some(p) = e.pod.as_ref() {
            pod(p);
        }
    }
    if let Some(r) = decode::<nri::PodSandboxRequest>(data) {
        if let Some(p) = r.pod.as_ref() {
            pod(p);
        }
    }
    if let Some(p) = decode::<nri::PodSandbox>(data) {
        pod(&p);
    }
    decode::<nri::Container>(data);
    decode::<nri::LinuxPodSandbox>(data);
    decode::<nri::RegisterPluginRequest>(data);
    decode::<nri::ConfigureResponse>(data);
    decode::<nri::SynchronizeResponse>(data);
    decode::<nri::Empty>(data);
    decode::<ttrpc::Request>(data);
    decode::<ttrpc::Response>(data);

    // 2. The plugin's handling of one request.
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let method = METHODS[pick as usize % METHODS.len()];
    if method == "Configure" && !configure_is_harmless(payload) {
        return;
    }
    let plugin = Arc::new(Plugin::new(Paths {
        config_dir: PathBuf::from(format!("{SANDBOX}/networks.d")),
        state_dir: PathBuf::from(format!("{SANDBOX}/state")),
    }));
    let conn = Connection::new(plugin);
    let timeout = (pick & 0x80 != 0).then(|| Duration::from_secs(2));
    let reply = conn.call(method, payload, timeout);
    if let Err(e) = &reply.result {
        assert_ne!(e.code, netattach::nri::ttrpc::code::OK, "{e:?}");
    }
});
