//! A container runtime's NRI side, written in the test suite from the protocol
//! facts (NRI-PROTOCOL.md) and sharing no code with the plugin: it accepts a
//! plugin on a real unix socket (or a socketpair end passed as fd 3), runs the
//! real sequence (RegisterPlugin on conn 2, Configure, Synchronize on conn 1,
//! then pod events) with the runtime's timeouts (5 s to register, 2 s per
//! request), writes frames the way Go does and checks every frame it reads
//! against what Go's reader can take.
#![allow(dead_code)]

pub mod pb;
pub mod wire;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pb::Enc;
use wire::*;

/// The runtime's deadline for a plugin to register (connect to Synchronize done).
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The runtime's deadline for every request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Status codes.
pub const OK: i32 = 0;
pub const INVALID_ARGUMENT: i32 = 3;
pub const NOT_FOUND: i32 = 5;
pub const RESOURCE_EXHAUSTED: i32 = 8;
pub const UNIMPLEMENTED: i32 = 12;

/// Event numbers.
pub const RUN_POD_SANDBOX: u64 = 1;
pub const STOP_POD_SANDBOX: u64 = 2;
pub const REMOVE_POD_SANDBOX: u64 = 3;
pub const CREATE_CONTAINER: u64 = 4;

/// Which NRI the runtime speaks: v0.8 sends pod events as `StateChange`,
/// v0.12 calls the dedicated RPC first and falls back on UNIMPLEMENTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V08,
    V012,
}

/// A pod as the runtime describes it.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    /// Network namespace path; empty: host network.
    pub netns: String,
    pub pid: u32,
}

impl Pod {
    pub fn new(id: &str, netns: &str) -> Pod {
        Pod {
            id: id.to_string(),
            name: format!("pod-{id}"),
            namespace: "default".to_string(),
            uid: format!("uid-{id}"),
            netns: netns.to_string(),
            pid: 4242,
            ..Pod::default()
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Pod {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    /// What containerd 1.7 sends with Stop/RemovePodSandbox: no netns, pid 0.
    pub fn as_sent_on_removal(&self) -> Pod {
        Pod {
            netns: String::new(),
            pid: 0,
            ..self.clone()
        }
    }

    /// `PodSandbox {id=1 name=2 uid=3 namespace=4 labels=5 annotations=6
    /// runtime_handler=7 linux=8 {namespaces=5 {type=1 path=2}} pid=9 ips=10}`.
    pub fn encode(&self) -> Enc {
        let mut e = Enc::new()
            .string(1, &self.id)
            .string(2, &self.name)
            .string(3, &self.uid)
            .string(4, &self.namespace);
        for (k, v) in &self.labels {
            e = e.map_entry(5, k, v);
        }
        for (k, v) in &self.annotations {
            e = e.map_entry(6, k, v);
        }
        e = e.string(7, "runc");
        let mut linux = Enc::new()
            .message(
                5,
                Enc::new().string(1, "ipc").string(2, "/proc/4242/ns/ipc"),
            )
            .message(
                5,
                Enc::new().string(1, "uts").string(2, "/proc/4242/ns/uts"),
            );
        if !self.netns.is_empty() {
            linux = linux.message(5, Enc::new().string(1, "network").string(2, &self.netns));
        }
        e.message(8, linux)
            .uint(9, u64::from(self.pid))
            .string(10, "10.88.0.7")
    }
}

/// How a registration went, as the runtime saw it.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub idx: String,
    pub events: u32,
    pub took: Duration,
}

type Waiter = mpsc::Sender<Result<Vec<u8>, (i32, String)>>;

struct Shared {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u32, Waiter>>,
    registered: Mutex<Option<mpsc::Sender<(String, String)>>>,
    violations: Mutex<Vec<String>>,
    closed: AtomicBool,
    closed_tx: Mutex<Option<mpsc::Sender<()>>>,
}

/// One plugin connection, registered.
pub struct Runtime {
    shared: Arc<Shared>,
    next_id: AtomicU32,
    pub version: Version,
    pub registration: Registration,
    closed_rx: Mutex<mpsc::Receiver<()>>,
    stream: UnixStream,
}

/// Options of the runtime's side of the sequence.
#[derive(Clone)]
pub struct Options {
    pub version: Version,
    pub runtime_name: String,
    /// `ConfigureRequest.config` (a launched plugin's conf.d file).
    pub config: String,
    /// Pods for the registration's Synchronize, and how to chunk them.
    pub sync_chunks: Vec<Vec<Pod>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            version: Version::V08,
            runtime_name: "fake-containerd".to_string(),
            config: String::new(),
            sync_chunks: vec![Vec::new()],
        }
    }
}

