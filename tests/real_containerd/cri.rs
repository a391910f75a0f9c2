//! A small synchronous client of the Kubernetes Container Runtime Interface
//! (`runtime.v1.RuntimeService`), for the tests that drive a real containerd
//! through its CRI plugin the way a kubelet would.
//!
//! gRPC is spoken by hand over one HTTP/2 connection (the `h2` crate) on the
//! runtime's unix socket: each call is a POST to
//! `/runtime.v1.RuntimeService/<Method>` whose body is one length-prefixed
//! protobuf message; the answer is one such message in DATA frames and the
//! status in the trailers (`grpc-status`, percent-encoded `grpc-message`), or,
//! for an error without a message, in the response headers alone
//! ("Trailers-Only"). The messages come from `tests/proto/cri.proto`, compiled
//! by `build.rs` into `$OUT_DIR/cri_proto`; only this module includes them.
//!
//! Every call is bounded by a deadline (sent as `grpc-timeout` and enforced
//! here as well) and fails with a [`CriError`] that prints as one line.
//!
//! Threads: [`Cri`] is `Send + Sync`. Share one between threads (through
//! `std::thread::scope` or an `Arc`) and their calls run concurrently, each as
//! its own HTTP/2 stream over the one connection; a call blocks only its own
//! thread. The connection is driven by a current-thread tokio runtime held by
//! the client, run by whichever calling thread is inside it at the moment.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, StatusCode};
use protobuf::{EnumOrUnknown, Message, MessageField};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/cri_proto/mod.rs"));
}
use pb::cri as api;

/// gRPC status codes (the ones this client produces itself, and a name for
/// every code in messages).
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;

    /// The canonical name of a gRPC status code.
    pub fn name(code: u32) -> &'static str {
        match code {
            0 => "OK",
            1 => "Canceled",
            2 => "Unknown",
            3 => "InvalidArgument",
            4 => "DeadlineExceeded",
            5 => "NotFound",
            6 => "AlreadyExists",
            7 => "PermissionDenied",
            8 => "ResourceExhausted",
            9 => "FailedPrecondition",
            10 => "Aborted",
            11 => "OutOfRange",
            12 => "Unimplemented",
            13 => "Internal",
            14 => "Unavailable",
            15 => "DataLoss",
            16 => "Unauthenticated",
            _ => "unknown code",
        }
    }
}

/// Deadline of a call unless [`Cri::with_timeout`] sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted (ExecSync output is capped at 16 MiB per stream by the runtime).
const MAX_ANSWER: usize = 64 << 20;
const SERVICE: &str = "runtime.v1.RuntimeService";

/// A failed call: the gRPC status the runtime answered with, or one this
/// client chose: [`code::DEADLINE_EXCEEDED`] when its own deadline passed,
/// [`code::UNAVAILABLE`] when the socket cannot be reached or the connection
/// broke, [`code::INTERNAL`] for an answer that is not proper gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriError {
    /// The RPC, e.g. `RunPodSandbox` (`connect` for [`Cri::connect`]).
    pub call: &'static str,
    /// The gRPC status code.
    pub code: u32,
    /// The status message, percent-decoded.
    pub message: String,
}

impl fmt::Display for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the runtime put in its message.
        let message = self.message.trim().replace(['\r', '\n'], " ");
        write!(
            f,
            "CRI {} failed: {} (gRPC status {}): {}",
            self.call,
            code::name(self.code),
            self.code,
            message
        )
    }
}

impl std::error::Error for CriError {}

/// What a test says about a pod; becomes the `PodSandboxConfig`.
#[derive(Debug, Clone, Default)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    /// The pod's annotations (what the NRI plugin sees of the pod).
    pub annotations: BTreeMap<String, String>,
    /// `hostNetwork: true`: network namespace mode NODE, no pod netns.
    pub host_network: bool,
    /// Where container logs go; containers then log to `<name>.log` in it.
    pub log_directory: Option<PathBuf>,
}

/// State of a pod sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// A pod as `ListPodSandbox` reports it.
#[derive(Debug, Clone)]
pub struct PodSummary {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub state: SandboxState,
    pub annotations: BTreeMap<String, String>,
}

