//! Prometheus metrics of a collector (prometheus-client), served on `/metrics` with `/healthz`
//! and `/readyz` by [`serve`] (the shared endpoint, [`mapsentry_service::http`]).
//!
//! `mapsentry_policy_violations_total{namespace,pod,policy,rule,action,mode}` counts matching
//! calls: `action` is the rule's, `mode` whether it was carried out (`enforce`) or only reported
//! (`audit`).
//! Its label sets are bounded: beyond `max_series` distinct sets, calls are counted in one series
//! whose labels are all `other`, and each such call also in
//! `mapsentry_policy_violation_series_overflow_total`. The hub's counters (per-node stats,
//! retention, subscribers) are read at scrape time.
//!
//! `/metrics` takes no token: it is meant for the cluster's own scraper (its own listener,
//! `--metrics-listen`). The hub's counters are totals (no node, namespace or pod); only the
//! violations name workloads, and [`WorkloadLabels`] keeps them to the namespace or to none for
//! a collector whose metrics endpoint other tenants can reach.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use mapsentry_service::{
    http::{self, Probes, Reply},
    metrics::{self as glue, LabelValue, Scrape},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{export::ExportMetrics, health::Health, hub::Hub};

/// Default bound on violation label sets.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// The label value of the overflow series.
pub const OTHER: &str = "other";

/// Which workload labels the violation series carry (`--metrics-workload-labels`): the
/// namespace and the pod (the default), the namespace only, or none (both labels empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkloadLabels {
    #[default]
    Pod,
    Namespace,
    None,
}

impl std::str::FromStr for WorkloadLabels {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pod" => Ok(Self::Pod),
            "namespace" => Ok(Self::Namespace),
            "none" => Ok(Self::None),
            other => Err(format!(
                "{other:?} is not a choice of workload labels: pod, namespace or none"
            )),
        }
    }
}

impl std::fmt::Display for WorkloadLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pod => "pod",
            Self::Namespace => "namespace",
            Self::None => "none",
        })
    }
}

impl WorkloadLabels {
    /// `labels` with what this leaves out emptied.
    fn apply(self, mut labels: ViolationLabels) -> ViolationLabels {
        match self {
            Self::Pod => {}
            Self::Namespace => labels.pod.clear(),
            Self::None => {
                labels.namespace.clear();
                labels.pod.clear();
            }
        }
        labels
    }
}

/// The labels of one violation series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViolationLabels {
    pub namespace: String,
    pub pod: String,
    pub policy: String,
    pub rule: String,
    /// The rule's action (`alert`, `kill`, `deny`).
    pub action: String,
    /// `enforce` (carried out) or `audit` (reported only).
    pub mode: String,
}

impl ViolationLabels {
    fn other() -> Self {
        Self {
            namespace: OTHER.into(),
            pod: OTHER.into(),
            policy: OTHER.into(),
            rule: OTHER.into(),
            action: OTHER.into(),
            mode: OTHER.into(),
        }
    }
}

impl EncodeLabelSet for ViolationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [
            ("namespace", LabelValue::from(self.namespace.as_str())),
            ("pod", self.pod.as_str().into()),
            ("policy", self.policy.as_str().into()),
            ("rule", self.rule.as_str().into()),
            ("action", self.action.as_str().into()),
            ("mode", self.mode.as_str().into()),
        ]
        .encode(encoder)
    }
}

