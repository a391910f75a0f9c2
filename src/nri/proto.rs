//! Protobuf bindings of `proto/nri.proto` and `proto/ttrpc.proto`, generated at
//! build time by `build.rs` (protobuf-codegen, pure-Rust parser).

#![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]

include!(concat!(env!("OUT_DIR"), "/nri_proto/mod.rs"));
