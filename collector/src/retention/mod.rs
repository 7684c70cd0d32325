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

use std::{collections::VecDeque, sync::Arc};

use mapsentry_proto::v1;

pub use disk_log::{Log, LogConfig, LogError, LoggedBatch};

/// One stored event: its cursor, the node that sent it, the event.
#[derive(Debug)]
pub struct Record {
    pub cursor: u64,
    pub node: Arc<str>,
    pub event: v1::Event,
}

impl Record {
    /// The record as the observer sends it.
    #[must_use]
    pub fn to_wire(&self) -> v1::EventRecord {
        v1::EventRecord {
            cursor: self.cursor,
            node: self.node.to_string(),
            event: Some(self.event.clone()),
        }
    }
}

/// One agent batch as it is made durable.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub node: &'a str,
    pub boot_id: &'a str,
    pub seq: u64,
    /// The cursor of its first event.
    pub first_cursor: u64,
    pub events: &'a [v1::Event],
}

/// Where batches are made durable before they are acked. Appends come in cursor order, one at a
/// time, from a blocking thread (never from the async workers), so an implementation may block.
pub trait Durable: Send + std::fmt::Debug {
    /// Make `batch` durable; an error stores nothing (the agent resends it).
    fn append(&mut self, batch: &Batch<'_>) -> Result<(), LogError>;
}

/// The newest records, at most `capacity`, with contiguous cursors.
#[derive(Debug)]
pub struct Window {
    records: VecDeque<Arc<Record>>,
    capacity: usize,
    next_cursor: u64,
    /// The first cursor of this collector run (everything older came from an earlier run).
    instance_first: u64,
}

impl Window {
    /// An empty window whose first record gets cursor `first`.
    #[must_use]
    pub fn new(capacity: usize, first: u64) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
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
        }
    }

    /// Keep `event` from `node` under the next cursor, evicting the oldest beyond capacity.
    pub fn push(&mut self, node: &Arc<str>, event: v1::Event) -> Arc<Record> {
        let record = Arc::new(Record {
            cursor: self.next_cursor,
            node: Arc::clone(node),
            event,
        });
        self.next_cursor += 1;
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(Arc::clone(&record));
        record
    }

    /// Read back: continue at `first` (a jump means older batches were deleted, so the window
    /// starts over there).
    pub fn continue_at(&mut self, first: u64) {
        if first != self.next_cursor {
            self.records.clear();
            self.next_cursor = first;
        }
    }

    /// After reading back: this run's records start after what was read.
    pub fn start_instance(&mut self) {
        self.instance_first = self.oldest();
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
        let oldest = self.oldest();
        let start = (from.max(oldest) - oldest) as usize;
        let end = (start + max).min(self.records.len());
        out.extend(self.records.range(start..end).filter(|r| keep(r)).cloned());
        oldest + end as u64
    }
}
