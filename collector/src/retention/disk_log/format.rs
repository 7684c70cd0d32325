//! The bytes of a segment: its header, its records, and reading them back with damage skipped.
//!
//! ```text
//! segment := SEGMENT_MAGIC record*
//! record  := RECORD_MAGIC (4 bytes) | length (u32 LE) | crc (u32 LE) | body (length bytes)
//! crc     := CRC32C of the 4 length bytes followed by the body
//! body    := one LoggedBatch, protobuf encoded
//! ```
//!
//! In format 3 (`SEGMENT_MAGIC`) a batch defines each attribution its events share once
//! (`LoggedBatch.definitions`) and those events refer to it (`attribution_ref`), so a pod's
//! names and labels are written once per record instead of once per event, and a record still
//! reads back on its own; reading resolves the references and returns whole events. Format 2
//! segments (the same records, every event whole) are read and never appended to.
//!
//! A reader checks each record's magic, that its length fits the file, its checksum and that the
//! body decodes; a record that fails any of them is skipped and the reader resynchronizes at the
//! next offset where a whole, valid record starts (its magic found again, its checksum right), so
//! one damaged record costs that record only. Segments written before this format (format 1:
//! varint-delimited `LoggedBatch` messages, no header, no checksums) are still read, up to their
//! first undecodable record; they are never appended to.

use std::collections::BTreeMap;

use prost::Message as _;

use super::LoggedBatch;

/// The first bytes of a segment of the format written now (3).
pub const SEGMENT_MAGIC: &[u8; 8] = b"MSLOG\0\0\x03";
/// The first bytes of a format-2 segment (every event whole; read, never appended to).
pub const SEGMENT_MAGIC_V2: &[u8; 8] = b"MSLOG\0\0\x02";
/// The first bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = [0xD7, b'M', b'S', b'R'];
/// Magic, length and checksum.
pub const RECORD_HEADER: usize = 12;

/// Why bytes of a segment were skipped when it was read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropCause {
    /// A record whose checksum does not match its bytes (a flipped bit, a partly overwritten
    /// record).
    Checksum,
    /// Bytes that do not start a record where one should start (no magic, or a length beyond
    /// the file): skipped up to the next record found.
    Header,
    /// The checksum matched but the body is not a batch (written by something else).
    Decode,
    /// An incomplete last record: a write the process did not finish (never acked).
    Torn,
    /// A format-1 segment's bytes from its first undecodable record on.
    Legacy,
    /// A whole batch whose node name or boot id is beyond today's limits
    /// ([`crate::budgets::HELLO_LIMITS`]): stored by an older collector, not read back.
    Limits,
}

impl DropCause {
    /// The cause as metrics and logs name it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checksum => "checksum",
            Self::Header => "header",
            Self::Decode => "decode",
            Self::Torn => "torn",
            Self::Legacy => "legacy",
            Self::Limits => "limits",
        }
    }
}

/// Bytes skipped in one place of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub cause: DropCause,
    /// Byte offset where the skipped bytes start, and how many.
    pub offset: u64,
    pub bytes: u64,
    /// Records that started in the skipped bytes (by their magic; at least 1).
    pub batches: u64,
    /// How many batches had been read back (of the whole log) before this place: the batches
    /// on either side bound the cursors, so the events lost here.
    pub after_batch: usize,
}

/// What one segment held.
#[derive(Debug, Default)]
pub struct SegmentRead {
    pub format: Format,
    pub damage: Vec<Damage>,
    /// Bytes up to the end of the last whole record (what a torn tail is cut back to).
    pub good_end: u64,
}

/// A segment's format.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Header and checksummed records, attributions defined once per record.
    #[default]
    V3,
    /// Header and checksummed records of whole events (read, never appended to).
    V2,
    /// Varint-delimited batches without checksums (read, never appended to).
    Legacy,
}

/// Encode `batch` as one record into `out` (cleared first).
///
/// # Panics
/// If `body` is 4 GiB or more (batches are bounded by the largest gRPC message).
pub fn encode_record(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("a batch record is below 4 GiB");
    let len = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), body);
    out.clear();
    out.reserve(RECORD_HEADER + body.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// The record at the start of `data`: its batch and length, or why it is not one.
fn record_at(data: &[u8]) -> Result<(LoggedBatch, usize), DropCause> {
    if data.len() < RECORD_HEADER {
        return Err(
            if RECORD_MAGIC.starts_with(data) || data.starts_with(&RECORD_MAGIC) {
                DropCause::Torn
            } else {
                DropCause::Header
            },
        );
    }
    if data[..4] != RECORD_MAGIC {
        return Err(DropCause::Header);
    }
    let len_bytes: [u8; 4] = data[4..8].try_into().expect("4 bytes");
    let crc = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(body) = data.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Err(DropCause::Torn);
    };
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body) != crc {
        return Err(DropCause::Checksum);
    }
    let batch = LoggedBatch::decode(body)
        .ok()
        .and_then(LoggedBatch::resolved)
        .ok_or(DropCause::Decode)?;
    Ok((batch, RECORD_HEADER + len))
}

