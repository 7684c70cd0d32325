//! The collector's core: a bounded retention ring of event records with cursors, deduplication of
//! agent batches by (node, boot id, seq), per-node counters, and fan-out to subscribers.
//!
//! Ingest never waits for a subscriber: each live subscriber has a bounded queue that ingest fills
//! with `try_send`; when it is full the records it misses are counted and the subscriber gets one
//! loss notice with that exact count at the place of the gap, as soon as its queue has room again.
//! A subscription that resumes from a cursor first catches up from the ring in its own task (which
//! may wait for its client), then joins the live fan-out.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use mapsentry_proto::v1::{
    self, AlertRecord, EventRecord, LossReason, NodeStats, SubscribeResponse, subscribe_response,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::{
    filter::RecordFilter,
    log::{Log, LogConfig, LogError},
};

/// How many records a catch-up task copies out of the ring per lock.
const CATCH_UP_CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Records kept for resuming subscribers; the oldest are evicted beyond it.
    pub retention_events: usize,
    /// Records queued per subscriber before it counts as behind.
    pub subscriber_queue: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            retention_events: 1 << 20,
            subscriber_queue: 4096,
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
}

/// What became of one agent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored under cursors `first..first + count`.
    New { first: u64, count: u64 },
    /// This (node, boot id, seq) was stored before; nothing changed.
    Duplicate,
}

/// Hello of an agent stream, as the hub keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub node: String,
    pub boot_id: String,
    pub kernel: String,
    pub attach_mode: String,
}

/// One stored event: its cursor, the node that sent it, the event.
#[derive(Debug)]
pub struct Record {
    pub cursor: u64,
    pub node: Arc<str>,
    pub event: v1::Event,
}

impl Record {
    fn matches(&self, filter: &RecordFilter) -> bool {
        filter.matches(&self.node, &self.event)
    }

    fn to_wire(&self) -> EventRecord {
        EventRecord {
            cursor: self.cursor,
            node: self.node.to_string(),
            event: Some(self.event.clone()),
        }
    }
}

/// One queued item of a subscriber.
#[derive(Debug, Clone)]
enum Item {
    Record(Arc<Record>),
    Alert(Arc<AlertRecord>),
    Loss { count: u64, reason: LossReason },
    Started(v1::Started),
}

impl Item {
    fn into_response(self) -> SubscribeResponse {
        let item = match self {
            Self::Record(record) => subscribe_response::Item::Event(record.to_wire()),
            Self::Alert(alert) => subscribe_response::Item::Alert((*alert).clone()),
            Self::Loss { count, reason } => subscribe_response::Item::Loss(v1::LossNotice {
                count,
                reason: reason.into(),
            }),
            Self::Started(started) => subscribe_response::Item::Started(started),
        };
        SubscribeResponse { item: Some(item) }
    }
}

#[derive(Debug)]
struct Live {
    filter: Arc<RecordFilter>,
    tx: mpsc::Sender<Item>,
    /// Matching records that did not fit the queue since the last loss notice.
    missed: u64,
}

#[derive(Debug, Default)]
struct Node {
    info: AgentInfo,
    connections: u32,
    report: v1::LossReport,
    acked: u64,
    duplicate_batches: u64,
}

#[derive(Debug)]
struct State {
    ring: VecDeque<Arc<Record>>,
    next_cursor: u64,
    instance_first: u64,
    /// Highest stored seq per (node, boot id).
    seqs: HashMap<(String, String), u64>,
    nodes: BTreeMap<String, Node>,
    live: HashMap<u64, Live>,
    next_subscriber: u64,
    subscriber_losses: u64,
    closed: bool,
    /// Where batches are written before they are acked, if on disk.
    log: Option<Log>,
    /// The cursor the next alert gets.
    next_alert_cursor: u64,
    /// Where stored records go for policy evaluation, if anywhere.
    tap: Option<mpsc::Sender<Vec<Arc<Record>>>>,
    /// [`SubscriberHold`]s alive: a closed hub ends its live subscriptions when none is left.
    holds: usize,
}

impl State {
    fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.next_cursor, |r| r.cursor)
    }

    fn started(&self) -> v1::Started {
        v1::Started {
            oldest_cursor: self.ring.front().map_or(0, |r| r.cursor),
            next_cursor: self.next_cursor,
            instance_first_cursor: self.instance_first,
        }
    }
}

