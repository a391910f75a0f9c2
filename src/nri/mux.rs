//! The NRI connection multiplexer: two logical connections on one socket.
//!
//! Every frame is `[u32 BE conn id][u32 BE payload length][payload]`; there is
//! no handshake and no flow control. Conn 1 carries the Plugin service (the
//! runtime is the ttrpc client), conn 2 the Runtime service (the plugin is the
//! client). Frames for any other conn are dropped, as the runtime's mux does.
//!
//! Toward the runtime we write what its Go reader can take: each logical conn
//! is read through a 4096-byte buffer that receives one whole frame per read,
//! so every ttrpc message goes out as its own frames, never two messages in
//! one frame, the first frame at most 4096 bytes and the rest of the message in
//! one following frame (exactly what Go's own buffered writer produces).
//! Incoming frames of any size up to [`MAX_PAYLOAD`] are accepted and
//! reassembled by [`Assembler`].

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use super::ttrpc;

/// Length of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload of one frame: one whole ttrpc message.
pub const MAX_PAYLOAD: usize = ttrpc::HEADER_LEN + ttrpc::MAX_MESSAGE;
/// Largest first frame of a message toward the runtime's Go reader.
pub const FIRST_FRAME_MAX: usize = 4096;
/// Conn on which the plugin serves the Plugin service.
pub const PLUGIN_CONN: u32 = 1;
/// Conn on which the plugin calls the runtime's Runtime service.
pub const RUNTIME_CONN: u32 = 2;

/// Once a frame has begun, the rest must arrive within this time; a peer that
/// stalls mid-frame is treated as a broken connection (never a hang).
pub const MID_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// A write the runtime does not take within this time breaks the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the frame stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    Oversized(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("no progress within {}s in the middle of a frame", MID_FRAME_TIMEOUT.as_secs())]
    Stalled,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads frames from the socket.
pub struct FrameReader {
    stream: UnixStream,
}

impl FrameReader {
    pub fn new(stream: UnixStream) -> FrameReader {
        FrameReader { stream }
    }

    /// The next frame, or `None` when the peer closed the connection between
    /// frames. Waits as long as needed for a frame to begin, then at most
    /// [`MID_FRAME_TIMEOUT`] for each further piece of it.
    pub fn read_frame(&mut self) -> Result<Option<(u32, Vec<u8>)>, MuxError> {
        let mut header = [0u8; HEADER_LEN];
        self.stream.set_read_timeout(None)?;
        let first = loop {
            match self.stream.read(&mut header) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if first == 0 {
            return Ok(None);
        }
        self.stream.set_read_timeout(Some(MID_FRAME_TIMEOUT))?;
        self.fill(&mut header[first..])?;
        let conn = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(MuxError::Oversized(len));
        }
        let mut payload = vec![0u8; len];
        self.fill(&mut payload)?;
        Ok(Some((conn, payload)))
    }

