//! The on-disk retention log, the local [`super::Durable`]: every stored batch is appended
//! (before it is acked) to segment files in a directory, so a collector that is killed and
//! restarted gets back its retained records under the same cursors and its deduplication state,
//! and resent batches are not stored twice.
//!
//! A segment is a sequence of length-delimited `LoggedBatch` protobuf messages, named after the
//! first cursor it holds (`00000000000000000042.seg`). Segments rotate at `segment_bytes`; the
//! oldest are deleted while the total exceeds `max_bytes`. A batch is written with one `write`, so
//! a killed process leaves at most a torn last record, which the next open cuts off. Writes reach
//! the page cache, not the disk: the log survives the collector process, not the machine.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use mapsentry_proto::v1;
use prost::Message as _;

use super::{Batch, Durable};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("retention log {}: {action} failed", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_owned();
    move |source| LogError::Io {
        path,
        action,
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

impl LogConfig {
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
        }
    }
}

/// One stored batch as the log keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedBatch {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub boot_id: String,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    #[prost(uint64, tag = "4")]
    pub first_cursor: u64,
    #[prost(message, repeated, tag = "5")]
    pub events: Vec<v1::Event>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
pub struct Log {
    config: LogConfig,
    segments: VecDeque<Segment>,
    current: Option<File>,
    total_bytes: u64,
    buffer: Vec<u8>,
}

impl Log {
    /// Open (creating) the directory and read back every batch it holds, oldest first.
    pub fn open(config: LogConfig) -> Result<(Self, Vec<LoggedBatch>)> {
        fs::create_dir_all(&config.dir).map_err(io_error(&config.dir, "creating the directory"))?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&config.dir)
            .map_err(io_error(&config.dir, "listing the directory"))?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
        let mut batches = Vec::new();
        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        for (_, path) in names {
            let bytes = read_segment(&path, &mut batches)?;
            total_bytes += bytes;
            segments.push_back(Segment { path, bytes });
        }
        let current = match segments.back() {
            Some(last) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_error(&last.path, "opening for append"))?,
            ),
            None => None,
        };
        Ok((
            Self {
                config,
                segments,
                current,
                total_bytes,
                buffer: Vec::new(),
            },
            batches,
        ))
    }

    /// Append one batch (one `write`), rotating and trimming segments as configured.
    pub fn append(
        &mut self,
        node: &str,
        boot_id: &str,
        seq: u64,
        first_cursor: u64,
        events: &[v1::Event],
    ) -> Result<()> {
        if self.current.is_none()
            || self
                .segments
                .back()
                .is_some_and(|s| s.bytes >= self.config.segment_bytes)
        {
            self.rotate(first_cursor)?;
        }
        let mut body = Vec::new();
        prost::encoding::string::encode(1, &node.to_owned(), &mut body);
        prost::encoding::string::encode(2, &boot_id.to_owned(), &mut body);
        prost::encoding::uint64::encode(3, &seq, &mut body);
        prost::encoding::uint64::encode(4, &first_cursor, &mut body);
        for event in events {
            prost::encoding::message::encode(5, event, &mut body);
        }
        self.buffer.clear();
        prost::encoding::encode_varint(body.len() as u64, &mut self.buffer);
        self.buffer.extend_from_slice(&body);
        let (Some(file), Some(segment)) = (self.current.as_mut(), self.segments.back_mut()) else {
            unreachable!("rotate opened a segment")
        };
        file.write_all(&self.buffer)
            .map_err(io_error(&segment.path, "appending"))?;
        segment.bytes += self.buffer.len() as u64;
        self.total_bytes += self.buffer.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, first_cursor: u64) -> Result<()> {
        let path = self.config.dir.join(format!("{first_cursor:020}.seg"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path, "creating a segment"))?;
        self.current = Some(file);
        self.segments.push_back(Segment { path, bytes: 0 });
        while self.total_bytes > self.config.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            fs::remove_file(&oldest.path)
                .map_err(io_error(&oldest.path, "deleting an old segment"))?;
            self.total_bytes -= oldest.bytes;
        }
        Ok(())
    }

    /// Bytes held on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }
}

impl Durable for Log {
    fn append(&mut self, batch: &Batch<'_>) -> Result<()> {
        Log::append(
            self,
            batch.node,
            batch.boot_id,
            batch.seq,
            batch.first_cursor,
            batch.events,
        )
    }
}

/// Read every whole batch of a segment; a torn last record is cut off. Returns the bytes kept.
fn read_segment(path: &Path, out: &mut Vec<LoggedBatch>) -> Result<u64> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_error(path, "reading"))?;
    let mut rest = data.as_slice();
    let mut kept = 0;
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
        out.push(batch);
        let used = rest.len() - cursor.len() + len;
        kept += used;
        rest = &rest[used..];
    }
    if kept < data.len() {
        tracing::warn!(path = %path.display(), torn = data.len() - kept, "cutting off a torn record");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(kept as u64))
            .map_err(io_error(path, "cutting off a torn record"))?;
    }
    Ok(kept as u64)
}

#[cfg(test)]
mod tests;
