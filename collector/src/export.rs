//! Alert export: the alert updates the hub publishes, as JSON lines to stdout or a rotated file
//! (`file`) and as JSON arrays POSTed to a webhook (`webhook`), each sink on its own tasks.
//!
//! - **Shape**: every alert is the alert line of the JSON contract ([`AlertLine`]) with the
//!   `cursor` (the collector run's alert sequence) and `node` that `tail` and `run -o json`
//!   print ([`Line`]). The file holds one per line; a webhook body is a JSON array of them.
//! - **Never in the way**: a dispatcher follows the hub's alert stream like any subscriber and
//!   moves each alert that passes the [`ExportFilter`] into each sink's bounded queue, without
//!   waiting. A full queue loses its oldest alert; alerts the subscription itself missed are
//!   lost for every sink. Both are counted in `mapsentry_alert_export_dropped_total`.
//! - **Delivery**: in publication order per sink, one write or request at a time. The file and
//!   stdout are at-most-once (a failed write is counted and its alerts dropped); the webhook is
//!   at-least-once within its retry time (a batch whose answer was lost is sent again; `cursor`
//!   tells duplicates apart), after which the batch is dropped and counted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use mapsentry_policy::{Action, AlertLine, Mode};
use mapsentry_proto::v1::Kind as RecordKind;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Serialize;
use tracing::Instrument as _;

use crate::{
    fanout::PublishedAlert,
    filter::RecordFilter,
    hub::{Hub, Item, SubscribeError},
};

pub mod file;
mod queue;
pub mod webhook;

pub use file::{OutputConfig, OutputTarget};
pub use webhook::WebhookConfig;

use queue::Queue;

/// One exported alert: the contract's alert line with its `cursor` and `node`.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    #[serde(flatten)]
    pub alert: &'a AlertLine,
    pub cursor: u64,
    pub node: &'a str,
}

impl<'a> Line<'a> {
    #[must_use]
    pub fn of(published: &'a PublishedAlert) -> Self {
        Self {
            alert: &published.alert,
            cursor: published.cursor,
            node: &published.node,
        }
    }
}

/// Where alerts go besides subscribers, Events and metrics, and which ones.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// `--alert-output`: JSON lines to stdout or a rotated file.
    pub output: Option<OutputConfig>,
    /// `--alert-webhook`: JSON arrays POSTed to a URL.
    pub webhook: Option<WebhookConfig>,
    pub filter: ExportFilter,
}

impl ExportConfig {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.output.is_none() && self.webhook.is_none()
    }
}

/// Which alerts are exported: those matching every list given (an empty list passes all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// The alert's namespace is one of these (host processes have none, so they are left out).
    pub namespaces: Vec<String>,
    /// The policy, as alerts name it: `NAMESPACE/NAME` for an MmapPolicy, `NAME` for a
    /// ClusterMmapPolicy.
    pub policies: Vec<String>,
    pub actions: Vec<Action>,
    pub modes: Vec<Mode>,
}

impl ExportFilter {
    #[must_use]
    pub fn matches(&self, alert: &AlertLine) -> bool {
        (self.namespaces.is_empty()
            || alert
                .namespace
                .as_ref()
                .is_some_and(|ns| self.namespaces.contains(ns)))
            && (self.policies.is_empty() || self.policies.contains(&alert.policy))
            && (self.actions.is_empty() || self.actions.contains(&alert.action))
            && (self.modes.is_empty() || self.modes.contains(&alert.mode))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("subscribing to the collector's alerts: {source}")]
    Subscribe {
        #[source]
        source: SubscribeError,
    },
    #[error(transparent)]
    Output(#[from] file::OutputError),
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// Why alerts were dropped, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The sink's queue was full; its oldest alert went.
    QueueFull,
    /// The export's hub subscription fell behind (every sink misses these).
    SubscriberBehind,
    /// A write to the file or stdout failed.
    WriteFailed,
    /// The webhook answered 4xx (other than 408 and 429): the batch is not sent again.
    Rejected,
    /// The batch was still undelivered when its retry time ran out.
    RetriesExhausted,
    /// Still queued or undelivered when the collector stopped.
    Shutdown,
}

impl DropReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SubscriberBehind => "subscriber_behind",
            Self::WriteFailed => "write_failed",
            Self::Rejected => "rejected",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The export counters, labelled by `sink` (`file`, `stdout`, `webhook`).
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    delivered: Family<[(&'static str, &'static str); 1], Counter>,
    failures: Family<[(&'static str, &'static str); 1], Counter>,
    dropped: Family<[(&'static str, &'static str); 2], Counter>,
}

impl ExportMetrics {
    /// Register the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mapsentry_alert_export_delivered",
            "Alerts written or accepted by an export sink",
            self.delivered.clone(),
        );
        registry.register(
            "mapsentry_alert_export_failures",
            "Failed export attempts: file writes, webhook requests refused, failed or timed out",
            self.failures.clone(),
        );
        registry.register(
            "mapsentry_alert_export_dropped",
            "Alerts an export sink never delivered, by reason",
            self.dropped.clone(),
        );
    }

    pub fn delivered(&self, sink: &'static str, alerts: u64) {
        self.delivered
            .get_or_create(&[("sink", sink)])
            .inc_by(alerts);
    }

    pub fn failure(&self, sink: &'static str) {
        self.failures.get_or_create(&[("sink", sink)]).inc();
    }

    pub fn dropped(&self, sink: &'static str, reason: DropReason, alerts: u64) {
        if alerts > 0 {
            self.dropped
                .get_or_create(&[("sink", sink), ("reason", reason.as_str())])
                .inc_by(alerts);
        }
    }

    #[must_use]
    pub fn delivered_total(&self, sink: &'static str) -> u64 {
        self.delivered.get_or_create(&[("sink", sink)]).get()
    }

    #[must_use]
    pub fn failures_total(&self, sink: &'static str) -> u64 {
        self.failures.get_or_create(&[("sink", sink)]).get()
    }

    #[must_use]
    pub fn dropped_total(&self, sink: &'static str, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&[("sink", sink), ("reason", reason.as_str())])
            .get()
    }
}

