//! mapsentry's gRPC API, package `mapsentry.v1`: the messages and services generated from
//! `proto/mapsentry/v1/*.proto`, and conversions between the event model and its wire form.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod convert;
pub mod received;

/// Generated code of `mapsentry.v1`.
pub mod v1 {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations,
        reason = "generated code"
    )]
    tonic::include_proto!("mapsentry.v1");

    /// The encoded `FileDescriptorSet` of all mapsentry.v1 files, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mapsentry_v1_descriptor.bin"));
}

pub use convert::ConvertError;

/// Attributions defined and not released on one agent stream (protocol V2) at most: the agent
/// keeps its dictionary within it, the collector refuses a stream that goes beyond it.
pub const MAX_STREAM_ATTRIBUTIONS: usize = 16_384;
