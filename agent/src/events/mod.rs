//! Records from the kernel: the ring buffer, read asynchronously, decoded into events.

pub mod clock;
pub mod wire;

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use mapsentry_policy::MmapEvent;
use tokio::{
    io::unix::AsyncFd,
    time::{Interval, MissedTickBehavior},
};

pub use wire::DecodeError;

/// The ring buffer, as a file descriptor tokio can wait on (aya's `RingBuf` is only `AsFd`).
struct RingBufFd(RingBuf<MapData>);

impl AsRawFd for RingBufFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// How often the reader drains the ring buffer without being woken: the kernel wakes it only
/// per batch of records (`wakeup_bytes`), so this bounds the delay of a quiet stream.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Reads and decodes records from the `events` ring buffer.
pub struct RecordReader {
    ring: AsyncFd<RingBufFd>,
    flush: Interval,
    decoder: Decoder,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl RecordReader {
    /// Must be called inside a tokio runtime (it registers the ring buffer with the reactor).
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        let decoder = Decoder {
            boot_to_wall_ns: clock::boot_to_wall_offset_ns(),
            received: 0,
            malformed: 0,
        };
        #[expect(
            deprecated,
            reason = "the AsyncFd owns the ring buffer, so the fd outlives its registration; \
                      the replacement, AsyncFd::register, is unsafe"
        )]
        let ring = AsyncFd::new(RingBufFd(ring))?;
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            ring,
            flush,
            decoder,
        })
    }

    /// Wait until records are ready (a wake-up from the kernel, or the flush timer finding
    /// some), then decode every ready one into `out`; returns how many were appended.
    /// Malformed records are logged and counted (`malformed`), not returned.
    pub async fn read_batch(&mut self, out: &mut Vec<MmapEvent>) -> io::Result<usize> {
        let Self {
            ring,
            flush,
            decoder,
        } = self;
        loop {
            let n = tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let n = decoder.drain(&mut guard.get_inner_mut().0, out);
                    guard.clear_ready();
                    n
                }
                _ = flush.tick() => decoder.drain(&mut ring.get_mut().0, out),
            };
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Decode whatever is in the ring buffer now, without waiting (used at shutdown).
    pub fn drain(&mut self, out: &mut Vec<MmapEvent>) -> usize {
        self.decoder.drain(&mut self.ring.get_mut().0, out)
    }

    /// Records taken from the ring buffer, decoded or not.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.decoder.received
    }

    /// Records that failed to decode.
    #[must_use]
    pub fn malformed(&self) -> u64 {
        self.decoder.malformed
    }
}

/// Turns records into events and counts them.
#[derive(Debug)]
struct Decoder {
    boot_to_wall_ns: i128,
    received: u64,
    malformed: u64,
}

impl Decoder {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, out: &mut Vec<MmapEvent>) -> usize {
        let before = out.len();
        while let Some(record) = ring.next() {
            self.received += 1;
            match wire::decode(&record, self.boot_to_wall_ns) {
                Ok(event) => out.push(event),
                Err(error) => {
                    self.malformed += 1;
                    tracing::warn!(%error, "dropping a malformed record from the kernel");
                }
            }
        }
        out.len() - before
    }
}
