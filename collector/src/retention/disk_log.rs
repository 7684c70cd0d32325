//! The on-disk retention log, the local [`super::Durable`]: every stored batch is appended
//! (before it is acked) to segment files in a directory, so a collector that is killed and
//! restarted gets back its retained records under the same cursors and its deduplication state,
//! and resent batches are not stored twice.
//!
//! A segment is named after the first cursor it holds (`00000000000000000042.seg`) and is a
//! header followed by records, each a `LoggedBatch` with its length and a CRC32C ([`format`]);
//! a record defines each attribution its events share once and the events refer to it.
//! Reading back checks every record and skips a damaged one, resynchronizing at the next whole
//! record, so one flipped byte costs one batch, and what was skipped is reported by cause
//! ([`Recovery`]: logged, and in the metrics). Nothing valid is ever cut from a file: only an
//! unfinished last record of the newest segment (a write the process did not complete, never
//! acked) is removed.
//!
//! A failed append (a full disk, an I/O error) leaves the log as if it never happened: the
//! segment is cut back to where the record began before the error is returned, and if even that
//! fails, every later append retries the cut first and fails until it succeeds, so nothing is
//! acked after a partial record.
//!
//! Durability against the machine going down is [`SyncPolicy`]: `always` syncs each record
//! before it is acked, `interval` once a second from a thread of its own, `never` leaves it to
//! the kernel (the log then survives the collector process, not the machine).
//!
//! The log holds at most `max_bytes` on disk plus one segment: segments are `segment_bytes` long
//! (an eighth of `max_bytes`, between 4 KiB and 64 MiB), and after each append the oldest
//! segments are deleted while the total exceeds `max_bytes`.

pub mod format;

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use mapsentry_proto::v1;

use self::format::{Damage, Format, SEGMENT_MAGIC, encode_record, read_segment};
pub use self::format::{DropCause, Dropped, Recovery};
use super::{Attributed, Batch, Durable, SharedAttribution};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("retention log {}: {action} failed", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "retention log {}: a failed append could not be cut back to byte {offset}; nothing is stored until it can",
        path.display()
    )]
    CutBack {
        path: PathBuf,
        offset: u64,
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

/// When appended records are forced to the disk (`--data-sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every record, before it is acked: an acked batch survives the machine
    /// going down; every batch waits for the disk.
    Always,
    /// `fdatasync` of the newest segment every interval, from a thread of its own: at most one
    /// interval of acked batches can be lost when the machine (not the process) goes down.
    Interval(Duration),
    /// Never: the kernel writes the page cache back when it chooses (typically within 30 s).
    Never,
}

impl SyncPolicy {
    /// The interval of `interval`.
    pub const INTERVAL: Duration = Duration::from_secs(1);
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self::Interval(Self::INTERVAL)
    }
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(Self::Always),
            "interval" => Ok(Self::Interval(Self::INTERVAL)),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "{other:?} is not a sync policy: always, interval or never"
            )),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Interval(_) => "interval",
            Self::Never => "never",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    /// The oldest segments are deleted while the log holds more.
    pub max_bytes: u64,
    pub sync: SyncPolicy,
}

/// Smallest and largest segment sizes derived from `max_bytes`.
const MIN_SEGMENT: u64 = 4 << 10;
const MAX_SEGMENT: u64 = 64 << 20;

impl LogConfig {
    /// A log in `dir` of at most 1 GiB.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_max_bytes(dir, 1 << 30)
    }

    /// A log in `dir` of at most `max_bytes` (plus one segment, an eighth of it).
    #[must_use]
    pub fn with_max_bytes(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT),
            max_bytes,
            sync: SyncPolicy::default(),
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
    /// Whole events once read back; as written (format 3), an event whose attribution is
    /// shared refers to one of `definitions` (`attribution_ref`).
    #[prost(message, repeated, tag = "5")]
    pub events: Vec<v1::Event>,
    /// The attributions this batch's events refer to, each once (format 3; empty once read
    /// back, the events whole again).
    #[prost(message, repeated, tag = "6")]
    pub definitions: Vec<LoggedDefinition>,
}