/// Shared by the ingest and observer services of one collector.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    closed: watch::Sender<bool>,
    /// Records not evaluated because the evaluation queue was full.
    tap_dropped: AtomicU64,
    /// Alerts published.
    alerts: AtomicU64,
}

impl Hub {
    /// A hub whose cursors start at the current time in microseconds since the Unix epoch, so
    /// that cursors keep growing across collector restarts as long as fewer than a million
    /// records a second were stored on average (else a resuming subscriber gets a clear
    /// "ahead" refusal), and stay below 2^53, exact as JSON numbers, until the year 2255.
    #[must_use]
    pub fn new(config: HubConfig) -> Arc<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self::with_first_cursor(config, now.max(1))
    }

    /// A hub whose first record gets cursor `first` (at least 1).
    #[must_use]
    pub fn with_first_cursor(config: HubConfig, first: u64) -> Arc<Self> {
        let first = first.max(1);
        let config = HubConfig {
            retention_events: config.retention_events.max(1),
            subscriber_queue: config.subscriber_queue.max(2),
        };
        Arc::new(Self {
            state: Mutex::new(State {
                ring: VecDeque::with_capacity(config.retention_events.min(1 << 16)),
                next_cursor: first,
                instance_first: first,
                seqs: HashMap::new(),
                nodes: BTreeMap::new(),
                live: HashMap::new(),
                next_subscriber: 0,
                subscriber_losses: 0,
                closed: false,
                log: None,
                next_alert_cursor: first,
                tap: None,
                holds: 0,
            }),
            closed: watch::Sender::new(false),
            tap_dropped: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            config,
        })
    }

    /// A hub that writes every batch to the retention log in `log.dir` before acking it, after
    /// reading back what the log holds: the retained records keep their cursors, and batches
    /// stored before are recognized when agents resend them.
    pub fn open(config: HubConfig, log: LogConfig) -> Result<Arc<Self>, LogError> {
        let (log, batches) = Log::open(log)?;
        let hub = match batches.first() {
            Some(first) => Self::with_first_cursor(config, first.first_cursor),
            None => Self::new(config),
        };
        let mut state = hub.lock();
        let state_ref = &mut *state;
        let mut replayed = 0u64;
        for batch in batches {
            let key = (batch.node.clone(), batch.boot_id.clone());
            let highest = state_ref.seqs.entry(key).or_insert(0);
            *highest = (*highest).max(batch.seq);
            if batch.first_cursor != state_ref.next_cursor {
                // Cursors are contiguous in the ring; a jump means older segments were deleted.
                state_ref.ring.clear();
                state_ref.next_cursor = batch.first_cursor;
            }
            let node: Arc<str> = batch.node.as_str().into();
            for event in batch.events {
                let record = Arc::new(Record {
                    cursor: state_ref.next_cursor,
                    node: Arc::clone(&node),
                    event,
                });
                state_ref.next_cursor += 1;
                if state_ref.ring.len() == hub.config.retention_events {
                    state_ref.ring.pop_front();
                }
                state_ref.ring.push_back(record);
                replayed += 1;
            }
        }
        state_ref.instance_first = state_ref
            .ring
            .front()
            .map_or(state_ref.next_cursor, |r| r.cursor);
        state_ref.log = Some(log);
        tracing::info!(
            replayed,
            retained = state_ref.ring.len(),
            next_cursor = state_ref.next_cursor,
            "retention log read back"
        );
        drop(state);
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state behind (every update is
        // completed before anything that can panic), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stop: live subscriptions end after draining their queues (once no [`SubscriberHold`] is
    /// left), catch-ups and agent streams end.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if state.holds == 0 {
            state.live.clear();
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

    pub fn agent_connected(&self, info: &AgentInfo) {
        let mut state = self.lock();
        let node = state.nodes.entry(info.node.clone()).or_default();
        if node.info.boot_id != info.boot_id {
            // A new agent process: its counters start over.
            *node = Node::default();
        }
        node.info = info.clone();
        node.connections += 1;
    }

    pub fn agent_disconnected(&self, node: &str) {
        if let Some(node) = self.lock().nodes.get_mut(node) {
            node.connections = node.connections.saturating_sub(1);
        }
    }

    /// Keep the latest cumulative counters an agent reported.
    pub fn agent_report(&self, agent: &AgentInfo, report: v1::LossReport) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.get_mut(&agent.node)
            && node.info.boot_id == agent.boot_id
        {
            node.report = report;
        }
    }

    /// Store one agent batch (already validated) unless (node, boot id, seq) was stored before,
    /// and hand its records to live subscribers. With a retention log, the batch is written
    /// there first; a failed write stores nothing.
    pub fn store_batch(
        &self,
        agent: &AgentInfo,
        seq: u64,
        events: Vec<v1::Event>,
    ) -> Result<Stored, LogError> {
        let mut state_guard = self.lock();
        let state = &mut *state_guard;
        let key = (agent.node.clone(), agent.boot_id.clone());
        if seq <= state.seqs.get(&key).copied().unwrap_or(0) {
            state
                .nodes
                .entry(agent.node.clone())
                .or_default()
                .duplicate_batches += 1;
            return Ok(Stored::Duplicate);
        }
        if let Some(log) = &mut state.log {
            log.append(&agent.node, &agent.boot_id, seq, state.next_cursor, &events)?;
        }
        let node = state.nodes.entry(agent.node.clone()).or_default();
        state.seqs.insert(key, seq);
        node.acked += events.len() as u64;
        let first = state.next_cursor;
        let count = events.len() as u64;
        let node_name: Arc<str> = agent.node.as_str().into();
        let mut tapped = state.tap.as_ref().map(|_| Vec::with_capacity(events.len()));
        for event in events {
            let record = Arc::new(Record {
                cursor: state.next_cursor,
                node: Arc::clone(&node_name),
                event,
            });
            state.next_cursor += 1;
            if state.ring.len() == self.config.retention_events {
                state.ring.pop_front();
            }
            state.ring.push_back(Arc::clone(&record));
            fan_out(&mut state.live, &mut state.subscriber_losses, &record);
            if let Some(tapped) = &mut tapped {
                tapped.push(record);
            }
        }
        let tap = state.tap.clone();
        drop(state_guard);
        // Evaluation happens in its own task; ingest never waits for it.
        if let (Some(tap), Some(tapped)) = (tap, tapped)
            && !tapped.is_empty()
        {
            let n = tapped.len() as u64;
            if tap.try_send(tapped).is_err() {
                self.tap_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(Stored::New { first, count })
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
        let next = state.next_cursor;
        let start = match since {
            None => next,
            Some(since) if since >= next => return Err(SubscribeError::Ahead { since, next }),
            // A cursor of an earlier collector run: everything this run stored is newer.
            Some(since) => (since + 1).max(state.instance_first),
        };
        if start < state.oldest() {
            return Err(SubscribeError::TooOld {
                since: since.unwrap_or(0),
                oldest: state.oldest(),
            });
        }
        let (tx, rx) = mpsc::channel(self.config.subscriber_queue);
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        let filter = Arc::new(filter);
        tx.try_send(Item::Started(state.started()))
            .map_err(|_| SubscribeError::Closed)?;
        if start == next {
            state.live.insert(
                id,
                Live {
                    filter,
                    tx,
                    missed: 0,
                },
            );
        } else {
            drop(state);
            let hub = Arc::clone(self);
            tokio::spawn(
                async move { hub.catch_up(id, filter, start, tx).await }.in_current_span(),
            );
        }
        Ok(Subscription {
            rx,
            hub: Arc::clone(self),
            id,
        })
    }

    /// Copy retained records from `pos` on to `tx` (waiting for the client as needed), then join
    /// the live fan-out at the head of the ring.
    async fn catch_up(
        &self,
        id: u64,
        filter: Arc<RecordFilter>,
        mut pos: u64,
        tx: mpsc::Sender<Item>,
    ) {
        let mut chunk = Vec::with_capacity(CATCH_UP_CHUNK);
        loop {
            let mut gap = 0;
            {
                let mut state = self.lock();
                if state.closed {
                    return;
                }
                let oldest = state.oldest();
                if pos < oldest {
                    gap = oldest - pos;
                    pos = oldest;
                }
                if gap == 0 && pos == state.next_cursor {
                    state.live.insert(
                        id,
                        Live {
                            filter,
                            tx,
                            missed: 0,
                        },
                    );
                    return;
                }
                let from = (pos - oldest) as usize;
                let to = (from + CATCH_UP_CHUNK).min(state.ring.len());
                chunk.extend(
                    state
                        .ring
                        .range(from..to)
                        .filter(|r| r.matches(&filter))
                        .cloned(),
                );
                pos = oldest + to as u64;
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
                if tx.send(Item::Record(record)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The loss notice a subscriber is owed, taken only when its queue is empty: the records
    /// still queued came before the gap. (Checked under the lock, as ingest only queues under it.)
    fn take_missed(&self, id: u64, rx: &mpsc::Receiver<Item>) -> u64 {
        let mut state = self.lock();
        if !rx.is_empty() {
            return 0;
        }
        state
            .live
            .get_mut(&id)
            .map_or(0, |live| std::mem::take(&mut live.missed))
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().live.remove(&id);
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

    /// Alerts published so far.
    #[must_use]
    pub fn alerts_published(&self) -> u64 {
        self.alerts.load(Ordering::Relaxed)
    }

    /// Give `alert` the next alert cursor and offer it to the live subscribers that asked for
    /// alerts and whose filter it passes. Returns its cursor.
    pub fn publish_alert(&self, mut alert: AlertRecord) -> u64 {
        let mut state = self.lock();
        let state = &mut *state;
        alert.cursor = state.next_alert_cursor;
        state.next_alert_cursor += 1;
        let alert = Arc::new(alert);
        let losses = &mut state.subscriber_losses;
        state.live.retain(|_, sub| {
            if !sub.filter.matches_alert(&alert.node, &alert) {
                return !sub.tx.is_closed();
            }
            offer(sub, losses, Item::Alert(Arc::clone(&alert)))
        });
        self.alerts.fetch_add(1, Ordering::Relaxed);
        alert.cursor
    }

    /// Per-node counters and the retention window.
    #[must_use]
    pub fn stats(&self) -> v1::StatsResponse {
        let state = self.lock();
        let nodes = state
            .nodes
            .iter()
            .map(|(name, node)| NodeStats {
                node: name.clone(),
                boot_id: node.info.boot_id.clone(),
                kernel: node.info.kernel.clone(),
                attach_mode: node.info.attach_mode.clone(),
                connected: node.connections > 0,
                captured: node.report.captured,
                shipped: node.report.shipped,
                acked: node.acked,
                dropped: node.report.dropped.clone(),
                duplicate_batches: node.duplicate_batches,
            })
            .collect();
        v1::StatsResponse {
            nodes,
            oldest_cursor: state.ring.front().map_or(0, |r| r.cursor),
            next_cursor: state.next_cursor,
            retained: state.ring.len() as u64,
            subscribers: u32::try_from(state.live.len()).unwrap_or(u32::MAX),
            subscriber_losses: state.subscriber_losses,
        }
    }
}

/// Offer one record to every live subscriber whose filter it passes, without waiting.
fn fan_out(live: &mut HashMap<u64, Live>, losses: &mut u64, record: &Arc<Record>) {
    live.retain(|_, sub| {
        if !record.matches(&sub.filter) {
            return !sub.tx.is_closed();
        }
        offer(sub, losses, Item::Record(Arc::clone(record)))
    });
}

/// Queue `item` for `sub` (after the loss notice it is owed), or count it as missed. False when
/// the subscriber is gone.
fn offer(sub: &mut Live, losses: &mut u64, item: Item) -> bool {
    if sub.missed > 0 {
        match sub.tx.try_send(Item::Loss {
            count: sub.missed,
            reason: LossReason::SubscriberBehind,
        }) {
            Ok(()) => sub.missed = 0,
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.missed += 1;
                *losses += 1;
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    match sub.tx.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            sub.missed += 1;
            *losses += 1;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
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
            state.live.clear();
        }
    }
}

/// The stream of one subscriber: its queue, then the loss notice it is owed when the queue runs
/// empty. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    hub: Arc<Hub>,
    id: u64,
}

impl futures_core::Stream for Subscription {
    type Item = SubscribeResponse;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<SubscribeResponse>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(item.map(Item::into_response)),
            // Pending also comes from tokio's cooperative budget with records still queued.
            Poll::Pending => match self.hub.take_missed(self.id, &self.rx) {
                0 => Poll::Pending,
                count => Poll::Ready(Some(
                    Item::Loss {
                        count,
                        reason: LossReason::SubscriberBehind,
                    }
                    .into_response(),
                )),
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests;
