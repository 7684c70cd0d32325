//! What mapsentry's long-running roles (the agent on each node, the collector) share around their
//! own work, so that neither imports the other: the HTTP endpoint for Prometheus `/metrics`,
//! `/healthz` and `/readyz` ([`http`], on axum), the glue between their counters and
//! prometheus-client ([`metrics`]), the Kubernetes client ([`kube`]), error chains for the log
//! ([`error`]) and the status lines ([`status!`]).
#![forbid(unsafe_code)]

pub mod error;
pub mod http;
pub mod kube;
pub mod metrics;

/// The tracing target of status lines: what a role is doing, as an operator reads it on start,
/// on a change of state and at exit (`INFO mapsentry: agent on node ...`). They go through the
/// log like every other line (`--log-format json` makes them JSON too), never to stdout, which
/// carries records.
pub const STATUS_TARGET: &str = "mapsentry";

/// A status line: `tracing::info!` with the [`STATUS_TARGET`].
#[macro_export]
macro_rules! status {
    ($($arg:tt)+) => {
        ::tracing::info!(target: $crate::STATUS_TARGET, $($arg)+)
    };
}
