//! Compiles the contract with protox (pure Rust: no system `protoc` needed) and writes the
//! descriptor sets that server reflection serves: ours, and Envoy's external authorization
//! (compiled from the `.proto` files the `envoy-types` crate ships, whose generated types we
//! serve it with, but which exports no descriptors), and the server of that service for the
//! lean message types `src/grpc/ext_authz/wire.rs` defines.

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
    let root = envoy_types_dir()?.join("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
    ]
    .map(|d| root.join(d));
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

/// Where cargo unpacked the `envoy-types` crate (registry, vendor directory or git checkout
/// alike), from `cargo metadata`.
fn envoy_types_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO")?;
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // Only this target's dependencies: cargo downloads no others (a macOS-only dependency of
    // a dependency is never fetched on Linux), and offline metadata would fail on them.
    let target = std::env::var("TARGET")?;
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &target,
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let path = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("cargo metadata lists no envoy-types package")?;
    Ok(PathBuf::from(path)
        .parent()
        .ok_or("envoy-types' manifest has no directory")?
        .to_owned())
}
