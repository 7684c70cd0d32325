//! mapsentry's cluster side: agents stream event batches in (`ingest`), the `hub` keeps a bounded
//! retention ring with cursors and fans records out to subscribers, whom the `observer` serves
//! with server-side `filter`s, resume cursors and explicit loss notices. `server` puts the gRPC
//! services (with health and reflection) on a listener. `alerts` evaluates stored calls against
//! the policies (from `policy_files`), publishes alert updates to subscribers and counts them in
//! `metrics` (Prometheus `/metrics`). In a cluster, `policy_crds` watches the policy objects
//! into the same store as the files (`policies`) and writes their status, and `kube_events`
//! posts an Event on the offending pod for each alert series.
#![forbid(unsafe_code)]

pub mod alerts;

pub mod auth;
pub mod enforce;
pub mod filter;
pub mod follow;
pub mod health;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod kube_client;
pub mod kube_events;
#[cfg(test)]
mod kube_testing;
pub mod log;
pub mod metrics;
pub mod node_reports;
pub mod observer;
pub mod policies;
pub mod policy_crds;
pub mod policy_files;
pub mod rate_limit;
pub mod server;
pub mod tls;

pub use enforce::PolicyPublisher;
pub use health::Health;
pub use hub::{Hub, HubConfig};
pub use node_reports::NodeReports;
pub use server::{ServerConfig, serve};
