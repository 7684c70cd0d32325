//! Fan-out: every live subscriber has a bounded queue that the collector fills without waiting
//! ([`FanOut::offer`]), bounded in items and in bytes ([`QueueBytes`]); when it is full the
//! records it misses are counted and the subscriber gets one loss notice with that exact count at
//! the place of the gap, as soon as its queue has room again. Items are model values (records, alerts, notices) until a subscriber's stream encodes
//! them for the wire ([`Item::into_response`]); in-process subscribers (the Kubernetes Events
//! poster, `mapsentry run`'s alert printer) read them as they are ([`Subscription::items`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use mapsentry_policy::AlertLine;
use mapsentry_proto::{
    convert,
    v1::{self, LossReason, SubscribeResponse, subscribe_response},
};
use tokio::sync::{Notify, mpsc};

use crate::{filter::RecordFilter, hub::Hub, retention::Record};

/// One alert update as the collector publishes it: the aggregator's alert line, the node whose
/// call raised it, and its alert cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedAlert {
    pub cursor: u64,
    pub node: Arc<str>,
    pub alert: AlertLine,
}

/// One queued item of a subscriber.
#[derive(Debug, Clone)]
pub enum Item {
    Record(Arc<Record>),
    Alert(Arc<PublishedAlert>),
    Restart(Arc<v1::AgentRestart>),
    Loss { count: u64, reason: LossReason },
    Started(v1::Started),
}

/// What a queued alert or restart notice counts against a subscriber's bytes (they are not
/// measured one by one: an alert holds one event of at most [`crate::budgets::MAX_EVENT_BYTES`]).
const NOTICE_BYTES: usize = 2 << 10;

impl Item {
    /// What the item counts against its subscriber's queue bytes.
    #[must_use]
    pub fn bytes(&self) -> usize {
        match self {
            Self::Record(record) => record.bytes,
            Self::Alert(_) | Self::Restart(_) => NOTICE_BYTES,
            Self::Loss { .. } | Self::Started(_) => 0,
        }
    }

    /// The item as the observer sends it.
    #[must_use]
    pub fn into_response(self) -> SubscribeResponse {
        let item = match self {
            Self::Record(record) => subscribe_response::Item::Event(record.to_wire()),
            Self::Alert(published) => subscribe_response::Item::Alert(convert::alert_record(
                &published.alert,
                &published.node,
                published.cursor,
            )),
            Self::Restart(restart) => subscribe_response::Item::AgentRestart((*restart).clone()),
            Self::Loss { count, reason } => subscribe_response::Item::Loss(v1::LossNotice {
                count,
                reason: reason.into(),
            }),
            Self::Started(started) => subscribe_response::Item::Started(started),
        };
        SubscribeResponse { item: Some(item) }
    }
}

/// The bytes queued for one subscriber, at most `max` (an item that fits nothing else queued
/// is always let in, so no record is too large to deliver).
#[derive(Debug)]
pub struct QueueBytes {
    used: AtomicUsize,
    max: usize,
    room: Notify,
}

impl QueueBytes {
    #[must_use]
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
            room: Notify::new(),
        })
    }

    /// Take `bytes` if they fit now.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + bytes <= self.max).then_some(used + bytes)
            })
            .is_ok()
    }

    /// Take `bytes`, waiting for room.
    pub async fn take(&self, bytes: usize) {
        loop {
            let room = self.room.notified();
            if self.try_take(bytes) {
                return;
            }
            room.await;
        }
    }

    /// Give back `bytes` (an item left the queue).
    pub fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            // Saturating: items that never took bytes (a backbone subscription's) give none back.
            let _ = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    Some(used.saturating_sub(bytes))
                });
            self.room.notify_waiters();
        }
    }

    /// Bytes queued now.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Live {
    filter: Arc<RecordFilter>,
    tx: mpsc::Sender<Item>,
    bytes: Arc<QueueBytes>,
    /// Matching records that did not fit the queue since the last loss notice.
    missed: u64,
}

/// The live subscribers.
#[derive(Debug, Default)]
pub struct FanOut {
    live: HashMap<u64, Live>,
    next_id: u64,
    /// Records skipped for slow subscribers, in total.
    losses: u64,
}

