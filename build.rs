//! Compiles the contract with protox (pure Rust: no system `protoc` needed) and writes the
//! descriptor sets that server reflection serves: ours, and Envoy's external authorization
//! (compiled from the copy of its `.proto` files in `third_party/envoy-api/`, see the README
//! there), and the server of that service for the lean message types
//! `src/grpc/ext_authz/wire.rs` defines.
//!
//! The script reads only files in this repository: it runs no `cargo` of its own, so a
//! build needs nothing the build's own dependencies do not (`cargo run` on a fresh machine
//! downloads no dev-dependencies, which a nested `cargo metadata` would have required).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ext_authz_descriptors()?;
    ext_authz_server();
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["sessiongate/v1/sessiongate.proto"], ["proto"])?;
    // protox hands the descriptors to tonic-prost-build directly, so prost-build never runs
    // protoc and never writes `file_descriptor_set_path`: write the file ourselves.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sessiongate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // The client is what tests, the CLI and the benchmark use.
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Envoy's `envoy.service.auth.v3` and what it imports, as a descriptor set.
fn ext_authz_descriptors() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=third_party/envoy-api");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("third_party/envoy-api");
    let includes =
        ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"].map(|d| root.join(d));
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ext_authz_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    Ok(())
}

/// `envoy.service.auth.v3.Authorization`'s server, over sessiongate's own lean types for
/// Envoy's messages instead of the `envoy-types` structs (why: `wire.rs`).
fn ext_authz_server() {
    use tonic_prost_build::manual::{Builder, Method, Service};
    let check = Method::builder()
        .name("check")
        .route_name("Check")
        .input_type("crate::grpc::ext_authz::wire::CheckRequest")
        .output_type("crate::grpc::ext_authz::wire::CheckResponse")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(check)
        .build();
    Builder::new().build_client(false).compile(&[service]);
}
