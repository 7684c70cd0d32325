//! What the backbone writes to JetStream, and how it is named: subjects, message ids, headers,
//! cursors and the payloads (protobuf, like the local retention log's `LoggedBatch`).
//!
//! - Events: stream `MAPSENTRY_EVENTS`, one subject per node, `mapsentry.events.<p>.<node>`,
//!   where `<p>` is the node's evaluation partition ([`partition_of`]) and `<node>` the node name
//!   as one subject token ([`node_token`]). A message is one agent batch (or one part of a batch
//!   too large for one message: [`split`]) as a [`StoredBatch`], or an agent restart notice.
//! - Alerts: stream `MAPSENTRY_ALERTS`, one subject per alert series,
//!   `mapsentry.alerts.<p>.<series>` ([`series_token`]); a message is one alert update as a
//!   [`StoredAlert`], whose cumulative `count` makes the last message of a series subject the
//!   series' state.
//! - Event cursors: `(stream sequence << 10) | index in the message` ([`Cursor`]); alert cursors
//!   are the alert stream's sequence itself.

use std::fmt::Write as _;

use mapsentry_proto::v1;
use prost::Message as _;

/// The events stream.
pub const EVENTS_STREAM: &str = "MAPSENTRY_EVENTS";
/// The alerts stream.
pub const ALERTS_STREAM: &str = "MAPSENTRY_ALERTS";
/// The key-value bucket of leases (partitions, the ledger keeper) and replica membership.
pub const LEASES_BUCKET: &str = "mapsentry-leases";
/// The key-value bucket of the ledger (event counts per message, for exact loss counts).
pub const LEDGER_BUCKET: &str = "mapsentry-ledger";
/// The key-value bucket of the agents' enforcement reports, one key per node.
pub const REPORTS_BUCKET: &str = "mapsentry-reports";
/// Subject prefix of the events stream.
pub const EVENTS_PREFIX: &str = "mapsentry.events";
/// Subject prefix of the alerts stream.
pub const ALERTS_PREFIX: &str = "mapsentry.alerts";
/// Stream metadata key holding the number of evaluation partitions the stream was created with.
pub const PARTITIONS_METADATA: &str = "mapsentry.partitions";

/// Header: events in the message (0 for a restart notice). The ledger keeper reads only headers.
pub const EVENTS_HEADER: &str = "Mapsentry-Events";
/// Header: what the message is (`batch`, `restart` or `alert`).
pub const KIND_HEADER: &str = "Mapsentry-Kind";

/// Bits of an event cursor that hold the event's index in its message.
pub const INDEX_BITS: u32 = 10;
/// Most events in one message (the agent seals batches of at most 1024).
pub const MAX_PART_EVENTS: usize = 1 << INDEX_BITS;
/// Most encoded event bytes in one message: half of NATS' default `max_payload` (1 MiB), so a
/// part always fits with its envelope and headers.
pub const MAX_PART_BYTES: usize = 512 << 10;

/// An event cursor: the stream sequence of the message and the event's index in it. As one
/// number, `(sequence << 10) | index`: ordered like the events, exact as a JSON number (below
/// 2^53) until the stream has stored 2^43 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub sequence: u64,
    pub index: u32,
}

impl Cursor {
    #[must_use]
    pub fn new(sequence: u64, index: u32) -> Self {
        Self { sequence, index }
    }

    /// The cursor as subscribers see it.
    #[must_use]
    pub fn encode(self) -> u64 {
        (self.sequence << INDEX_BITS) | u64::from(self.index)
    }

    #[must_use]
    pub fn decode(cursor: u64) -> Self {
        Self {
            sequence: cursor >> INDEX_BITS,
            index: (cursor & ((1 << INDEX_BITS) - 1)) as u32,
        }
    }

    /// The last cursor of message `sequence` (resuming after it starts at the next message).
    #[must_use]
    pub fn end_of(sequence: u64) -> Self {
        Self {
            sequence,
            index: (MAX_PART_EVENTS - 1) as u32,
        }
    }
}

/// One agent batch (or part of one) as stored in the events stream; or, with `restart` set and
/// no events, a node's agent restart notice.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatch {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub boot_id: String,
    /// The agent's batch seq (0 for a restart notice).
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// This message's part of the batch, `0..parts`.
    #[prost(uint32, tag = "4")]
    pub part: u32,
    #[prost(uint32, tag = "5")]
    pub parts: u32,
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<v1::Event>,
    /// Events stored for this (node, boot id), this message included.
    #[prost(uint64, tag = "7")]
    pub boot_events: u64,
    /// The newest event time of this boot so far (ns since the Unix epoch).
    #[prost(uint64, tag = "8")]
    pub last_event_ns: u64,
    /// Events the agent said it captured, as of its last report to the publishing replica.
    #[prost(uint64, tag = "9")]
    pub captured: u64,
    #[prost(message, optional, tag = "10")]
    pub restart: Option<v1::AgentRestart>,
}

/// One alert update as stored in the alerts stream. The last message of a series subject is the
/// series' state: a replica that takes the partition over carries the aggregation on from it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredAlert {
    /// The update as subscribers get it (its `cursor` is 0 here: the stream sequence is it).
    #[prost(message, optional, tag = "1")]
    pub record: Option<v1::AlertRecord>,
    /// The events stream sequence up to which this series' `count` is complete: a message at or
    /// below it was counted, whoever evaluates it again.
    #[prost(uint64, tag = "2")]
    pub through: u64,
    #[prost(uint64, tag = "3")]
    pub first_seen_ns: u64,
    #[prost(uint64, tag = "4")]
    pub last_seen_ns: u64,
    /// The evaluation partition of the series.
    #[prost(uint32, tag = "5")]
    pub partition: u32,
}

