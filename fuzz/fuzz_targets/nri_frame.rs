//! Feeds the NRI wire below the messages: the mux reassembler
//! (`nri::mux::Assembler`) with frame payloads split at fuzzer-chosen points,
//! `nri::ttrpc::Header::decode`, `nri::ttrpc::parse_response` (what the plugin
//! does with the runtime's answers on conn 2) and the decoding of ttrpc
//! `Request` envelopes (what the session does with each message on conn 1;
//! that code, `session::serve`, is private, so the generated
//! `proto::ttrpc::Request` is decoded here directly; the whole session is
//! fuzzed by the `nri_session` target).
//!
//! Input layout for the assembler: byte 0 = number of split lengths n (mod 16),
//! then n big-endian u16 lengths, then the byte stream. The stream is pushed
//! in pieces of those lengths (cycling, the last piece takes the rest). When
//! byte 0 is exactly 0xA7 (7 lengths), a length with the top two bits set
//! instead pushes `(len & 0x3fff) << 9` bytes 0xFF (at most 4 MiB + 64 KiB per input),
//! so messages near and over the 4 MiB limit occur; it is gated so that such
//! slow inputs stay rare. The fill bytes are slices of one static buffer, so a
//! fill costs the assembler's own copies, not an allocation and a memset.
//!
//! Checks beyond "no panic": the assembler holds at most
//! `mux::MAX_PAYLOAD` (one ttrpc header + `ttrpc::MAX_MESSAGE`) after every
//! push, and the pieces do not depend on the split (same as one push of the
//! whole); messages are whole and within the limit; header, response and
//! request encodings round-trip; `mux::frames` splits as documented.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use netattach::nri::mux::{self, Assembler, Piece};
use netattach::nri::proto::ttrpc::Request;
use netattach::nri::ttrpc::{self, code, Header};
use protobuf::Message;

const MAX_FILL: usize = (4 << 20) + (64 << 10);
/// Where the fill pieces are cut from.
static FILL: LazyLock<Vec<u8>> = LazyLock::new(|| vec![0xFF; MAX_FILL]);

fuzz_target!(|data: &[u8]| {
    wire(data);
    assemble(data);
});

fn wire(data: &[u8]) {
    if data.len() >= ttrpc::HEADER_LEN {
        let h = Header::decode(&data[..ttrpc::HEADER_LEN]);
        assert_eq!(h.encode(), data[..ttrpc::HEADER_LEN]);
    }

    let outcome = ttrpc::parse_response(data);
    if let Err(e) = &outcome {
        assert_ne!(e.code, code::OK, "an error with status OK: {e:?}");
    }
    let message = ttrpc::response(7, outcome.clone());
    let h = Header::decode(&message[..ttrpc::HEADER_LEN]);
    assert_eq!((h.stream_id, h.kind), (7, ttrpc::TYPE_RESPONSE));
    assert_eq!(h.length as usize, message.len() - ttrpc::HEADER_LEN);
    assert_eq!(ttrpc::parse_response(&message[ttrpc::HEADER_LEN..]), outcome);

    if let Ok(req) = Request::parse_from_bytes(data) {
        let message = ttrpc::request(
            9,
            &req.service,
            &req.method,
            req.payload.clone(),
            req.timeout_nano,
        );
        let h = Header::decode(&message[..ttrpc::HEADER_LEN]);
        assert_eq!((h.stream_id, h.kind), (9, ttrpc::TYPE_REQUEST));
        let again = Request::parse_from_bytes(&message[ttrpc::HEADER_LEN..])
            .expect("re-encoded request decodes");
        assert_eq!(
            (&again.service, &again.method, &again.payload, again.timeout_nano),
            (&req.service, &req.method, &req.payload, req.timeout_nano)
        );
    }

    // The frames toward the runtime's Go reader: at most two, the first at
    // most FIRST_FRAME_MAX bytes, the payloads concatenating to the message.
    let framed = mux::frames(mux::PLUGIN_CONN, data);
    let mut rest = &framed[..];
    let mut payload = Vec::new();
    let mut count = 0;
    while !rest.is_empty() {
        let conn = u32::from_be_bytes(rest[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
        assert_eq!(conn, mux::PLUGIN_CONN);
        if count == 0 {
            assert!(len <= mux::FIRST_FRAME_MAX);
        }
        payload.extend_from_slice(&rest[mux::HEADER_LEN..mux::HEADER_LEN + len]);
        rest = &rest[mux::HEADER_LEN + len..];
        count += 1;
    }
    assert!((1..=2).contains(&count));
    assert_eq!(payload, data);
}

fn assemble(data: &[u8]) {
    let Some((&n, mut rest)) = data.split_first() else {
        return;
    };
    let mut lens = Vec::new();
    for _ in 0..(n % 16) {
        if rest.len() < 2 {
            break;
        }
        lens.push(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    let mut stream = rest;
    let fill_allowed = n == 0xA7;

    // The pieces: up to four rounds over the lengths, then the rest of the stream.
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut filled = 0;
    for &l in lens.iter().cycle().take(4 * lens.len()) {
        if l & 0xC000 == 0xC000 && fill_allowed {
            let z = ((l & 0x3fff) as usize) << 9;
            if filled + z <= MAX_FILL {
                filled += z;
                pieces.push(&FILL[..z]);
            }
        } else {
            let (p, r) = stream.split_at(((l & 0x3fff) as usize).min(stream.len()));
            stream = r;
            pieces.push(p);
        }
    }
    pieces.push(stream);

    let mut split = Assembler::default();
    let mut got = Vec::new();
    let mut whole = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for piece in &pieces {
        whole.extend_from_slice(piece);
        got.extend(split.push(piece));
        assert!(
            split.pending() <= mux::MAX_PAYLOAD,
            "assembler holds {} bytes",
            split.pending()
        );
    }
    for p in &got {
        match p {
            Piece::Message(h, body) => {
                assert_eq!(h.length as usize, body.len());
                assert!(body.len() <= ttrpc::MAX_MESSAGE);
            }
            Piece::Oversized(h) => assert!(h.length as usize > ttrpc::MAX_MESSAGE),
        }
    }
    let mut one = Assembler::default();
    let all = one.push(&whole);
    assert_eq!(all, got, "pieces depend on how the frames were split");
    assert_eq!(one.pending(), split.pending());
}
