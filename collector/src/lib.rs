//! mapsentry's cluster side. Agents stream event batches in (`ingest`); the `hub` deduplicates
//! them per node (`nodes`), makes them durable and keeps the newest in a window with cursors
//! (`retention`), and fans records and alerts out (`fanout`) to subscribers, whom the
//! `observer` serves with server-side `filter`s, resume cursors and explicit loss notices.
//! `server` puts the gRPC services (with health and reflection) on a listener. `alerts`
//! evaluates stored calls against the policies (`policy`: files, the policy objects in a
//! cluster, the store, the sets published to agents) and publishes alert updates, counted in
//! `metrics`; in a cluster `kube_events` posts an Event on the offending pod for each alert
//! series, and `export` writes alerts to a JSON lines file or stdout and POSTs them to a
//! webhook. `app` is the role put together: [`run`] is the whole of `mapsentry collector`.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod app;
pub mod auth;
pub mod budgets;
pub mod export;
pub mod fanout;
pub mod filter;
pub mod follow;
pub mod health;
pub mod hostile;
pub mod hub;
pub mod ingest;
pub mod jetstream;
pub mod kube_events;
#[cfg(test)]
mod kube_testing;
pub mod metrics;
pub mod nodes;
pub mod observer;
pub mod policy;
pub mod rate_limit;
pub mod retention;
pub mod server;
#[cfg(test)]
mod testing;
pub mod tls;

pub use app::{Config, run};
pub use health::Health;
pub use hub::{Hub, HubConfig};
pub use policy::publish::PolicyPublisher;
pub use policy::reports::NodeReports;
pub use server::{ServerConfig, serve};
