//! Records from the kernel: the ring buffer, read asynchronously, decoded into events.

pub mod clock;
pub mod wire;

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
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

/// Timer drains in a row that find nothing (50 ms) before the reader stops its timer and lets
/// the kernel wake it at the next record: an idle node's agent is not woken 100 times a second.
/// Streams with a record at least every 50 ms keep the timer; sparser ones cost a wake-up per
/// record and five drains after it (at worst, a record every ~60 ms, 20% more wake-ups than a
/// timer that never stops).
pub const QUIET_TICKS: u32 = 5;

/// While the timer is stopped the reader still drains this often, in case a wake-up the design
/// says cannot be lost is (`Wakeups::backstop_records` counts what those drains found).
pub const IDLE_DRAIN_INTERVAL: Duration = Duration::from_secs(1);

/// What woke the reader so far, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakeups {
    /// The ring buffer was readable: a batch of `wakeup_bytes`, or a record waking an idle reader.
    pub kernel: u64,
    /// The drain timer ticked.
    pub timer: u64,
    /// The idle backstop ran ([`IDLE_DRAIN_INTERVAL`]).
    pub backstop: u64,
    /// Records the backstop found: ones whose wake-up was lost (or still on its way, had the
    /// record come the instant the backstop ran). 0 unless the kernel side is wrong.
    pub backstop_records: u64,
    /// Times the reader stopped its timer after [`QUIET_TICKS`] empty drains.
    pub went_idle: u64,
}

/// What ended a wait of the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woken {
    /// The ring buffer became readable.
    Kernel,
    /// The drain timer ticked (timer running).
    Timer,
    /// The idle backstop ran (timer stopped).
    Backstop,
}

/// Reads and decodes records from the `events` ring buffer.
pub struct RecordReader {
    ring: AsyncFd<RingBufFd>,
    flush: Interval,
    /// The programs' `reader_idle` flag: set while the timer is stopped.
    idle_flag: Array<MapData, u32>,
    /// Empty timer drains in a row; `None` while idle (timer stopped).
    quiet_ticks: Option<u32>,
    wakeups: Wakeups,
    decoder: Decoder,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("decoder", &self.decoder)
            .field("wakeups", &self.wakeups)
            .finish_non_exhaustive()
    }
}

impl RecordReader {
    /// `ring` is the programs' `events` map, `idle_flag` their `reader_idle`. Must be called
    /// inside a tokio runtime (it registers the ring buffer with the reactor).
    pub fn new(ring: RingBuf<MapData>, idle_flag: Array<MapData, u32>) -> io::Result<Self> {
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
            idle_flag,
            quiet_ticks: Some(0),
            wakeups: Wakeups::default(),
            decoder,
        })
    }

    /// Wait until records are ready (a wake-up from the kernel, or the flush timer finding
    /// some), then decode every ready one into `out`; returns how many were appended.
    /// Malformed records are logged and counted (`malformed`), not returned.
    ///
    /// The timer runs until [`QUIET_TICKS`] drains in a row find nothing; then the reader goes
    /// idle (`go_idle`) and any wake-up, the kernel's or the backstop's, restarts it.
    pub async fn read_batch(&mut self, out: &mut Vec<MmapEvent>) -> io::Result<usize> {
        loop {
            let (woken, mut n) = self.wait_and_drain(out).await?;
            match (self.quiet_ticks, woken) {
                (None, woken) => {
                    if woken == Woken::Backstop {
                        self.wakeups.backstop_records += n as u64;
                    }
                    self.flush.reset();
                    self.quiet_ticks = Some(0);
                }
                (Some(_), _) if n > 0 => self.quiet_ticks = Some(0),
                (Some(quiet), Woken::Timer) if quiet + 1 < QUIET_TICKS => {
                    self.quiet_ticks = Some(quiet + 1);
                }
                (Some(_), Woken::Timer) => n = self.go_idle(out),
                // Woken with nothing to read (a wake-up meant for an idle reader, come late):
                // not an empty tick.
                (Some(_), Woken::Kernel | Woken::Backstop) => {}
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Wait for the kernel's wake-up, or for the timer (its tick while running, the backstop
    /// while idle), count what it was and drain.
    async fn wait_and_drain(&mut self, out: &mut Vec<MmapEvent>) -> io::Result<(Woken, usize)> {
        let Self {
            ring,
            flush,
            quiet_ticks,
            wakeups,
            decoder,
            ..
        } = self;
        let idle = quiet_ticks.is_none();
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                wakeups.kernel += 1;
                let n = decoder.drain(&mut guard.get_inner_mut().0, out);
                guard.clear_ready();
                Ok((Woken::Kernel, n))
            }
            _ = flush.tick(), if !idle => {
                wakeups.timer += 1;
                Ok((Woken::Timer, decoder.drain(&mut ring.get_mut().0, out)))
            }
            () = tokio::time::sleep(IDLE_DRAIN_INTERVAL), if idle => {
                wakeups.backstop += 1;
                Ok((Woken::Backstop, decoder.drain(&mut ring.get_mut().0, out)))
            }
        }
    }

    /// Stop the timer: set the programs' flag, then look once more (a record committed before
    /// the flag was visible to the programs did not wake us; see `ms_wake_reader`). A flag that
    /// cannot be set keeps the timer.
    fn go_idle(&mut self, out: &mut Vec<MmapEvent>) -> usize {
        if let Err(error) = self.idle_flag.set(0, 1, 0) {
            tracing::warn!(%error, "cannot set the reader's idle flag; draining on the timer");
            self.quiet_ticks = Some(0);
            return 0;
        }
        // The programs check the flag after committing a record (a full barrier); this fence
        // orders the flag's store before the buffer is read again.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let n = self.decoder.drain(&mut self.ring.get_mut().0, out);
        if n > 0 {
            // Records after all: keep the timer. The flag stays set, so a later record
            // wakes the reader once more than needed.
            self.quiet_ticks = Some(0);
        } else {
            self.wakeups.went_idle += 1;
            self.quiet_ticks = None;
        }
        n
    }

    /// What woke the reader so far.
    #[must_use]
    pub fn wakeups(&self) -> Wakeups {
        self.wakeups
    }

    /// Whether the timer is stopped: the next record wakes the reader.
    #[must_use]
    pub fn idle(&self) -> bool {
        self.quiet_ticks.is_none()
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
