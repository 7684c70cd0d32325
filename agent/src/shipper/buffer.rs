//! The shipper's bounded buffer: the batch being filled and the sealed batches not yet acked, in
//! sequence order, within a byte budget. Beyond the budget the oldest batches are dropped and
//! counted. Events refer to their attribution by id ([`Dictionary`]); each batch keeps the
//! entries it refers to until it is acked or dropped.

use std::collections::VecDeque;

use mapsentry_policy::MmapEvent;
use mapsentry_proto::{convert, v1};
use prost::Message as _;

use super::{dictionary::Dictionary, encoded::Encoded};

/// One sealed batch, kept until the collector acks its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub seq: u64,
    /// Events in the batch.
    pub count: usize,
    /// The message that sends it, encoded when the batch was sealed. The batch stays buffered
    /// until the collector acks it (a reconnect resends it): every send shares these bytes.
    pub message: Encoded,
    /// What the batch counts against the buffer's budget (its events' encoded sizes).
    pub bytes: usize,
    /// Sent at least once (to any collector connection).
    pub sent: bool,
    /// The attribution ids its events refer to.
    pub refs: Vec<u64>,
}

impl Batch {
    /// Batch `seq` of `events`, referring to the attributions `refs`, encoded as the message
    /// that sends it.
    #[must_use]
    pub fn seal(seq: u64, events: Vec<v1::Event>, bytes: usize, refs: Vec<u64>) -> Self {
        let count = events.len();
        let message = Encoded::from(v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Batch(v1::EventBatch {
                seq,
                events,
            })),
        });
        Self {
            seq,
            count,
            message,
            bytes,
            sent: false,
            refs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub buffer_bytes: usize,
}

#[derive(Debug)]
pub struct Buffer {
    limits: Limits,
    sealed: VecDeque<Batch>,
    open: Vec<v1::Event>,
    open_bytes: usize,
    /// The attribution ids the open batch refers to.
    open_refs: Vec<u64>,
    dictionary: Dictionary,
    sealed_bytes: usize,
    next_seq: u64,
    /// Events dropped because the buffer was full.
    pub dropped: u64,
}

impl Buffer {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        // A batch never holds more than the whole budget.
        let buffer_bytes = limits.buffer_bytes.max(1);
        let limits = Limits {
            batch_max_events: limits.batch_max_events.max(1),
            batch_max_bytes: limits.batch_max_bytes.clamp(1, buffer_bytes),
            buffer_bytes,
        };
        Self {
            limits,
            sealed: VecDeque::new(),
            open: Vec::new(),
            open_bytes: 0,
            open_refs: Vec::new(),
            dictionary: Dictionary::default(),
            sealed_bytes: 0,
            next_seq: 1,
            dropped: 0,
        }
    }

    /// A buffer whose attribution dictionary holds at most `attributions` entries.
    #[must_use]
    pub fn with_dictionary(limits: Limits, attributions: usize) -> Self {
        Self {
            dictionary: Dictionary::new(attributions),
            ..Self::new(limits)
        }
    }

    /// Add one event to the open batch (its attribution by id, or inline when the dictionary is
    /// full), sealing it when it is full by count or size.
    pub fn push(&mut self, event: &MmapEvent) {
        let mut wire = convert::capture_fields(event);
        wire.attribution = event.attribution.as_ref().map(|attribution| {
            match self
                .dictionary
                .refer(attribution, event.cgroup_id, self.next_seq)
            {
                Some((id, first)) => {
                    if first {
                        self.open_refs.push(id);
                    }
                    v1::event::Attribution::AttributionRef(id)
                }
                None => convert::attribution_to_wire(attribution),
            }
        });
        self.push_wire(wire);
    }

    fn push_wire(&mut self, event: v1::Event) {
        let bytes = event.encoded_len() + 4;
        if !self.open.is_empty() && self.open_bytes + bytes > self.limits.batch_max_bytes {
            self.seal();
        }
        self.open.push(event);
        self.open_bytes += bytes;
        if self.open.len() >= self.limits.batch_max_events
            || self.open_bytes >= self.limits.batch_max_bytes
        {
            self.seal();
        }
        self.enforce_budget();
    }

    /// Close the open batch (if any) under the next sequence number.
    pub fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let batch = Batch::seal(
            self.next_seq,
            std::mem::take(&mut self.open),
            self.open_bytes,
            std::mem::take(&mut self.open_refs),
        );
        self.next_seq += 1;
        self.sealed_bytes += batch.bytes;
        self.open_bytes = 0;
        self.sealed.push_back(batch);
    }

    fn enforce_budget(&mut self) {
        while self.sealed_bytes + self.open_bytes > self.limits.buffer_bytes {
            let Some(oldest) = self.sealed.pop_front() else {
                break;
            };
            self.sealed_bytes -= oldest.bytes;
            self.dropped += oldest.count as u64;
            self.dictionary.release(&oldest.refs);
        }
    }

    #[must_use]
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_empty()
    }

    /// The oldest unacked seq, or the next one to be sealed.
    #[must_use]
    pub fn first_seq(&self) -> u64 {
        self.sealed.front().map_or(self.next_seq, |b| b.seq)
    }

    /// The sealed batch `seq`, if still buffered.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Batch> {
        let index = seq.checked_sub(self.first_seq())?;
        self.sealed.get_mut(usize::try_from(index).ok()?)
    }

    /// Forget every batch up to `seq`; returns how many events they held.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let mut events = 0;
        while self.sealed.front().is_some_and(|b| b.seq <= seq) {
            if let Some(batch) = self.sealed.pop_front() {
                self.sealed_bytes -= batch.bytes;
                events += batch.count as u64;
                self.dictionary.release(&batch.refs);
            }
        }
        events
    }

    /// A new collector stream: no attribution is defined on it yet.
    pub fn new_stream(&mut self) {
        self.dictionary.new_stream();
    }

    /// What must be sent on the current stream before the sealed batch `seq`: the definitions of
    /// the attributions it refers to that were not sent on this stream yet (marked sent now).
    pub fn definitions(&mut self, seq: u64) -> Option<v1::Attributions> {
        let index = usize::try_from(seq.checked_sub(self.first_seq())?).ok()?;
        let batch = self.sealed.get(index)?;
        self.dictionary.definitions(&batch.refs)
    }

    /// Attribution entries held, and how many of them buffered batches refer to.
    #[must_use]
    pub fn attributions(&self) -> (usize, usize) {
        self.dictionary.held()
    }

    /// Events held (open and sealed) and their bytes.
    #[must_use]
    pub fn held(&self) -> (u64, usize) {
        let events = self.open.len() + self.sealed.iter().map(|b| b.count).sum::<usize>();
        (events as u64, self.open_bytes + self.sealed_bytes)
    }
}

#[cfg(test)]
mod tests;
