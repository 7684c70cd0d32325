//! Policy evaluation on the backbone, shared between replicas: partitioned by node.
//!
//! A node's events are on subject `mapsentry.events.<p>.<node>`, `<p>` one of the stream's
//! partitions. Each partition has a lease (`eval.<p>`, [`super::lease`]); its holder reads the
//! partition's subjects in stream order from the lease's floor, evaluates every call and
//! aggregates the matches per (pod, policy, rule), as the single collector does
//! ([`mapsentry_policy::Aggregator`]). A pod's calls come from one node, so its alerts are
//! aggregated in one place, whichever replica ingested them. Replicas share the partitions
//! fairly (each takes up to its share of the live replicas, gives up the excess one at a
//! time), and a replica that dies has its partitions taken over after the lease's ttl.
//!
//! Nothing lost, nothing doubled, across a takeover:
//! - Each alert series has its own subject in the alerts stream; an update is published with
//!   compare-and-set on that subject and says `through`, the last event cursor its cumulative
//!   count includes. The new holder carries each series on from its last update
//!   ([`mapsentry_policy::Aggregator::restore`]) and skips the calls at or below `through`.
//! - The lease's floor is renewed with the oldest call whose match is not published yet (in a
//!   dedup window, or deferred by the rate limit), so a new holder re-reads from there: every
//!   call is either in a published count or read again.
//! - A compare-and-set refused on a series subject means another replica is evaluating the
//!   partition: this one stops at once (it never overwrites).

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::LastRawMessageErrorKind,
};
use mapsentry_policy::{
    Action, Aggregator, AlertLine, CallerScope, EnforceAction, Match, MmapEvent, Mode, PolicySet,
    alert::{AlertKey, Reported},
    eval_context,
    time::now_ns,
};
use mapsentry_proto::{convert, v1};
use prost::Message as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{
    Backbone, Streams,
    lease::{Held, Leases, Renewal},
    subscribe::next,
    wire::{self, Cursor, StoredAlert, StoredBatch},
};
use crate::{
    alerts::{AlertConfig, Policies},
    metrics::{Metrics, ViolationLabels},
    rate_limit::PerKeyLimiter,
};

/// How far a partition's evaluation stands: everything before `floor + 1` is accounted for in
/// published alerts; `position` is the last message read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub floor: u64,
    pub position: u64,
}

/// Evaluate this replica's share of the partitions until `stop` turns true; then publish what
/// the aggregations hold and give the leases up.
pub fn start(
    backbone: Arc<Backbone>,
    policies: Policies,
    metrics: Arc<Metrics>,
    config: AlertConfig,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move { manage(backbone, policies, metrics, config, stop).await }
            .instrument(tracing::info_span!("evaluation")),
    )
}

/// A partition this replica evaluates.
struct Owned {
    held: Held,
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Stopped>>,
}

/// Why an evaluator stopped on its own.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error(
        "another replica updated one of the partition's alert series: it evaluates the partition"
    )]
    Overlap,
    #[error("reading the events stream: {0}")]
    Read(String),
}

