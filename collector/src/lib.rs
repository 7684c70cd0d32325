//! mapsentry's cluster side: agents stream event batches in (`ingest`), the `hub` keeps a bounded
//! retention ring with cursors and fans records out to subscribers, whom the `observer` serves
//! with server-side `filter`s, resume cursors and explicit loss notices. `server` puts the gRPC
//! services (with health and reflection) on a listener.
#![forbid(unsafe_code)]

pub mod auth;
pub mod filter;
pub mod follow;
pub mod hub;
pub mod ingest;
pub mod log;
pub mod observer;
pub mod server;
pub mod tls;

pub use hub::{Hub, HubConfig};
pub use server::{ServerConfig, serve};
