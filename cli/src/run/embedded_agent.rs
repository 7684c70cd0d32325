//! `run`'s capture feeding its embedded collector in the same process: the event loop's [`Sink`]
//! over the collector's [`InProcess`] agent, so events go into the hub without the agent
//! stream's encoding, loopback gRPC and decoding (BENCHMARKS.md, "`mapsentry run`'s CPU per
//! streamed event").

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use mapsentry_agent::{
    Capture,
    node::{Sink, hostname},
    shipper::{
        DROPPED_MALFORMED, DROPPED_RING_BUFFER_FULL, ShipperError, ShipperStats, kernel_release,
        new_boot_id,
    },
};
use mapsentry_collector::{Hub, hub::AgentInfo, ingest::InProcess};
use mapsentry_policy::MmapEvent;
use mapsentry_proto::v1;

/// This host's capture as an agent of the embedded collector.
#[derive(Debug)]
pub struct EmbeddedAgent {
    collector: InProcess,
    ring_buffer_full: AtomicU64,
    malformed: AtomicU64,
    /// The last enforcement report, to log each change once.
    enforcement: Mutex<Option<v1::EnforcementReport>>,
}

impl EmbeddedAgent {
    /// Connect this host (its hostname, a new boot id, the capture's attach mode) to `hub`.
    pub fn start(hub: &Arc<Hub>, capture: &Capture) -> anyhow::Result<Self> {
        let agent = AgentInfo {
            node: hostname(),
            boot_id: new_boot_id(),
            kernel: kernel_release(),
            attach_mode: capture.attached().mode.as_str().to_owned(),
            started_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        };
        Ok(Self {
            collector: InProcess::start(Arc::clone(hub), agent)?,
            ring_buffer_full: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            enforcement: Mutex::new(None),
        })
    }

    /// Store what is queued and disconnect; what the collector did with the events.
    pub async fn finish(self) -> ShipperStats {
        let losses = self.losses();
        let stats = self.collector.finish().await;
        shipper_stats(stats, losses)
    }

    fn losses(&self) -> BTreeMap<String, u64> {
        [
            (
                DROPPED_RING_BUFFER_FULL,
                self.ring_buffer_full.load(Relaxed),
            ),
            (DROPPED_MALFORMED, self.malformed.load(Relaxed)),
        ]
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect()
    }
}

/// The collector's counts in the shipper's terms: handed over is shipped, stored is acked.
fn shipper_stats(
    stats: mapsentry_collector::ingest::in_process::InProcessStats,
    dropped: BTreeMap<String, u64>,
) -> ShipperStats {
    let settled = stats.stored + stats.refused + stats.not_stored;
    ShipperStats {
        captured: stats.captured,
        shipped: stats.captured,
        acked: stats.stored,
        dropped,
        buffered_events: stats.captured.saturating_sub(settled),
        buffered_bytes: 0,
        connected: true,
        connects: 1,
        resent_batches: 0,
    }
}

impl Sink for EmbeddedAgent {
    async fn send(&self, events: Vec<MmapEvent>) -> Result<(), ShipperError> {
        self.collector
            .send(events)
            .await
            .map_err(|_| ShipperError::Stopped)
    }

    fn set_capture_losses(&self, ring_buffer_full: u64, malformed: u64) {
        self.ring_buffer_full.store(ring_buffer_full, Relaxed);
        self.malformed.store(malformed, Relaxed);
        self.collector.report_losses(self.losses());
    }

    fn set_enforcement(&self, report: v1::EnforcementReport) {
        let mut last = self
            .enforcement
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() != Some(&report) {
            tracing::debug!(version = report.policy_set_version,
                persist_error = %report.persist_error, refused = report.refused.len(),
                "enforcement report");
            *last = Some(report);
        }
    }

    fn refused(&self) -> Option<String> {
        None
    }

    fn stats(&self) -> ShipperStats {
        shipper_stats(self.collector.stats(), self.losses())
    }
}
