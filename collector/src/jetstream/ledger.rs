//! The ledger: how many events each message of the events stream held, kept after JetStream has
//! deleted the messages, so a subscriber whose cursor is older than what the stream retains is
//! told exactly how many events it missed.
//!
//! What is knowable: JetStream deletes old messages by its limits (bytes, age) and keeps nothing
//! of them; the sequences are contiguous, so the number of deleted *messages* is always known,
//! but a message holds any number of events (a batch). Each message says its count in a header
//! (`Mapsentry-Events`), readable only while the message exists. So one replica at a time (the
//! holder of the `ledger` lease) reads the stream's headers as they arrive (a headers-only
//! ordered consumer: a few bytes a message) and writes the counts into a key-value bucket, one
//! key per range of 1024 sequences ([`LedgerRange`]: the events before the range, and each
//! message's count), kept twice as long as the events. The events between two sequences are
//! then a difference of two prefix sums: two key reads, however long the gap.
//!
//! A message deleted before the keeper read it (the keeper down for longer than retention, or
//! retention shorter than the keeper's lag) has an unknown count: the ledger says so, and a loss
//! notice spanning it counts what is known (a lower bound), which is logged and counted in
//! `mapsentry_jetstream_inexact_loss_notices_total`.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;

use super::{
    Backbone,
    lease::{Leases, Renewal},
    subscribe::next,
    wire::{self, LedgerRange, UNKNOWN_COUNT},
};

/// Sequences per ledger key.
pub const RANGE: u64 = 1024;
/// The lease of the keeper.
const LEASE: &str = "ledger";
/// How often the range being filled is written.
const FLUSH: Duration = Duration::from_secs(1);

/// The key of the range holding `sequence` (from 1).
fn range_of(sequence: u64) -> u64 {
    sequence.saturating_sub(1) / RANGE
}

fn key(range: u64) -> String {
    format!("r.{range}")
}

/// The events in a span of the events stream, as far as the ledger knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerCount {
    pub events: u64,
    /// Messages of the span whose count is unknown.
    pub unknown_messages: u64,
    /// Whether `events` is exact (no unknown message, and the ledger covers the span).
    pub exact: bool,
}

/// Events before a sequence and unknown messages before it, since the ledger began.
#[derive(Debug, Clone, Copy)]
struct Point {
    events: u64,
    unknown: u64,
}