impl FanOut {
    /// A new subscriber id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Subscriber `id` joins the live fan-out.
    pub fn join(
        &mut self,
        id: u64,
        filter: Arc<RecordFilter>,
        tx: mpsc::Sender<Item>,
        bytes: Arc<QueueBytes>,
    ) {
        self.live.insert(
            id,
            Live {
                filter,
                tx,
                bytes,
                missed: 0,
            },
        );
    }

    pub fn leave(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// End every live subscription (their queues still drain).
    pub fn clear(&mut self) {
        self.live.clear();
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    #[must_use]
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// The loss notice subscriber `id` is owed, taken.
    pub fn take_missed(&mut self, id: u64) -> u64 {
        self.live
            .get_mut(&id)
            .map_or(0, |live| std::mem::take(&mut live.missed))
    }

    /// Offer one record to every live subscriber whose filter it passes, without waiting.
    pub fn record(&mut self, record: &Arc<Record>) {
        self.offer(
            |filter| filter.matches(&record.node, &record.event, record.attribution()),
            || Item::Record(Arc::clone(record)),
        );
    }

    /// Offer an alert to the subscribers that asked for alerts and whose filter it passes.
    pub fn alert(&mut self, alert: &Arc<PublishedAlert>) {
        self.offer(
            |filter| filter.matches_alert(&alert.node, &alert.alert),
            || Item::Alert(Arc::clone(alert)),
        );
    }

    /// Offer an agent restart notice to the subscribers of its node.
    pub fn restart(&mut self, notice: &Arc<v1::AgentRestart>) {
        self.offer(
            |filter| filter.matches_node(&notice.node),
            || Item::Restart(Arc::clone(notice)),
        );
    }

    /// Queue `item()` for every subscriber that `wanted` passes; forget the gone ones.
    fn offer(&mut self, wanted: impl Fn(&RecordFilter) -> bool, item: impl Fn() -> Item) {
        let losses = &mut self.losses;
        self.live.retain(|_, sub| {
            if !wanted(&sub.filter) {
                return !sub.tx.is_closed();
            }
            offer(sub, losses, item())
        });
    }
}

/// Queue `item` for `sub` (after the loss notice it is owed), or count it as missed. False when
/// the subscriber is gone.
fn offer(sub: &mut Live, losses: &mut u64, item: Item) -> bool {
    // The item must fit the queue's bytes before the loss notice it follows goes in.
    let bytes = item.bytes();
    if !sub.bytes.try_take(bytes) {
        sub.missed += 1;
        *losses += 1;
        return !sub.tx.is_closed();
    }
    let missed = |sub: &mut Live, losses: &mut u64| {
        sub.bytes.give_back(bytes);
        sub.missed += 1;
        *losses += 1;
        true
    };
    if sub.missed > 0 {
        match sub.tx.try_send(Item::Loss {
            count: sub.missed,
            reason: LossReason::SubscriberBehind,
        }) {
            Ok(()) => sub.missed = 0,
            Err(mpsc::error::TrySendError::Full(_)) => return missed(sub, losses),
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    match sub.tx.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => missed(sub, losses),
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The stream of one subscriber, as the observer sends it: its queue, then the loss notice it is
/// owed when the queue runs empty. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    bytes: Arc<QueueBytes>,
    hub: Arc<Hub>,
    id: u64,
}

impl Subscription {
    pub(crate) fn new(
        rx: mpsc::Receiver<Item>,
        bytes: Arc<QueueBytes>,
        hub: Arc<Hub>,
        id: u64,
    ) -> Self {
        Self { rx, bytes, hub, id }
    }

    /// The same subscription as model values, for subscribers in this process.
    #[must_use]
    pub fn items(self) -> Items {
        Items(self)
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => {
                if let Some(item) = &item {
                    self.bytes.give_back(item.bytes());
                }
                Poll::Ready(item)
            }
            // Pending also comes from tokio's cooperative budget with records still queued.
            Poll::Pending => match self.hub.take_missed(self.id, &self.rx) {
                0 => Poll::Pending,
                count => Poll::Ready(Some(Item::Loss {
                    count,
                    reason: LossReason::SubscriberBehind,
                })),
            },
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = SubscribeResponse;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<SubscribeResponse>> {
        self.poll_item(cx).map(|item| item.map(Item::into_response))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

/// A [`Subscription`] read as model values.
#[derive(Debug)]
pub struct Items(Subscription);

impl futures_core::Stream for Items {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.0.poll_item(cx)
    }
}
