//! Generates the mapsentry.v1 messages and services with protox (no system protoc) and
//! tonic-prost-build, and writes the file descriptor set for gRPC reflection.

use std::path::PathBuf;

use anyhow::Context;

const PROTOS: &[&str] = &[
    "mapsentry/v1/event.proto",
    "mapsentry/v1/agent.proto",
    "mapsentry/v1/observer.proto",
];

fn main() -> anyhow::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let fds = protox::compile(PROTOS, ["."]).context("compiling the protos")?;
    std::fs::write(
        out.join("mapsentry_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .context("writing the descriptor set")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `AgentService.Connect` would clash with the generated `Client::connect(url)`;
        // callers build a `tonic::transport::Channel` and use `Client::new`.
        .build_transport(false)
        // prost's encoder, and messages decoded from one slice (`codec.rs`).
        .codec_path("crate::codec::SliceCodec")
        // A pod's attribution (names, labels: ~300 bytes) boxed rather than inline in every
        // `Event`, whose size it more than doubled: the collector holds events by the million
        // with their attribution apart (`None`) and moves each several times on its way in.
        .boxed(".mapsentry.v1.Event.attribution.pod")
        .compile_fds(fds)
        .context("generating code")?;
    // The collector's side of `AgentService.Connect` again, receiving each message with its
    // bytes (`received.rs`): written to `mapsentry.v1.AgentService.rs`, included as
    // `received::server`.
    let connect = tonic_build::manual::Method::builder()
        .name("connect")
        .route_name("Connect")
        .input_type("crate::received::ReceivedAgentMessage")
        .output_type("crate::v1::CollectorMessage")
        .codec_path("crate::received::ReceivedCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("AgentService")
        .package("mapsentry.v1")
        .method(connect)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .out_dir(&out)
        .compile(&[service]);
    Ok(())
}
