//! The capture flags `run` and `agent` share.

use std::{path::PathBuf, time::Duration};

use mapsentry_agent::{
    AttachMode, CaptureConfig, TracepointHooks,
    capture::{DEFAULT_RING_BUFFER_BYTES, DEFAULT_WAKEUP_BYTES},
    metadata::EnrichConfig,
};

#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// How to hook the kernel: auto picks the cheapest mode this kernel supports.
    #[arg(long, default_value = "auto", value_parser = parse_attach)]
    pub attach: AttachMode,
    /// Which tracepoints the tracepoint mode hooks. auto: the per-syscall tracepoints of the
    /// mapping calls where the kernel runs no ia32 calls (no cost to other system calls), else
    /// the generic sys_enter/sys_exit pair (every system call pays for it, ia32 calls seen);
    /// generic: always the pair; per-syscall: always the per-syscall ones, blind to every ia32
    /// call (int $0x80 from any process), for kernels known to run none.
    #[arg(long, default_value = "auto", value_parser = parse_hooks)]
    pub tracepoint_hooks: TracepointHooks,
    /// Only this process (filtered in the kernel).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_bytes: u32,
    /// Bytes of records the kernel lets wait before waking mapsentry (0: wake at every record;
    /// fewer are read every 10 ms, and a record after 50 ms without any wakes it at once).
    #[arg(long, default_value_t = DEFAULT_WAKEUP_BYTES)]
    pub wakeup_bytes: u64,
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Longest time an event waits for its pod (a pod the API server has not shown this node
    /// yet: a busy API server, a watch catching up) before it goes out without; an event whose
    /// pod is known waits at most 1 s more for its container's id. Counted when it runs out
    /// (mapsentry_enrichment_missing_total). E.g. 10s, 30s; 0s: never wait.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::duration::parse)]
    pub attribution_hold: Duration,
    /// Write enforce-mode rules only for the cgroups under CGROUP, a path in the cgroup v2
    /// hierarchy (`/kubepods.slice`); processes elsewhere are never judged. Default: every
    /// cgroup.
    #[arg(long, value_name = "CGROUP")]
    pub enforce_under: Option<String>,
}

fn parse_attach(s: &str) -> Result<AttachMode, String> {
    s.parse()
}

fn parse_hooks(s: &str) -> Result<TracepointHooks, String> {
    s.parse()
}

impl CaptureArgs {
    /// How long events wait for their pod and container.
    pub fn enrich(&self) -> EnrichConfig {
        let defaults = EnrichConfig::default();
        EnrichConfig {
            hold_for: self.attribution_hold,
            container_hold_for: defaults.container_hold_for.min(self.attribution_hold),
            ..defaults
        }
    }

    /// The capture these flags ask for, reporting only calls with one of the `prot_any` bits
    /// (0: all).
    pub fn config(&self, prot_any: u64) -> CaptureConfig {
        CaptureConfig {
            attach: self.attach,
            pid: self.pid,
            prot_any,
            ring_buffer_bytes: self.ring_buffer_bytes,
            wakeup_bytes: self.wakeup_bytes,
            btf: self.btf.clone(),
            tracepoint_hooks: self.tracepoint_hooks,
        }
    }
}
