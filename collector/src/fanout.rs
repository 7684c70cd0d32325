//! Fan-out: every live subscriber has a bounded queue that the collector fills without waiting
//! ([`FanOut::offer`]); when it is full the records it misses are counted and the subscriber gets
//! one loss notice with that exact count at the place of the gap, as soon as its queue has room
//! again. Items are model values (records, alerts, notices) until a subscriber's stream encodes
//! them for the wire ([`Item::into_response`]); in-process subscribers (the Kubernetes Events
//! poster, `mapsentry run`'s alert printer) read them as they are ([`Subscription::items`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use mapsentry_policy::AlertLine;
use mapsentry_proto::{
    convert,
    v1::{self, LossReason, SubscribeResponse, subscribe_response},
};
use tokio::sync::mpsc;

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

impl Item {
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

#[derive(Debug)]
struct Live {
    filter: Arc<RecordFilter>,
    tx: mpsc::Sender<Item>,
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
    pub fn join(&mut self, id: u64, filter: Arc<RecordFilter>, tx: mpsc::Sender<Item>) {
        self.live.insert(
            id,
            Live {
                filter,
                tx,
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
            |filter| filter.matches(&record.node, &record.event),
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

/// The stream of one subscriber, as the observer sends it: its queue, then the loss notice it is
/// owed when the queue runs empty. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    hub: Arc<Hub>,
    id: u64,
}

impl Subscription {
    pub(crate) fn new(rx: mpsc::Receiver<Item>, hub: Arc<Hub>, id: u64) -> Self {
        Self { rx, hub, id }
    }

    /// The same subscription as model values, for subscribers in this process.
    #[must_use]
    pub fn items(self) -> Items {
        Items(self)
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(item),
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
