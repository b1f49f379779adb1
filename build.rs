//! Compiles the Protobuf contracts in `proto/` with protox (pure Rust: no `protoc` binary) and
//! generates the prost messages and tonic services. The encoded descriptor set is written beside
//! them for gRPC reflection.

use prost::Message;
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "l2d/v1/common.proto",
    "l2d/v1/expert.proto",
    "l2d/v1/router.proto",
    "l2d/v1/pool.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(
        out_dir.join("l2d_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // JSON output of the CLI (`l2d ask --json`, `l2d pool status --json`).
        .type_attribute(".l2d.v1", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    // The Open Inference Protocol, which the `kserve` backend calls (a client only).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(
            ["inference/grpc_predict_v2.proto"],
            ["proto"],
        )?)?;
    Ok(())
}
