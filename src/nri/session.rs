//! One connection to the runtime: a reader thread that demultiplexes frames,
//! reassembles ttrpc messages, serves Plugin-service requests from conn 1 (each
//! on a thread of its own) and routes responses on conn 2 to the plugin's own
//! pending calls.
//!
//! Nothing the runtime sends can crash or wedge it: an undecodable request gets
//! an error status, an unknown service or method UNIMPLEMENTED, an oversized
//! message RESOURCE_EXHAUSTED, frames for other conns are dropped; an oversized
//! frame, a peer gone or stalled mid-frame end the session, which frees every
//! buffer and wakes every waiting caller.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use protobuf::Message;

use super::mux::{Assembler, FrameReader, FrameWriter, Piece, PLUGIN_CONN, RUNTIME_CONN};
use super::proto::ttrpc::Request;
use super::ttrpc::{self, code, RpcError};

/// The service the plugin serves on conn 1.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The service the runtime serves on conn 2.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// Requests handled at once; beyond this the runtime gets RESOURCE_EXHAUSTED
/// (a runtime sends pod events one at a time, so this is never reached).
pub const MAX_IN_FLIGHT: usize = 64;

/// What a handled request answers.
pub struct Reply {
    pub result: Result<Vec<u8>, RpcError>,
    /// Close the connection once the answer is written (`Shutdown`).
    pub close: bool,
}

impl Reply {
    pub fn ok(payload: Vec<u8>) -> Reply {
        Reply {
            result: Ok(payload),
            close: false,
        }
    }

    pub fn err(e: RpcError) -> Reply {
        Reply {
            result: Err(e),
            close: false,
        }
    }
}

impl From<Result<Vec<u8>, RpcError>> for Reply {
    fn from(result: Result<Vec<u8>, RpcError>) -> Reply {
        Reply {
            result,
            close: false,
        }
    }
}

/// The Plugin service: one method call, by name, with its protobuf payload.
pub trait Service: Send + Sync + 'static {
    /// `timeout` is the caller's deadline, when the request carried one.
    fn call(&self, method: &str, payload: &[u8], timeout: Option<Duration>) -> Reply;
}

type Waiter = mpsc::SyncSender<Result<Vec<u8>, RpcError>>;

struct Shared {
    writer: FrameWriter,
    pending: Mutex<HashMap<u32, Waiter>>,
    closed: AtomicBool,
    next_stream: AtomicU32,
    in_flight: AtomicUsize,
    control: UnixStream,
}

impl Shared {
    fn shutdown(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn respond(&self, stream_id: u32, result: Result<Vec<u8>, RpcError>) {
        let message = ttrpc::response(stream_id, result);
        if let Err(e) = self.writer.send_message(PLUGIN_CONN, &message) {
            if !self.closed.load(Ordering::SeqCst) {
                crate::nri_log!(
                    warn,
                    "cannot answer the runtime: {e}; closing the connection"
                );
                self.shutdown();
            }
        }
    }
}

/// A live connection to the runtime.
pub struct Session {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<String>>,
}

impl Session {
    /// Starts serving `service` on the connection.
    pub fn start(stream: UnixStream, service: Arc<dyn Service>) -> io::Result<Session> {
        let shared = Arc::new(Shared {
            writer: FrameWriter::new(stream.try_clone()?)?,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            next_stream: AtomicU32::new(1),
            in_flight: AtomicUsize::new(0),
            control: stream.try_clone()?,
        });
        let reader = FrameReader::new(stream);
        let for_reader = shared.clone();
        let handle = std::thread::Builder::new()
            .name("nri-reader".into())
            .spawn(move || read_loop(reader, &for_reader, &service))?;
        Ok(Session {
            shared,
            reader: Some(handle),
        })
    }