/// A node's enforcement report as kept in [`REPORTS_BUCKET`] (the key is
/// [`report_key`]; the node's name is here in full).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredReport {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(message, optional, tag = "2")]
    pub report: Option<v1::EnforcementReport>,
}

/// The key of `node`'s report: the name as a key token (what a key allows, the rest as `_`),
/// then its hash, so two names that read alike as tokens keep two keys.
#[must_use]
pub fn report_key(node: &str) -> String {
    let token: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{token}.{:016x}", fnv1a(&[node.as_bytes()]))
}

/// Per-message event counts of one range of the events stream ([`crate::jetstream::ledger`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerRange {
    /// The stream sequence of `counts[0]`.
    #[prost(uint64, tag = "1")]
    pub first_sequence: u64,
    /// Events in the stream's messages before `first_sequence` (since the ledger began).
    #[prost(uint64, tag = "2")]
    pub base: u64,
    /// Messages before `first_sequence` whose count is unknown (deleted before the keeper read
    /// them), since the ledger began.
    #[prost(uint64, tag = "3")]
    pub unknown_before: u64,
    /// Events of each message from `first_sequence` on; [`UNKNOWN_COUNT`] where unknown.
    #[prost(uint32, repeated, tag = "4")]
    pub counts: Vec<u32>,
}

/// A message count the ledger does not know.
pub const UNKNOWN_COUNT: u32 = u32::MAX;

/// Encode a payload.
#[must_use]
pub fn encode(message: &impl prost::Message) -> bytes::Bytes {
    bytes::Bytes::from(message.encode_to_vec())
}

/// FNV-1a, 64 bits: stable across processes and releases (unlike std's hasher).
#[must_use]
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The evaluation partition of `node`, of `partitions`.
#[must_use]
pub fn partition_of(node: &str, partitions: u32) -> u32 {
    (fnv1a(&[node.as_bytes()]) % u64::from(partitions.max(1))) as u32
}

/// `node` as one subject token: ASCII letters, digits, `-` and `_` as they are, every other byte
/// as `%XX` (so `.`, `*`, `>` and white space cannot split or widen a subject, and two node
/// names never share a token).
#[must_use]
pub fn node_token(node: &str) -> String {
    let mut token = String::with_capacity(node.len());
    for byte in node.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "%{byte:02X}");
        }
    }
    if token.is_empty() {
        token.push('%');
    }
    token
}

/// The events subject of `node`.
#[must_use]
pub fn event_subject(node: &str, partitions: u32) -> String {
    format!(
        "{EVENTS_PREFIX}.{}.{}",
        partition_of(node, partitions),
        node_token(node)
    )
}

/// The events subjects of partition `partition`.
#[must_use]
pub fn partition_filter(partition: u32) -> String {
    format!("{EVENTS_PREFIX}.{partition}.*")
}

/// The token of an alert series (pod, policy, rule).
#[must_use]
pub fn series_token(
    namespace: Option<&str>,
    pod: Option<&str>,
    policy: &str,
    rule: &str,
) -> String {
    let pod_part = match (namespace, pod) {
        (Some(ns), Some(pod)) => format!("pod:{ns}/{pod}"),
        (Some(ns), None) => format!("ns:{ns}"),
        (None, Some(pod)) => format!("podname:{pod}"),
        (None, None) => "host".to_owned(),
    };
    format!(
        "{:016x}",
        fnv1a(&[pod_part.as_bytes(), policy.as_bytes(), rule.as_bytes()])
    )
}

/// The alerts subject of a series in `partition`.
#[must_use]
pub fn alert_subject(partition: u32, series: &str) -> String {
    format!("{ALERTS_PREFIX}.{partition}.{series}")
}

/// The message id of a batch part: `node/boot/seq` for a batch that is one message (nearly all),
/// `node/boot/seq/part` for the parts of a larger one. JetStream drops a message whose id it
/// stored within the duplicate window.
#[must_use]
pub fn batch_message_id(node: &str, boot_id: &str, seq: u64, part: u32, parts: u32) -> String {
    if parts <= 1 {
        format!("{node}/{boot_id}/{seq}")
    } else {
        format!("{node}/{boot_id}/{seq}/{part}")
    }
}

/// The message id of a restart notice.
#[must_use]
pub fn restart_message_id(node: &str, boot_id: &str) -> String {
    format!("{node}/{boot_id}/restart")
}

/// Split `events` into the parts that become one message each: at most [`MAX_PART_EVENTS`]
/// events and [`MAX_PART_BYTES`] encoded bytes a part (one event larger than that is a part of
/// its own). Depends only on the events, so a batch resent to any replica splits the same way
/// and each part keeps its message id.
#[must_use]
pub fn split(events: &[v1::Event]) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, event) in events.iter().enumerate() {
        let len = event.encoded_len() + 4;
        if i > start && (i - start >= MAX_PART_EVENTS || bytes + len > MAX_PART_BYTES) {
            parts.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < events.len() || parts.is_empty() {
        parts.push(start..events.len());
    }
    parts
}

#[cfg(test)]
mod tests;
