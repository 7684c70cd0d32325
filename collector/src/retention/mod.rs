//! Retention: what a collector keeps of the events it stored, so that subscribers can resume by
//! cursor and a restarted collector loses nothing it acked.
//!
//! - [`Window`]: the in-memory window of the newest records, with contiguous cursors; catch-ups
//!   read from it.
//! - [`Durable`]: where a batch is made durable before it is acked. [`disk_log::Log`] is the
//!   local implementation (segment files under `--data-dir`); a replicated store (a JetStream
//!   stream, where collectors become stateless replicas) implements the same trait and hands its
//!   batches back at start as the same [`LoggedBatch`] messages.

pub mod disk_log;
mod record;

use std::{collections::VecDeque, sync::Arc};

use mapsentry_proto::v1;

pub use disk_log::{
    DropCause, Dropped, Log, LogConfig, LogError, LoggedBatch, Recovery, SyncPolicy,
};
pub use record::{Attributed, Record, SharedAttribution};

/// One agent batch as it is made durable.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub node: &'a str,
    pub boot_id: &'a str,
    pub seq: u64,
    /// The cursor of its first event.
    pub first_cursor: u64,
    pub events: &'a [Attributed],
}

/// Where batches are made durable before they are acked. Appends come in cursor order, one at a
/// time, from a blocking thread (never from the async workers), so an implementation may block.
pub trait Durable: Send + std::fmt::Debug {
    /// Make `batch` durable; an error stores nothing (the agent resends it).
    fn append(&mut self, batch: &Batch<'_>) -> Result<(), LogError>;
}

/// The newest records, at most `capacity` of them and `max_bytes` of what they cost
/// ([`Record::bytes`]), with contiguous cursors.
#[derive(Debug)]
pub struct Window {
    records: VecDeque<Arc<Record>>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    next_cursor: u64,
    /// The first cursor of this collector run (everything older came from an earlier run).
    instance_first: u64,
}

impl Window {
    /// An empty window of at most `capacity` records and `max_bytes`, whose first record gets
    /// cursor `first`.
    #[must_use]
    pub fn new(capacity: usize, max_bytes: usize, first: u64) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            next_cursor: first,
            instance_first: first,
        }
    }

    /// The oldest cursor still held (the next one when empty).
    #[must_use]
    pub fn oldest(&self) -> u64 {
        self.records.front().map_or(self.next_cursor, |r| r.cursor)
    }

    /// The cursor the next record gets.
    #[must_use]
    pub fn next_cursor(&self) -> u64 {
        self.next_cursor
    }

    #[must_use]
    pub fn instance_first(&self) -> u64 {
        self.instance_first
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// What the records held cost ([`Record::bytes`]).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// What a new subscriber is told first.
    #[must_use]
    pub fn started(&self) -> v1::Started {
        v1::Started {
            oldest_cursor: self.records.front().map_or(0, |r| r.cursor),
            next_cursor: self.next_cursor,
            instance_first_cursor: self.instance_first,
            ..v1::Started::default()
        }
    }

    /// Keep `event` from `node` under the next cursor, evicting the oldest beyond capacity (in
    /// records and in bytes; the newest record stays even alone beyond the bytes).
    pub fn push(&mut self, node: &Arc<str>, event: Attributed) -> Arc<Record> {
        let bytes = crate::budgets::record_bytes(&event);
        let (event, attribution) = event.into_parts();
        let record = Arc::new(Record {
            cursor: self.next_cursor,
            node: Arc::clone(node),
            event,
            attribution,
            bytes,
        });
        self.next_cursor += 1;
        while self.records.len() >= self.capacity
            || (!self.records.is_empty() && self.bytes + bytes > self.max_bytes)
        {
            let Some(oldest) = self.records.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
        }
        self.bytes += bytes;
        self.records.push_back(Arc::clone(&record));
        record
    }

    /// Read back: continue at `first`. A jump forward (a batch skipped as damaged, or segments
    /// deleted) keeps what is held: records are found by cursor, so the window may have gaps,
    /// and a damaged batch costs only its own cursors. A jump back starts the window over.
    pub fn continue_at(&mut self, first: u64) {
        if first < self.next_cursor {
            self.records.clear();
            self.bytes = 0;
        }
        self.next_cursor = first;
    }

    /// After reading back: this run's records start after what was read.
    pub fn start_instance(&mut self) {
        self.instance_first = self.oldest();
    }

    /// The cursor of the first record (in store order) whose event time is at or after
    /// `time_ns`, if one is; agents' clocks and batches make store order only nearly time
    /// order, so this is a binary search that takes it as sorted.
    #[must_use]
    pub fn first_at_or_after(&self, time_ns: u64) -> Option<u64> {
        let index = self.records.partition_point(|r| r.event.time_ns < time_ns);
        self.records.get(index).map(|r| r.cursor)
    }

    /// Up to `max` records from cursor `from` on (at least [`Window::oldest`]) that pass `keep`;
    /// returns the cursor after the last one looked at.
    pub fn read(
        &self,
        from: u64,
        max: usize,
        keep: impl Fn(&Record) -> bool,
        out: &mut Vec<Arc<Record>>,
    ) -> u64 {
        // Cursors ascend, with gaps where read-back skipped a damaged batch.
        let start = self.records.partition_point(|r| r.cursor < from);
        let end = (start + max).min(self.records.len());
        out.extend(self.records.range(start..end).filter(|r| keep(r)).cloned());
        self.records.get(end).map_or(self.next_cursor, |r| r.cursor)
    }
}
