//! The shipper's bounded buffer: the batch being filled and the sealed batches not yet acked, in
//! sequence order, within a byte budget. Beyond the budget the oldest batches are dropped and
//! counted. Events refer to their attribution by id ([`Dictionary`]); each batch keeps the
//! entries it refers to until it is acked or dropped.
//!
//! Each event is encoded as it is pushed, straight into the open batch's bytes (the `events`
//! field of `EventBatch`); sealing writes the message's head in front of them. No batch of
//! `v1::Event` values is ever built: growing that vector, encoding it at seal and dropping it
//! were a third of the agent's CPU per event in `mapsentry run`'s profile.

use std::collections::VecDeque;

use mapsentry_policy::MmapEvent;
use mapsentry_proto::{convert, v1};
use prost::{
    bytes::Bytes,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};

use super::{dictionary::Dictionary, encoded::Encoded};

/// One sealed batch, kept until the collector acks its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub seq: u64,
    /// Events in the batch.
    pub count: usize,
    /// The message that sends it (its events were encoded as they were pushed). The batch
    /// stays buffered until the collector acks it (a reconnect resends it): every send shares
    /// these bytes.
    pub message: Encoded,
    /// What the batch counts against the buffer's budget (its events' encoded sizes).
    pub bytes: usize,
    /// Sent at least once (to any collector connection).
    pub sent: bool,
    /// The attribution ids its events refer to.
    pub refs: Vec<u64>,
}

/// Field numbers of the batch's message: `AgentMessage.batch`, `EventBatch.seq`,
/// `EventBatch.events` (`proto/mapsentry/v1/agent.proto`).
const AGENT_MESSAGE_BATCH: u32 = 2;
const BATCH_SEQ: u32 = 1;
const BATCH_EVENTS: u32 = 2;

impl Batch {
    /// Batch `seq` of `count` events, `events` being their encoded `EventBatch.events` fields
    /// (what the batch counts against the budget), referring to the attributions `refs`: the
    /// `AgentMessage` that sends it.
    #[must_use]
    pub fn seal(seq: u64, count: usize, events: &[u8], refs: Vec<u64>) -> Self {
        let body = key_len(BATCH_SEQ) + encoded_len_varint(seq) + events.len();
        let mut message = Vec::with_capacity(
            key_len(AGENT_MESSAGE_BATCH) + encoded_len_varint(body as u64) + body,
        );
        encode_key(AGENT_MESSAGE_BATCH, WireType::LengthDelimited, &mut message);
        encode_varint(body as u64, &mut message);
        encode_key(BATCH_SEQ, WireType::Varint, &mut message);
        encode_varint(seq, &mut message);
        message.extend_from_slice(events);
        Self {
            seq,
            count,
            message: Encoded::from_bytes(Bytes::from(message)),
            bytes: events.len(),
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
    /// The open batch's events, each encoded as an `EventBatch.events` field.
    open: Vec<u8>,
    open_count: usize,
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
            open_count: 0,
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
        self.push_wire(&wire);
    }

    /// Encode `event` at the end of the open batch; when that makes the batch too big, the
    /// batch is sealed without it and it opens the next one.
    fn push_wire(&mut self, event: &v1::Event) {
        let start = self.open.len();
        prost::encoding::message::encode(BATCH_EVENTS, event, &mut self.open);
        let bytes = self.open.len() - start;
        if self.open_count > 0 && start + bytes > self.limits.batch_max_bytes {
            let next = self.open[start..].to_vec();
            self.open.truncate(start);
            self.seal();
            self.open.extend_from_slice(&next);
        }
        self.open_count += 1;
        if self.open_count >= self.limits.batch_max_events
            || self.open.len() >= self.limits.batch_max_bytes
        {
            self.seal();
        }
        self.enforce_budget();
    }

    /// Close the open batch (if any) under the next sequence number.
    pub fn seal(&mut self) {
        if self.open_count == 0 {
            return;
        }
        let batch = Batch::seal(
            self.next_seq,
            self.open_count,
            &self.open,
            std::mem::take(&mut self.open_refs),
        );
        self.open.clear();
        self.open_count = 0;
        self.next_seq += 1;
        self.sealed_bytes += batch.bytes;
        self.sealed.push_back(batch);
    }

    fn enforce_budget(&mut self) {
        while self.sealed_bytes + self.open.len() > self.limits.buffer_bytes {
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
        self.open_count > 0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open_count == 0
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
        let events = self.open_count + self.sealed.iter().map(|b| b.count).sum::<usize>();
        (events as u64, self.open.len() + self.sealed_bytes)
    }
}

#[cfg(test)]
mod tests;