/// An attribution that a batch's events refer to, at `v1::Event`'s field numbers for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoggedDefinition {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "v1::event::Attribution", tags = "100, 101, 102, 103")]
    pub attribution: Option<v1::event::Attribution>,
}

impl LoggedBatch {
    /// The batch with its events whole: each `attribution_ref` replaced by its definition.
    /// `None` when an event refers to an id the batch does not define (or defines as a
    /// reference): such a record was not written by this log.
    #[must_use]
    pub fn resolved(mut self) -> Option<Self> {
        let definitions: HashMap<u64, v1::event::Attribution> =
            std::mem::take(&mut self.definitions)
                .into_iter()
                .filter_map(|d| Some((d.id, d.attribution?)))
                .collect();
        for event in &mut self.events {
            if let Some(v1::event::Attribution::AttributionRef(id)) = event.attribution {
                match definitions.get(&id) {
                    Some(v1::event::Attribution::AttributionRef(_)) | None => return None,
                    Some(attribution) => event.attribution = Some(attribution.clone()),
                }
            }
        }
        Some(self)
    }
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
    /// The newest segment, open for appending (None: the next append starts a segment).
    current: Option<File>,
    total_bytes: u64,
    body: Vec<u8>,
    buffer: Vec<u8>,
    /// The attributions of the batch being appended, and their ids by where they are held
    /// (empty between appends). Looked up for every event; keyed by the collector's own
    /// addresses, so a fast hash (SipHash, here and in the agent streams' dictionaries, was ~3% of
    /// ingest with the log in a profile).
    definitions: Vec<SharedAttribution>,
    ids: foldhash::HashMap<usize, u64>,
    /// A failed append whose partial record could not be cut off: where the newest segment
    /// must be cut back to before anything else is written.
    cut_back: Option<u64>,
    recovery: Recovery,
    syncer: Option<Syncer>,
}

