//! How the collector holds an event: the call, and its attribution shared with every other event
//! that names the same one. An agent speaking protocol V2 defines each pod's attribution once
//! per stream; ingest hands the definition's [`SharedAttribution`] to each event that refers to
//! it instead of copying the pod's names and labels into every event, and the window, the
//! retention log and subscribers read it from there. An event is whole again (a `v1::Event` with
//! its attribution) only where it leaves the collector: [`Record::to_wire`], the retention log's
//! encoding ([`Attributed::encode_field`], byte for byte what prost writes for the whole event)
//! and the backbone.

use std::sync::{Arc, OnceLock};

use mapsentry_proto::v1::{self, event::Attribution};
use prost::{
    Message as _,
    bytes::{BufMut, Bytes},
    encoding::{WireType, encode_key, encode_varint, uint64},
};

/// An attribution held once and shared by the events that name it, with its encoded size
/// (the `oneof` field, key included) computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedAttribution(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    attribution: Attribution,
    encoded_len: usize,
    /// Its bytes, encoded the first time an event naming it is written whole: the retention log
    /// writes every event whole, and copying these is cheaper than encoding a pod's names and
    /// labels again for each.
    encoded: OnceLock<Box<[u8]>>,
}

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        self.attribution == other.attribution
    }
}

impl SharedAttribution {
    #[must_use]
    pub fn new(attribution: Attribution) -> Self {
        let encoded_len = attribution.encoded_len();
        Self(Arc::new(Shared {
            attribution,
            encoded_len,
            encoded: OnceLock::new(),
        }))
    }

    /// Write it as the attribution field of an encoded `v1::Event`.
    fn encode(&self, buf: &mut impl BufMut) {
        let encoded = self.0.encoded.get_or_init(|| {
            let mut bytes = Vec::with_capacity(self.0.encoded_len);
            self.0.attribution.encode(&mut bytes);
            bytes.into_boxed_slice()
        });
        buf.put_slice(encoded);
    }

    #[must_use]
    pub fn get(&self) -> &Attribution {
        &self.0.attribution
    }

    /// Where it is held: the same for every event sharing it, while one of them lives.
    #[must_use]
    pub fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Write it as field `tag` of a message, as a message of `id` (field 1) and the
    /// attribution at its `v1::Event` field numbers (the retention log's `LoggedDefinition`).
    pub fn encode_definition(&self, tag: u32, id: u64, buf: &mut impl BufMut) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(
            (uint64::encoded_len(1, &id) + self.0.encoded_len) as u64,
            buf,
        );
        uint64::encode(1, &id, buf);
        self.encode(buf);
    }

    /// Its size inside an encoded `v1::Event`.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.0.encoded_len
    }
}

/// An event on its way into the collector: the call (its `attribution` always `None`) and the
/// attribution, apart, with the call's encoded size computed once (the field limits, the
/// window's record size and the retention log's framing each need it), and the call's bytes
/// where it arrived with them.
#[derive(Debug, Clone)]
pub struct Attributed {
    event: v1::Event,
    attribution: Option<SharedAttribution>,
    call_len: usize,
    /// The call as received ([`mapsentry_proto::received`]): what its encoding writes, copied
    /// rather than encoded again.
    call: Option<Bytes>,
}

impl PartialEq for Attributed {
    /// The same event and attribution, whether or not its bytes came with it.
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event && self.attribution == other.attribution
    }
}

impl From<v1::Event> for Attributed {
    /// An event whose attribution came with it (protocol V1, the retention log, the backbone):
    /// held on its own.
    fn from(mut event: v1::Event) -> Self {
        let attribution = event.attribution.take().map(SharedAttribution::new);
        Self::new(event, attribution)
    }
}

impl Attributed {
    /// The call `event` (whose own `attribution` must be `None`) attributed to `attribution`.
    #[must_use]
    pub fn new(event: v1::Event, attribution: Option<SharedAttribution>) -> Self {
        Self::received(event, attribution, None)
    }

