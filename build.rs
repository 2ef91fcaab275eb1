//! Compiles the contract with protox (pure Rust: no system `protoc` needed) and writes the
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