impl Backbone {
    /// The events in the events stream's messages `from..to`. Waits a few seconds for a keeper
    /// that lags; past that, what is known.
    pub async fn ledger_count(&self, from: u64, to: u64) -> LedgerCount {
        let unknown = LedgerCount {
            events: 0,
            unknown_messages: to.saturating_sub(from),
            exact: false,
        };
        if to <= from {
            return LedgerCount {
                events: 0,
                unknown_messages: 0,
                exact: true,
            };
        }
        let Some(streams) = self.streams_set_up() else {
            return unknown;
        };
        for _ in 0..10 {
            let (a, b) = (
                point(&streams.ledger, from).await,
                point(&streams.ledger, to).await,
            );
            match (a, b) {
                (Some(a), Some(b)) => {
                    let unknown_messages = b.unknown.saturating_sub(a.unknown);
                    return LedgerCount {
                        events: b.events.saturating_sub(a.events),
                        unknown_messages,
                        exact: unknown_messages == 0,
                    };
                }
                // Below the ledger's beginning: it never knew these.
                (None, Some(_)) if range_of(from) < first_range(&streams.ledger).await => {
                    return unknown;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        unknown
    }

    /// Keep the ledger while this replica holds its lease, until `stop` turns true.
    pub async fn keep_ledger(&self, mut stop: watch::Receiver<bool>) {
        let streams = self.wait_set_up().await.clone();
        let mut leases = Leases::new(
            streams.leases.clone(),
            self.config.replica_id.clone(),
            self.config.lease_ttl,
        );
        let mut renew = tokio::time::interval(self.config.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew.tick() => {}
                () = super::stopped(&mut stop) => return,
            }
            let held = match leases.try_acquire(LEASE).await {
                Ok(Some(held)) => held,
                Ok(None) => continue,
                Err(error) => {
                    tracing::debug!(%error, "ledger lease");
                    continue;
                }
            };
            tracing::info!("keeping the ledger of the events stream");
            let mut held = held;
            let mut keeper = match Keeper::resume(&streams.ledger, &streams.events).await {
                Ok(keeper) => keeper,
                Err(error) => {
                    tracing::warn!(%error, "cannot resume the ledger");
                    leases.release(held, 0, 0).await;
                    continue;
                }
            };
            let mut messages = match keeper.consumer(&streams.events).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the events stream's headers");
                    leases.release(held, 0, 0).await;
                    continue;
                }
            };
            let mut flush = tokio::time::interval(FLUSH);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = next(Some(&mut messages)) => {
                        let Some(message) = message else { break };
                        let Ok(info) = message.info() else { continue };
                        let (sequence, pending) = (info.stream_sequence, info.pending);
                        let count = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(wire::EVENTS_HEADER))
                            .and_then(|v| v.as_str().parse::<u32>().ok());
                        self.metrics.set_pending("ledger", pending);
                        if let Some(full) = keeper.record(sequence, count) {
                            put(&streams.ledger, &full).await;
                        }
                    }
                    _ = flush.tick() => {
                        if keeper.dirty {
                            put(&streams.ledger, &keeper.range).await;
                            keeper.dirty = false;
                        }
                        if !held.valid(leases.ttl()) {
                            tracing::warn!("ledger lease expired unrenewed; stopping");
                            break;
                        }
                    }
                    _ = renew.tick() => {
                        if leases.renew(&mut held, 0, keeper.next).await == Renewal::Lost {
                            break;
                        }
                    }
                    () = super::stopped(&mut stop) => {
                        if keeper.dirty {
                            put(&streams.ledger, &keeper.range).await;
                        }
                        leases.release(held, 0, keeper.next).await;
                        return;
                    }
                }
            }
        }
    }
}

/// The keeper's position: the range being filled.
struct Keeper {
    range: LedgerRange,
    /// The next sequence expected.
    next: u64,
    dirty: bool,
}

impl Keeper {
    /// Continue from the newest range in the bucket, or start at the stream's first message.
    async fn resume(
        ledger: &async_nats::jetstream::kv::Store,
        events: &async_nats::jetstream::stream::Stream,
    ) -> Result<Self, String> {
        let newest = newest_range(ledger).await;
        if let Some(range) = newest {
            let next = range.first_sequence + range.counts.len() as u64;
            let range = if range.counts.len() as u64 >= RANGE {
                // Full: the keeper continues with the next one.
                let (events, unknown) = sums(&range.counts);
                LedgerRange {
                    first_sequence: range.first_sequence + RANGE,
                    base: range.base + events,
                    unknown_before: range.unknown_before + unknown,
                    counts: Vec::new(),
                }
            } else {
                range
            };
            return Ok(Self {
                range,
                next,
                dirty: false,
            });
        }
        let info = events.get_info().await.map_err(|e| e.to_string())?;
        let first = if info.state.messages == 0 {
            info.state.last_sequence + 1
        } else {
            info.state.first_sequence
        }
        .max(1);
        // The ledger begins at the start of `first`'s range, the messages of it already gone
        // being unknown.
        let start = range_of(first) * RANGE + 1;
        let mut keeper = Self {
            range: LedgerRange {
                first_sequence: start,
                ..LedgerRange::default()
            },
            next: start,
            dirty: true,
        };
        keeper.fill_unknown(first);
        Ok(keeper)
    }

