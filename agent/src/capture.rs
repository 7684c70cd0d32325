//! A running capture: the loaded object, the attached mode, the ring buffer reader, the counters.

use std::path::PathBuf;

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
};
use mapsentry_policy::MmapEvent;

use crate::{
    enforce::{RuleMaps, RuleTable},
    events::{RecordReader, Wakeups, wire},
    probe::{self, AttachError, AttachMode, Attached, TracepointHooks, kernel},
};

/// Ring buffer size when none is given: room for ~50,000 anonymous-mapping records.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;
/// Records that wait before the kernel wakes the reader, when none is given (~440 records).
pub const DEFAULT_WAKEUP_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub attach: AttachMode,
    /// Which tracepoints tracepoint mode hooks (per-syscall ones where the kernel runs no ia32
    /// calls, unless told to keep the generic pair).
    pub tracepoint_hooks: TracepointHooks,
    /// Report only this process (in-kernel filter); `None` reports every process.
    pub pid: Option<u32>,
    /// Report only calls whose `prot` has one of these bits (in-kernel filter); 0 reports all.
    pub prot_any: u64,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Bytes of records that wait in the ring buffer before the kernel wakes the reader (0:
    /// wake at every record). Quieter streams are drained on the reader's timer instead
    /// (`events::FLUSH_INTERVAL`).
    pub wakeup_bytes: u64,
    /// BTF of the running kernel, if it does not publish its own in /sys/kernel/btf/vmlinux.
    pub btf: Option<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            attach: AttachMode::Auto,
            tracepoint_hooks: TracepointHooks::Auto,
            pid: None,
            prot_any: 0,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES,
            btf: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error("ring buffer size {bytes} is not a power of two of at least 4096 bytes")]
    RingBufferSize { bytes: u32 },
    #[error("loading the capture object failed: {reason}")]
    Load { reason: String },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("the capture object has no usable map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("attaching exec tracking (needed by rules on executables) failed: {reason}")]
    ExecTracking { reason: String },
    #[error("cannot watch the ring buffer: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the kernel counted, summed over CPUs. At rest, `reported = dropped + records received
/// by the reader`, and `seen = reported + filtered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// mmap-family calls made while attached (the agent's own excluded), counted where the
    /// kernel decides on them: at entry, or at exit for an mmap or mmap2 read whole there.
    pub seen: u64,
    /// Of those, the calls the report filters kept: each one became a record or a drop.
    pub reported: u64,
    /// Calls the in-kernel filters (`pid`, `prot_any`) left out.
    pub filtered: u64,
    /// Records lost because the ring buffer was full (or, in kprobe mode, whose exit never ran).
    pub dropped: u64,
}

/// What the kernel counted of one of the capture's programs (with run-time statistics on:
/// [`enable_run_time_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    /// Runs, and the time spent in them, since the program was loaded while statistics were on.
    pub runs: u64,
    pub run_time: std::time::Duration,
    /// Instructions the verifier processed when it loaded the program.
    pub verified_instructions: Option<u32>,
}

/// Turn on the kernel's per-program run-time statistics (`BPF_ENABLE_STATS`) until the returned
/// descriptor is closed; they cost a clock read per program run.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| Error::Load {
        reason: probe::chain(&e),
    })
}