impl Log {
    /// Open (creating) the directory and read back every batch it holds, oldest first. Damaged
    /// records are skipped and reported ([`Log::recovery`], and a warning per damaged place).
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
        let mut damage: Vec<Damage> = Vec::new();
        let mut legacy = 0;
        let mut last_format = None;
        let count = names.len();
        for (index, (_, path)) in names.into_iter().enumerate() {
            let data = fs::read(&path).map_err(io_error(&path, "reading"))?;
            if data.is_empty() {
                // A segment created but never written (the process ended in between).
                fs::remove_file(&path).map_err(io_error(&path, "removing an empty segment"))?;
                continue;
            }
            let mut read = read_segment(&data, &mut batches);
            let mut bytes = data.len() as u64;
            for place in &read.damage {
                tracing::warn!(segment = %path.display(), cause = place.cause.as_str(),
                    offset = place.offset, bytes = place.bytes, batches = place.batches,
                    "retention log: skipping damaged bytes");
            }
            // An unfinished last record of the newest segment was never acked: cut it off so
            // the next record follows the last whole one.
            if index + 1 == count
                && read.format != Format::Legacy
                && let Some(torn) = read
                    .damage
                    .last()
                    .filter(|d| d.cause == DropCause::Torn && d.offset + d.bytes == bytes)
            {
                let keep = torn.offset;
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(keep))
                    .map_err(io_error(&path, "cutting off an unfinished last record"))?;
                bytes = keep;
                read.good_end = keep;
            }
            if read.format == Format::Legacy {
                legacy += 1;
            }
            last_format = Some(read.format);
            damage.append(&mut read.damage);
            segments.push_back(Segment { path, bytes });
        }
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        // Append to the newest segment only if it is of this format and its header is whole.
        let current = match (segments.back(), last_format) {
            (Some(last), Some(Format::V3)) if starts_with_header(&last.path) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_error(&last.path, "opening for append"))?,
            ),
            _ => None,
        };
        let recovery = Recovery::tally(&batches, &damage, legacy);
        if !recovery.dropped.is_empty() {
            for (cause, dropped) in &recovery.dropped {
                tracing::warn!(
                    dir = %config.dir.display(),
                    cause = cause.as_str(),
                    batches = dropped.batches,
                    events = dropped.events,
                    bytes = dropped.bytes,
                    "retention log: batches dropped when reading back"
                );
            }
        }
        if legacy > 0 {
            tracing::info!(
                segments = legacy,
                "retention log: read segments of the previous format (no checksums); new records go to new segments"
            );
        }
        let syncer = match config.sync {
            SyncPolicy::Interval(every) => Some(Syncer::start(every, current.as_ref())),
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        Ok((
            Self {
                config,
                segments,
                current,
                total_bytes,
                body: Vec::new(),
                buffer: Vec::new(),
                definitions: Vec::new(),
                ids: foldhash::HashMap::default(),
                cut_back: None,
                recovery,
                syncer,
            },
            batches,
        ))
    }

    /// What reading back found: batches read, and those dropped by cause.
    #[must_use]
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Append one batch as one record (one `write`), syncing as configured, then delete the
    /// oldest segments beyond `max_bytes`. On error nothing of the batch stays in the log.
    pub fn append(
        &mut self,
        node: &str,
        boot_id: &str,
        seq: u64,
        first_cursor: u64,
        events: &[Attributed],
    ) -> Result<()> {
        self.finish_cut_back()?;
        if self.current.is_none()
            || self
                .segments
                .back()
                .is_some_and(|s| s.bytes >= self.config.segment_bytes)
        {
            self.rotate(first_cursor)?;
        }
        self.body.clear();
        prost::encoding::string::encode(1, &node.to_owned(), &mut self.body);
        prost::encoding::string::encode(2, &boot_id.to_owned(), &mut self.body);
        prost::encoding::uint64::encode(3, &seq, &mut self.body);
        prost::encoding::uint64::encode(4, &first_cursor, &mut self.body);
        // Each attribution once per record, the events referring to it: a record still reads
        // back on its own, and a pod's names and labels are not written for every event.
        for event in events {
            match event.attribution() {
                Some(attribution) => {
                    let next = self.definitions.len() as u64 + 1;
                    let id = *self.ids.entry(attribution.address()).or_insert_with(|| {
                        self.definitions.push(attribution.clone());
                        next
                    });
                    event.encode_field_referring(5, id, &mut self.body);
                }
                None => event.encode_field(5, &mut self.body),
            }
        }
        for (id, attribution) in (1..).zip(&self.definitions) {
            attribution.encode_definition(6, id, &mut self.body);
        }
        self.definitions.clear();
        self.ids.clear();
        encode_record(&self.body, &mut self.buffer);
        let (Some(file), Some(segment)) = (self.current.as_mut(), self.segments.back_mut()) else {
            unreachable!("rotate opened a segment")
        };
        let good = segment.bytes;
        let written = file
            .write_all(&self.buffer)
            .map_err(io_error(&segment.path, "appending"))
            .and_then(|()| match self.config.sync {
                SyncPolicy::Always => file
                    .sync_data()
                    .map_err(io_error(&segment.path, "syncing to disk")),
                SyncPolicy::Interval(_) | SyncPolicy::Never => Ok(()),
            });
        if let Err(error) = written {
            // As if the append never happened: cut the partial record off now, or before the
            // next append.
            let path = segment.path.clone();
            if let Err(source) = file.set_len(good) {
                tracing::error!(segment = %path.display(), offset = good, %source,
                    "retention log: cannot cut a failed append back; nothing is stored until it can be");
                self.cut_back = Some(good);
            }
            return Err(error);
        }
        segment.bytes += self.buffer.len() as u64;
        self.total_bytes += self.buffer.len() as u64;
        if let Some(syncer) = &self.syncer {
            syncer.dirty();
        }
        self.trim();
        Ok(())
    }

    /// Cut the newest segment back after a failed append whose cut failed.
    fn finish_cut_back(&mut self) -> Result<()> {
        let Some(offset) = self.cut_back else {
            return Ok(());
        };
        let (Some(file), Some(segment)) = (self.current.as_ref(), self.segments.back()) else {
            self.cut_back = None;
            return Ok(());
        };
        file.set_len(offset).map_err(|source| LogError::CutBack {
            path: segment.path.clone(),
            offset,
            source,
        })?;
        tracing::info!(segment = %segment.path.display(), offset, "retention log: a failed append was cut back");
        self.cut_back = None;
        Ok(())
    }

    /// Start a segment whose first batch gets `first_cursor`.
    fn rotate(&mut self, first_cursor: u64) -> Result<()> {
        // The finished segment reaches the disk before the log moves on.
        if let Some(previous) = self.current.take()
            && self.config.sync != SyncPolicy::Never
            && let Err(error) = previous.sync_data()
        {
            tracing::warn!(%error, "retention log: syncing a finished segment failed");
        }
        let path = self.config.dir.join(format!("{first_cursor:020}.seg"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path, "creating a segment"))?;
        if let Err(error) = file
            .write_all(SEGMENT_MAGIC)
            .map_err(io_error(&path, "writing a segment header"))
        {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        if self.config.sync != SyncPolicy::Never {
            sync_dir(&self.config.dir);
        }
        if let Some(syncer) = &self.syncer {
            syncer.follow(&file);
        }
        self.current = Some(file);
        self.segments.push_back(Segment {
            path,
            bytes: SEGMENT_MAGIC.len() as u64,
        });
        self.total_bytes += SEGMENT_MAGIC.len() as u64;
        Ok(())
    }

    /// Delete the oldest segments while the log holds more than `max_bytes` (the newest stays).
    fn trim(&mut self) {
        let mut deleted = false;
        while self.total_bytes > self.config.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            if let Err(error) = fs::remove_file(&oldest.path) {
                tracing::warn!(segment = %oldest.path.display(), %error,
                    "retention log: cannot delete an old segment; it no longer counts against --data-max-bytes");
            }
            self.total_bytes -= oldest.bytes;
            deleted = true;
        }
        if deleted && self.config.sync != SyncPolicy::Never {
            sync_dir(&self.config.dir);
        }
    }

    /// Bytes held on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }
}

