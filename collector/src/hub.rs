//! The collector's core, shared by ingest, the observer and evaluation: agent batches are
//! deduplicated ([`crate::nodes`]), made durable when there is a retention log
//! ([`crate::retention::Durable`]), kept in the retention [`Window`] under contiguous cursors,
//! and fanned out to live subscribers ([`crate::fanout`]) and to policy evaluation (the tap).
//!
//! Ingest never waits for a subscriber, nor for the disk on an async thread: [`Hub::store`]
//! writes the retention log from a blocking thread, outside the lock that subscribers and stats
//! take. A subscription that resumes from a cursor first catches up from the window in its own
//! task (which may wait for its client), then joins the live fan-out.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use mapsentry_policy::AlertLine;
use mapsentry_proto::v1::{self, LossReason};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::{
    runtime::RuntimeFlavor,
    sync::{mpsc, watch},
};
use tracing::Instrument as _;

use crate::{
    fanout::{FanOut, QueueBytes},
    filter::RecordFilter,
    jetstream::{Backbone, publish::Published, subscribe::Since},
    nodes::{Nodes, NodesFull, Seen, Totals},
    retention::{Batch, DropCause, Durable, Log, LogConfig, LogError, Recovery, Window},
};
pub use crate::{
    fanout::{Item, Items, PublishedAlert, Subscription},
    nodes::AgentInfo,
    retention::{Attributed, Record},
};

/// How many records a catch-up task copies out of the window per lock.
const CATCH_UP_CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Records kept for resuming subscribers; the oldest are evicted beyond it.
    pub retention_events: usize,
    /// What the kept records may cost ([`crate::budgets::record_bytes`]); the oldest are evicted
    /// beyond it.
    pub retention_bytes: usize,
    /// Records queued per subscriber before it counts as behind.
    pub subscriber_queue: usize,
    /// Bytes queued per subscriber before it counts as behind.
    pub subscriber_queue_bytes: usize,
    /// Nodes tracked (their agents' dedup state and counters) at most.
    pub max_nodes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            retention_events: 1 << 20,
            retention_bytes: 512 << 20,
            subscriber_queue: 4096,
            subscriber_queue_bytes: 16 << 20,
            max_nodes: crate::nodes::DEFAULT_MAX_NODES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("cursor {since} is older than retention: the oldest retained cursor is {oldest}; resume with since={} or later", oldest - 1)]
    TooOld { since: u64, oldest: u64 },
    #[error("cursor {since} is ahead of the newest stored record (the next cursor is {next})")]
    Ahead { since: u64, next: u64 },
    #[error("the collector is shutting down")]
    Closed,
    #[error(
        "alert cursor {since} is ahead of the newest stored alert (the next alert cursor is {next})"
    )]
    AlertsAhead { since: u64, next: u64 },
    #[error(
        "alerts_since: this collector keeps no alerts (alerts are live only without --jetstream); subscribe without it"
    )]
    AlertsNotKept,
    #[error("the event store is unavailable: {reason}")]
    Unavailable { reason: String },
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Backbone(#[from] crate::jetstream::publish::PublishError),
}

/// What became of one agent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored under cursors `first..first + count`.
    New { first: u64, count: u64 },
    /// This (node, boot id, seq) was stored before; nothing changed.
    Duplicate,
}

#[derive(Debug)]
struct State {
    window: Window,
    nodes: Nodes,
    fanout: FanOut,
    closed: bool,
    /// The cursor the next alert gets.
    next_alert_cursor: u64,
    /// Where stored records go for policy evaluation, if anywhere.
    tap: Option<mpsc::Sender<Vec<Arc<Record>>>>,
    /// [`SubscriberHold`]s alive: a closed hub ends its live subscriptions when none is left.
    holds: usize,
}