/// Capturing mmap calls until dropped (or `detach`ed).
pub struct Capture {
    /// The loaded object; its programs detach when it is dropped.
    ebpf: Option<aya::Ebpf>,
    attached: Attached,
    reader: RecordReader,
    counters: PerCpuArray<MapData, u64>,
    rules: RuleTable,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("attached", &self.attached)
            .field("detached", &self.ebpf.is_none())
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Load, attach and start reading. Must run inside a tokio runtime.
    pub fn start(config: &CaptureConfig) -> Result<Self> {
        let bytes = config.ring_buffer_bytes;
        if bytes < 4096 || !bytes.is_power_of_two() {
            return Err(Error::RingBufferSize { bytes });
        }
        kernel::check_privileges()?;
        let btf = kernel::load_btf(config.btf.as_deref())?;
        kernel::raise_memlock_limit();

        let self_tgid = std::process::id();
        let filter_tgid = config.pid.unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("self_tgid", &self_tgid, true)
            .override_global("filter_tgid", &filter_tgid, true)
            .override_global("filter_prot_any", &config.prot_any, true)
            .override_global("wakeup_bytes", &config.wakeup_bytes, true)
            .map_max_entries("events", bytes)
            // `pending` and `task_facts` are task storage, which aya creates but has no typed
            // handle for: the agent never touches them, only the programs do.
            .allow_unsupported_maps()
            .load(mapsentry_ebpf::CAPTURE)
            .map_err(|e| Error::Load {
                reason: probe::chain(&e),
            })?;

        let mut attached = probe::attach(&mut ebpf, config.attach, config.tracepoint_hooks, &btf)?;
        let exec_tracking = probe::attach_exec_tracking(&mut ebpf, &btf)
            .map_err(|reason| Error::ExecTracking { reason })?;
        tracing::debug!(%exec_tracking, "exec tracking attached");
        attached.deny_unavailable = probe::attach_deny(&mut ebpf, &btf).err();
        if let Some(reason) = &attached.deny_unavailable {
            tracing::info!(%reason, "Deny rules unavailable: enforcement can only kill");
        }
        for (mode, reason) in &attached.rejected {
            tracing::info!(%mode, %reason, "attach mode passed over");
        }
        tracing::info!(mode = %attached.mode, target = %attached.target, "capturing mmap and mmap2");

        let ring = take_map(&mut ebpf, "events", RingBuf::try_from)?;
        let idle_flag = take_map(&mut ebpf, "reader_idle", Array::try_from)?;
        let counters = take_map(&mut ebpf, "counters", PerCpuArray::try_from)?;
        let rules = RuleTable::new(
            RuleMaps {
                enforce: take_map(&mut ebpf, "enforce", HashMap::try_from)?,
                state: take_map(&mut ebpf, "enforce_state", Array::try_from)?,
                comm: take_map(&mut ebpf, "comm_classes", HashMap::try_from)?,
                prefixes: take_map(&mut ebpf, "path_prefixes", LpmTrie::try_from)?,
                suffixes: take_map(&mut ebpf, "path_suffixes", LpmTrie::try_from)?,
                patterns: take_map(&mut ebpf, "path_patterns", Array::try_from)?,
            },
            attached.deny_unavailable.clone(),
        );
        Ok(Self {
            ebpf: Some(ebpf),
            attached,
            reader: RecordReader::new(ring, idle_flag)?,
            counters,
            rules,
        })
    }

    /// The mode in use and why cheaper ones were passed over.
    #[must_use]
    pub fn attached(&self) -> &Attached {
        &self.attached
    }

    /// The kernel's enforcement rules, matched at every call while attached.
    pub fn rules(&mut self) -> &mut RuleTable {
        &mut self.rules
    }

    /// Wait for records and append the decoded events to `out`; returns how many.
    pub async fn next_batch(&mut self, out: &mut Vec<MmapEvent>) -> Result<usize> {
        Ok(self.reader.read_batch(out).await?)
    }

    /// Append whatever records are ready now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<MmapEvent>) -> usize {
        self.reader.drain(out)
    }

    /// Detach the programs: no new records after this; those already in the ring buffer stay
    /// readable with `drain`.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    /// The run-time statistics of the loaded programs (see [`enable_run_time_stats`]).
    #[must_use]
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let Some(ebpf) = &self.ebpf else {
            return Vec::new();
        };
        ebpf.programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramStats {
                    name: name.to_owned(),
                    runs: info.run_count(),
                    run_time: info.run_time(),
                    verified_instructions: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    /// What woke the ring buffer's reader so far.
    #[must_use]
    pub fn reader_wakeups(&self) -> Wakeups {
        self.reader.wakeups()
    }

    /// Whether the ring buffer's reader has stopped its drain timer after a quiet spell (the
    /// next record wakes it).
    #[must_use]
    pub fn reader_idle(&self) -> bool {
        self.reader.idle()
    }

    /// Records read from the ring buffer so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.reader.received()
    }

    /// Records read but not decodable.
    #[must_use]
    pub fn malformed(&self) -> u64 {
        self.reader.malformed()
    }

    /// The kernel's counters, summed over CPUs.
    pub fn kernel_counters(&self) -> Result<KernelCounters> {
        let sum = |index: u32| -> Result<u64> {
            let values = self.counters.get(&index, 0).map_err(|e| Error::Map {
                name: "counters",
                reason: probe::chain(&e),
            })?;
            Ok(values.iter().sum())
        };
        // Filtered first: a call counted between the two reads then shows as reported, never
        // as a filtered call that was not seen.
        let filtered = sum(wire::COUNTER_FILTERED)?;
        let reported = sum(wire::COUNTER_SEEN)?;
        Ok(KernelCounters {
            seen: reported + filtered,
            reported,
            filtered,
            dropped: sum(wire::COUNTER_DROPPED)?,
        })
    }
}

fn take_map<M, E: std::error::Error>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> std::result::Result<M, E>,
) -> Result<M> {
    let map = ebpf.take_map(name).ok_or(Error::Map {
        name,
        reason: "not in the object".into(),
    })?;
    convert(map).map_err(|e| Error::Map {
        name,
        reason: probe::chain(&e),
    })
}
