//! `Subscribe` on the backbone: any replica serves any subscriber from the streams.
//!
//! A subscription reads the events stream (and, for alerts, the alerts stream) with its own
//! ordered consumer, starting where its cursor says, and applies its filter here, so only what
//! passes reaches the client; a slow client slows its own consumer (JetStream's flow control),
//! never ingest or another subscriber. Event cursors are `(sequence, index)`
//! ([`wire::Cursor`]), alert cursors the alerts stream's sequence: both mean the same on every
//! replica and across restarts.
//!
//! A subscription reads every subject, so a jump in the sequences it is delivered means messages
//! were deleted before it read them (retention): it gets one loss notice with their events, as
//! counted by the [`ledger`](super::ledger) (and, for alerts, the number of alert messages, one
//! alert each).

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt as _;
use mapsentry_policy::AlertLine;
use mapsentry_proto::v1::{self, LossReason};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use super::{
    Backbone,
    wire::{self, Cursor, StoredAlert, StoredBatch},
};
use crate::{
    fanout::{Item, PublishedAlert},
    filter::RecordFilter,
    hub::SubscribeError,
    retention::{Record, SharedAttribution},
};

/// Where a subscription resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Since {
    /// After this event cursor (None: from now on).
    pub events: Option<u64>,
    /// After this alert cursor (None: from now on).
    pub alerts: Option<u64>,
}

/// First and last sequence of a stream and its message count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    pub first: u64,
    pub last: u64,
    pub messages: u64,
}

impl From<&async_nats::jetstream::stream::State> for StreamState {
    fn from(state: &async_nats::jetstream::stream::State) -> Self {
        Self {
            first: state.first_sequence,
            last: state.last_sequence,
            messages: state.messages,
        }
    }
}

impl Backbone {
    /// The current state of the events and alerts streams.
    pub async fn stream_states(&self) -> Result<(StreamState, StreamState), SubscribeError> {
        let streams = self.streams().map_err(unavailable)?;
        let events = streams.events.get_info().await.map_err(unavailable)?;
        let alerts = streams.alerts.get_info().await.map_err(unavailable)?;
        Ok(((&events.state).into(), (&alerts.state).into()))
    }

    /// Start subscription `filter` from `since`: the `Started` item, then what passes the
    /// filter, queued on `tx` until the client is gone or `closed` turns true. A cursor beyond
    /// the newest stored is refused; one older than the stream's oldest resumes at the oldest
    /// after a loss notice.
    pub async fn subscribe(
        self: &Arc<Self>,
        filter: Arc<RecordFilter>,
        since: Since,
        tx: mpsc::Sender<Item>,
        closed: watch::Receiver<bool>,
    ) -> Result<(), SubscribeError> {
        let (events, alerts) = self.stream_states().await?;
        let events_start = if let Some(since) = since.events {
            let cursor = Cursor::decode(since);
            if cursor.sequence > events.last {
                return Err(SubscribeError::Ahead {
                    since,
                    next: Cursor::new(events.last + 1, 0).encode(),
                });
            }
            cursor
        } else {
            Cursor::end_of(events.last)
        };
        let alerts_start = match since.alerts {
            Some(since) if since > alerts.last => {
                return Err(SubscribeError::AlertsAhead {
                    since,
                    next: alerts.last + 1,
                });
            }
            Some(since) => since,
            None => alerts.last,
        };
        let started = v1::Started {
            oldest_cursor: if events.messages > 0 {
                Cursor::new(events.first, 0).encode()
            } else {
                0
            },
            next_cursor: Cursor::new(events.last + 1, 0).encode(),
            instance_first_cursor: Cursor::new(events.first.max(1), 0).encode(),
            alerts_next_cursor: Some(alerts.last + 1),
            alerts_oldest_cursor: if alerts.messages > 0 { alerts.first } else { 0 },
        };
        tx.try_send(Item::Started(started))
            .map_err(|_| SubscribeError::Closed)?;
        let reader = Reader {
            backbone: Arc::clone(self),
            filter,
            tx,
            events: events_start,
            alerts: alerts_start + 1,
        };
        tokio::spawn(
            async move { reader.run(closed).await }.instrument(tracing::debug_span!("subscriber")),
        );
        Ok(())
    }
}

fn unavailable(error: impl std::fmt::Display) -> SubscribeError {
    SubscribeError::Unavailable {
        reason: error.to_string(),
    }
}

/// One subscription's reading.
struct Reader {
    backbone: Arc<Backbone>,
    filter: Arc<RecordFilter>,
    tx: mpsc::Sender<Item>,
    /// The cursor the subscriber has (events after it are sent).
    events: Cursor,
    /// The next alert sequence to send.
    alerts: u64,
}

