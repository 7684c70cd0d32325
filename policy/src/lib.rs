//! mapsentry's event model: what one captured `mmap`/`mmap2` call is, how its bits are named,
//! and its JSON line form. Pure code: no I/O, no async, no kernel.
#![forbid(unsafe_code)]

pub mod event;
pub mod names;

pub use event::{
    EnforceAction, Enforcement, EventLine, FileInfo, MmapArgs, MmapEvent, Syscall, TargetMapping,
};