/// Shared by the ingest and observer services of one collector.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    /// Where batches are made durable, if anywhere. Its lock is taken before the state's and
    /// held across the write, so batches are written in cursor order.
    durable: Option<Mutex<Box<dyn Durable>>>,
    closed: watch::Sender<bool>,
    /// Records not evaluated because the evaluation queue was full.
    tap_dropped: AtomicU64,
    /// Alerts published.
    alerts: AtomicU64,
    /// Subscriptions refused because the collector served its maximum.
    refused_subscribers: AtomicU64,
    /// With `--jetstream`: where batches are stored and subscriptions read (the window, the
    /// retention log and the local fan-out of records and alerts are then unused).
    backbone: Option<Arc<Backbone>>,
    /// Batches the durable store failed to store (each refused to its agent, which resends it).
    store_failures: AtomicU64,
    /// What reading the retention log back found (empty without one).
    recovery: Recovery,
    /// Seconds from a batch's arrival to its records offered to subscribers and evaluation
    /// (observed by ingest).
    ingest_latency: Histogram,
}

/// Buckets of [`Hub::ingest_latency`]: 50 µs to ~1.6 s, doubling.
fn ingest_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent state behind (every update is completed
    // before anything that can panic), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// A hub whose cursors start at the current time in microseconds since the Unix epoch, so
    /// that cursors keep growing across collector restarts as long as fewer than a million
    /// records a second were stored on average (else a resuming subscriber gets a clear
    /// "ahead" refusal), and stay below 2^53, exact as JSON numbers, until the year 2255.
    #[must_use]
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Self::build(config, first_cursor_now(), None))
    }

    /// A hub whose first record gets cursor `first` (at least 1).
    #[must_use]
    pub fn with_first_cursor(config: HubConfig, first: u64) -> Arc<Self> {
        Arc::new(Self::build(config, first, None))
    }

    fn build(config: HubConfig, first: u64, durable: Option<Box<dyn Durable>>) -> Self {
        let first = first.max(1);
        let config = HubConfig {
            retention_events: config.retention_events.max(1),
            subscriber_queue: config.subscriber_queue.max(2),
            ..config
        };
        Self {
            state: Mutex::new(State {
                window: Window::new(config.retention_events, config.retention_bytes, first),
                nodes: Nodes::new(config.max_nodes),
                fanout: FanOut::default(),
                closed: false,
                next_alert_cursor: first,
                tap: None,
                holds: 0,
            }),
            durable: durable.map(Mutex::new),
            closed: watch::Sender::new(false),
            tap_dropped: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            refused_subscribers: AtomicU64::new(0),
            ingest_latency: ingest_latency_histogram(),
            store_failures: AtomicU64::new(0),
            recovery: Recovery::default(),
            backbone: None,
            config,
        }
    }

    /// A hub whose batches go to the JetStream `backbone`, and whose subscriptions read it.
    #[must_use]
    pub fn with_backbone(config: HubConfig, backbone: Arc<Backbone>) -> Arc<Self> {
        let mut hub = Self::build(config, 1, None);
        hub.backbone = Some(backbone);
        Arc::new(hub)
    }

    /// The JetStream backbone, with `--jetstream`.
    #[must_use]
    pub fn backbone(&self) -> Option<&Arc<Backbone>> {
        self.backbone.as_ref()
    }

    /// A hub that writes every batch to the retention log in `log.dir` before acking it, after
    /// reading back what the log holds: the retained records keep their cursors, and batches
    /// stored before are recognized when agents resend them.
    pub fn open(config: HubConfig, log: LogConfig) -> Result<Arc<Self>, LogError> {
        let (log, batches) = Log::open(log)?;
        let first = batches
            .first()
            .map_or_else(first_cursor_now, |b| b.first_cursor);
        let mut recovery = log.recovery().clone();
        let mut hub = Self::build(config, first, Some(Box::new(log)));
        let state = hub.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut replayed = 0u64;
        let mut node: Arc<str> = "".into();
        for batch in batches {
            // Batches an older collector accepted with names beyond today's limits stay out.
            if crate::budgets::check_stored(&batch.node, &batch.boot_id).is_err() {
                let dropped = recovery.dropped.entry(DropCause::Limits).or_default();
                dropped.batches += 1;
                dropped.events += batch.events.len() as u64;
                continue;
            }
            state
                .nodes
                .replayed(&batch.node, &batch.boot_id, batch.seq, &batch.events);
            // Cursors are contiguous in the window; a jump means older segments were deleted.
            state.window.continue_at(batch.first_cursor);
            if *node != *batch.node {
                node = batch.node.as_str().into();
            }
            for event in batch.events {
                state.window.push(&node, Attributed::from(event));
                replayed += 1;
            }
        }
        state.nodes.read_back();
        state.window.start_instance();
        tracing::info!(
            replayed,
            retained = state.window.len(),
            next_cursor = state.window.next_cursor(),
            "retention log read back"
        );
        if let Some(limits) = recovery.dropped.get(&DropCause::Limits) {
            tracing::warn!(
                batches = limits.batches,
                events = limits.events,
                "retention log: batches with node names or boot ids beyond the limits were not read back"
            );
        }
        hub.recovery = recovery;
        Ok(Arc::new(hub))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Seconds from an agent batch's arrival to its records offered to subscribers and
    /// evaluation: ingest observes it, `/metrics` exposes it.
    #[must_use]
    pub fn ingest_latency(&self) -> &Histogram {
        &self.ingest_latency
    }

    /// Stop: live subscriptions end after draining their queues (once no [`SubscriberHold`] is
    /// left), catch-ups and agent streams end.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if state.holds == 0 {
            state.fanout.clear();
        }
        drop(state);
        self.closed.send_replace(true);
    }

    /// Keep live subscriptions open after [`Hub::close`] until the returned guard is dropped: the
    /// policy evaluation holds one so that the alerts it flushes at shutdown still reach the
    /// subscribers (and the Kubernetes Events poster) before their streams end.
    #[must_use]
    pub fn hold_subscribers(self: &Arc<Self>) -> SubscriberHold {
        self.lock().holds += 1;
        SubscriberHold {
            hub: Arc::clone(self),
        }
    }

    /// Resolves once `close` was called.
    pub async fn closed(&self) {
        let _ = self.closed_watch().wait_for(|closed| *closed).await;
    }

    /// Whether `close` was called, as a watch.
    #[must_use]
    pub fn closed_watch(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// An agent stream began. When the node's agent has a new boot id, the previous process is
    /// gone and the node's capture had a gap: every live subscriber whose node filter passes
    /// gets an [`v1::AgentRestart`] notice, and the node's `agent_restarts` grows. Returns the
    /// notice, if this was a restart; a new node beyond the most nodes tracked is refused.
    pub fn agent_connected(&self, info: &AgentInfo) -> Result<Option<v1::AgentRestart>, NodesFull> {
        let mut state = self.lock();
        let Some(notice) = state.nodes.connected(info)? else {
            return Ok(None);
        };
        if self.backbone.is_some() {
            // Announced to every replica's subscribers through the stream, in its order.
            return Ok(Some(notice));
        }
        tracing::warn!(node = %notice.node, previous_boot_id = %notice.previous_boot_id,
            boot_id = %notice.boot_id, previous_captured = notice.previous_captured,
            previous_acked = notice.previous_acked, "the agent restarted: its capture had a gap");
        state.fanout.restart(&Arc::new(notice.clone()));
        Ok(Some(notice))
    }

    pub fn agent_disconnected(&self, node: &str) {
        self.lock().nodes.disconnected(node);
    }

    /// Keep the latest cumulative counters an agent reported.
    pub fn agent_report(&self, agent: &AgentInfo, report: v1::LossReport) {
        self.lock().nodes.report(agent, report);
    }

    /// [`Hub::store_batch`] for async callers. With a retention log the write may block (a full
    /// disk queue, the page cache's dirty-page throttling), so it never holds a runtime worker:
    /// on a multi-thread runtime `block_in_place` hands this worker's scheduler to another
    /// thread for the write's duration (and takes it back after a short one), on a current-thread
    /// runtime the write goes to a blocking thread. Only the streams waiting on the log wait.
    /// (`block_in_place` rather than `spawn_blocking` on both: handing each batch to a blocking
    /// thread and waking the task again cost ~5 context switches per batch; without it ingest
    /// with the log does 1.09x the events per CPU-second, BENCHMARKS.md.)
    pub async fn store(
        self: &Arc<Self>,
        agent: &AgentInfo,
        seq: u64,
        events: Vec<Attributed>,
    ) -> Result<Stored, StoreError> {
        if let Some(backbone) = &self.backbone {
            return self.publish(backbone, agent, seq, events).await;
        }
        if self.durable.is_none() {
            return Ok(self.store_batch(agent, seq, events)?);
        }
        if tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            return Ok(tokio::task::block_in_place(|| {
                self.store_batch(agent, seq, events)
            })?);
        }
        let hub = Arc::clone(self);
        let agent = agent.clone();
        match tokio::task::spawn_blocking(move || hub.store_batch(&agent, seq, events)).await {
            Ok(stored) => Ok(stored?),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// [`Hub::store`] on the backbone: the per-node dedup state answers for what this replica
    /// stored itself; the node's chain in the stream for the rest ([`crate::jetstream::publish`]).
    async fn publish(
        &self,
        backbone: &Backbone,
        agent: &AgentInfo,
        seq: u64,
        events: Vec<Attributed>,
    ) -> Result<Stored, StoreError> {
        let (captured, uncertain) = {
            let mut state = self.lock();
            let uncertain = match state.nodes.seen(agent, seq) {
                Seen::Duplicate => return Ok(Stored::Duplicate),
                Seen::Uncertain => true,
                Seen::New => false,
            };
            (state.nodes.captured(&agent.node), uncertain)
        };
        // The backbone's messages carry each event whole.
        let events: Vec<v1::Event> = events
            .into_iter()
            .map(|e| {
                let (event, attribution) = e.into_parts();
                v1::Event {
                    attribution: attribution.map(|a| a.get().clone()),
                    ..event
                }
            })
            .collect();
        let published = backbone
            .publish_batch(agent, seq, &events, captured)
            .await?;
        let mut state = self.lock();
        Ok(match published {
            Published::New { first, count } => {
                state
                    .nodes
                    .stored(agent, seq, events.iter().map(|e| e.time_ns), uncertain);
                Stored::New { first, count }
            }
            Published::Duplicate => {
                // Stored before, by another replica: this one's dedup state learns it, and
                // counts the duplicate as it counts its own.
                state.nodes.replayed(&agent.node, &agent.boot_id, seq, &[]);
                let _ = state.nodes.seen(agent, seq);
                Stored::Duplicate
            }
        })
    }

    /// Start a subscription resuming events after `since.events` and alerts after
    /// `since.alerts`: from the backbone with `--jetstream`, else as [`Hub::subscribe`] (which
    /// keeps no alerts to resume).
    pub async fn subscribe_from(
        self: &Arc<Self>,
        filter: RecordFilter,
        since: Since,
    ) -> Result<Subscription, SubscribeError> {
        let Some(backbone) = &self.backbone else {
            if since.alerts.is_some() {
                return Err(SubscribeError::AlertsNotKept);
            }
            return self.subscribe(filter, since.events);
        };
        let (tx, rx) = mpsc::channel(self.config.subscriber_queue);
        let id = {
            let mut state = self.lock();
            if state.closed {
                return Err(SubscribeError::Closed);
            }
            state.fanout.next_id()
        };
        backbone
            .subscribe(Arc::new(filter), since, tx, self.closed_watch())
            .await?;
        // Bounded by the channel's count; the backbone's records carry no byte cost.
        Ok(Subscription::new(
            rx,
            QueueBytes::new(usize::MAX),
            Arc::clone(self),
            id,
        ))
    }

    /// Store one agent batch (already validated) unless (node, boot id, seq) was stored before,
    /// and hand its records to live subscribers. With a retention log, the batch is written
    /// there first (here, on the calling thread: async callers use [`Hub::store`]); a failed
    /// write stores nothing.
    pub fn store_batch(
        &self,
        agent: &AgentInfo,
        seq: u64,
        events: Vec<Attributed>,
    ) -> Result<Stored, LogError> {
        let Some(durable) = &self.durable else {
            let mut state = self.lock();
            let seen = state.nodes.seen(agent, seq);
            if seen == Seen::Duplicate {
                return Ok(Stored::Duplicate);
            }
            return Ok(self.commit(state, agent, seq, events, seen));
        };
        // One writer at a time: the cursors read here are the ones the batch gets.
        let mut durable = lock(durable);
        let (first_cursor, seen) = {
            let mut state = self.lock();
            let seen = state.nodes.seen(agent, seq);
            if seen == Seen::Duplicate {
                return Ok(Stored::Duplicate);
            }
            (state.window.next_cursor(), seen)
        };
        durable
            .append(&Batch {
                node: &agent.node,
                boot_id: &agent.boot_id,
                seq,
                first_cursor,
                events: &events,
            })
            .inspect_err(|_| {
                self.store_failures.fetch_add(1, Ordering::Relaxed);
            })?;
        Ok(self.commit(self.lock(), agent, seq, events, seen))
    }

    /// Keep a batch that is new (and durable, with a log): count it, put its records in the
    /// window, offer them to subscribers and to evaluation.
    fn commit(
        &self,
        mut state: MutexGuard<'_, State>,
        agent: &AgentInfo,
        seq: u64,
        events: Vec<Attributed>,
        seen: Seen,
    ) -> Stored {
        let state_ref = &mut *state;
        state_ref.nodes.stored(
            agent,
            seq,
            events.iter().map(|e| e.event().time_ns),
            seen == Seen::Uncertain,
        );
        let first = state_ref.window.next_cursor();
        let count = events.len() as u64;
        let node: Arc<str> = agent.node.as_str().into();
        let mut tapped = state_ref
            .tap
            .as_ref()
            .map(|_| Vec::with_capacity(events.len()));
        for event in events {
            let record = state_ref.window.push(&node, event);
            state_ref.fanout.record(&record);
            if let Some(tapped) = &mut tapped {
                tapped.push(record);
            }
        }
        let tap = state_ref.tap.clone();
        drop(state);
        // Evaluation happens in its own task; ingest never waits for it.
        if let (Some(tap), Some(tapped)) = (tap, tapped)
            && !tapped.is_empty()
        {
            let n = tapped.len() as u64;
            if tap.try_send(tapped).is_err() {
                self.tap_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        Stored::New { first, count }
    }

    /// The `since` cursor that starts a subscription at the first retained event at or after
    /// `time_ns` ([`Window::first_at_or_after`]); None (live only) when no event is that new.
    #[must_use]
    pub fn since_time(&self, time_ns: u64) -> Option<u64> {
        let state = self.lock();
        let first = state.window.first_at_or_after(time_ns)?;
        // `since` names the cursor before the first one wanted; the first of this run has none
        // before it in the window, and subscribe starts there for any older cursor.
        Some(first.saturating_sub(1))
    }

    /// Start a subscription: a `Started` item, then the retained records after `since` (if
    /// given), then live records, all passing `filter`.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: RecordFilter,
        since: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let mut state = self.lock();
        if state.closed {
            return Err(SubscribeError::Closed);
        }
        let next = state.window.next_cursor();
        let start = match since {
            None => next,
            Some(since) if since >= next => return Err(SubscribeError::Ahead { since, next }),
            // A cursor of an earlier collector run: everything this run stored is newer.
            Some(since) => (since + 1).max(state.window.instance_first()),
        };
        let oldest = state.window.oldest();
        if start < oldest {
            return Err(SubscribeError::TooOld {
                since: since.unwrap_or(0),
                oldest,
            });
        }
        let (tx, rx) = mpsc::channel(self.config.subscriber_queue);
        let bytes = QueueBytes::new(self.config.subscriber_queue_bytes);
        let id = state.fanout.next_id();
        let filter = Arc::new(filter);
        tx.try_send(Item::Started(state.window.started()))
            .map_err(|_| SubscribeError::Closed)?;
        if start == next {
            state.fanout.join(id, filter, tx, Arc::clone(&bytes));
        } else {
            drop(state);
            let hub = Arc::clone(self);
            let queued = Arc::clone(&bytes);
            tokio::spawn(
                async move { hub.catch_up(id, filter, start, tx, queued).await }.in_current_span(),
            );
        }
        Ok(Subscription::new(rx, bytes, Arc::clone(self), id))
    }

    /// Copy retained records from `pos` on to `tx` (waiting for the client as needed), then join
    /// the live fan-out at the head of the window.
    async fn catch_up(
        &self,
        id: u64,
        filter: Arc<RecordFilter>,
        mut pos: u64,
        tx: mpsc::Sender<Item>,
        bytes: Arc<QueueBytes>,
    ) {
        let mut chunk = Vec::with_capacity(CATCH_UP_CHUNK);
        loop {
            let mut gap = 0;
            {
                let mut state = self.lock();
                if state.closed {
                    return;
                }
                let oldest = state.window.oldest();
                if pos < oldest {
                    gap = oldest - pos;
                    pos = oldest;
                }
                if gap == 0 && pos == state.window.next_cursor() {
                    state.fanout.join(id, filter, tx, bytes);
                    return;
                }
                pos = state.window.read(
                    pos,
                    CATCH_UP_CHUNK,
                    |r| filter.matches(&r.node, &r.event, r.attribution()),
                    &mut chunk,
                );
            }
            if gap > 0
                && tx
                    .send(Item::Loss {
                        count: gap,
                        reason: LossReason::Retention,
                    })
                    .await
                    .is_err()
            {
                return;
            }
            for record in chunk.drain(..) {
                tokio::select! {
                    () = bytes.take(record.bytes) => {}
                    () = tx.closed() => return,
                }
                if tx.send(Item::Record(record)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The loss notice a subscriber is owed, taken only when its queue is empty: the records
    /// still queued came before the gap. (Checked under the lock, as the fan-out only queues
    /// under it.)
    pub(crate) fn take_missed(&self, id: u64, rx: &mpsc::Receiver<Item>) -> u64 {
        let mut state = self.lock();
        if !rx.is_empty() {
            return 0;
        }
        state.fanout.take_missed(id)
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        self.lock().fanout.leave(id);
    }

    /// Hand every record stored from now on, in batches, to `tap` (policy evaluation). A full
    /// tap loses the batch, counted in [`Hub::evaluation_dropped`].
    pub fn set_tap(&self, tap: mpsc::Sender<Vec<Arc<Record>>>) {
        self.lock().tap = Some(tap);
    }

    /// Records not evaluated because the evaluation queue was full.
    #[must_use]
    pub fn evaluation_dropped(&self) -> u64 {
        self.tap_dropped.load(Ordering::Relaxed)
    }

    /// Count a subscription refused because the collector served its maximum.
    pub fn count_refused_subscriber(&self) {
        self.refused_subscribers.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscriptions refused because the collector served its maximum.
    #[must_use]
    pub fn refused_subscribers(&self) -> u64 {
        self.refused_subscribers.load(Ordering::Relaxed)
    }

    /// Batches the durable store failed to store.
    #[must_use]
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    /// What reading the retention log back found (empty without one).
    #[must_use]
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Alerts published so far.
    #[must_use]
    pub fn alerts_published(&self) -> u64 {
        self.alerts.load(Ordering::Relaxed)
    }

    /// Give `alert` (raised by a call on `node`) the next alert cursor and offer it to the live
    /// subscribers that asked for alerts and whose filter it passes. Returns its cursor.
    pub fn publish_alert(&self, node: &Arc<str>, alert: AlertLine) -> u64 {
        let mut state = self.lock();
        let cursor = state.next_alert_cursor;
        state.next_alert_cursor += 1;
        state.fanout.alert(&Arc::new(PublishedAlert {
            cursor,
            node: Arc::clone(node),
            alert,
        }));
        self.alerts.fetch_add(1, Ordering::Relaxed);
        cursor
    }

    /// Per-node counters and the retention window.
    #[must_use]
    pub fn stats(&self) -> v1::StatsResponse {
        self.stats_within(true, usize::MAX)
    }

    /// Per-node counters (with `nodes`; else they are all omitted) and the retention window, in
    /// at most `max_bytes` encoded: the nodes beyond are left out and counted.
    #[must_use]
    pub fn stats_within(&self, nodes: bool, max_bytes: usize) -> v1::StatsResponse {
        use prost::Message as _;
        let state = self.lock();
        let all = if nodes {
            state.nodes.stats()
        } else {
            Vec::new()
        };
        let nodes_omitted = if nodes {
            0
        } else {
            u32::try_from(state.nodes.totals().nodes).unwrap_or(u32::MAX)
        };
        let mut response = if let Some(backbone) = &self.backbone {
            // The stream's cursors; `retained` counts its messages (batches), not events.
            let (events, _) = backbone.cached_states();
            v1::StatsResponse {
                nodes: Vec::new(),
                oldest_cursor: if events.messages > 0 {
                    crate::jetstream::wire::Cursor::new(events.first, 0).encode()
                } else {
                    0
                },
                next_cursor: crate::jetstream::wire::Cursor::new(events.last + 1, 0).encode(),
                retained: events.messages,
                subscribers: u32::try_from(backbone.subscribers()).unwrap_or(u32::MAX),
                subscriber_losses: 0,
                nodes_omitted,
            }
        } else {
            v1::StatsResponse {
                nodes: Vec::new(),
                oldest_cursor: state.window.started().oldest_cursor,
                next_cursor: state.window.next_cursor(),
                retained: state.window.len() as u64,
                subscribers: u32::try_from(state.fanout.len()).unwrap_or(u32::MAX),
                subscriber_losses: state.fanout.losses(),
                nodes_omitted,
            }
        };
        drop(state);
        // Room for the omitted count itself.
        let mut room = max_bytes.saturating_sub(response.encoded_len() + 8);
        let count = all.len();
        for node in all {
            let bytes = prost::encoding::message::encoded_len(1, &node);
            if bytes > room {
                break;
            }
            room -= bytes;
            response.nodes.push(node);
        }
        let omitted = count - response.nodes.len();
        if omitted > 0 {
            response.nodes_omitted = u32::try_from(omitted).unwrap_or(u32::MAX);
        }
        response
    }

    /// Sums over the nodes, the retention window and the subscribers, for the metrics.
    #[must_use]
    pub fn totals(&self) -> HubTotals {
        let state = self.lock();
        HubTotals {
            nodes: state.nodes.totals(),
            retained: state.window.len() as u64,
            subscribers: state.fanout.len() as u64,
            subscriber_losses: state.fanout.losses(),
        }
    }
}

/// What the metrics read of a hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubTotals {
    pub nodes: Totals,
    pub retained: u64,
    pub subscribers: u64,
    pub subscriber_losses: u64,
}

fn first_cursor_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

/// Keeps a closing hub's live subscriptions open while it lives ([`Hub::hold_subscribers`]).
#[derive(Debug)]
pub struct SubscriberHold {
    hub: Arc<Hub>,
}

impl Drop for SubscriberHold {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.holds = state.holds.saturating_sub(1);
        if state.holds == 0 && state.closed {
            state.fanout.clear();
        }
    }
}

#[cfg(test)]
mod tests;
