//! The capture flags `run` and `agent` share.

use std::path::PathBuf;

use mapsentry_agent::{
    AttachMode, CaptureConfig,
    capture::{DEFAULT_RING_BUFFER_BYTES, DEFAULT_WAKEUP_BYTES},
};

#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// How to hook the kernel: auto picks the cheapest mode this kernel supports.
    #[arg(long, default_value = "auto", value_parser = parse_attach)]
    pub attach: AttachMode,
    /// Only this process (filtered in the kernel).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_bytes: u32,
    /// Bytes of records the kernel lets wait before waking mapsentry (0: wake at every record;
    /// a quiet stream is still read every 10 ms).
    #[arg(long, default_value_t = DEFAULT_WAKEUP_BYTES)]
    pub wakeup_bytes: u64,
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Write enforce-mode rules only for the cgroups under CGROUP, a path in the cgroup v2
    /// hierarchy (`/kubepods.slice`); processes elsewhere are never judged. Default: every
    /// cgroup.
    #[arg(long, value_name = "CGROUP")]
    pub enforce_under: Option<String>,
}

fn parse_attach(s: &str) -> Result<AttachMode, String> {
    s.parse()
}

impl CaptureArgs {
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
        }
    }
}