    async fn consumer(
        &self,
        events: &async_nats::jetstream::stream::Stream,
    ) -> Result<pull::Ordered, String> {
        let consumer = events
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next.max(1),
                },
                headers_only: true,
                max_expires: Duration::from_secs(5),
                ..pull::OrderedConfig::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    }

    /// Messages before `sequence` not read yet are gone: unknown.
    fn fill_unknown(&mut self, sequence: u64) -> Option<LedgerRange> {
        let mut full = None;
        while self.next < sequence {
            if let Some(range) = self.push(UNKNOWN_COUNT) {
                full = Some(range);
            }
        }
        full
    }

    /// Message `sequence` holds `count` events (None: no header, unknown). Returns a range that
    /// became full, to write.
    fn record(&mut self, sequence: u64, count: Option<u32>) -> Option<LedgerRange> {
        if sequence < self.next {
            return None;
        }
        let mut full = self.fill_unknown(sequence);
        if let Some(range) = self.push(count.unwrap_or(UNKNOWN_COUNT)) {
            full = Some(range);
        }
        full
    }

    fn push(&mut self, count: u32) -> Option<LedgerRange> {
        self.range.counts.push(count);
        self.next += 1;
        self.dirty = true;
        if self.range.counts.len() as u64 == RANGE {
            let full = self.range.clone();
            let (events, unknown) = sums(&full.counts);
            self.range = LedgerRange {
                first_sequence: full.first_sequence + RANGE,
                base: full.base + events,
                unknown_before: full.unknown_before + unknown,
                counts: Vec::with_capacity(RANGE as usize),
            };
            self.dirty = false;
            return Some(full);
        }
        None
    }
}

/// Known events and unknown messages of `counts`.
fn sums(counts: &[u32]) -> (u64, u64) {
    counts.iter().fold((0, 0), |(events, unknown), &c| {
        if c == UNKNOWN_COUNT {
            (events, unknown + 1)
        } else {
            (events + u64::from(c), unknown)
        }
    })
}

async fn put(ledger: &async_nats::jetstream::kv::Store, range: &LedgerRange) {
    let key = key(range_of(range.first_sequence));
    if let Err(error) = ledger.put(&key, wire::encode(range)).await {
        tracing::warn!(%error, key, "cannot write the ledger");
    }
}

async fn get(ledger: &async_nats::jetstream::kv::Store, range: u64) -> Option<LedgerRange> {
    let bytes = ledger.get(key(range)).await.ok()??;
    LedgerRange::decode(bytes.as_ref()).ok()
}

/// Events and unknown messages before `sequence`, if the ledger has got that far.
async fn point(ledger: &async_nats::jetstream::kv::Store, sequence: u64) -> Option<Point> {
    let range = range_of(sequence);
    let offset = (sequence - (range * RANGE + 1)) as usize;
    if let Some(entry) = get(ledger, range).await
        && entry.counts.len() >= offset
    {
        let (events, unknown) = sums(&entry.counts[..offset]);
        return Some(Point {
            events: entry.base + events,
            unknown: entry.unknown_before + unknown,
        });
    }
    // The first sequence of a range not started yet: the end of the previous, full range.
    if offset == 0 && range > 0 {
        let previous = get(ledger, range - 1).await?;
        if previous.counts.len() as u64 == RANGE {
            let (events, unknown) = sums(&previous.counts);
            return Some(Point {
                events: previous.base + events,
                unknown: previous.unknown_before + unknown,
            });
        }
    }
    None
}

/// The ranges' keys, parsed.
async fn ranges(ledger: &async_nats::jetstream::kv::Store) -> Vec<u64> {
    let Ok(keys) = ledger.keys().await else {
        return Vec::new();
    };
    keys.filter_map(|k| async move { k.ok()?.strip_prefix("r.")?.parse::<u64>().ok() })
        .collect()
        .await
}

async fn newest_range(ledger: &async_nats::jetstream::kv::Store) -> Option<LedgerRange> {
    let newest = ranges(ledger).await.into_iter().max()?;
    get(ledger, newest).await
}

async fn first_range(ledger: &async_nats::jetstream::kv::Store) -> u64 {
    ranges(ledger).await.into_iter().min().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
