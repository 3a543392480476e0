//! Compiles `proto/` with protox (pure Rust, no system `protoc`) into tonic/prost code and
//! an embedded descriptor set that keeps extension options (`google.api.http`,
//! `ordermesh.options.v1.access`) for reflection, transcoding, OpenAPI and authorization.

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const FILES: &[&str] = &[
    "ordermesh/options/v1/access.proto",
    "ordermesh/options/v1/field.proto",
    "ordermesh/options/v1/http.proto",
    "ordermesh/type/v1/money.proto",
    "ordermesh/user/v1/user.proto",
    "ordermesh/order/v1/order.proto",
    "ordermesh/payment/v1/payment.proto",
    "ordermesh/audit/v1/audit.proto",
    "ordermesh/notification/v1/notification.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;

    // Encoded directly by protox so extension options survive (prost_types would drop them).
    std::fs::write(
        out_dir.join("ordermesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Well-known types resolve to prost_types (prost-build's default extern path).
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        // Deterministic map encoding: audit records are hashed over their encoded bytes.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
