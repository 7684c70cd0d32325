//! Kubernetes Events on the offending pod for alerts: reason `MmapPolicyViolation`, type
//! `Warning`, through `events.k8s.io/v1` (served since Kubernetes 1.19).
//!
//! The task follows the hub's alert stream like any subscriber (so at shutdown it gets the alerts
//! the aggregator flushes, then the stream ends). Alerts of processes outside pods are skipped.
//!
//! - **Series**: the alerts of one (pod, policy, rule) are one Event: the first alert creates it,
//!   later alert updates patch its `series` (`count` = matching calls so far, at least 2,
//!   `lastObservedTime`). A storm is one Event with a count, not one Event per call. A series
//!   idle for [`EventsConfig::series_ttl`] (or whose Event is gone) starts a new Event.
//! - **Rate limit**: at most [`EventsConfig::per_pod_per_minute`] writes (creates and patches)
//!   per pod per minute; each write over it is counted in
//!   `mapsentry_kube_events_suppressed_total`, and the series keeps its count, so the next write
//!   allowed (at the latest when the minute is over) carries it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use mapsentry_policy::{Action, AlertLine, Attribution, EventLine, names};
use mapsentry_proto::v1::Kind as RecordKind;
use tracing::Instrument as _;

use crate::{
    filter::RecordFilter,
    hub::{Hub, Item, SubscribeError},
    metrics::Metrics,
};

/// The reason of every Event this module posts.
pub const REASON: &str = "MmapPolicyViolation";
/// The longest an API write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often series with unwritten counts are retried.
const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Most series remembered at once (the idle ones go first).
const MAX_SERIES: usize = 65_536;

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Most Event writes per pod per minute.
    pub per_pod_per_minute: u32,
    /// `reportingController` of the Events.
    pub controller: String,
    /// `reportingInstance` of the Events (the collector's pod name, or host name).
    pub instance: String,
    /// A series idle this long starts a new Event.
    pub series_ttl: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            per_pod_per_minute: 10,
            controller: "mapsentry.dev/collector".into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "mapsentry-collector".into()),
            series_ttl: Duration::from_mins(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("subscribing to the collector's alerts: {source}")]
    Subscribe {
        #[source]
        source: SubscribeError,
    },
}

/// What one pod's alert key is: (namespace, pod, policy, rule).
type SeriesKey = (String, String, String, String);

/// One Event and what it has counted.
#[derive(Debug, Clone)]
struct Series {
    /// The Event's name once created.
    name: Option<String>,
    /// The name its Event is created with, fixed when the series starts (a create that fails
    /// and is retried later keeps it, so whichever replica writes it names it the same).
    planned: String,
    pod_uid: Option<String>,
    /// Calls counted in this Event.
    total: u64,
    /// `total` as last written.
    written: u64,
    /// The alert count of the aggregation the last update came from.
    last_alert_count: u64,
    last_write: Option<Instant>,
    last_seen: Instant,
    note: String,
    action: String,
}

/// A write the planner decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create a new Event for the series.
    Create {
        name: String,
        namespace: String,
        pod: String,
        pod_uid: Option<String>,
        action: String,
        note: String,
        count: u64,
    },
    /// Patch the series of an existing Event.
    Patch {
        namespace: String,
        name: String,
        count: u64,
    },
}

/// Series and rate limits, without I/O: alerts in, writes out.
#[derive(Debug)]
pub struct Planner {
    per_pod_per_minute: u32,
    series_ttl: Duration,
    series: HashMap<SeriesKey, Series>,
    /// Per pod: the start of its current minute and the writes in it.
    budgets: HashMap<(String, String), (Instant, u32)>,
    /// Writes over the rate limit.
    pub suppressed: u64,
    /// When set, a series starting now names its Event `POD.SUFFIX` rather than `POD.TIME`:
    /// the same whichever replica writes it (the JetStream path sets it to the alert's cursor).
    pub name_suffix: Option<String>,
}

impl Planner {
    #[must_use]
    pub fn new(per_pod_per_minute: u32, series_ttl: Duration) -> Self {
        Self {
            per_pod_per_minute,
            series_ttl,
            series: HashMap::new(),
            budgets: HashMap::new(),
            suppressed: 0,
            name_suffix: None,
        }
    }

