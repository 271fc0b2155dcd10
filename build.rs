//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler, so building needs no system
//! `protoc`, and writes the encoded file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &["proto/rbee/hive/v1/hive.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    // `protox` resolves the well-known types (`google/protobuf/*.proto`) itself and, by default,
    // includes every imported file in the set, which reflection clients need to decode fields.
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    // The builder ignores `file_descriptor_set_path` when given descriptors, so the set for
    // reflection is written here.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rbee_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
