//! Compiles `proto/tta/v1/*.proto` with protox (pure Rust, no system `protoc`) and embeds the
//! descriptor set so every server can offer reflection over exactly the contract it was built from.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let package_dir = proto_root.join("tta/v1");

    let mut proto_files = fs::read_dir(&package_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    proto_files.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    proto_files.sort();

    println!("cargo:rerun-if-changed={}", package_dir.display());
    for file in &proto_files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptor_set = protox::compile(&proto_files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("tta_v1_descriptor.bin"),
        descriptor_set.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // Payloads are sliced out of the buffer they arrive in instead of copied: the broker
        // moves each one through several hops and 1 KiB copies add up.
        .bytes(".tta.v1.BrokerMessage.payload")
        .bytes(".tta.v1.OutgoingMessage.payload")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptor_set)?;
    Ok(())
}
