//! mapsentry's event model: what one captured `mmap`/`mmap2` call is, how its bits are named,
//! and its JSON line form. Pure code: no I/O, no async, no kernel.
#![forbid(unsafe_code)]

pub mod event;
pub mod k8s;
pub mod names;

pub use event::{EventLine, FileInfo, MmapArgs, MmapEvent, Syscall};
pub use k8s::{Attribution, K8sMeta, Workload};