impl Reader {
    async fn run(self, closed: watch::Receiver<bool>) {
        let backbone = Arc::clone(&self.backbone);
        backbone
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.read(closed).await;
        backbone
            .subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn read(mut self, mut closed: watch::Receiver<bool>) {
        let Ok(streams) = self.backbone.streams().cloned() else {
            return;
        };
        // The message the cursor is in still has events to send unless the cursor is its last.
        let mut next_event = if self.events.index as usize >= wire::MAX_PART_EVENTS - 1 {
            self.events.sequence + 1
        } else {
            self.events.sequence.max(1)
        };
        let mut events = if self.filter.wants_events() {
            match ordered(&streams.events, next_event).await {
                Ok(messages) => Some(messages),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the events stream for a subscriber");
                    return;
                }
            }
        } else {
            None
        };
        let mut alerts = if self.filter.wants_alerts() {
            match ordered(&streams.alerts, self.alerts.max(1)).await {
                Ok(messages) => Some(messages),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the alerts stream for a subscriber");
                    return;
                }
            }
        } else {
            None
        };
        loop {
            tokio::select! {
                message = next(events.as_mut()) => {
                    let Some(message) = message else { return };
                    let Ok(info) = message.info().map(|i| i.stream_sequence) else { continue };
                    if info < next_event {
                        continue;
                    }
                    if info > next_event && !self.lost_events(next_event, info).await {
                        return;
                    }
                    next_event = info + 1;
                    if !self.batch(info, &message.payload).await {
                        return;
                    }
                }
                message = next(alerts.as_mut()) => {
                    let Some(message) = message else { return };
                    let Ok(sequence) = message.info().map(|i| i.stream_sequence) else { continue };
                    if sequence < self.alerts {
                        continue;
                    }
                    if sequence > self.alerts {
                        let count = sequence - self.alerts;
                        self.backbone.metrics.retention_losses.inc_by(count);
                        if self.tx.send(Item::Loss { count, reason: LossReason::AlertRetention }).await.is_err() {
                            return;
                        }
                    }
                    self.alerts = sequence + 1;
                    if !self.alert(sequence, &message.payload).await {
                        return;
                    }
                }
                () = super::stopped(&mut closed) => return,
                () = self.tx.closed() => return,
            }
        }
    }

    /// Messages `from..to` were deleted before this subscriber read them: one loss notice with
    /// their events (less those of the cursor's own message it had). False when the client is
    /// gone.
    async fn lost_events(&mut self, from: u64, to: u64) -> bool {
        let ledger = self.backbone.ledger_count(from, to).await;
        let had = if from == self.events.sequence {
            u64::from(self.events.index) + 1
        } else {
            0
        };
        let count = ledger.events.saturating_sub(had);
        if !ledger.exact {
            self.backbone.metrics.inexact_losses.inc();
            tracing::warn!(
                from,
                to,
                count,
                unknown_messages = ledger.unknown_messages,
                "a subscriber's loss notice is a lower bound: the ledger missed messages deleted before it read them"
            );
        }
        self.backbone.metrics.retention_losses.inc_by(count);
        if count == 0 {
            return true;
        }
        self.tx
            .send(Item::Loss {
                count,
                reason: LossReason::Retention,
            })
            .await
            .is_ok()
    }

    /// Send what passes of the events stream's message `sequence`. False when the client is gone.
    async fn batch(&mut self, sequence: u64, payload: &[u8]) -> bool {
        let Ok(stored) = StoredBatch::decode(payload) else {
            tracing::warn!(
                sequence,
                "an events stream message that is not a stored batch"
            );
            return true;
        };
        if let Some(restart) = stored.restart {
            if self.filter.matches_node(&restart.node) {
                return self.tx.send(Item::Restart(Arc::new(restart))).await.is_ok();
            }
            return true;
        }
        let skip = if sequence == self.events.sequence {
            Some(self.events.index)
        } else {
            None
        };
        let node: Arc<str> = stored.node.as_str().into();
        for (index, mut event) in stored.events.into_iter().enumerate() {
            let index = index as u32;
            if skip.is_some_and(|skip| index <= skip) {
                continue;
            }
            if !self
                .filter
                .matches(&node, &event, event.attribution.as_ref())
            {
                continue;
            }
            let attribution = event.attribution.take().map(SharedAttribution::new);
            let record = Record {
                cursor: Cursor::new(sequence, index).encode(),
                node: Arc::clone(&node),
                event,
                attribution,
                // A backbone subscription is bounded by its queue's count; its bytes go uncounted.
                bytes: 0,
            };
            if self.tx.send(Item::Record(Arc::new(record))).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Send alert message `sequence` if it passes. False when the client is gone.
    async fn alert(&mut self, sequence: u64, payload: &[u8]) -> bool {
        let Some((node, alert)) = decode_alert(payload) else {
            tracing::warn!(
                sequence,
                "an alerts stream message that is not a stored alert"
            );
            return true;
        };
        if !self.filter.matches_alert(&node, &alert) {
            return true;
        }
        let published = PublishedAlert {
            cursor: sequence,
            node: node.as_str().into(),
            alert,
        };
        self.tx.send(Item::Alert(Arc::new(published))).await.is_ok()
    }
}

/// The node and alert line of an alerts stream message.
pub(crate) fn decode_alert(payload: &[u8]) -> Option<(String, AlertLine)> {
    let stored = StoredAlert::decode(payload).ok()?;
    let record = stored.record?;
    let alert = AlertLine::try_from(&record).ok()?;
    Some((record.node, alert))
}

/// An ordered consumer over all of `stream` from `start` on.
pub(crate) async fn ordered(
    stream: &async_nats::jetstream::stream::Stream,
    start: u64,
) -> Result<pull::Ordered, String> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            max_expires: Duration::from_secs(5),
            ..pull::OrderedConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The next message of an ordered consumer; pending forever without one. Errors are skipped
/// (the ordered consumer recreates itself after a reconnect); None when it ended.
pub(crate) async fn next(
    messages: Option<&mut pull::Ordered>,
) -> Option<async_nats::jetstream::Message> {
    let Some(messages) = messages else {
        return std::future::pending().await;
    };
    loop {
        match messages.next().await? {
            Ok(message) => return Some(message),
            Err(error) => {
                tracing::debug!(%error, "ordered consumer error (it recreates itself)");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
