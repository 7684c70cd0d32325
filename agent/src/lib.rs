//! mapsentry's node side: load the capture programs (`probe`), read and decode their records
//! (`events`), and run a capture (`capture`).
#![forbid(unsafe_code)]

pub mod capture;
pub mod enforce;
pub mod events;
pub mod probe;

pub use capture::{Capture, CaptureConfig, KernelCounters};
pub use probe::{AttachMode, Attached};
