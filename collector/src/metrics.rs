//! Prometheus metrics of a collector, in the text exposition format, served over HTTP on
//! `/metrics` by [`serve`].
//!
//! `mapsentry_policy_violations_total{namespace,pod,policy,rule,action}` counts matching calls.
//! Its label sets are bounded: beyond `max_series` distinct sets, calls are counted in one series
//! whose labels are all `other`, and each such call also in
//! `mapsentry_policy_violation_series_overflow_total`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::net::TcpListener;

use crate::{
    health::Health,
    http::{self, Reply},
    hub::Hub,
};

/// Default bound on violation label sets.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// The label value of the overflow series.
pub const OTHER: &str = "other";

/// The labels of one violation series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViolationLabels {
    pub namespace: String,
    pub pod: String,
    pub policy: String,
    pub rule: String,
    pub action: String,
}

impl ViolationLabels {
    fn other() -> Self {
        Self {
            namespace: OTHER.into(),
            pod: OTHER.into(),
            policy: OTHER.into(),
            rule: OTHER.into(),
            action: OTHER.into(),
        }
    }
}

#[derive(Debug, Default)]
struct Violations {
    series: BTreeMap<ViolationLabels, u64>,
    overflow: u64,
}

/// The collector's counters that are not kept by the hub.
#[derive(Debug)]
pub struct Metrics {
    max_series: usize,
    violations: Mutex<Violations>,
    evaluated: std::sync::atomic::AtomicU64,
    undecodable: std::sync::atomic::AtomicU64,
    kube_events_written: std::sync::atomic::AtomicU64,
    kube_events_failed: std::sync::atomic::AtomicU64,
    kube_events_suppressed: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERIES)
    }
}

