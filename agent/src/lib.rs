//! mapsentry's node side: load the capture programs (`probe`), read and decode their records
//! (`events`), run a capture (`capture`), enforce rules (`enforce`), ship its events to a
//! collector (`shipper`), and attribute calls to pods and host units (`metadata`). `node` is the
//! agent role put together: its main loop, enforcement loop and status endpoint, and
//! [`node::run`], the whole of `mapsentry agent`.
#![forbid(unsafe_code)]

pub mod capture;
pub mod enforce;
pub mod events;
pub mod metadata;
pub mod node;
pub mod probe;
pub mod shipper;

pub use capture::{Capture, CaptureConfig, KernelCounters};
pub use probe::{AttachMode, Attached, TracepointHooks};
