//! Where the [`event_loop`](super::event_loop) hands the events it captured: the [`Shipper`]
//! (a collector over gRPC, what `mapsentry agent` does), or a collector in the same process
//! (`mapsentry run`, which stores them in its embedded collector without encoding them for the
//! agent stream and decoding them again).

use std::future::Future;

use mapsentry_policy::MmapEvent;
use mapsentry_proto::v1;

use crate::shipper::{Shipper, ShipperError, ShipperStats};

/// What the event loop needs of the place its events go.
pub trait Sink {
    /// Take a batch of attributed events; waits only while the sink catches up on its input.
    fn send(&self, events: Vec<MmapEvent>)
    -> impl Future<Output = Result<(), ShipperError>> + Send;

    /// Losses before the sink (cumulative counts, latest wins).
    fn set_capture_losses(&self, ring_buffer_full: u64, malformed: u64);

    /// What the agent enforces now (latest wins).
    fn set_enforcement(&self, report: v1::EnforcementReport);

    /// Why the collector refused this agent, if it did: the loop ends with that reason.
    fn refused(&self) -> Option<String>;

    /// What the sink counted so far.
    fn stats(&self) -> ShipperStats;
}

impl Sink for Shipper {
    fn send(
        &self,
        events: Vec<MmapEvent>,
    ) -> impl Future<Output = Result<(), ShipperError>> + Send {
        Shipper::send(self, events)
    }

    fn set_capture_losses(&self, ring_buffer_full: u64, malformed: u64) {
        Shipper::set_capture_losses(self, ring_buffer_full, malformed);
    }

    fn set_enforcement(&self, report: v1::EnforcementReport) {
        Shipper::set_enforcement(self, report);
    }

    fn refused(&self) -> Option<String> {
        Shipper::refused(self)
    }

    fn stats(&self) -> ShipperStats {
        Shipper::stats(self)
    }
}