    /// Count `alert`; the write to make now, if any (None for host processes and when over the
    /// pod's rate limit).
    pub fn alert(&mut self, alert: &AlertLine, now: Instant) -> Option<(SeriesKey, Write)> {
        let (Some(namespace), Some(pod)) = (alert.namespace.clone(), alert.pod.clone()) else {
            return None;
        };
        let key = (namespace, pod, alert.policy.clone(), alert.rule.clone());
        if self.series.len() >= MAX_SERIES && !self.series.contains_key(&key) {
            self.forget_idle(now);
        }
        let ttl = self.series_ttl;
        let series = self.series.entry(key.clone()).or_insert_with(|| Series {
            name: None,
            planned: String::new(),
            pod_uid: None,
            total: 0,
            written: 0,
            last_alert_count: 0,
            last_write: None,
            last_seen: now,
            note: String::new(),
            action: String::new(),
        });
        // Alert counts are cumulative per aggregation; a smaller one starts a new aggregation.
        let delta = if alert.count > series.last_alert_count {
            alert.count - series.last_alert_count
        } else {
            alert.count
        };
        series.last_alert_count = alert.count;
        let stale = series
            .last_write
            .is_none_or(|t| now.duration_since(t) >= ttl);
        if series.name.is_some() && stale {
            // Idle too long: a new Event for what comes now.
            series.name = None;
            series.planned.clear();
            series.total = 0;
            series.written = 0;
        }
        series.total += delta;
        series.last_seen = now;
        if series.name.is_none() {
            if series.planned.is_empty() {
                series.planned = match &self.name_suffix {
                    Some(suffix) => format!("{}.{suffix}", key.1),
                    None => format!("{}.{:x}", key.1, Timestamp::now().as_nanosecond()),
                };
            }
            series.note = note(alert);
            series.action = action_name(alert.action);
            series.pod_uid = pod_uid(alert);
        }
        self.next_write(&key, now)
    }

    /// The write that brings `key`'s Event up to date, within the pod's budget.
    fn next_write(&mut self, key: &SeriesKey, now: Instant) -> Option<(SeriesKey, Write)> {
        let series = self.series.get(key)?;
        if series.name.is_some() && series.total == series.written {
            return None;
        }
        let pod = (key.0.clone(), key.1.clone());
        let budget = self.budgets.entry(pod).or_insert((now, 0));
        if now.duration_since(budget.0) >= Duration::from_mins(1) {
            *budget = (now, 0);
        }
        if budget.1 >= self.per_pod_per_minute {
            self.suppressed += 1;
            return None;
        }
        budget.1 += 1;
        let write = match &series.name {
            None => Write::Create {
                name: series.planned.clone(),
                namespace: key.0.clone(),
                pod: key.1.clone(),
                pod_uid: series.pod_uid.clone(),
                action: series.action.clone(),
                note: series.note.clone(),
                count: series.total,
            },
            Some(name) => Write::Patch {
                namespace: key.0.clone(),
                name: name.clone(),
                count: series.total,
            },
        };
        Some((key.clone(), write))
    }

    /// Writes for series whose counts are not written yet, within the budgets.
    pub fn pending(&mut self, now: Instant) -> Vec<(SeriesKey, Write)> {
        // Budgets of past minutes and idle series with nothing unwritten are forgotten.
        self.budgets
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_mins(1));
        let ttl = self.series_ttl;
        self.series.retain(|_, s| {
            now.duration_since(s.last_seen) < ttl || s.name.is_none() || s.total > s.written
        });
        let keys: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| s.name.is_none() || s.total > s.written)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .filter_map(|k| self.next_write(k, now))
            .collect()
    }

    /// The write of `key` succeeded (`name`: the Event it wrote) or the Event is gone (None: the
    /// next write creates a new one).
    pub fn written(&mut self, key: &SeriesKey, name: Option<String>, count: u64, now: Instant) {
        if let Some(series) = self.series.get_mut(key) {
            if let Some(name) = name {
                series.name = Some(name);
                series.written = count;
                series.last_write = Some(now);
            } else {
                series.name = None;
                series.planned.clear();
                series.written = 0;
            }
        }
    }

    /// Every series with an Event owes its count again (see [`Poster::rewrite_all`]).
    pub fn unwritten(&mut self) {
        for series in self.series.values_mut() {
            if series.name.is_some() {
                series.written = 0;
            }
        }
    }

    fn forget_idle(&mut self, now: Instant) {
        let ttl = self.series_ttl;
        self.series
            .retain(|_, s| now.duration_since(s.last_seen) < ttl || s.total > s.written);
        if self.series.len() >= MAX_SERIES {
            self.series.clear();
        }
        self.budgets
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_mins(1));
    }
}