/// The offset of the next whole, valid record at or after `from`, if any.
fn resync(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + RECORD_HEADER <= data.len() {
        let found = data[at..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        at += found;
        if record_at(&data[at..]).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn magic_count(data: &[u8]) -> u64 {
    data.windows(RECORD_MAGIC.len())
        .filter(|w| *w == RECORD_MAGIC)
        .count() as u64
}

/// Read every valid record of a segment's bytes into `out` (whose length so far is the number
/// of batches read before this segment), skipping damage.
pub fn read_segment(data: &[u8], out: &mut Vec<LoggedBatch>) -> SegmentRead {
    if data.is_empty() {
        return SegmentRead::default();
    }
    let format = if data.starts_with(SEGMENT_MAGIC) {
        Some(Format::V3)
    } else if data.starts_with(SEGMENT_MAGIC_V2) {
        Some(Format::V2)
    } else {
        None
    };
    if format.is_none()
        && let Some(read) = read_legacy(data, out)
    {
        return read;
    }
    let mut read = SegmentRead {
        format: format.unwrap_or_default(),
        ..SegmentRead::default()
    };
    let mut at = if format.is_some() {
        SEGMENT_MAGIC.len()
    } else {
        // A damaged header: the records after it still count.
        let next = resync(data, 0).unwrap_or(data.len());
        read.damage.push(Damage {
            cause: DropCause::Header,
            offset: 0,
            bytes: next as u64,
            batches: 0,
            after_batch: out.len(),
        });
        next
    };
    read.good_end = at as u64;
    while at < data.len() {
        match record_at(&data[at..]) {
            Ok((batch, used)) => {
                out.push(batch);
                at += used;
                read.good_end = at as u64;
            }
            Err(cause) => {
                let next = resync(data, at + 1);
                let end = next.unwrap_or(data.len());
                // A record cut short by the end of the file is an unfinished write; a damaged
                // record followed by nothing valid is still damage of its own kind.
                let cause = if next.is_none() && cause == DropCause::Torn {
                    DropCause::Torn
                } else if cause == DropCause::Torn {
                    DropCause::Header
                } else {
                    cause
                };
                read.damage.push(Damage {
                    cause,
                    offset: at as u64,
                    bytes: (end - at) as u64,
                    batches: magic_count(&data[at..end]).max(1),
                    after_batch: out.len(),
                });
                at = end;
            }
        }
    }
    read
}

/// A format-1 segment (varint-delimited batches), or None when `data` is not one.
fn read_legacy(data: &[u8], out: &mut Vec<LoggedBatch>) -> Option<SegmentRead> {
    let mut rest = data;
    let mut batches = Vec::new();
    let mut used_total = 0usize;
    while !rest.is_empty() {
        let mut cursor = rest;
        let Ok(len) = prost::encoding::decode_varint(&mut cursor) else {
            break;
        };
        let Ok(len) = usize::try_from(len) else { break };
        if cursor.len() < len {
            break;
        }
        let Ok(batch) = LoggedBatch::decode(&cursor[..len]) else {
            break;
        };
        if batch.node.is_empty() {
            break;
        }
        batches.push(batch);
        let used = rest.len() - cursor.len() + len;
        used_total += used;
        rest = &rest[used..];
    }
    if batches.is_empty() && !data.is_empty() {
        return None;
    }
    let mut read = SegmentRead {
        format: Format::Legacy,
        damage: Vec::new(),
        good_end: used_total as u64,
    };
    out.extend(batches);
    if used_total < data.len() {
        read.damage.push(Damage {
            cause: DropCause::Legacy,
            offset: used_total as u64,
            bytes: (data.len() - used_total) as u64,
            batches: 1,
            after_batch: out.len(),
        });
    }
    Some(read)
}

/// Batches and events dropped when a log was read back, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Batches and events read back.
    pub batches: u64,
    pub events: u64,
    /// Segments of format 1 read (without checksums).
    pub legacy_segments: u64,
    pub dropped: BTreeMap<DropCause, Dropped>,
}

/// What one cause cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    /// Events of those batches, where the cursors of the batches around them tell (an
    /// unfinished last write has no batch after it: its events are not counted, and were never
    /// acked).
    pub events: u64,
    pub bytes: u64,
}

impl Recovery {
    /// Sum up the damage found in a log whose batches, in order, are `batches`: the events of a
    /// damaged place are the cursors missing between the batches on either side of it.
    #[must_use]
    pub fn tally(batches: &[LoggedBatch], damage: &[Damage], legacy_segments: u64) -> Self {
        let mut recovery = Self {
            batches: batches.len() as u64,
            events: batches.iter().map(|b| b.events.len() as u64).sum(),
            legacy_segments,
            dropped: BTreeMap::new(),
        };
        let mut counted_gap = usize::MAX;
        for place in damage {
            let dropped = recovery.dropped.entry(place.cause).or_default();
            dropped.batches += place.batches;
            dropped.bytes += place.bytes;
            // Several damaged places between the same two batches share one cursor gap.
            if place.after_batch == counted_gap {
                continue;
            }
            let (Some(before), Some(after)) = (
                place
                    .after_batch
                    .checked_sub(1)
                    .and_then(|i| batches.get(i)),
                batches.get(place.after_batch),
            ) else {
                continue;
            };
            let expected = before.first_cursor + before.events.len() as u64;
            dropped.events += after.first_cursor.saturating_sub(expected);
            counted_gap = place.after_batch;
        }
        recovery
    }

    /// Batches dropped, over every cause.
    #[must_use]
    pub fn dropped_batches(&self) -> u64 {
        self.dropped.values().map(|d| d.batches).sum()
    }

    /// Events dropped, over every cause (where known).
    #[must_use]
    pub fn dropped_events(&self) -> u64 {
        self.dropped.values().map(|d| d.events).sum()
    }
}
