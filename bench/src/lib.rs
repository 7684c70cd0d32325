//! What the benchmarks share: starting a tracer and reading everything it prints
//! ([`tracer`]), the peer's programs ([`peer`]), the pipeline's latency run through agent,
//! collector and subscriber ([`pipeline`], its workloads' protocol in [`workload`]), and the
//! agent on a quiet node ([`idle`]). The host's benchmarks (`mapsentry-bench
//! overhead|pipeline|idle`) and `syscall_tax` (e2e/src/bin, in the kernel-matrix VMs) both run
//! through them, so their rows measure the same thing.

pub mod idle;
pub mod peer;
pub mod pipeline;
pub mod tracer;
pub mod workload;
