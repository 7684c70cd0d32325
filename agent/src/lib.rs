//! mapsentry's node side: load the capture programs (`probe`), read and decode their records
//! (`events`), run a capture (`capture`), and ship its events to a collector (`shipper`).
#![forbid(unsafe_code)]

pub mod capture;
pub mod enforce;
pub mod events;
pub mod probe;
pub mod shipper;

pub use capture::{Capture, CaptureConfig, KernelCounters};
pub use probe::{AttachMode, Attached};
