//! What the benchmarks share: starting a tracer and reading everything it prints
//! ([`tracer`]), and the peer's programs ([`peer`]). The overhead benchmark (`mapsentry-bench
//! overhead`, on the host) and `syscall_tax` (e2e/src/bin, in the kernel-matrix VMs) both run
//! `mapsentry run` and bpftrace through them, so their rows measure the same thing.

pub mod peer;
pub mod tracer;