    /// As [`Attributed::new`], with `call`, if kept, the call's bytes as received: exactly its
    /// canonical encoding without an attribution ([`mapsentry_proto::received`] keeps no
    /// others).
    #[must_use]
    pub fn received(
        event: v1::Event,
        attribution: Option<SharedAttribution>,
        call: Option<Bytes>,
    ) -> Self {
        debug_assert!(event.attribution.is_none(), "the attribution is held apart");
        let call_len = call
            .as_ref()
            .map_or_else(|| event.encoded_len(), Bytes::len);
        debug_assert_eq!(
            call_len,
            event.encoded_len(),
            "the call's bytes are canonical"
        );
        Self {
            event,
            attribution,
            call_len,
            call,
        }
    }

    /// The call, without its attribution.
    #[must_use]
    pub fn event(&self) -> &v1::Event {
        &self.event
    }

    #[must_use]
    pub fn attribution(&self) -> Option<&SharedAttribution> {
        self.attribution.as_ref()
    }

    /// The call and its attribution (the call's bytes, if kept, dropped).
    #[must_use]
    pub fn into_parts(self) -> (v1::Event, Option<SharedAttribution>) {
        (self.event, self.attribution)
    }

    /// The whole event's encoded size.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.call_len + self.attribution_len()
    }

    /// Write the whole event as field `tag` of a message, as
    /// `prost::encoding::message::encode(tag, &whole_event, buf)` would.
    pub fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        self.encode_with(tag, self.attribution_len(), buf, |buf| {
            if let Some(attribution) = &self.attribution {
                attribution.encode(buf);
            }
        });
    }

    /// Write the event as field `tag` of a message with `attribution_ref = id` in place of its
    /// attribution (defined elsewhere in the message: [`SharedAttribution::encode_definition`]).
    pub fn encode_field_referring(&self, tag: u32, id: u64, buf: &mut impl BufMut) {
        let reference_len = uint64::encoded_len(ATTRIBUTION_REF, &id);
        self.encode_with(tag, reference_len, buf, |buf| {
            uint64::encode(ATTRIBUTION_REF, &id, buf);
        });
    }

    fn attribution_len(&self) -> usize {
        self.attribution
            .as_ref()
            .map_or(0, SharedAttribution::encoded_len)
    }

    /// The call's fields as field `tag`, followed by the `tail_len` bytes `tail` writes. The
    /// attribution is the last field of `Event`: after the call's fields, the bytes are the ones
    /// prost writes for the whole event.
    fn encode_with<B: BufMut>(
        &self,
        tag: u32,
        tail_len: usize,
        buf: &mut B,
        tail: impl FnOnce(&mut B),
    ) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint((self.call_len + tail_len) as u64, buf);
        match &self.call {
            Some(call) => buf.put_slice(call),
            None => self.event.encode_raw(buf),
        }
        tail(buf);
    }
}

/// `v1::Event.attribution_ref`'s field number.
const ATTRIBUTION_REF: u32 = 103;

/// One stored event: its cursor, the node that sent it, the event and its attribution.
#[derive(Debug)]
pub struct Record {
    pub cursor: u64,
    pub node: Arc<str>,
    /// The call; its `attribution` is always `None` (it is in [`Record::attribution`]).
    pub event: v1::Event,
    pub attribution: Option<SharedAttribution>,
    /// What keeping it costs ([`crate::budgets::record_bytes`]).
    pub bytes: usize,
}

impl Record {
    #[must_use]
    pub fn attribution(&self) -> Option<&Attribution> {
        self.attribution.as_ref().map(SharedAttribution::get)
    }

    /// The event whole, its attribution in it.
    #[must_use]
    pub fn whole_event(&self) -> v1::Event {
        v1::Event {
            attribution: self.attribution().cloned(),
            ..self.event.clone()
        }
    }

    /// The record as the observer sends it.
    #[must_use]
    pub fn to_wire(&self) -> v1::EventRecord {
        v1::EventRecord {
            cursor: self.cursor,
            node: self.node.to_string(),
            event: Some(self.whole_event()),
        }
    }
}

#[cfg(test)]
mod tests;