/// The collector's counters that are not kept by the hub.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    max_series: usize,
    workload_labels: WorkloadLabels,
    violations: Family<ViolationLabels, Counter>,
    /// Label sets in `violations` (the overflow series not counted); guards their creation.
    series: Mutex<usize>,
    overflow: Counter,
    evaluated: Counter,
    undecodable: Counter,
    kube_events_written: Counter,
    kube_events_failed: Counter,
    kube_events_suppressed: Counter,
    alerts_deferred: Counter,
    alerts_superseded: Counter,
    export: ExportMetrics,
    /// The backbone's metrics, with `--jetstream`.
    jetstream: std::sync::OnceLock<Arc<crate::jetstream::metrics::JetStreamMetrics>>,
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
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            // prometheus-client adds the `_total` suffix and the help text's final period.
            registry.register(
                name.strip_suffix("_total").unwrap_or(name),
                help.strip_suffix('.').unwrap_or(help),
                counter.clone(),
            );
            counter
        };
        let alerts_deferred = counter(
            "mapsentry_policy_alert_updates_deferred_total",
            "Alert updates held back by the per-pod rate limit (published later).",
        );
        let alerts_superseded = counter(
            "mapsentry_policy_alert_updates_superseded_total",
            "Deferred alert updates replaced by a newer update of the same alert.",
        );
        let evaluated = counter(
            "mapsentry_policy_evaluated_total",
            "Calls evaluated against the policies.",
        );
        let undecodable = counter(
            "mapsentry_policy_undecodable_total",
            "Stored records that could not be decoded for evaluation.",
        );
        let kube_events_written = counter(
            "mapsentry_kube_events_written_total",
            "Kubernetes Events written for alerts (created, or their series updated).",
        );
        let kube_events_failed = counter(
            "mapsentry_kube_events_failed_total",
            "Kubernetes Event writes refused by the API server or timed out.",
        );
        let kube_events_suppressed = counter(
            "mapsentry_kube_events_suppressed_total",
            "Kubernetes Event writes left out by the per-pod rate limit (the series count catches up at the next write).",
        );
        let overflow = counter(
            "mapsentry_policy_violation_series_overflow_total",
            "Violations counted in the `other` series because the label sets were at their bound.",
        );
        let export = ExportMetrics::default();
        export.register(&mut registry);
        let violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "mapsentry_policy_violations",
            "Calls matching a policy rule",
            violations.clone(),
        );
        Self {
            registry,
            max_series,
            workload_labels: WorkloadLabels::default(),
            violations,
            series: Mutex::new(0),
            overflow,
            evaluated,
            undecodable,
            kube_events_written,
            kube_events_failed,
            kube_events_suppressed,
            alerts_deferred,
            alerts_superseded,
            export,
            jetstream: std::sync::OnceLock::new(),
        }
    }

    /// The alert export's counters.
    #[must_use]
    pub fn export(&self) -> &ExportMetrics {
        &self.export
    }

    /// Label the violations with `labels` of their workloads.
    #[must_use]
    pub fn with_workload_labels(mut self, labels: WorkloadLabels) -> Self {
        self.workload_labels = labels;
        self
    }

    /// Serve the backbone's metrics with these.
    pub fn add_jetstream(&self, metrics: Arc<crate::jetstream::metrics::JetStreamMetrics>) {
        let _ = self.jetstream.set(metrics);
    }

    /// Count one call matching a rule.
    pub fn violation(&self, labels: ViolationLabels) {
        let labels = self.workload_labels.apply(labels);
        if let Some(counter) = self.violations.get(&labels) {
            counter.inc();
            return;
        }
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if self.violations.get(&labels).is_some() || *series < self.max_series {
            if self.violations.get(&labels).is_none() {
                *series += 1;
            }
            self.violations.get_or_create(&labels).inc();
        } else {
            self.overflow.inc();
            self.violations
                .get_or_create(&ViolationLabels::other())
                .inc();
        }
    }

    /// Count calls evaluated against the policies.
    pub fn evaluated(&self, calls: u64) {
        self.evaluated.inc_by(calls);
    }

    /// Count an alert update held back by its pod's rate limit.
    pub fn alert_deferred(&self) {
        self.alerts_deferred.inc();
    }

    /// Count a deferred alert update replaced by a newer one of the same alert.
    pub fn alert_superseded(&self) {
        self.alerts_superseded.inc();
    }

    /// Alert updates held back by the per-pod rate limit, and those superseded while waiting.
    #[must_use]
    pub fn alerts_rate_limited(&self) -> (u64, u64) {
        (self.alerts_deferred.get(), self.alerts_superseded.get())
    }

    /// Count a stored record that could not be decoded for evaluation.
    pub fn undecodable(&self) {
        self.undecodable.inc();
    }

    /// Count a Kubernetes Event written (created, or its series updated).
    pub fn kube_event_written(&self) {
        self.kube_events_written.inc();
    }

    /// Count a Kubernetes Event write the API server refused or that timed out.
    pub fn kube_event_failed(&self) {
        self.kube_events_failed.inc();
    }

    /// Count Kubernetes Event writes left out by the per-pod rate limit.
    pub fn kube_events_suppressed(&self, writes: u64) {
        self.kube_events_suppressed.inc_by(writes);
    }

    /// Kubernetes Event writes left out by the per-pod rate limit so far.
    #[must_use]
    pub fn kube_events_suppressed_total(&self) -> u64 {
        self.kube_events_suppressed.get()
    }

    /// Kubernetes Event writes refused or timed out so far.
    #[must_use]
    pub fn kube_events_failed_total(&self) -> u64 {
        self.kube_events_failed.get()
    }

    /// The exposition of these counters and `hub`'s.
    #[must_use]
    pub fn render(&self, hub: &Hub) -> String {
        let totals = hub.totals();
        let recovery = hub.recovery();
        let by_cause = |value: fn(&crate::retention::Dropped) -> u64| {
            recovery
                .dropped
                .iter()
                .map(move |(cause, dropped)| {
                    (
                        glue::Labels(vec![("cause", cause.as_str().into())]),
                        value(dropped),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut scrape = Scrape::default();
        scrape
            .counter(
                "mapsentry_collector_events_stored_total",
                "Events stored and acked, summed over agents.",
                totals.nodes.acked,
            )
            .counter(
                "mapsentry_collector_duplicate_batches_total",
                "Resent agent batches already stored.",
                totals.nodes.duplicate_batches,
            )
            .counter(
                "mapsentry_collector_agent_restarts_total",
                "Agent processes replaced by a new boot id (each one a capture gap on its node).",
                totals.nodes.agent_restarts,
            )
            .counter(
                "mapsentry_collector_subscribers_refused_total",
                "Subscriptions refused with RESOURCE_EXHAUSTED at --max-subscribers.",
                hub.refused_subscribers(),
            )
            .counter(
                "mapsentry_collector_subscriber_losses_total",
                "Records skipped for slow subscribers.",
                totals.subscriber_losses,
            )
            .counter(
                "mapsentry_collector_alerts_published_total",
                "Alert updates offered to subscribers.",
                hub.alerts_published(),
            )
            .counter(
                "mapsentry_policy_evaluation_dropped_total",
                "Stored calls not evaluated because the evaluation queue was full.",
                hub.evaluation_dropped(),
            )
            .counter(
                "mapsentry_collector_store_failures_total",
                "Agent batches the retention log failed to store (refused with UNAVAILABLE; the agent resends them).",
                hub.store_failures(),
            )
            .counter(
                "mapsentry_collector_retention_log_recovered_batches_total",
                "Batches read back from the retention log at start.",
                recovery.batches,
            )
            .counters(
                "mapsentry_collector_retention_log_dropped_batches_total",
                "Batches of the retention log skipped at start because their records were damaged, by cause.",
                by_cause(|d| d.batches),
            )
            .counters(
                "mapsentry_collector_retention_log_dropped_events_total",
                "Events of those batches, where the cursors of the batches around them tell, by cause.",
                by_cause(|d| d.events),
            )
            .gauge(
                "mapsentry_collector_retained_events",
                "Events in the retention window.",
                totals.retained,
            )
            .gauge(
                "mapsentry_collector_subscribers",
                "Live subscribers.",
                totals.subscribers,
            );
        let mut latency = Registry::default();
        latency.register(
            "mapsentry_collector_ingest_publish_seconds",
            "Time from an agent batch's arrival to its events offered to subscribers and evaluation (validation and the retention log write included)",
            hub.ingest_latency().clone(),
        );
        let scraped = scrape.into_registry();
        let standard = glue::standard("collector");
        let mut registries = vec![&scraped, &self.registry, &latency, &standard];
        if let Some(jetstream) = self.jetstream.get() {
            registries.push(jetstream.registry());
        }
        glue::encode(&registries)
    }
}

/// What the collector's endpoint answers: its metrics, liveness (the process answers), and the
/// readiness of `health`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub health: Health,
}

impl Probes for Endpoint {
    fn metrics(&self) -> String {
        self.metrics.render(&self.hub)
    }

    fn liveness(&self) -> Reply {
        Reply::ok("ok\n")
    }

    fn readiness(&self) -> Reply {
        match self.health.readiness() {
            Ok(()) => Reply::ok("ready\n"),
            Err(reason) => Reply::unavailable(format!("not ready: {reason}\n")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving metrics failed")]
    Serve {
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
    shutdown: impl Future<Output = ()> + Send + 'static,
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let endpoint: Arc<dyn Probes> = Arc::new(Endpoint {
        metrics,
        hub,
        health,
    });
    axum::serve(listener, http::router(endpoint))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { source })
}

#[cfg(test)]
pub(crate) mod tests;
