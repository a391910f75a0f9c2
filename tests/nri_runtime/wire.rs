//! The runtime's side of the wire, written from the protocol facts: mux frames
//! as Go's multiplexer writes them, ttrpc messages, and an emulation of the Go
//! reader (a 4096-byte bufio.Reader over a mux conn whose Read hands out one
//! whole frame) that records every frame the real runtime could not read.

use std::collections::VecDeque;

use super::pb::{self, Enc};

pub const PLUGIN_CONN: u32 = 1;
pub const RUNTIME_CONN: u32 = 2;
pub const FRAME_HEADER: usize = 8;
pub const TTRPC_HEADER: usize = 10;
pub const MAX_MESSAGE: usize = 4 << 20;
pub const MAX_FRAME: usize = TTRPC_HEADER + MAX_MESSAGE;
pub const GO_BUF: usize = 4096;

pub const T_REQUEST: u8 = 1;
pub const T_RESPONSE: u8 = 2;

pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

pub fn frame(conn: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A message as Go writes it: through a 4096-byte bufio.Writer, so the first
/// frame is at most 4096 bytes and the rest goes in one more frame.
pub fn go_frames(conn: u32, message: &[u8]) -> Vec<u8> {
    let split = message.len().min(GO_BUF);
    let mut out = frame(conn, &message[..split]);
    if split < message.len() {
        out.extend(frame(conn, &message[split..]));
    }
    out
}

pub fn ttrpc_message(stream_id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TTRPC_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// `ttrpc.Request {service=1, method=2, payload=3, timeout_nano=4}`.
pub fn request_body(service: &str, method: &str, payload: &[u8], timeout_nano: u64) -> Vec<u8> {
    Enc::new()
        .string(1, service)
        .string(2, method)
        .bytes(3, payload)
        .uint(4, timeout_nano)
        .0
}

/// `ttrpc.Response {Status status=1 {code=1, message=2}, payload=2}`.
pub fn response_body(code: i32, message: &str, payload: &[u8]) -> Vec<u8> {
    Enc::new()
        .message(1, Enc::new().uint(1, code as u32 as u64).string(2, message))
        .bytes(2, payload)
        .0
}

/// A response's outcome: the payload, or (code, message).
pub fn parse_response(body: &[u8]) -> Result<Vec<u8>, (i32, String)> {
    let status = pb::get_bytes(body, 1);
    let code = pb::get_uint(&status, 1) as i32;
    if code != 0 {
        return Err((code, pb::get_string(&status, 2)));
    }
    Ok(pb::get_bytes(body, 2))
}

#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub length: u32,
    pub stream_id: u32,
    pub kind: u8,
}

fn header(b: &[u8]) -> Header {
    Header {
        length: u32::from_be_bytes(b[0..4].try_into().unwrap()),
        stream_id: u32::from_be_bytes(b[4..8].try_into().unwrap()),
        kind: b[8],
    }
}

/// ttrpc's recv loop over `bufio.NewReaderSize(conn, 4096)` over one mux conn,
/// fed frame by frame. A frame Go could not take (larger than the buffer it
/// is read into) or one carrying bytes of two messages is a violation.
pub struct GoReader {
    conn: u32,
    queue: VecDeque<Vec<u8>>,
    buffered: VecDeque<u8>,
    got: Vec<u8>,
    want: Option<Header>,
    pub violations: Vec<String>,
}

impl GoReader {
    pub fn new(conn: u32) -> GoReader {
        GoReader {
            conn,
            queue: VecDeque::new(),
            buffered: VecDeque::new(),
            got: Vec::new(),
            want: None,
            violations: Vec::new(),
        }
    }

    /// Feeds one frame; returns the messages completed.
    pub fn push(&mut self, frame: Vec<u8>) -> Vec<(Header, Vec<u8>)> {
        if frame.len() > MAX_FRAME {
            self.violations.push(format!(
                "conn {}: frame of {} bytes > max",
                self.conn,
                frame.len()
            ));
        }
        self.queue.push_back(frame);
        let mut out = Vec::new();
        loop {
            let target = match self.want {
                None => TTRPC_HEADER,
                Some(h) => h.length as usize,
            };
            if self.got.len() == target {
                match self.want.take() {
                    None => {
                        let h = header(&self.got);
                        self.got.clear();
                        if h.length as usize > MAX_MESSAGE {
                            self.violations.push(format!(
                                "conn {}: message of {} bytes > max",
                                self.conn, h.length
                            ));
                            return out;
                        }
                        self.want = Some(h);
                    }
                    Some(h) => {
                        out.push((h, std::mem::take(&mut self.got)));
                        if !self.buffered.is_empty() {
                            self.violations.push(format!(
                                "conn {}: a frame carried bytes of two messages (stream {})",
                                self.conn, h.stream_id
                            ));
                        }
                    }
                }
                continue;
            }
            let need = target - self.got.len();
            if !self.buffered.is_empty() {
                let n = need.min(self.buffered.len());
                self.got.extend(self.buffered.drain(..n));
                continue;
            }
            let Some(frame) = self.queue.pop_front() else {
                return out;
            };
            if need >= GO_BUF {
                // bufio reads straight into the caller's slice of `need` bytes.
                if frame.len() > need {
                    self.violations.push(format!(
                        "conn {}: frame of {} bytes read into the {need} bytes left of a message",
                        self.conn,
                        frame.len()
                    ));
                }
                let n = frame.len().min(need);
                self.got.extend_from_slice(&frame[..n]);
            } else {
                // bufio fills its 4096-byte buffer with one conn Read.
                if frame.len() > GO_BUF {
                    self.violations.push(format!(
                        "conn {}: frame of {} bytes read into Go's {GO_BUF}-byte buffer (ENOMEM)",
                        self.conn,
                        frame.len()
                    ));
                }
                let n = frame.len().min(GO_BUF);
                self.buffered.extend(&frame[..n]);
            }
        }
    }
}
