//! Feeds raw bytes, as the runtime's side of the NRI socket, to a live
//! `nri::session::Session` (the public entry of the connection code): its
//! reader thread demultiplexes the mux frames, reassembles ttrpc messages,
//! decodes ttrpc `Request`s on conn 1 (session::serve, private) and routes
//! responses on conn 2. The service behind it is a stub that answers at once,
//! so only the connection layer is fuzzed (the plugin's methods are fuzzed by
//! `nri_proto`). The input is written to one end of a socketpair, which is
//! then shut for writing; the session must end by itself (EOF, a broken or
//! oversized frame) and everything it wrote back must be well-framed.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netattach::nri::mux;
use netattach::nri::session::{Reply, Service, Session};
use netattach::nri::ttrpc::{self, code, RpcError};

struct Stub;

impl Service for Stub {
    fn call(&self, method: &str, payload: &[u8], _timeout: Option<Duration>) -> Reply {
        match method {
            "Shutdown" => Reply {
                result: Ok(Vec::new()),
                close: true,
            },
            "Echo" => Reply::ok(payload.to_vec()),
            _ => Reply::err(RpcError::new(code::UNIMPLEMENTED, method.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static LOG: std::sync::Once = std::sync::Once::new();
    LOG.call_once(|| {
        netattach::nri::log::to_file(std::path::Path::new("/dev/null")).expect("log to /dev/null");
    });
    let stub = Arc::new(Stub);
    let (mut runtime, plugin) = UnixStream::pair().expect("socketpair");
    let session = Session::start(plugin, stub.clone()).expect("start the session");
    // The writes of the session never fill the buffer: the answers to one
    // input are far smaller than the socket's buffer. Still, read in another
    // thread so that neither side can block the other.
    let mut reader = runtime.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let _ = runtime.write_all(data);
    let _ = runtime.shutdown(Shutdown::Write);
    let _why = session.wait();
    let _ = runtime.shutdown(Shutdown::Both);
    let out = drain.join().expect("drain thread");

    // What came back: whole frames on conn 1, each carrying ttrpc responses.
    let mut rest = &out[..];
    let mut assembler = mux::Assembler::default();
    while rest.len() >= mux::HEADER_LEN {
        let conn = u32::from_be_bytes(rest[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
        assert_eq!(conn, mux::PLUGIN_CONN, "answer on conn {conn}");
        assert!(rest.len() >= mux::HEADER_LEN + len, "truncated frame");
        for piece in assembler.push(&rest[mux::HEADER_LEN..mux::HEADER_LEN + len]) {
            match piece {
                mux::Piece::Message(h, body) => {
                    assert_eq!(h.kind, ttrpc::TYPE_RESPONSE);
                    let _ = ttrpc::parse_response(&body);
                }
                mux::Piece::Oversized(h) => panic!("oversized answer {h:?}"),
            }
        }
        rest = &rest[mux::HEADER_LEN + len..];
    }
    assert!(rest.is_empty(), "partial frame header in the answers");

    // The session's request threads are detached; each holds a clone of the
    // service until it has answered (the reader's clone went with the reader).
    // Wait for them all, so that no request outlives its input.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&stub) > 1 {
        assert!(std::time::Instant::now() < until, "request threads still running after 5 s");
        std::thread::sleep(Duration::from_micros(50));
    }
});
