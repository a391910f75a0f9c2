//! Generates the NRI protobuf bindings from `proto/` with the pure-Rust parser
//! of protobuf-codegen: no system `protoc` needed.

fn main() {
    println!("cargo:rerun-if-changed=proto/nri.proto");
    println!("cargo:rerun-if-changed=proto/ttrpc.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .inputs(["proto/nri.proto", "proto/ttrpc.proto"])
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .cargo_out_dir("nri_proto")
        .run_from_script();
}