impl Metrics {
    /// `max_series` distinct violation label sets at most (the overflow series not counted).
    #[must_use]
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            violations: Mutex::default(),
            evaluated: 0.into(),
            undecodable: 0.into(),
            kube_events_written: 0.into(),
            kube_events_failed: 0.into(),
            kube_events_suppressed: 0.into(),
        }
    }

    /// Count one call matching a rule.
    pub fn violation(&self, labels: ViolationLabels) {
        let mut v = self
            .violations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limit = self.max_series;
        let len = v.series.len();
        if let Some(count) = v.series.get_mut(&labels) {
            *count += 1;
        } else if len < limit {
            v.series.insert(labels, 1);
        } else {
            v.overflow += 1;
            *v.series.entry(ViolationLabels::other()).or_default() += 1;
        }
    }

    /// Count calls evaluated against the policies.
    pub fn evaluated(&self, calls: u64) {
        self.evaluated
            .fetch_add(calls, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count a stored record that could not be decoded for evaluation.
    pub fn undecodable(&self) {
        self.undecodable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count a Kubernetes Event written (created, or its series updated).
    pub fn kube_event_written(&self) {
        self.kube_events_written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count a Kubernetes Event write the API server refused or that timed out.
    pub fn kube_event_failed(&self) {
        self.kube_events_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count Kubernetes Event writes left out by the per-pod rate limit.
    pub fn kube_events_suppressed(&self, writes: u64) {
        self.kube_events_suppressed
            .fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Kubernetes Event writes left out by the per-pod rate limit so far.
    #[must_use]
    pub fn kube_events_suppressed_total(&self) -> u64 {
        self.kube_events_suppressed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The text exposition of these counters and `hub`'s.
    #[must_use]
    pub fn render(&self, hub: &Hub) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let stats = hub.stats();
        let acked: u64 = stats.nodes.iter().map(|n| n.acked).sum();
        let duplicates: u64 = stats.nodes.iter().map(|n| n.duplicate_batches).sum();
        let counters: [(&str, &str, u64); 10] = [
            (
                "mapsentry_collector_events_stored_total",
                "Events stored and acked, summed over agents.",
                acked,
            ),
            (
                "mapsentry_collector_duplicate_batches_total",
                "Resent agent batches already stored.",
                duplicates,
            ),
            (
                "mapsentry_collector_subscriber_losses_total",
                "Records skipped for slow subscribers.",
                stats.subscriber_losses,
            ),
            (
                "mapsentry_collector_alerts_published_total",
                "Alert updates offered to subscribers.",
                hub.alerts_published(),
            ),
            (
                "mapsentry_policy_evaluated_total",
                "Calls evaluated against the policies.",
                self.evaluated.load(Relaxed),
            ),
            (
                "mapsentry_policy_evaluation_dropped_total",
                "Stored calls not evaluated because the evaluation queue was full.",
                hub.evaluation_dropped(),
            ),
            (
                "mapsentry_policy_undecodable_total",
                "Stored records that could not be decoded for evaluation.",
                self.undecodable.load(Relaxed),
            ),
            (
                "mapsentry_kube_events_written_total",
                "Kubernetes Events written for alerts (created, or their series updated).",
                self.kube_events_written.load(Relaxed),
            ),
            (
                "mapsentry_kube_events_failed_total",
                "Kubernetes Event writes refused by the API server or timed out.",
                self.kube_events_failed.load(Relaxed),
            ),
            (
                "mapsentry_kube_events_suppressed_total",
                "Kubernetes Event writes left out by the per-pod rate limit (the series count catches up at the next write).",
                self.kube_events_suppressed.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mapsentry_collector_retained_events Events in the retention window.\n\
             # TYPE mapsentry_collector_retained_events gauge\nmapsentry_collector_retained_events {}",
            stats.retained
        );
        let _ = writeln!(
            out,
            "# HELP mapsentry_collector_subscribers Live subscribers.\n\
             # TYPE mapsentry_collector_subscribers gauge\nmapsentry_collector_subscribers {}",
            stats.subscribers
        );
        let violations = self
            .violations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP mapsentry_policy_violations_total Calls matching a policy rule.\n\
             # TYPE mapsentry_policy_violations_total counter"
        );
        for (l, count) in &violations.series {
            let _ = writeln!(
                out,
                "mapsentry_policy_violations_total{{namespace=\"{}\",pod=\"{}\",policy=\"{}\",rule=\"{}\",action=\"{}\"}} {count}",
                escape(&l.namespace),
                escape(&l.pod),
                escape(&l.policy),
                escape(&l.rule),
                escape(&l.action)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mapsentry_policy_violation_series_overflow_total Violations counted in the \
             `other` series because the label sets were at their bound.\n\
             # TYPE mapsentry_policy_violation_series_overflow_total counter\n\
             mapsentry_policy_violation_series_overflow_total {}",
            violations.overflow
        );
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("accepting a metrics connection failed")]
    Accept {
        #[source]
        source: std::io::Error,
    },
}

/// Serve `GET /metrics` on `listener` until `shutdown` resolves, with `/healthz` and `/readyz`
/// always 200. Other paths get 404.
pub async fn serve(
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    serve_with_health(metrics, hub, Health::ready(), listener, shutdown).await
}

/// Serve `GET /metrics`, `GET /healthz` (liveness: 200 while the process answers) and
/// `GET /readyz` (200 when `health` is ready, else 503 with the reason) on `listener` until
/// `shutdown` resolves. Other paths get 404.
pub async fn serve_with_health(
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    health: Health,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let handler: http::Handler = Arc::new(move |method, path| match (method, path) {
        ("GET", "/metrics") => Reply::ok(metrics.render(&hub)),
        ("GET", "/healthz") => Reply::ok("ok\n"),
        ("GET", "/readyz") => match health.readiness() {
            Ok(()) => Reply::ok("ready\n"),
            Err(reason) => Reply::unavailable(format!("not ready: {reason}\n")),
        },
        _ => Reply::not_found("not found: try GET /metrics, /healthz or /readyz\n"),
    });
    http::serve(listener, handler, shutdown)
        .await
        .map_err(|http::HttpError::Accept { source }| MetricsError::Accept { source })
}

#[cfg(test)]
pub(crate) mod tests;
