//! The capture flags `run` and `agent` share.

use std::path::PathBuf;

use mapsentry_agent::{AttachMode, CaptureConfig, capture::DEFAULT_RING_BUFFER_BYTES};

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
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
}

fn parse_attach(s: &str) -> Result<AttachMode, String> {
    s.parse()
}

impl CaptureArgs {
    pub fn config(&self) -> CaptureConfig {
        CaptureConfig { attach: self.attach, pid: self.pid, ring_buffer_bytes: self.ring_buffer_bytes, btf: self.btf.clone() }
    }
}

/// This host's name: what `agent` and `run` call the node when not told.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".to_owned(), |s| s.trim().to_owned())
}
