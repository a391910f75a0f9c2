//! Generates the NRI protobuf bindings from `proto/` with the pure-Rust parser
//! of protobuf-codegen: no system `protoc` needed.
//!
//! Also generates the CRI (Kubernetes `runtime.v1`) bindings from
//! `tests/proto/cri.proto` into `$OUT_DIR/cri_proto`. Those are used only by
//! the tests that drive a real containerd: only the test client `include!`s
//! them, so nothing of them reaches the product binary.

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

    println!("cargo:rerun-if-changed=tests/proto/cri.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("tests/proto")
        .input("tests/proto/cri.proto")
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .cargo_out_dir("cri_proto")
        .run_from_script();
}
