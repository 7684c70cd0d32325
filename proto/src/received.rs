//! An agent's message as the collector receives it: decoded, and for a batch, each event's call
//! as the bytes it arrived in.
//!
//! The collector writes every event it stores to its retention log, encoded: re-encoding the
//! call prost had just decoded was ~9% of its ingest with the log (the benchmark's profile). The
//! bytes are the message's own (tonic hands the decoder the frame as `Bytes`, and slices of it
//! share it), kept for an event only where they are exactly the event's canonical encoding
//! followed by its `attribution_ref`: then the call's bytes are a prefix of them and decode to
//! the same call, which is what a log record needs. Anything else (fields out of order, unknown
//! or repeated fields, an attribution inline) keeps no bytes, and the event is encoded again
//! where it is written.

use std::marker::PhantomData;

use prost::{
    Message as _,
    bytes::{Buf as _, Bytes},
    encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint},
};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::v1::{self, AgentMessage, agent_message, event::Attribution};

/// `v1::Event.attribution_ref`'s field number.
const ATTRIBUTION_REF: u32 = 103;

/// One `AgentMessage` as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceivedAgentMessage {
    pub message: AgentMessage,
    /// For a batch: per event (index-aligned with its events), the call's bytes where they were
    /// kept; empty for other messages and where none could be.
    calls: Vec<Option<Bytes>>,
    /// Its size as received.
    len: usize,
}

impl ReceivedAgentMessage {
    /// Decode `bytes` (one whole `AgentMessage`), as prost does, keeping a batch's calls.
    ///
    /// # Errors
    /// As `AgentMessage::decode`.
    // Inline: compiled where it is called, with prost's decoding of the message, as a generic
    // decoder is. A first version compiled here (and scanning the batch twice) measured 0.86x
    // of the collector's in-memory ingest before it; this one 0.99x (BENCHMARKS.md). Decoding
    // the events into a vector sized beforehand (a scan first) gained nothing measurable: the
    // profile's share of memmove did not move.
    #[inline]
    pub fn decode(bytes: &Bytes) -> Result<Self, prost::DecodeError> {
        let message = AgentMessage::decode(bytes.as_ref())?;
        let calls = match &message.msg {
            Some(agent_message::Msg::Batch(batch)) => calls_of(bytes, &batch.events),
            _ => Vec::new(),
        };
        Ok(Self {
            message,
            calls,
            len: bytes.len(),
        })
    }

    /// Its size as received (encoded, for one that was not).
    #[must_use]
    pub fn wire_len(&self) -> usize {
        self.len
    }

    /// The message and, for a batch, its events' calls (empty, or one per event).
    #[must_use]
    pub fn into_parts(self) -> (AgentMessage, Vec<Option<Bytes>>) {
        (self.message, self.calls)
    }
}

impl From<AgentMessage> for ReceivedAgentMessage {
    /// A message that was not received as bytes: nothing kept.
    fn from(message: AgentMessage) -> Self {
        Self {
            len: message.encoded_len(),
            message,
            calls: Vec::new(),
        }
    }
}

/// Each event's call bytes in `bytes`, an `AgentMessage` holding one batch decoded into
/// `events`; empty where the message is not laid out as one batch field with one `events` entry
/// per event (prost merges repeated fields, and the entries would not line up with the events).
#[inline]
fn calls_of(bytes: &Bytes, events: &[v1::Event]) -> Vec<Option<Bytes>> {
    calls_in(bytes, events).unwrap_or_default()
}

#[inline]
fn calls_in(bytes: &Bytes, events: &[v1::Event]) -> Option<Vec<Option<Bytes>>> {
    let mut buf = bytes.as_ref();
    let (tag, wire_type) = decode_key(&mut buf).ok()?;
    if tag != 2 || wire_type != WireType::LengthDelimited {
        return None;
    }
    let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
    if len != buf.len() {
        return None;
    }
    let mut calls = Vec::with_capacity(events.len());
    let mut events = events.iter();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match (tag, wire_type) {
            (1, WireType::Varint) => {
                decode_varint(&mut buf).ok()?;
            }
            (2, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let start = bytes.len() - buf.len();
                let wire = buf.get(..len)?;
                let event = events.next()?;
                calls.push(call_len(wire, event).map(|len| bytes.slice(start..start + len)));
                buf.advance(len);
            }
            _ => return None,
        }
    }
    events.next().is_none().then_some(calls)
}

/// The length of the call's bytes at the start of `wire`, the bytes `event` was decoded from, if
/// they are its canonical encoding ending with its `attribution_ref` (or, without an
/// attribution, its canonical encoding): no field repeated, unknown or out of place, so what
/// precedes the reference decodes to the call alone.
#[inline]
fn call_len(wire: &[u8], event: &v1::Event) -> Option<usize> {
    // A message's encoding is at least its canonical length; equal, nothing in it is redundant.
    if wire.len() != event.encoded_len() {
        return None;
    }
    match event.attribution {
        None => Some(wire.len()),
        Some(Attribution::AttributionRef(id)) => {
            let mut reference = [0u8; 12];
            let reference_len = {
                let mut tail = &mut reference[..];
                encode_key(ATTRIBUTION_REF, WireType::Varint, &mut tail);
                encode_varint(id, &mut tail);
                12 - tail.len()
            };
            wire.ends_with(&reference[..reference_len])
                .then(|| wire.len() - reference_len)
        }
        Some(_) => None,
    }
}

/// prost's encoder for the collector's messages and a decoder of [`ReceivedAgentMessage`]: the
/// codec of the collector's `AgentService` (generated in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ReceivedCodec<T>(PhantomData<T>);

impl<T> Default for ReceivedCodec<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: prost::Message + Send + 'static> Codec for ReceivedCodec<T> {
    type Encode = T;
    type Decode = ReceivedAgentMessage;
    type Encoder = ProstEncoder<T>;
    type Decoder = ReceivedDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReceivedDecoder
    }
}

/// Decodes a [`ReceivedAgentMessage`] from the message's bytes, taken from tonic's buffer
/// without a copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceivedDecoder;

impl Decoder for ReceivedDecoder {
    type Item = ReceivedAgentMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        ReceivedAgentMessage::decode(&bytes)
            .map(Some)
            // As prost's decoder maps it (gRPC's status codes: a message that does not parse is
            // INTERNAL).
            .map_err(|error| Status::internal(error.to_string()))
    }
}

/// The collector's `AgentService` server, generated as `v1::agent_service_server` is but
/// receiving [`ReceivedAgentMessage`]s (`build.rs`).
pub mod server {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations,
        reason = "generated code"
    )]
    include!(concat!(env!("OUT_DIR"), "/mapsentry.v1.AgentService.rs"));
}

#[cfg(test)]
mod tests;
