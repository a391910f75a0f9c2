//! The ttrpc wire: a 10-byte big-endian header (`u32 length, u32 stream id,
//! u8 type, u8 flags`) and a protobuf body, `ttrpc.Request` for type 1 and
//! `ttrpc.Response` for type 2. Unary calls only: NRI uses no streams.

use protobuf::Message;

use super::proto::ttrpc::{Request, Response, Status};

/// Length of a message header.
pub const HEADER_LEN: usize = 10;
/// Largest message body.
pub const MAX_MESSAGE: usize = 4 << 20;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_DATA: u8 = 3;

/// gRPC status codes that netattach sends or reads.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    /// The one code after which a v0.12 runtime falls back to `StateChange`.
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
}

impl Header {
    /// Reads a header from exactly [`HEADER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Header {
        Header {
            length: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            stream_id: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
            kind: b[8],
            flags: b[9],
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.kind;
        b[9] = self.flags;
        b
    }
}

/// Header and body of one message.
pub fn encode_message(stream_id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let header = Header {
        length: body.len() as u32,
        stream_id,
        kind,
        flags: 0,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    out
}

/// A call's failure as the peer sees it: a status code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// The full response message for `stream_id`: the payload on success, the
/// status otherwise. A response too big for the wire becomes an error.
pub fn response(stream_id: u32, result: Result<Vec<u8>, RpcError>) -> Vec<u8> {
    let mut resp = Response::new();
    match result {
        Ok(payload) => {
            let mut status = Status::new();
            status.code = code::OK;
            resp.status = protobuf::MessageField::some(status);
            resp.payload = payload;
        }
        Err(e) => {
            let mut status = Status::new();
            status.code = e.code;
            status.message = e.message;
            resp.status = protobuf::MessageField::some(status);
        }
    }
    let mut body = resp.write_to_bytes().unwrap_or_default();
    if body.len() > MAX_MESSAGE {
        let mut status = Status::new();
        status.code = code::RESOURCE_EXHAUSTED;
        status.message = format!("response of {} bytes exceeds the ttrpc limit", body.len());
        let mut small = Response::new();
        small.status = protobuf::MessageField::some(status);
        body = small.write_to_bytes().unwrap_or_default();
    }
    encode_message(stream_id, TYPE_RESPONSE, &body)
}

/// The full request message calling `service`/`method` with `payload`.
pub fn request(
    stream_id: u32,
    service: &str,
    method: &str,
    payload: Vec<u8>,
    timeout_nano: i64,
) -> Vec<u8> {
    let mut req = Request::new();
    req.service = service.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req.timeout_nano = timeout_nano;
    encode_message(
        stream_id,
        TYPE_REQUEST,
        &req.write_to_bytes().unwrap_or_default(),
    )
}

/// A response body as the call's outcome.
pub fn parse_response(body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let resp = Response::parse_from_bytes(body)
        .map_err(|e| RpcError::new(code::INTERNAL, format!("malformed ttrpc response: {e}")))?;
    match resp.status.as_ref() {
        Some(s) if s.code != code::OK => Err(RpcError::new(s.code, s.message.clone())),
        _ => Ok(resp.payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_big_endian() {
        let h = Header {
            length: 0x01020304,
            stream_id: 5,
            kind: TYPE_REQUEST,
            flags: 0,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 5, 1, 0]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn error_response_carries_status() {
        let msg = response(7, Err(RpcError::new(code::UNIMPLEMENTED, "nope")));
        let h = Header::decode(&msg[..HEADER_LEN]);
        assert_eq!((h.stream_id, h.kind), (7, TYPE_RESPONSE));
        assert_eq!(h.length as usize, msg.len() - HEADER_LEN);
        assert_eq!(
            parse_response(&msg[HEADER_LEN..]),
            Err(RpcError::new(code::UNIMPLEMENTED, "nope"))
        );
        let ok = response(9, Ok(vec![1, 2]));
        assert_eq!(parse_response(&ok[HEADER_LEN..]), Ok(vec![1, 2]));
    }

    #[test]
    fn request_fields_have_the_ttrpc_numbers() {
        let msg = request(1, "s", "m", vec![0xAA], 2_000_000_000);
        let body = &msg[HEADER_LEN..];
        // service=1 "s", method=2 "m", payload=3 [0xAA], timeout_nano=4 varint
        assert_eq!(&body[..9], &[0x0A, 1, b's', 0x12, 1, b'm', 0x1A, 1, 0xAA]);
        assert_eq!(body[9], 0x20);
    }
}