    /// Calls `method` of the runtime's Runtime service on conn 2.
    pub fn call(
        &self,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let id = self.shared.next_stream.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::sync_channel(1);
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if self.shared.closed.load(Ordering::SeqCst) {
            self.forget(id);
            return Err(RpcError::new(code::UNAVAILABLE, "connection closed"));
        }
        let message = ttrpc::request(
            id,
            RUNTIME_SERVICE,
            method,
            payload,
            timeout.as_nanos() as i64,
        );
        if let Err(e) = self.shared.writer.send_message(RUNTIME_CONN, &message) {
            self.forget(id);
            return Err(RpcError::new(
                code::UNAVAILABLE,
                format!("send {method}: {e}"),
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(RpcError::new(
                    code::DEADLINE_EXCEEDED,
                    format!("{method}: no answer within {timeout:?}"),
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(RpcError::new(
                code::UNAVAILABLE,
                format!("{method}: connection closed"),
            )),
        }
    }

    fn forget(&self, id: u32) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Closes the connection; the reader ends and `wait` returns.
    pub fn close(&self) {
        self.shared.shutdown();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Waits for the connection to end; returns why it ended.
    pub fn wait(mut self) -> String {
        self.reader
            .take()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| "reader thread panicked".to_string())
            })
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.shutdown();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn read_loop(mut reader: FrameReader, shared: &Arc<Shared>, service: &Arc<dyn Service>) -> String {
    let mut plugin_conn = Assembler::default();
    let mut runtime_conn = Assembler::default();
    let why = loop {
        let (conn, payload) = match reader.read_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the runtime closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        match conn {
            PLUGIN_CONN => {
                for piece in plugin_conn.push(&payload) {
                    serve(piece, shared, service);
                }
            }
            RUNTIME_CONN => {
                for piece in runtime_conn.push(&payload) {
                    complete(piece, shared);
                }
            }
            _ => {} // an unopened conn: dropped, as the runtime's mux does
        }
    };
    shared.closed.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting caller with "closed".
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    shared.shutdown();
    why
}

/// A message on conn 1: a request to serve.
fn serve(piece: Piece, shared: &Arc<Shared>, service: &Arc<dyn Service>) {
    let (header, body) = match piece {
        Piece::Message(h, body) => (h, body),
        Piece::Oversized(h) => {
            if h.kind == ttrpc::TYPE_REQUEST {
                shared.respond(
                    h.stream_id,
                    Err(RpcError::new(
                        code::RESOURCE_EXHAUSTED,
                        format!(
                            "message length {} exceeds maximum message size of {}",
                            h.length,
                            ttrpc::MAX_MESSAGE
                        ),
                    )),
                );
            }
            return;
        }
    };
    if header.kind != ttrpc::TYPE_REQUEST {
        return; // no streams in NRI: data or stray responses are ignored
    }
    let id = header.stream_id;
    let request = match Request::parse_from_bytes(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.respond(
                id,
                Err(RpcError::new(
                    code::INVALID_ARGUMENT,
                    format!("malformed ttrpc request: {e}"),
                )),
            );
            return;
        }
    };
    if request.service != PLUGIN_SERVICE {
        shared.respond(
            id,
            Err(RpcError::new(
                code::UNIMPLEMENTED,
                format!("service {} not implemented", request.service),
            )),
        );
        return;
    }
    if shared.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        shared.respond(
            id,
            Err(RpcError::new(
                code::RESOURCE_EXHAUSTED,
                "too many requests in flight",
            )),
        );
        return;
    }
    let timeout = u64::try_from(request.timeout_nano)
        .ok()
        .filter(|&n| n > 0)
        .map(Duration::from_nanos);
    let worker_shared = shared.clone();
    let worker_service = service.clone();
    let spawned = std::thread::Builder::new()
        .name("nri-request".into())
        .spawn(move || {
            let reply = worker_service.call(&request.method, &request.payload, timeout);
            worker_shared.respond(id, reply.result);
            worker_shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            if reply.close {
                worker_shared.shutdown();
            }
        });
    if let Err(e) = spawned {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        shared.respond(
            id,
            Err(RpcError::new(
                code::INTERNAL,
                format!("cannot start a thread: {e}"),
            )),
        );
    }
}

/// A message on conn 2: the answer to one of our calls.
fn complete(piece: Piece, shared: &Shared) {
    let (id, result) = match piece {
        Piece::Message(h, body) if h.kind == ttrpc::TYPE_RESPONSE => {
            (h.stream_id, ttrpc::parse_response(&body))
        }
        Piece::Message(..) => return,
        Piece::Oversized(h) => (
            h.stream_id,
            Err(RpcError::new(
                code::RESOURCE_EXHAUSTED,
                "oversized response from the runtime",
            )),
        ),
    };
    let waiter = shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    if let Some(tx) = waiter {
        let _ = tx.try_send(result);
    }
}