    fn fill(&mut self, mut buf: &mut [u8]) -> Result<(), MuxError> {
        while !buf.is_empty() {
            match self.stream.read(buf) {
                Ok(0) => return Err(MuxError::Truncated),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(MuxError::Stalled)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Writes whole ttrpc messages as frames; shared by every thread of a session.
pub struct FrameWriter {
    stream: Mutex<UnixStream>,
}

impl FrameWriter {
    pub fn new(stream: UnixStream) -> io::Result<FrameWriter> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(FrameWriter {
            stream: Mutex::new(stream),
        })
    }

    /// Sends one ttrpc message (header included) on `conn`, framed for the Go
    /// reader (see the module doc). One write under the lock: frames of
    /// different messages never interleave.
    pub fn send_message(&self, conn: u32, message: &[u8]) -> io::Result<()> {
        if message.len() > MAX_PAYLOAD {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the frame limit", message.len()),
            ));
        }
        let bytes = frames(conn, message);
        let mut stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        stream.write_all(&bytes)
    }
}

/// The frames of one message, concatenated: the first at most
/// [`FIRST_FRAME_MAX`] bytes, the rest in a second frame.
pub fn frames(conn: u32, message: &[u8]) -> Vec<u8> {
    let split = message.len().min(FIRST_FRAME_MAX);
    let (first, rest) = message.split_at(split);
    let mut out = Vec::with_capacity(message.len() + 2 * HEADER_LEN);
    for part in [first, rest] {
        if part.is_empty() && !out.is_empty() {
            break;
        }
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// What the assembler found in the byte stream of one logical conn.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A complete ttrpc message.
    Message(ttrpc::Header, Vec<u8>),
    /// A ttrpc message longer than [`ttrpc::MAX_MESSAGE`]: its bytes are
    /// skipped; the sender gets an error for its stream.
    Oversized(ttrpc::Header),
}

/// Reassembles the ttrpc messages of one logical conn from frames of any size.
#[derive(Default)]
pub struct Assembler {
    buf: Vec<u8>,
    /// Bytes of an oversized message still to skip.
    skip: usize,
}

impl Assembler {
    /// Adds a frame's payload and returns the messages it completed.
    pub fn push(&mut self, mut payload: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.skip > 0 {
            let n = self.skip.min(payload.len());
            self.skip -= n;
            payload = &payload[n..];
        }
        self.buf.extend_from_slice(payload);
        let mut start = 0;
        while self.skip == 0 && self.buf.len() - start >= ttrpc::HEADER_LEN {
            let header = ttrpc::Header::decode(&self.buf[start..start + ttrpc::HEADER_LEN]);
            let len = header.length as usize;
            if len > ttrpc::MAX_MESSAGE {
                start += ttrpc::HEADER_LEN;
                let available = self.buf.len() - start;
                let n = len.min(available);
                start += n;
                self.skip = len - n;
                out.push(Piece::Oversized(header));
                continue;
            }
            let end = start + ttrpc::HEADER_LEN + len;
            if self.buf.len() < end {
                break;
            }
            out.push(Piece::Message(
                header,
                self.buf[start + ttrpc::HEADER_LEN..end].to_vec(),
            ));
            start = end;
        }
        self.buf.drain(..start);
        if self.buf.is_empty() {
            // Do not keep a multi-MiB allocation around after a big message.
            self.buf = Vec::new();
        }
        out
    }

    /// Bytes of an incomplete message held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stream_id: u32, payload_len: usize) -> Vec<u8> {
        ttrpc::encode_message(stream_id, ttrpc::TYPE_RESPONSE, &vec![7u8; payload_len])
    }

    /// Splits concatenated frames back into (conn, payload).
    fn parse(mut bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let conn = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
            let len = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
            out.push((conn, len));
            bytes = &bytes[HEADER_LEN + len..];
        }
        out
    }

    #[test]
    fn small_message_is_one_frame() {
        let m = message(1, 100);
        assert_eq!(parse(&frames(2, &m)), vec![(2, 110)]);
        let m = message(1, 4086);
        assert_eq!(parse(&frames(1, &m)), vec![(1, 4096)]);
    }

    #[test]
    fn large_message_is_4096_then_the_rest() {
        let m = message(3, 4087);
        assert_eq!(parse(&frames(1, &m)), vec![(1, 4096), (1, 1)]);
        let m = message(3, 100_000);
        assert_eq!(parse(&frames(1, &m)), vec![(1, 4096), (1, 100_010 - 4096)]);
    }

    #[test]
    fn assembler_handles_any_split() {
        let mut stream = message(1, 5000);
        stream.extend(message(3, 0));
        stream.extend(message(5, 20));
        for chunk in [1, 7, 10, 4096, 6000, stream.len()] {
            let mut a = Assembler::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                got.extend(a.push(piece));
            }
            let ids: Vec<(u32, usize)> = got
                .iter()
                .map(|p| match p {
                    Piece::Message(h, body) => (h.stream_id, body.len()),
                    Piece::Oversized(_) => panic!("oversized"),
                })
                .collect();
            assert_eq!(ids, vec![(1, 5000), (3, 0), (5, 20)], "chunk {chunk}");
            assert_eq!(a.pending(), 0);
        }
    }

    #[test]
    fn oversized_message_is_skipped_and_the_next_one_read() {
        let mut a = Assembler::default();
        let header = ttrpc::Header {
            length: (ttrpc::MAX_MESSAGE + 5) as u32,
            stream_id: 9,
            kind: ttrpc::TYPE_REQUEST,
            flags: 0,
        };
        let mut first = header.encode().to_vec();
        first.extend(vec![0u8; 1000]);
        let got = a.push(&first);
        assert_eq!(got, vec![Piece::Oversized(header)]);
        let mut rest = vec![0u8; ttrpc::MAX_MESSAGE + 5 - 1000];
        rest.extend(message(11, 3));
        let got = a.push(&rest);
        assert!(matches!(&got[..], [Piece::Message(h, b)] if h.stream_id == 11 && b.len() == 3));
    }
}