/// A warning at most every [`FailureLog::EVERY`] per sink, with the failures in between counted.
#[derive(Debug)]
pub(crate) struct FailureLog {
    sink: &'static str,
    last: Option<Instant>,
    since: u64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(30);

    pub(crate) fn new(sink: &'static str) -> Self {
        Self {
            sink,
            last: None,
            since: 0,
        }
    }

    pub(crate) fn failed(&mut self, what: &dyn std::fmt::Display) {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
        {
            tracing::warn!(
                sink = self.sink,
                failures = self.since,
                "alert export failing: {what} (logged at most every {} s)",
                Self::EVERY.as_secs()
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// A sink's queue with the name its counters carry.
#[derive(Debug, Clone)]
struct SinkQueue {
    sink: &'static str,
    queue: Arc<Queue>,
}

/// The running export; stop it with [`Exporter::stop`] after the hub closed.
#[derive(Debug)]
pub struct Exporter {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sinks: Vec<String>,
}

impl Exporter {
    /// Check the sinks of `config` (open the file, parse the URL, build the TLS client) and
    /// start exporting the alerts `hub` publishes from now on. None when no sink is configured.
    pub fn start(
        hub: &Arc<Hub>,
        config: &ExportConfig,
        metrics: &ExportMetrics,
    ) -> Result<Option<Self>> {
        if config.is_empty() {
            return Ok(None);
        }
        let mut tasks = Vec::new();
        let mut queues = Vec::new();
        let mut sinks = Vec::new();
        if let Some(output) = &config.output {
            let writer = file::Writer::open(output)?;
            let queue = Arc::new(Queue::new(output.queue));
            let sink = writer.sink();
            sinks.push(match &output.target {
                OutputTarget::Stdout => "JSON lines on stdout".to_owned(),
                OutputTarget::File(path) => format!(
                    "JSON lines in {} (rotated at {} bytes, {} old files kept)",
                    path.display(),
                    output.max_bytes,
                    output.files
                ),
            });
            tasks.push(file::start(writer, Arc::clone(&queue), metrics.clone()));
            queues.push(SinkQueue { sink, queue });
        }
        if let Some(webhook) = &config.webhook {
            let client = webhook::Client::new(webhook)?;
            sinks.push(format!(
                "JSON arrays POSTed to {} (batches of up to {})",
                client.shown, webhook.batch
            ));
            let queue = Arc::new(Queue::new(webhook.queue));
            tasks.push(webhook::start(
                client,
                webhook.clone(),
                Arc::clone(&queue),
                metrics.clone(),
            ));
            queues.push(SinkQueue {
                sink: webhook::SINK,
                queue,
            });
        }
        let kinds = [RecordKind::Alerts as i32];
        let subscription = RecordFilter::new(None, &kinds)
            .map_err(|_| SubscribeError::Closed)
            .and_then(|filter| hub.subscribe(filter, None))
            .map_err(|source| ExportError::Subscribe { source })?
            .items();
        tasks.push(tokio::spawn(
            dispatch(subscription, config.filter.clone(), queues, metrics.clone())
                .instrument(tracing::info_span!("alert_export")),
        ));
        Ok(Some(Self { tasks, sinks }))
    }

    /// Where alerts go, for the start-up message (webhook URLs without their path).
    #[must_use]
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }

    /// After the hub closed: let the sinks deliver what they hold (the webhook for at most
    /// [`webhook::SHUTDOWN_GRACE`]), then stop.
    pub async fn stop(self) {
        for task in self.tasks {
            if tokio::time::timeout(webhook::SHUTDOWN_GRACE + Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("an alert export sink did not stop in time");
            }
        }
    }
}

/// Move the alerts of `subscription` that pass `filter` into every sink's queue, until the
/// hub closes; then close the queues.
async fn dispatch(
    mut subscription: crate::fanout::Items,
    filter: ExportFilter,
    queues: Vec<SinkQueue>,
    metrics: ExportMetrics,
) {
    while let Some(item) = subscription.next().await {
        match item {
            Item::Alert(published) if filter.matches(&published.alert) => {
                for sink in &queues {
                    if sink.queue.push(Arc::clone(&published)) {
                        metrics.dropped(sink.sink, DropReason::QueueFull, 1);
                    }
                }
            }
            Item::Loss { count, .. } => {
                for sink in &queues {
                    metrics.dropped(sink.sink, DropReason::SubscriberBehind, count);
                }
                tracing::warn!(
                    count,
                    "alerts missed by the alert export (its subscription fell behind)"
                );
            }
            _ => {}
        }
    }
    for sink in &queues {
        sink.queue.close();
    }
}

#[cfg(test)]
mod tests;