fn action_name(action: Action) -> String {
    match action {
        Action::Kill => "Kill",
        Action::Deny => "Deny",
        Action::Alert => "Alert",
    }
    .to_owned()
}

fn pod_uid(alert: &AlertLine) -> Option<String> {
    let EventLine::Event { event, .. } = &alert.event;
    match event.attribution.as_deref() {
        Some(Attribution::Pod(meta)) => meta.pod_uid.clone(),
        _ => None,
    }
}

/// The Event's note: policy, rule, action, comm, prot (at most 1 kB).
fn note(alert: &AlertLine) -> String {
    let EventLine::Event { event, .. } = &alert.event;
    let mut text = format!(
        "policy {} rule {} action {} ({} mode)",
        alert.policy,
        alert.rule,
        alert.action.as_str(),
        alert.mode.as_str()
    );
    if let Some(container) = &alert.container {
        let _ = write!(text, " container={container}");
    }
    let _ = write!(
        text,
        ": {} comm={} pid={} prot={} flags={} length={}",
        event.syscall.as_str(),
        event.comm,
        event.pid,
        names::prot_names(event.args.prot),
        names::flags_names(event.args.flags),
        event.args.length
    );
    if let Some(file) = &event.file {
        let _ = write!(text, " file={}", file.path);
    }
    if text.len() > 1000 {
        let mut end = 1000;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Post Events for the alerts `hub` publishes from now on, until the hub closes (after the
/// alerts flushed at shutdown). Writes over the rate limit are counted in `metrics`.
pub fn start(
    client: Client,
    hub: &Arc<Hub>,
    metrics: Arc<Metrics>,
    config: EventsConfig,
) -> Result<tokio::task::JoinHandle<()>, EventsError> {
    let filter = RecordFilter::new(None, &[RecordKind::Alerts as i32]).map_err(|_| {
        EventsError::Subscribe {
            source: SubscribeError::Closed,
        }
    })?;
    let mut subscription = hub
        .subscribe(filter, None)
        .map_err(|source| EventsError::Subscribe { source })?
        .items();
    let mut poster = Poster::new(client, config, metrics);
    Ok(tokio::spawn(
        async move {
            let mut flush = tokio::time::interval(FLUSH_INTERVAL);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    item = subscription.next() => {
                        let Some(item) = item else { break };
                        match item {
                            Item::Alert(published) => poster.alert(&published.alert).await,
                            Item::Loss { count, .. } => tracing::warn!(count, "alerts missed by the Kubernetes Events poster (queue full)"),
                            _ => {}
                        }
                    }
                    _ = flush.tick() => poster.flush().await,
                }
            }
            // The hub closed: write what is still unwritten, within the budgets.
            poster.flush().await;
        }
        .instrument(tracing::info_span!("kube_events")),
    ))
}

/// Writes the planner's Events.
pub(crate) struct Poster {
    client: Client,
    config: EventsConfig,
    planner: Planner,
    metrics: Arc<Metrics>,
}

impl Poster {
    pub(crate) fn new(client: Client, config: EventsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            planner: Planner::new(config.per_pod_per_minute, config.series_ttl),
            config,
            metrics,
        }
    }

    /// Name the Events of series starting from now on `POD.SUFFIX` (see [`Planner::name_suffix`]).
    pub(crate) fn name_series(&mut self, suffix: String) {
        self.planner.name_suffix = Some(suffix);
    }

    async fn alert(&mut self, alert: &AlertLine) {
        self.alert_at(alert, Instant::now()).await;
    }

    /// Count `alert`, seen at `now`, and write what it calls for.
    pub(crate) async fn alert_at(&mut self, alert: &AlertLine, now: Instant) {
        let before = self.planner.suppressed;
        let write = self.planner.alert(alert, now);
        self.count_suppressed(before);
        if let Some((key, write)) = write {
            self.write(&key, write).await;
        }
    }

    /// Count `alert` as the previous writer did, writing nothing: its Events exist (named as
    /// [`Planner::name_suffix`] says, for the ones it created).
    pub(crate) fn replayed(&mut self, alert: &AlertLine, now: Instant) {
        if let Some((key, write)) = self.planner.alert(alert, now) {
            let (name, count) = match write {
                Write::Create { name, count, .. } | Write::Patch { name, count, .. } => {
                    (name, count)
                }
            };
            self.planner.written(&key, Some(name), count, now);
        }
    }

    /// After a replay: write every known series' count once more (the previous writer may
    /// have stopped before writing the last ones; a write sets the count, so it is idempotent).
    pub(crate) fn rewrite_all(&mut self) {
        self.planner.unwritten();
    }

    async fn flush(&mut self) {
        self.flush_at(Instant::now()).await;
    }

    /// Write what the series still owe, within the budgets.
    pub(crate) async fn flush_at(&mut self, now: Instant) {
        let before = self.planner.suppressed;
        let writes = self.planner.pending(now);
        self.count_suppressed(before);
        for (key, write) in writes {
            self.write(&key, write).await;
        }
    }

    fn count_suppressed(&self, before: u64) {
        let n = self.planner.suppressed - before;
        if n > 0 {
            self.metrics.kube_events_suppressed(n);
        }
    }

    async fn write(&mut self, key: &SeriesKey, write: Write) {
        let now = Timestamp::now();
        let (namespace, result, count) = match &write {
            Write::Create {
                name,
                namespace,
                pod,
                pod_uid,
                action,
                note,
                count,
            } => {
                let name = name.clone();
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(MicroTime(now)),
                    action: Some(action.clone()),
                    reason: Some(REASON.into()),
                    note: Some(note.clone()),
                    type_: Some("Warning".into()),
                    regarding: Some(ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.clone()),
                        name: Some(pod.clone()),
                        uid: pod_uid.clone(),
                        ..ObjectReference::default()
                    }),
                    reporting_controller: Some(self.config.controller.clone()),
                    reporting_instance: Some(self.config.instance.clone()),
                    series: (*count >= 2).then(|| EventSeries {
                        count: i32::try_from(*count).unwrap_or(i32::MAX),
                        last_observed_time: MicroTime(now),
                    }),
                    ..Event::default()
                };
                let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
                let mut result =
                    tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &event))
                        .await
                        .map(|r| r.map(|_| name.clone()));
                if let Ok(Err(kube::Error::Api(status))) = &result
                    && status.code == 409
                {
                    // Created by the previous writer (a name that does not depend on who
                    // writes): bring its count up to date instead; a count of 1 is what it
                    // says already (a series count is at least 2).
                    result = if *count < 2 {
                        Ok(Ok(name))
                    } else {
                        tokio::time::timeout(
                            WRITE_TIMEOUT,
                            api.patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&series_patch(*count, now)),
                            ),
                        )
                        .await
                        .map(|r| r.map(|_| name))
                    };
                }
                (namespace.clone(), result, *count)
            }
            Write::Patch {
                namespace,
                name,
                count,
            } => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
                let result = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    api.patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&series_patch(*count, now)),
                    ),
                )
                .await
                .map(|r| r.map(|_| name.clone()));
                (namespace.clone(), result, *count)
            }
        };
        match result {
            Ok(Ok(name)) => {
                self.metrics.kube_event_written();
                self.planner.written(key, Some(name), count, Instant::now());
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                // The Event expired or was deleted: the next write starts a new one.
                tracing::debug!(%namespace, "the Event of a series is gone; starting a new one");
                self.planner.written(key, None, 0, Instant::now());
            }
            Ok(Err(error)) => {
                self.metrics.kube_event_failed();
                tracing::warn!(%namespace, %error, "cannot post the Kubernetes Event for an alert");
            }
            Err(_) => {
                self.metrics.kube_event_failed();
                tracing::warn!(%namespace, "posting the Kubernetes Event for an alert timed out");
            }
        }
    }
}

/// The merge patch that sets an Event's series count.
fn series_patch(count: u64, now: Timestamp) -> serde_json::Value {
    serde_json::json!({"series": {
        "count": i32::try_from(count).unwrap_or(i32::MAX),
        "lastObservedTime": MicroTime(now),
    }})
}

#[cfg(test)]
mod apiserver_tests;
#[cfg(test)]
mod tests;