fn starts_with_header(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; SEGMENT_MAGIC.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == SEGMENT_MAGIC)
}

/// Make the directory's entries (created and deleted segments) durable.
fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), %error, "retention log: syncing the directory failed");
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

/// Syncs the newest segment every interval when something was appended since the last sync.
#[derive(Debug)]
struct Syncer {
    shared: Arc<SyncShared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct SyncShared {
    /// A handle on the newest segment.
    file: Mutex<Option<File>>,
    dirty: AtomicBool,
}

impl SyncShared {
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = file.as_ref()
            && let Err(error) = file.sync_data()
        {
            tracing::warn!(%error, "retention log: the periodic sync failed");
        }
    }
}

impl Syncer {
    fn start(every: Duration, current: Option<&File>) -> Self {
        let shared = Arc::new(SyncShared::default());
        let syncer_shared = Arc::clone(&shared);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("retention-sync".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    syncer_shared.sync();
                }
                syncer_shared.sync();
            })
            .map_err(|error| tracing::warn!(%error, "retention log: no sync thread; --data-sync interval syncs nothing"))
            .ok();
        let syncer = Self {
            shared,
            stop: Some(stop),
            thread,
        };
        if let Some(file) = current {
            syncer.follow(file);
        }
        syncer
    }

    /// Sync `file` (the new newest segment) from now on.
    fn follow(&self, file: &File) {
        let handle = file
            .try_clone()
            .map_err(|error| tracing::warn!(%error, "retention log: the sync thread cannot follow the new segment"))
            .ok();
        *self
            .shared
            .file
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = handle;
    }

    fn dirty(&self) {
        self.shared.dirty.store(true, Ordering::Release);
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