/// A pod as verbose `PodSandboxStatus` reports it.
#[derive(Debug, Clone)]
pub struct PodStatus {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub state: SandboxState,
    /// The pod's primary IP, if the runtime set up its network (not for host network).
    pub ip: Option<String>,
    pub additional_ips: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    /// The verbose extra information, each value JSON; containerd puts
    /// everything under the key `info`.
    pub info: BTreeMap<String, String>,
}

impl PodStatus {
    fn info_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.info.get("info")?).ok()
    }

    /// The sandbox's network namespace file as containerd's verbose info
    /// gives it: the `path` of the `network` entry among the OCI spec's
    /// `runtimeSpec.linux.namespaces` (a bind mount under containerd's
    /// state dir, `.../netns/cni-<uuid>`). None for a host-network pod, whose
    /// spec has no network namespace entry.
    pub fn netns_path(&self) -> Option<PathBuf> {
        let info = self.info_json()?;
        info.pointer("/runtimeSpec/linux/namespaces")?
            .as_array()?
            .iter()
            .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
            .get("path")?
            .as_str()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// The host pid of the sandbox's (pause) process, from the verbose info.
    pub fn pid(&self) -> Option<u32> {
        let pid = self.info_json()?.get("pid")?.as_u64()?;
        u32::try_from(pid).ok().filter(|&p| p != 0)
    }
}

/// What `ExecSync` answered.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecResult {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A connection to a CRI runtime service. See the module documentation for
/// use from several threads.
pub struct Cri {
    rt: Runtime,
    socket: PathBuf,
    /// The connection; replaced when it is found closed before a call is sent.
    sender: Mutex<Option<SendRequest<Bytes>>>,
    timeout: Duration,
}

type Failure = (u32, String);