async fn manage(
    backbone: Arc<Backbone>,
    policies: Policies,
    metrics: Arc<Metrics>,
    config: AlertConfig,
    mut stop: watch::Receiver<bool>,
) {
    let streams = tokio::select! {
        streams = backbone.wait_set_up() => streams.clone(),
        () = super::stopped(&mut stop) => return,
    };
    let ttl = backbone.config.lease_ttl;
    let mut leases = Leases::new(
        streams.leases.clone(),
        backbone.config.replica_id.clone(),
        ttl,
    );
    let partitions = streams.partitions;
    // Replicas start their search at different partitions, so they rarely race for one.
    let offset = (wire::fnv1a(&[leases.me().as_bytes()]) % u64::from(partitions)) as u32;
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = super::stopped(&mut stop) => break,
        }
        leases.heartbeat().await;
        // Renew what is held; drop what is lost or whose evaluator stopped.
        let mut dropped = Vec::new();
        for (&p, o) in &mut owned {
            if o.task.is_finished() {
                dropped.push((p, false));
                continue;
            }
            let progress = *o.progress.borrow();
            match leases
                .renew(&mut o.held, progress.floor, progress.position)
                .await
            {
                Renewal::Lost => dropped.push((p, false)),
                Renewal::Failed if !o.held.valid(ttl) => {
                    tracing::warn!(
                        partition = p,
                        "partition lease not renewed within half its ttl; stopping its evaluation"
                    );
                    dropped.push((p, false));
                }
                _ => {}
            }
        }
        for (p, _) in dropped {
            if let Some(o) = owned.remove(&p) {
                if o.task.is_finished() {
                    if let Ok(Err(reason)) = o.task.await {
                        tracing::warn!(partition = p, %reason, "partition evaluation stopped");
                    }
                } else {
                    o.task.abort();
                }
                metrics_partition_gone(&backbone, p);
            }
        }
        let share =
            partitions.div_ceil(u32::try_from(leases.members().await).unwrap_or(1).max(1)) as usize;
        if owned.len() < share {
            for i in 0..partitions {
                if owned.len() >= share {
                    break;
                }
                let p = (offset + i) % partitions;
                if owned.contains_key(&p) {
                    continue;
                }
                match leases.try_acquire(&lease_key(p)).await {
                    Ok(Some(held)) => {
                        let o = start_partition(
                            &backbone,
                            &streams,
                            p,
                            held,
                            policies.clone(),
                            Arc::clone(&metrics),
                            config,
                        );
                        owned.insert(p, o);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::debug!(partition = p, %error, "partition lease"),
                }
            }
        } else if owned.len() > share {
            // One at a time, so the others keep their aggregations while replicas join.
            if let Some(&p) = owned.keys().max() {
                let o = owned.remove(&p).expect("a key of the map");
                tracing::info!(
                    partition = p,
                    share,
                    "giving a partition up to another replica"
                );
                give_up(&leases, o).await;
                metrics_partition_gone(&backbone, p);
            }
        }
        backbone.metrics.partitions_owned.set(owned.len() as i64);
    }
    // Stopping: every evaluator publishes what it holds, then its lease goes.
    for (p, o) in owned.drain() {
        give_up(&leases, o).await;
        metrics_partition_gone(&backbone, p);
    }
    backbone.metrics.partitions_owned.set(0);
    leases.leave().await;
}

fn metrics_partition_gone(backbone: &Backbone, partition: u32) {
    backbone.metrics.clear_pending(&format!("eval-{partition}"));
}

fn lease_key(partition: u32) -> String {
    format!("eval.{partition}")
}

/// Stop `o`'s evaluator after it has published what it holds, and release its lease with its
/// final progress.
async fn give_up(leases: &Leases, o: Owned) {
    o.stop.send_replace(true);
    let finished = tokio::time::timeout(Duration::from_secs(10), o.task).await;
    if finished.is_err() {
        tracing::warn!(key = %o.held.key, "a partition's evaluation did not stop within 10 s; its lease expires instead");
        return;
    }
    let progress = *o.progress.borrow();
    leases
        .release(o.held, progress.floor, progress.position)
        .await;
}

fn start_partition(
    backbone: &Arc<Backbone>,
    streams: &Streams,
    partition: u32,
    held: Held,
    policies: Policies,
    metrics: Arc<Metrics>,
    config: AlertConfig,
) -> Owned {
    let start = held.previous.floor + 1;
    let replay_until = held.previous.position;
    tracing::info!(
        partition,
        from = start,
        replay_until,
        "evaluating a partition"
    );
    let (progress_tx, progress) = watch::channel(Progress {
        floor: held.previous.floor,
        position: held.previous.position.max(held.previous.floor),
    });
    let (stop_tx, stop) = watch::channel(false);
    let evaluator = Evaluator {
        backbone: Arc::clone(backbone),
        streams: streams.clone(),
        partition,
        metrics,
        aggregator: Aggregator::new(
            u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            config.max_keys,
        ),
        scopes: HashMap::new(),
        max_scopes: config.max_scopes.max(1),
        limiter: PerKeyLimiter::new(config.per_pod_rate, config.max_keys.max(1)),
        deferred: HashMap::new(),
        series: HashMap::new(),
        processed: start - 1,
        replay_until,
        backlog: false,
        newest_call: 0,
        progress: progress_tx,
    };
    let task = tokio::spawn(
        evaluator
            .run(start, policies, config.flush_interval, stop)
            .instrument(tracing::info_span!("partition", p = partition)),
    );
    Owned {
        held,
        progress,
        stop: stop_tx,
        task,
    }
}

/// What this evaluator knows of one alert series.
#[derive(Debug, Clone)]
struct Series {
    subject: String,
    /// Sequence of the series' last message in the alerts stream (0: none).
    last: u64,
    /// Event cursors at or below this are counted in the series' published updates.
    through: u64,
    /// The newest event cursor counted in the aggregation.
    latest: u64,
    /// The oldest event cursor counted but not published yet.
    unpublished: Option<u64>,
    node: Arc<str>,
}

