//! mapsentry's kernel programs, built from the C sources beside this file by `build.rs`.
//!
//! The objects are embedded 8-byte aligned, as the ELF parser needs.
#![forbid(unsafe_code)]

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static CAPTURE_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/capture.bpf.o")));

/// The capture object (`src/capture.bpf.c`): mmap/mmap2 programs for every attach mode, the
/// `events` ring buffer, the `counters` per-CPU array and the `self_tgid`/`filter_tgid` settings.
pub static CAPTURE: &[u8] = &CAPTURE_ALIGNED.0;
