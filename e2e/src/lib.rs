//! Shared pieces of the end-to-end tests and their helper programs.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod daemon;
pub mod kernel_modes;
pub mod kube_harness;
pub mod mount;
pub mod nats;

/// Address hint a concurrency-test thread passes on its `i`th call: unique per (thread, call),
/// so a captured record tells which thread and call it belongs to.
#[must_use]
pub fn marker(thread: u64, call: u64) -> u64 {
    0x2000_0000_0000 | (thread << 32) | (call << 12)
}

/// The (thread, call) a marker address stands for, if it is one.
#[must_use]
pub fn unmark(addr: u64) -> Option<(u64, u64)> {
    (addr >> 40 == 0x20 && addr.trailing_zeros() >= 12)
        .then_some(((addr >> 32) & 0xff, (addr >> 12) & 0xf_ffff))
}