/// (node, namespace, pod) that alert updates are rate limited by.
type PodKey = (String, Option<String>, Option<String>);

struct Evaluator {
    backbone: Arc<Backbone>,
    streams: Streams,
    partition: u32,
    metrics: Arc<Metrics>,
    aggregator: Aggregator,
    scopes: HashMap<u64, CallerScope>,
    max_scopes: usize,
    limiter: PerKeyLimiter<PodKey>,
    /// The newest deferred update of each series, and the cursor its count goes through.
    deferred: HashMap<AlertKey, (AlertLine, u64)>,
    series: HashMap<AlertKey, Series>,
    /// The last events message evaluated.
    processed: u64,
    /// Messages up to this were read by the previous holder (re-reading them is a replay).
    replay_until: u64,
    /// Whether messages were pending after the last one read: a backlog is being read (after a
    /// takeover, or a stall), so the aggregation is judged at [`Self::newest_call`].
    backlog: bool,
    /// The time of the newest call read (ns since the epoch).
    newest_call: u64,
    progress: watch::Sender<Progress>,
}

impl Evaluator {
    async fn run(
        mut self,
        start: u64,
        mut policies: Policies,
        flush_interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let consumer = self
            .streams
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: wire::partition_filter(self.partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                max_expires: Duration::from_secs(5),
                ..pull::OrderedConfig::default()
            })
            .await
            .map_err(|e| Stopped::Read(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| Stopped::Read(e.to_string()))?;
        let mut flush = tokio::time::interval(flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut set = policies.borrow_and_update().clone();
        loop {
            tokio::select! {
                message = next(Some(&mut messages)) => {
                    let Some(message) = message else {
                        return Err(Stopped::Read("the consumer ended".into()));
                    };
                    let Ok(info) = message.info() else { continue };
                    let (sequence, pending) = (info.stream_sequence, info.pending);
                    self.backbone.metrics.set_pending(&format!("eval-{}", self.partition), pending);
                    self.backlog = pending > 0;
                    if sequence <= self.processed {
                        continue;
                    }
                    if sequence <= self.replay_until {
                        self.backbone.metrics.replayed.inc();
                    }
                    self.message(set.as_deref(), sequence, &message.payload).await?;
                    self.processed = sequence;
                }
                changed = policies.changed() => {
                    if changed.is_err() {
                        policies = watch::channel(set.clone()).1;
                        continue;
                    }
                    set.clone_from(&policies.borrow_and_update());
                    self.scopes.clear();
                }
                _ = flush.tick() => {
                    let now = now_ns();
                    self.publish_deferred(now).await?;
                    let clock = aggregation_clock(self.backlog, self.newest_call, now);
                    for line in self.aggregator.flush(clock) {
                        self.publish_line(line).await?;
                    }
                    self.forget_settled();
                    self.report_progress();
                }
                () = super::stopped(&mut stop) => {
                    // Giving the partition up: what is aggregated goes out now.
                    for line in self.aggregator.drain() {
                        self.publish_line(line).await?;
                    }
                    let deferred: Vec<_> = self.deferred.drain().collect();
                    for (key, (line, through)) in deferred {
                        self.publish(&key, line, through).await?;
                    }
                    self.report_progress();
                    return Ok(());
                }
            }
        }
    }

    /// Forget the series with nothing unpublished once there are many (a later match reads the
    /// series' last update again).
    fn forget_settled(&mut self) {
        if self.series.len() > self.aggregator.len().saturating_mul(2) + 1024 {
            let deferred = &self.deferred;
            self.series
                .retain(|key, s| s.unpublished.is_some() || deferred.contains_key(key));
        }
    }

    /// Everything before the oldest unpublished call is accounted for.
    fn report_progress(&self) {
        let oldest = self
            .series
            .values()
            .filter_map(|s| s.unpublished)
            .min()
            .map(|c| Cursor::decode(c).sequence);
        let floor = oldest.map_or(self.processed, |s| s.saturating_sub(1).min(self.processed));
        self.progress.send_replace(Progress {
            floor,
            position: self.processed,
        });
    }

    async fn message(
        &mut self,
        set: Option<&PolicySet>,
        sequence: u64,
        payload: &[u8],
    ) -> Result<(), Stopped> {
        let Ok(stored) = StoredBatch::decode(payload) else {
            tracing::warn!(
                sequence,
                "an events stream message that is not a stored batch"
            );
            return Ok(());
        };
        if stored.restart.is_some() {
            return Ok(());
        }
        let Some(set) = set else {
            self.metrics.evaluated(stored.events.len() as u64);
            return Ok(());
        };
        let node: Arc<str> = stored.node.as_str().into();
        for (index, wire_event) in stored.events.iter().enumerate() {
            let cursor = Cursor::new(sequence, index as u32).encode();
            let event = match MmapEvent::try_from(wire_event) {
                Ok(event) => event,
                Err(error) => {
                    tracing::debug!(cursor, %error, "record not evaluated");
                    self.metrics.undecodable();
                    continue;
                }
            };
            self.metrics.evaluated(1);
            self.newest_call = self.newest_call.max(event.time_ns);
            let ctx = eval_context(&event);
            if self.scopes.len() >= self.max_scopes {
                self.scopes.clear();
            }
            let scope = self
                .scopes
                .entry(event.cgroup_id)
                .or_insert_with(|| set.scope(&ctx));
            let mut matches = Vec::new();
            set.evaluate_scoped(scope, &event, &ctx, &mut matches);
            let enforced = event.enforced.map(|e| match e.action {
                EnforceAction::Kill => Action::Kill,
                EnforceAction::Deny => Action::Deny,
            });
            for m in matches {
                let m = match (enforced, m.mode) {
                    (Some(action), Mode::Enforce) => Match { action, ..m },
                    _ => m,
                };
                let workload = ctx.workload.as_ref();
                let key = AlertKey {
                    namespace: workload.map(|w| w.namespace.clone()),
                    pod: workload.map(|w| w.pod.clone()),
                    policy: m.policy.clone(),
                    rule: m.rule.to_owned(),
                };
                self.load_series(&key, &m, &node, event.time_ns).await?;
                let series = self.series.get_mut(&key).expect("loaded above");
                if cursor <= series.through {
                    // Counted in an update published before (by this replica or the last one).
                    continue;
                }
                series.latest = cursor;
                series.unpublished.get_or_insert(cursor);
                self.metrics.violation(ViolationLabels {
                    namespace: workload.map(|w| w.namespace.clone()).unwrap_or_default(),
                    pod: workload.map(|w| w.pod.clone()).unwrap_or_default(),
                    policy: m.policy.to_string(),
                    rule: m.rule.to_owned(),
                    action: m.action.as_str().to_owned(),
                    mode: m.mode.as_str().to_owned(),
                });
                if let Some(line) = self.aggregator.record(&m, &event, &ctx) {
                    self.publish_line(line).await?;
                }
            }
        }
        Ok(())
    }

    /// Know `key`'s series: its subject's last update, from which the aggregation carries on.
    async fn load_series(
        &mut self,
        key: &AlertKey,
        m: &Match<'_>,
        node: &Arc<str>,
        now: u64,
    ) -> Result<(), Stopped> {
        if self.series.contains_key(key) {
            return Ok(());
        }
        let token = wire::series_token(
            key.namespace.as_deref(),
            key.pod.as_deref(),
            &key.policy.to_string(),
            &key.rule,
        );
        let subject = wire::alert_subject(self.partition, &token);
        let mut series = Series {
            subject: subject.clone(),
            last: 0,
            through: 0,
            latest: 0,
            unpublished: None,
            node: Arc::clone(node),
        };
        match self
            .streams
            .alerts
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => {
                series.last = message.sequence;
                if let Ok(stored) = StoredAlert::decode(message.payload.as_ref()) {
                    series.through = stored.through;
                    let reported = reported(&stored, message.time.unix_timestamp_nanos());
                    let count = reported.as_ref().map(|r| r.count);
                    let restored = reported.is_some_and(|reported| {
                        reported.mode == m.mode
                            && reported.action == m.action
                            && self.aggregator.restore(key.clone(), reported, now)
                    });
                    tracing::debug!(%subject, ?count, through = stored.through, restored, "a series' last update");
                }
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(Stopped::Read(format!("reading {subject}: {error}"))),
        }
        self.series.insert(key.clone(), series);
        Ok(())
    }

    /// Publish an aggregator's line for its series (now, or later if its pod is over the rate).
    async fn publish_line(&mut self, line: AlertLine) -> Result<(), Stopped> {
        let key = key_of(&line);
        let Some(series) = self.series.get(&key) else {
            return Ok(());
        };
        let through = series.latest;
        let pod = (
            series.node.to_string(),
            line.namespace.clone(),
            line.pod.clone(),
        );
        if !self.deferred.contains_key(&key) && self.limiter.allow(&pod, now_ns()) {
            return self.publish(&key, line, through).await;
        }
        self.metrics.alert_deferred();
        if self.deferred.insert(key, (line, through)).is_some() {
            self.metrics.alert_superseded();
        }
        Ok(())
    }

    async fn publish_deferred(&mut self, now: u64) -> Result<(), Stopped> {
        let keys: Vec<AlertKey> = self.deferred.keys().cloned().collect();
        for key in keys {
            let Some(series) = self.series.get(&key) else {
                self.deferred.remove(&key);
                continue;
            };
            let pod = (
                series.node.to_string(),
                key.namespace.clone(),
                key.pod.clone(),
            );
            if self.limiter.allow(&pod, now)
                && let Some((line, through)) = self.deferred.remove(&key)
            {
                self.publish(&key, line, through).await?;
            }
        }
        Ok(())
    }

    /// Store one update of `key`'s series, counting the calls through `through`.
    async fn publish(
        &mut self,
        key: &AlertKey,
        line: AlertLine,
        through: u64,
    ) -> Result<(), Stopped> {
        let Some(series) = self.series.get_mut(key) else {
            return Ok(());
        };
        let stored = StoredAlert {
            record: Some(convert::alert_record(&line, &series.node, 0)),
            through,
            first_seen_ns: parse_ns(&line.first_seen),
            last_seen_ns: parse_ns(&line.last_seen),
            partition: self.partition,
        };
        let message = PublishMessage::build()
            .payload(wire::encode(&stored))
            .message_id(format!(
                "{}/{}/{}",
                series.subject, stored.first_seen_ns, line.count
            ))
            .expected_last_subject_sequence(series.last)
            .header(wire::KIND_HEADER, "alert");
        let result = match self
            .backbone
            .context()
            .send_publish(series.subject.clone(), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        match result {
            Ok(ack) => {
                tracing::debug!(subject = %series.subject, count = line.count, through, expected = series.last, sequence = ack.sequence, duplicate = ack.duplicate, "an alert update published");
                series.last = ack.sequence;
                series.through = through;
                series.unpublished = (series.latest > through).then_some(through + 1);
                self.backbone.metrics.alerts_published.inc();
                Ok(())
            }
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                tracing::warn!(subject = %series.subject, "another replica updated this alert series: it evaluates this partition; stopping");
                Err(Stopped::Overlap)
            }
            Err(error) => {
                // Kept for the next flush; the floor stays below it meanwhile.
                tracing::warn!(subject = %series.subject, %error, "cannot publish an alert update; retrying");
                self.deferred.insert(key.clone(), (line, through));
                Ok(())
            }
        }
    }
}

/// The time an evaluator's aggregation windows are judged at. Live, the wall clock. While a
/// backlog is read (a new holder re-reading what the last one left, seconds old), the newest
/// call read, never past the wall clock: the backlog's calls are aggregated as they were when
/// they happened. Judged at the wall clock, a flush between two old batches would find the
/// series idle for longer than its window, publish it and forget it, and the next old call
/// would begin a second series at 1.
fn aggregation_clock(backlog: bool, newest_call: u64, wall: u64) -> u64 {
    if backlog { newest_call.min(wall) } else { wall }
}

/// The alert key of a line.
fn key_of(line: &AlertLine) -> AlertKey {
    let policy = match line.policy.split_once('/') {
        Some((namespace, name)) => mapsentry_policy::PolicyId {
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        },
        None => mapsentry_policy::PolicyId {
            namespace: None,
            name: line.policy.clone(),
        },
    };
    AlertKey {
        namespace: line.namespace.clone(),
        pod: line.pod.clone(),
        policy,
        rule: line.rule.clone(),
    }
}

/// What an update in the alerts stream says, to carry the series on.
fn reported(stored: &StoredAlert, published_ns: i128) -> Option<Reported> {
    let record = stored.record.as_ref()?;
    let line = AlertLine::try_from(record).ok()?;
    let sample = MmapEvent::try_from(record.event.as_ref()?).ok()?;
    let _: &v1::AlertRecord = record;
    Some(Reported {
        action: line.action,
        mode: line.mode,
        container: line.container,
        sample,
        first_seen: stored.first_seen_ns,
        last_seen: stored.last_seen_ns,
        count: line.count,
        last_report: u64::try_from(published_ns).unwrap_or(stored.last_seen_ns),
    })
}

/// ns since the Unix epoch of an RFC 3339 time (0 when unreadable).
fn parse_ns(text: &str) -> u64 {
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .map_or(0, |t| u64::try_from(t.as_nanosecond()).unwrap_or(0))
}

#[cfg(test)]
mod tests;
