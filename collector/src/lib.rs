//! mapsentry's cluster side: agents stream event batches in (`ingest`), the `hub` keeps a bounded
//! retention ring with cursors and fans records out to subscribers, whom the `observer` serves
//! with server-side `filter`s, resume cursors and explicit loss notices. `server` puts the gRPC
//! services (with health and reflection) on a listener. `alerts` evaluates stored calls against
//! the policies (from `policy_files`), publishes alert updates to subscribers and counts them in
//! `metrics` (Prometheus `/metrics`).
#![forbid(unsafe_code)]

pub mod alerts;

pub mod auth;
pub mod enforce;
pub mod filter;
pub mod follow;
pub mod hub;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod observer;
pub mod policy_files;
pub mod rate_limit;
pub mod server;
pub mod tls;

pub use enforce::PolicyPublisher;
pub use hub::{Hub, HubConfig};
pub use server::{ServerConfig, serve};