impl Cri {
    /// Connects to the runtime's socket, retrying (the socket may not exist
    /// yet, the runtime may still be starting) until `Version` answers or
    /// `wait` has passed; then fails with the last reason.
    pub fn connect(socket: &Path, wait: Duration) -> Result<Cri, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CriError {
                call: "connect",
                code: code::INTERNAL,
                message: format!("cannot build a tokio runtime: {e}"),
            })?;
        let cri = Cri {
            rt,
            socket: socket.to_owned(),
            sender: Mutex::new(None),
            timeout: DEFAULT_TIMEOUT,
        };
        let start = Instant::now();
        loop {
            let left = wait.saturating_sub(start.elapsed());
            let attempt = left.clamp(Duration::from_millis(100), Duration::from_secs(5));
            let err = match cri.version_within(attempt) {
                Ok(_) => return Ok(cri),
                Err(e) => e,
            };
            if start.elapsed() >= wait {
                return Err(CriError {
                    call: "connect",
                    code: err.code,
                    message: format!(
                        "{} gave no Version answer within {} ms; last: {}",
                        socket.display(),
                        wait.as_millis(),
                        err.message
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50).min(left));
        }
    }

    /// The same client with another deadline for each call (ExecSync's is its
    /// own timeout plus 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Cri {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `(runtime_name, runtime_version)`, e.g. `("containerd", "1.7.24~ds1")`.
    pub fn version(&self) -> Result<(String, String), CriError> {
        self.version_within(self.timeout)
    }

    fn version_within(&self, timeout: Duration) -> Result<(String, String), CriError> {
        let req = api::VersionRequest {
            version: "v1".into(),
            ..Default::default()
        };
        let resp: api::VersionResponse = self.call("Version", &req, timeout)?;
        Ok((resp.runtime_name, resp.runtime_version))
    }

    /// Creates and starts a pod sandbox with the default runtime handler;
    /// returns its id.
    pub fn run_pod_sandbox(&self, pod: &PodConfig) -> Result<String, CriError> {
        let req = api::RunPodSandboxRequest {
            config: MessageField::some(sandbox_config(pod)),
            runtime_handler: String::new(),
            ..Default::default()
        };
        let resp: api::RunPodSandboxResponse = self.call("RunPodSandbox", &req, self.timeout)?;
        Ok(resp.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
            ..Default::default()
        };
        let _: api::StopPodSandboxResponse = self.call("StopPodSandbox", &req, self.timeout)?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
            ..Default::default()
        };
        let _: api::RemovePodSandboxResponse = self.call("RemovePodSandbox", &req, self.timeout)?;
        Ok(())
    }

    /// Verbose status of a pod sandbox.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodStatus, CriError> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
            ..Default::default()
        };
        let resp: api::PodSandboxStatusResponse =
            self.call("PodSandboxStatus", &req, self.timeout)?;
        let status = resp.status.into_option().unwrap_or_default();
        let network = status.network.into_option().unwrap_or_default();
        let metadata = status.metadata.into_option().unwrap_or_default();
        Ok(PodStatus {
            id: status.id,
            name: metadata.name,
            namespace: metadata.namespace,
            state: sandbox_state(status.state),
            ip: Some(network.ip).filter(|ip| !ip.is_empty()),
            additional_ips: network.additional_ips.into_iter().map(|ip| ip.ip).collect(),
            annotations: status.annotations.into_iter().collect(),
            info: resp.info.into_iter().collect(),
        })
    }

    /// Every pod sandbox the runtime knows, ready or not.
    pub fn list_pod_sandbox(&self) -> Result<Vec<PodSummary>, CriError> {
        let req = api::ListPodSandboxRequest::default();
        let resp: api::ListPodSandboxResponse = self.call("ListPodSandbox", &req, self.timeout)?;
        Ok(resp
            .items
            .into_iter()
            .map(|pod| {
                let metadata = pod.metadata.into_option().unwrap_or_default();
                PodSummary {
                    id: pod.id,
                    name: metadata.name,
                    namespace: metadata.namespace,
                    uid: metadata.uid,
                    attempt: metadata.attempt,
                    state: sandbox_state(pod.state),
                    annotations: pod.annotations.into_iter().collect(),
                }
            })
            .collect())
    }

    /// Creates container `name` running `command` (the image's entrypoint if
    /// empty) from `image` (a reference the runtime already has) in sandbox
    /// `pod_id`, which was started from `pod`; returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &PodConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, CriError> {
        let config = api::ContainerConfig {
            metadata: MessageField::some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
                ..Default::default()
            }),
            image: MessageField::some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: match pod.log_directory {
                Some(_) => format!("{name}.log"),
                None => String::new(),
            },
            linux: MessageField::some(api::LinuxContainerConfig {
                security_context: MessageField::some(api::LinuxContainerSecurityContext {
                    namespace_options: MessageField::some(namespace_options(pod)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: MessageField::some(config),
            sandbox_config: MessageField::some(sandbox_config(pod)),
            ..Default::default()
        };
        let resp: api::CreateContainerResponse =
            self.call("CreateContainer", &req, self.timeout)?;
        Ok(resp.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let _: api::StartContainerResponse = self.call("StartContainer", &req, self.timeout)?;
        Ok(())
    }

    /// Runs `cmd` in the container and waits for it, at most `timeout`
    /// (rounded up to whole seconds, which is what CRI carries).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecResult, CriError> {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            // 0 would mean no limit at all.
            timeout: i64::try_from(secs.max(1)).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let deadline = Duration::from_secs(secs.max(1)) + Duration::from_secs(10);
        let resp: api::ExecSyncResponse = self.call("ExecSync", &req, deadline)?;
        Ok(ExecResult {
            exit_code: resp.exit_code,
            stdout: resp.stdout,
            stderr: resp.stderr,
        })
    }

    /// One unary call, bounded by `timeout`.
    fn call<Req: Message, Resp: Message>(
        &self,
        method: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CriError> {
        let fail = |(code, message): Failure| CriError {
            call: method,
            code,
            message,
        };
        let body = req
            .write_to_bytes()
            .map_err(|e| fail((code::INTERNAL, format!("cannot encode the request: {e}"))))?;
        let answer = self.rt.block_on(async {
            match tokio::time::timeout(timeout, self.unary(method, &body, timeout)).await {
                Ok(answer) => answer,
                Err(_) => Err((
                    code::DEADLINE_EXCEEDED,
                    format!(
                        "no answer from {} within {} ms (the client's deadline)",
                        self.socket.display(),
                        timeout.as_millis()
                    ),
                )),
            }
        });
        let message = answer.map_err(fail)?;
        Resp::parse_from_bytes(&message).map_err(|e| {
            fail((
                code::INTERNAL,
                format!("cannot decode the {method} answer: {e}"),
            ))
        })
    }

    async fn unary(
        &self,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, Failure> {
        let mut sender = self.ready_sender().await?;
        let request = http::Request::post(format!("http://localhost/{SERVICE}/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", grpc_timeout(timeout))
            .header("user-agent", "netattach-tests-cri/0")
            .body(())
            .map_err(|e| (code::INTERNAL, format!("cannot build the request: {e}")))?;
        let (answer, mut stream) = sender.send_request(request, false).map_err(h2_failure)?;
        stream
            .send_data(encode_frame(message), true)
            .map_err(h2_failure)?;

        let (head, mut body) = answer.await.map_err(h2_failure)?.into_parts();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_failure)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() > MAX_ANSWER {
                return Err((
                    code::INTERNAL,
                    format!("answer larger than {MAX_ANSWER} bytes"),
                ));
            }
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(h2_failure)?;
        let data = data.freeze();
        let message = outcome(head.status, &head.headers, &data, trailers.as_ref())?;
        Ok(data.slice_ref(message))
    }

    /// The connection, ready for a new stream; (re)connects if there is none
    /// or it has closed. Nothing has been sent on a failed one, so a retry
    /// cannot run a call twice.
    async fn ready_sender(&self) -> Result<SendRequest<Bytes>, Failure> {
        let current = self.sender.lock().unwrap().clone();
        if let Some(sender) = current {
            if let Ok(sender) = sender.ready().await {
                return Ok(sender);
            }
        }
        let sender = self.connect_h2().await?;
        *self.sender.lock().unwrap() = Some(sender.clone());
        sender.ready().await.map_err(h2_failure)
    }

    async fn connect_h2(&self) -> Result<SendRequest<Bytes>, Failure> {
        let io = UnixStream::connect(&self.socket).await.map_err(|e| {
            (
                code::UNAVAILABLE,
                format!("cannot connect to {}: {e}", self.socket.display()),
            )
        })?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_failure)?;
        // Driven whenever some thread is inside `block_on`; ends with the
        // connection (or when the runtime, that is the client, is dropped).
        self.rt.spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn sandbox_state(state: EnumOrUnknown<api::PodSandboxState>) -> SandboxState {
    match state.enum_value() {
        Ok(api::PodSandboxState::SANDBOX_READY) => SandboxState::Ready,
        _ => SandboxState::NotReady,
    }
}

/// As a kubelet sets them: network POD or NODE, a pid namespace per
/// container, IPC shared in the pod.
fn namespace_options(pod: &PodConfig) -> api::NamespaceOption {
    api::NamespaceOption {
        network: if pod.host_network {
            api::NamespaceMode::NODE
        } else {
            api::NamespaceMode::POD
        }
        .into(),
        pid: api::NamespaceMode::CONTAINER.into(),
        ipc: api::NamespaceMode::POD.into(),
        ..Default::default()
    }
}

fn sandbox_config(pod: &PodConfig) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: MessageField::some(api::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: pod.attempt,
            ..Default::default()
        }),
        // The host's own name for a host-network pod, as a kubelet leaves it.
        hostname: if pod.host_network {
            String::new()
        } else {
            pod.name.clone()
        },
        log_directory: pod
            .log_directory
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        annotations: pod.annotations.clone().into_iter().collect(),
        linux: MessageField::some(api::LinuxPodSandboxConfig {
            security_context: MessageField::some(api::LinuxSandboxSecurityContext {
                namespace_options: MessageField::some(namespace_options(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn h2_failure(e: h2::Error) -> Failure {
    let code = if e.is_io() || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        code::UNAVAILABLE
    } else if e.reason() == Some(h2::Reason::CANCEL) {
        code::CANCELLED
    } else {
        code::INTERNAL
    };
    (code, format!("HTTP/2: {e}"))
}

/// The gRPC length-prefixed message: compressed flag 0, 4-byte big-endian
/// length, the message.
fn encode_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).expect("message under 4 GiB"));
    frame.put_slice(message);
    frame.freeze()
}

/// The one message of a unary answer's body.
fn decode_single_frame(body: &[u8]) -> Result<&[u8], Failure> {
    let bad = |what: String| (code::INTERNAL, format!("bad gRPC answer body: {what}"));
    let mut rest = body;
    let mut messages = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(bad(format!(
                "{} bytes left, less than a frame header",
                rest.len()
            )));
        }
        if rest[0] != 0 {
            return Err(bad(format!(
                "compressed flag {} (no compression was offered)",
                rest[0]
            )));
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() - 5 < len {
            return Err(bad(format!(
                "frame of {len} bytes but only {} left",
                rest.len() - 5
            )));
        }
        messages.push(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    match messages[..] {
        [message] => Ok(message),
        _ => Err(bad(format!("{} messages, expected one", messages.len()))),
    }
}

/// `grpc-timeout`: at most 8 digits and a unit.
fn grpc_timeout(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", (ms / 1000).min(99_999_999))
    }
}

/// Decodes `grpc-message`: percent-encoded UTF-8; a `%` not followed by two
/// hex digits is kept as it is.
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC status in `headers`, if there is one.
fn grpc_status(headers: &HeaderMap) -> Option<Failure> {
    let status = headers.get("grpc-status")?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    match status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        Some(code) => Some((code, message)),
        None => Some((
            code::UNKNOWN,
            format!(
                "unreadable grpc-status {:?}; grpc-message: {message}",
                String::from_utf8_lossy(status.as_bytes())
            ),
        )),
    }
}

/// gRPC's mapping of an HTTP status other than 200 to a gRPC code.
fn http_to_grpc(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => 16,
        403 => 7,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// What a finished answer means: its one message, or the failure. `head` are
/// the response headers (which carry the status in a Trailers-Only answer),
/// `body` the DATA received, `trailers` the trailing headers if any came.
fn outcome<'a>(
    status: StatusCode,
    head: &HeaderMap,
    body: &'a [u8],
    trailers: Option<&HeaderMap>,
) -> Result<&'a [u8], Failure> {
    if status != StatusCode::OK {
        let detail = grpc_status(head)
            .map(|(c, m)| format!(", grpc-status {c}: {m}"))
            .unwrap_or_default();
        return Err((
            http_to_grpc(status),
            format!("HTTP status {status}{detail}"),
        ));
    }
    let (code, message) = match trailers.and_then(grpc_status) {
        Some(status) => status,
        // Trailers-Only: the status is in the one HEADERS frame.
        None => grpc_status(head).ok_or_else(|| {
            (
                code::INTERNAL,
                "the answer ended without a grpc-status".to_string(),
            )
        })?,
    };
    if code != code::OK {
        return Err((code, message));
    }
    if body.is_empty() {
        return Err((
            code::INTERNAL,
            "the answer is OK but carries no message".to_string(),
        ));
    }
    decode_single_frame(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn frames_round_trip() {
        let frame = encode_frame(b"hello");
        assert_eq!(&frame[..], b"\0\0\0\0\x05hello");
        assert_eq!(decode_single_frame(&frame).unwrap(), b"hello");
        // An empty message (e.g. StopPodSandboxResponse) is a frame of length 0.
        assert_eq!(&encode_frame(b"")[..], b"\0\0\0\0\0");
        assert_eq!(decode_single_frame(b"\0\0\0\0\0").unwrap(), b"");
    }

    #[test]
    fn bad_frames_are_refused() {
        let err = |body: &[u8]| decode_single_frame(body).unwrap_err();
        assert_eq!(err(b"\0\0\0").0, code::INTERNAL);
        assert!(err(b"\0\0\0\0\x09abc")
            .1
            .contains("frame of 9 bytes but only 3 left"));
        assert!(err(b"\x01\0\0\0\x01a").1.contains("compressed flag 1"));
        assert!(err(b"\0\0\0\0\x01a\0\0\0\0\x01b").1.contains("2 messages"));
        assert!(err(b"").1.contains("0 messages"));
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"plain text"), "plain text");
        assert_eq!(
            percent_decode(b"failed to pull %22k8s.io/pause%22: 100%25 gone"),
            "failed to pull \"k8s.io/pause\": 100% gone"
        );
        assert_eq!(percent_decode(b"%E2%9C%93 ok"), "\u{2713} ok");
        assert_eq!(percent_decode(b"%0Aline"), "\nline");
        // Not escapes: kept as they are.
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"5%z1 %4"), "5%z1 %4");
        assert_eq!(percent_decode(b"%%41"), "%A");
    }

    #[test]
    fn grpc_timeout_fits_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000m");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn outcomes() {
        let ok = headers(&[("grpc-status", "0")]);
        let frame = encode_frame(b"msg");
        assert_eq!(
            outcome(StatusCode::OK, &HeaderMap::new(), &frame, Some(&ok)).unwrap(),
            b"msg"
        );
        // An error with headers, no data, then trailers.
        let trailers = headers(&[("grpc-status", "2"), ("grpc-message", "no%20image")]);
        assert_eq!(
            outcome(StatusCode::OK, &HeaderMap::new(), b"", Some(&trailers)).unwrap_err(),
            (2, "no image".to_string())
        );
        // Trailers-Only: the status in the response headers, no trailers.
        let head = headers(&[
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
            ("grpc-message", "sandbox %22x%22 not found"),
        ]);
        assert_eq!(
            outcome(StatusCode::OK, &head, b"", None).unwrap_err(),
            (5, "sandbox \"x\" not found".to_string())
        );
        // OK but no message: a unary call must carry one.
        assert_eq!(
            outcome(StatusCode::OK, &ok, b"", None).unwrap_err().0,
            code::INTERNAL
        );
        // No status at all.
        assert!(outcome(StatusCode::OK, &HeaderMap::new(), &frame, None)
            .unwrap_err()
            .1
            .contains("without a grpc-status"));
        // An HTTP error.
        let err = outcome(
            StatusCode::SERVICE_UNAVAILABLE,
            &HeaderMap::new(),
            b"",
            None,
        );
        assert_eq!(err.unwrap_err().0, code::UNAVAILABLE);
        // An unreadable status.
        let odd = headers(&[("grpc-status", "x")]);
        assert_eq!(
            outcome(StatusCode::OK, &HeaderMap::new(), &frame, Some(&odd))
                .unwrap_err()
                .0,
            code::UNKNOWN
        );
    }

    #[test]
    fn error_prints_as_one_line() {
        let e = CriError {
            call: "RunPodSandbox",
            code: 2,
            message: "failed:\nsecond line\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "CRI RunPodSandbox failed: Unknown (gRPC status 2): failed: second line"
        );
    }

    #[test]
    fn netns_path_and_pid_from_info() {
        let info = r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[
            {"type":"pid"},{"type":"network","path":"/run/c/netns/cni-1"},{"type":"ipc"}]}}}"#;
        let mut status = PodStatus {
            id: "p".into(),
            name: "n".into(),
            namespace: "ns".into(),
            state: SandboxState::Ready,
            ip: None,
            additional_ips: vec![],
            annotations: BTreeMap::new(),
            info: BTreeMap::from([("info".to_string(), info.to_string())]),
        };
        assert_eq!(
            status.netns_path(),
            Some(PathBuf::from("/run/c/netns/cni-1"))
        );
        assert_eq!(status.pid(), Some(4242));
        // Host network: no network entry.
        status.info.insert(
            "info".into(),
            r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"}]}}}"#.into(),
        );
        assert_eq!(status.netns_path(), None);
        assert_eq!(status.pid(), None);
    }

    #[test]
    fn cri_is_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Cri>();
    }

    // --- Against an HTTP/2 gRPC server in this process -------------------

    enum Reply {
        /// 200, one message, grpc-status 0 in trailers.
        Message(Vec<u8>),
        /// 200, no data, the status in trailers (grpc-message raw, as sent).
        Status(u32, &'static str),
        /// 200 with the status in the headers and END_STREAM.
        TrailersOnly(u32, &'static str),
        /// The same as `Message`, after a pause.
        Later(Duration, Vec<u8>),
        /// Never answers.
        Silent,
    }

    type Answer = dyn Fn(&str, &[u8]) -> Reply + Send + Sync;

    struct FakeServer {
        dir: PathBuf,
        socket: PathBuf,
        connections: Arc<AtomicUsize>,
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netattach-cri-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Serves `reply(path, request message)` on a unix socket, after `delay`.
    /// The server checks the gRPC request headers and framing itself.
    fn fake_server(
        delay: Duration,
        reply: impl Fn(&str, &[u8]) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let dir = temp_dir("fake");
        let socket = dir.join("cri.sock");
        let connections = Arc::new(AtomicUsize::new(0));
        let (path, count) = (socket.clone(), connections.clone());
        let reply = Arc::new(reply);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).unwrap();
                loop {
                    let Ok((io, _)) = listener.accept().await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let mut conn = h2::server::handshake(io).await.unwrap();
                        while let Some(Ok((request, respond))) = conn.accept().await {
                            let reply = reply.clone();
                            tokio::spawn(serve(request, respond, reply));
                        }
                    });
                }
            });
        });
        FakeServer {
            dir,
            socket,
            connections,
        }
    }

    async fn serve(
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        reply: Arc<Answer>,
    ) {
        let (head, mut body) = request.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(head.headers["te"], "trailers");
        assert!(head.headers["grpc-timeout"]
            .to_str()
            .unwrap()
            .ends_with('m'));
        let message = decode_single_frame(&data).unwrap();
        let response = |extra: &[(&'static str, String)]| {
            let mut r = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc");
            for (k, v) in extra {
                r = r.header(*k, v);
            }
            r.body(()).unwrap()
        };
        let status = |code: u32, message: &str| {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", code.to_string().parse().unwrap());
            t.insert("grpc-message", message.parse().unwrap());
            t
        };
        match reply(head.uri.path(), message) {
            Reply::Message(m) => {
                let mut stream = respond.send_response(response(&[]), false).unwrap();
                stream.send_data(encode_frame(&m), false).unwrap();
                stream.send_trailers(status(0, "")).unwrap();
            }
            Reply::Later(pause, m) => {
                tokio::time::sleep(pause).await;
                let mut stream = respond.send_response(response(&[]), false).unwrap();
                stream.send_data(encode_frame(&m), false).unwrap();
                stream.send_trailers(status(0, "")).unwrap();
            }
            Reply::Status(code, message) => {
                let mut stream = respond.send_response(response(&[]), false).unwrap();
                stream.send_trailers(status(code, message)).unwrap();
            }
            Reply::TrailersOnly(code, message) => {
                let head = response(&[
                    ("grpc-status", code.to_string()),
                    ("grpc-message", message.to_string()),
                ]);
                respond.send_response(head, true).unwrap();
            }
            Reply::Silent => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(respond);
            }
        }
    }

    fn version_answer() -> Vec<u8> {
        api::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "9.9".into(),
            runtime_api_version: "v1".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    /// Version answers; RunPodSandbox, PodSandboxStatus, StopPodSandbox as
    /// set; everything else is unimplemented.
    fn runtime_like(path: &str, message: &[u8]) -> Reply {
        match path.strip_prefix("/runtime.v1.RuntimeService/").unwrap() {
            "Version" => {
                let req = api::VersionRequest::parse_from_bytes(message).unwrap();
                assert_eq!(req.version, "v1");
                Reply::Message(version_answer())
            }
            "RunPodSandbox" => {
                let req = api::RunPodSandboxRequest::parse_from_bytes(message).unwrap();
                let config = req.config.unwrap();
                let network = config
                    .linux
                    .security_context
                    .namespace_options
                    .network
                    .enum_value()
                    .unwrap();
                match (config.metadata.name.as_str(), network) {
                    ("host", api::NamespaceMode::NODE) => {
                        let answer = api::RunPodSandboxResponse {
                            pod_sandbox_id: format!("id-{}", config.annotations["n"]),
                            ..Default::default()
                        };
                        Reply::Message(answer.write_to_bytes().unwrap())
                    }
                    _ => Reply::Status(
                        2,
                        "failed to get sandbox image %22registry.k8s.io/pause:3.8%22: 100%25 down",
                    ),
                }
            }
            "PodSandboxStatus" => Reply::TrailersOnly(
                5,
                "an error occurred when try to find sandbox %22nope%22: not found",
            ),
            "StopPodSandbox" => Reply::Message(Vec::new()),
            "StartContainer" => Reply::Silent,
            _ => Reply::TrailersOnly(12, "unknown method"),
        }
    }

    #[test]
    fn calls_against_a_grpc_server() {
        let server = fake_server(Duration::ZERO, runtime_like);
        let cri = Cri::connect(&server.socket, Duration::from_secs(5)).unwrap();
        assert_eq!(cri.version().unwrap(), ("fake".into(), "9.9".into()));

        let mut pod = PodConfig {
            name: "host".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            host_network: true,
            ..Default::default()
        };
        pod.annotations.insert("n".into(), "7".into());
        assert_eq!(cri.run_pod_sandbox(&pod).unwrap(), "id-7");

        // An error in trailers, its message percent-decoded.
        pod.host_network = false;
        let err = cri.run_pod_sandbox(&pod).unwrap_err();
        assert_eq!(
            (err.call, err.code, err.message.as_str()),
            (
                "RunPodSandbox",
                2,
                "failed to get sandbox image \"registry.k8s.io/pause:3.8\": 100% down"
            )
        );

        // A Trailers-Only error.
        let err = cri.pod_sandbox_status("nope").unwrap_err();
        assert_eq!(err.code, code::NOT_FOUND);
        assert!(
            err.message.ends_with("sandbox \"nope\": not found"),
            "{err}"
        );

        // An empty answer message.
        cri.stop_pod_sandbox("id-7").unwrap();
        assert_eq!(
            cri.list_pod_sandbox().unwrap_err().code,
            code::UNIMPLEMENTED
        );
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_call_gives_up_at_its_deadline() {
        let server = fake_server(Duration::ZERO, runtime_like);
        let cri = Cri::connect(&server.socket, Duration::from_secs(5))
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let start = Instant::now();
        let err = cri.start_container("c").unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.code, code::DEADLINE_EXCEEDED, "{err}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(err.to_string().contains("within 300 ms"), "{err}");
        // The connection is still good for the next call.
        cri.version().unwrap();
    }

    #[test]
    fn connect_waits_for_the_socket() {
        let server = fake_server(Duration::from_millis(400), runtime_like);
        let start = Instant::now();
        let cri = Cri::connect(&server.socket, Duration::from_secs(10)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(400));
        cri.version().unwrap();
    }

    #[test]
    fn connect_gives_up_after_its_wait() {
        let dir = temp_dir("none");
        let start = Instant::now();
        let err = match Cri::connect(&dir.join("absent.sock"), Duration::from_millis(300)) {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e,
        };
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!((err.call, err.code), ("connect", code::UNAVAILABLE));
        let line = err.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("absent.sock gave no Version answer within 300 ms"),
            "{line}"
        );
        assert!(line.contains("No such file or directory"), "{line}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reconnects_when_the_connection_is_gone() {
        let server = fake_server(Duration::ZERO, |_, _| Reply::Message(version_answer()));
        let cri = Cri::connect(&server.socket, Duration::from_secs(5)).unwrap();
        for _ in 0..3 {
            cri.version().unwrap();
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        // Drop the connection from our side and see the next call connect again.
        *cri.sender.lock().unwrap() = None;
        cri.version().unwrap();
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn calls_from_threads_run_concurrently_on_one_connection() {
        let pause = Duration::from_millis(400);
        let server = fake_server(Duration::ZERO, move |path, _| {
            if path.ends_with("/Version") {
                Reply::Message(version_answer())
            } else {
                let answer = api::RunPodSandboxResponse {
                    pod_sandbox_id: "p".into(),
                    ..Default::default()
                };
                Reply::Later(pause, answer.write_to_bytes().unwrap())
            }
        });
        let cri = Cri::connect(&server.socket, Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        let t = Instant::now();
                        cri.run_pod_sandbox(&PodConfig::default()).unwrap();
                        t.elapsed()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = start.elapsed();
        // Serialized, 16 calls would take 6.4 s.
        assert!(total < pause * 4, "{total:?} {latencies:?}");
        assert!(latencies.iter().all(|&l| l >= pause), "{latencies:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }
}