impl Runtime {
    /// Waits (up to `accept_timeout`) for a plugin to connect, then registers it.
    pub fn accept(
        listener: &UnixListener,
        accept_timeout: Duration,
        opts: &Options,
    ) -> Result<Runtime, String> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + accept_timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no plugin connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        stream.set_nonblocking(false).unwrap();
        Runtime::register(stream, opts)
    }

    /// Runs the registration sequence on a connected stream.
    pub fn register(stream: UnixStream, opts: &Options) -> Result<Runtime, String> {
        let start = Instant::now();
        let (reg_tx, reg_rx) = mpsc::channel();
        let (closed_tx, closed_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream.try_clone().unwrap()),
            pending: Mutex::new(HashMap::new()),
            registered: Mutex::new(Some(reg_tx)),
            violations: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            closed_tx: Mutex::new(Some(closed_tx)),
        });
        let reader = stream.try_clone().unwrap();
        let s2 = shared.clone();
        std::thread::spawn(move || read_loop(reader, &s2));
        let mut rt = Runtime {
            shared,
            next_id: AtomicU32::new(1),
            version: opts.version,
            registration: Registration {
                name: String::new(),
                idx: String::new(),
                events: 0,
                took: Duration::ZERO,
            },
            closed_rx: Mutex::new(closed_rx),
            stream,
        };
        let fail = |rt: &Runtime, e: String| {
            rt.close();
            Err(e)
        };
        let (name, idx) = match reg_rx.recv_timeout(REGISTRATION_TIMEOUT) {
            Ok(r) => r,
            Err(_) => return fail(&rt, "plugin did not call RegisterPlugin in time".into()),
        };
        let configure = Enc::new()
            .string(1, &opts.config)
            .string(2, &opts.runtime_name)
            .string(3, "v9.9.9-test")
            .uint(4, REGISTRATION_TIMEOUT.as_millis() as u64)
            .uint(5, REQUEST_TIMEOUT.as_millis() as u64);
        let resp = match rt.call("Configure", &configure.0) {
            Ok(r) => r,
            Err(e) => return fail(&rt, format!("Configure failed: {e:?}")),
        };
        if pb::has(&resp, 1) {
            return fail(&rt, "ConfigureResponse has a field 1".into());
        }
        let events = pb::get_uint(&resp, 2) as u32;
        if events > 0x7ff {
            return fail(
                &rt,
                format!("event mask {events:#x} beyond what v0.8 knows"),
            );
        }
        rt.registration = Registration {
            name,
            idx,
            events,
            took: Duration::ZERO,
        };
        if let Err(e) = rt.synchronize(&opts.sync_chunks) {
            return fail(&rt, format!("Synchronize failed: {e:?}"));
        }
        rt.registration.took = start.elapsed();
        if rt.registration.took > REGISTRATION_TIMEOUT {
            return fail(
                &rt,
                "registration took longer than the runtime allows".into(),
            );
        }
        Ok(rt)
    }

    /// Synchronize in chunks: `more` on all but the last; the plugin must
    /// answer `{more: true}` to those, and no updates at all.
    pub fn synchronize(&self, chunks: &[Vec<Pod>]) -> Result<(), (i32, String)> {
        for (i, chunk) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let mut req = Enc::new();
            for pod in chunk {
                req = req.message(1, pod.encode());
            }
            let req = req.uint(3, u64::from(more));
            assert!(
                req.0.len() + 200 < MAX_MESSAGE,
                "test bug: a Synchronize chunk must stay below 4 MiB"
            );
            let resp = self.call("Synchronize", &req.0)?;
            if pb::has(&resp, 1) {
                return Err((-1, "plugin sent container updates".into()));
            }
            if (pb::get_uint(&resp, 2) != 0) != more {
                return Err((-1, format!("SynchronizeResponse.more != {more}")));
            }
        }
        Ok(())
    }

    /// Calls a Plugin method with the runtime's 2 s deadline.
    pub fn call(&self, method: &str, payload: &[u8]) -> Result<Vec<u8>, (i32, String)> {
        self.call_raw(PLUGIN_SERVICE, method, payload, REQUEST_TIMEOUT)
    }

    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, (i32, String)> {
        let id = self.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        self.shared.pending.lock().unwrap().insert(id, tx);
        let body = request_body(service, method, payload, timeout.as_nanos() as u64);
        self.send_bytes(&go_frames(
            PLUGIN_CONN,
            &ttrpc_message(id, T_REQUEST, &body),
        ));
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.shared.pending.lock().unwrap().remove(&id);
                Err((-2, format!("{method}: timeout after {timeout:?}")))
            }
            Err(_) => Err((-3, format!("{method}: connection closed"))),
        }
    }

    /// A fresh client stream id (odd).
    pub fn fresh_id(&self) -> u32 {
        self.next_id.fetch_add(2, Ordering::SeqCst)
    }

    /// Registers interest in the response to stream `id` (sent by hand).
    pub fn expect(&self, id: u32) -> mpsc::Receiver<Result<Vec<u8>, (i32, String)>> {
        let (tx, rx) = mpsc::channel();
        self.shared.pending.lock().unwrap().insert(id, tx);
        rx
    }

    /// Calls a Plugin method with its message cut into frames of `chunk` bytes
    /// (a peer may frame as it likes; the plugin must reassemble).
    pub fn call_framed(
        &self,
        method: &str,
        payload: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, (i32, String)> {
        let id = self.fresh_id();
        let rx = self.expect(id);
        let body = request_body(PLUGIN_SERVICE, method, payload, 2_000_000_000);
        let msg = ttrpc_message(id, T_REQUEST, &body);
        let mut bytes = Vec::new();
        for part in msg.chunks(chunk) {
            bytes.extend(frame(PLUGIN_CONN, part));
        }
        self.send_bytes(&bytes);
        rx.recv_timeout(REQUEST_TIMEOUT)
            .unwrap_or_else(|_| Err((-2, format!("{method}: no answer"))))
    }

    /// Writes raw bytes on the socket (malformed-input tests).
    pub fn send_bytes(&self, bytes: &[u8]) {
        let _ = self.shared.writer.lock().unwrap().write_all(bytes);
    }

    fn subscribed(&self, event: u64) -> bool {
        let mask = self.registration.events;
        mask == 0 || mask & (1 << (event - 1)) != 0
    }

    /// Delivers a pod event the way this runtime version does.
    pub fn pod_event(&self, event: u64, pod: &Pod) -> Result<(), (i32, String)> {
        if !self.subscribed(event) {
            return Ok(());
        }
        if self.version == Version::V012 {
            let method = match event {
                RUN_POD_SANDBOX => "RunPodSandbox",
                STOP_POD_SANDBOX => "StopPodSandbox",
                _ => "RemovePodSandbox",
            };
            let req = Enc::new().message(1, pod.encode());
            match self.call(method, &req.0) {
                Err((UNIMPLEMENTED, _)) => {}
                other => return other.map(|_| ()),
            }
        }
        let req = Enc::new().uint(1, event).message(2, pod.encode());
        self.call("StateChange", &req.0).map(|_| ())
    }

    pub fn run_pod(&self, pod: &Pod) -> Result<(), (i32, String)> {
        self.pod_event(RUN_POD_SANDBOX, pod)
    }

    pub fn stop_pod(&self, pod: &Pod) -> Result<(), (i32, String)> {
        self.pod_event(STOP_POD_SANDBOX, pod)
    }

    pub fn remove_pod(&self, pod: &Pod) -> Result<(), (i32, String)> {
        self.pod_event(REMOVE_POD_SANDBOX, pod)
    }

    /// Frames the Go reader could not have read, so far.
    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// Closes the connection (the runtime going away).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Waits up to `timeout` for the plugin to close the connection.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        if self.shared.closed.load(Ordering::SeqCst) {
            return true;
        }
        let rx = self.closed_rx.lock().unwrap();
        !matches!(
            rx.recv_timeout(timeout),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_loop(mut stream: UnixStream, shared: &Arc<Shared>) {
    let mut plugin_conn = GoReader::new(PLUGIN_CONN);
    let mut runtime_conn = GoReader::new(RUNTIME_CONN);
    loop {
        let mut hdr = [0u8; FRAME_HEADER];
        if stream.read_exact(&mut hdr).is_err() {
            break;
        }
        let conn = u32::from_be_bytes(hdr[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            shared
                .violations
                .lock()
                .unwrap()
                .push(format!("frame of {len} bytes"));
            break;
        }
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        match conn {
            PLUGIN_CONN => {
                for (h, body) in plugin_conn.push(payload) {
                    if h.kind == T_RESPONSE {
                        if let Some(tx) = shared.pending.lock().unwrap().remove(&h.stream_id) {
                            let _ = tx.send(parse_response(&body));
                        }
                    }
                }
            }
            RUNTIME_CONN => {
                for (h, body) in runtime_conn.push(payload) {
                    if h.kind == T_REQUEST {
                        serve_runtime(shared, h.stream_id, &body);
                    }
                }
            }
            _ => {}
        }
        let mut v = shared.violations.lock().unwrap();
        v.append(&mut plugin_conn.violations);
        v.append(&mut runtime_conn.violations);
    }
    shared.closed.store(true, Ordering::SeqCst);
    shared.pending.lock().unwrap().clear();
    if let Some(tx) = shared.closed_tx.lock().unwrap().take() {
        let _ = tx.send(());
    }
}

/// The Runtime service on conn 2.
fn serve_runtime(shared: &Shared, stream_id: u32, body: &[u8]) {
    let service = pb::get_string(body, 1);
    let method = pb::get_string(body, 2);
    let payload = pb::get_bytes(body, 3);
    if stream_id % 2 == 0 {
        shared
            .violations
            .lock()
            .unwrap()
            .push(format!("plugin used even stream id {stream_id}"));
    }
    let response = if service != RUNTIME_SERVICE {
        response_body(UNIMPLEMENTED, &format!("service {service}"), &[])
    } else if method == "RegisterPlugin" {
        let name = pb::get_string(&payload, 1);
        let idx = pb::get_string(&payload, 2);
        if let Some(tx) = shared.registered.lock().unwrap().take() {
            let _ = tx.send((name, idx));
        }
        response_body(OK, "", &[])
    } else if method == "UpdateContainers" {
        response_body(OK, "", &[])
    } else {
        response_body(UNIMPLEMENTED, &format!("method {method}"), &[])
    };
    let msg = ttrpc_message(stream_id, T_RESPONSE, &response);
    let _ = shared
        .writer
        .lock()
        .unwrap()
        .write_all(&go_frames(RUNTIME_CONN, &msg));
}
