//! The agent's main loop, shared by `agent` and `run`: read captured batches, let the caller see
//! them, hand them to the shipper, keep the shipper's loss counters current; on a stop signal,
//! detach, drain, and flush.

use std::time::Duration;

use anyhow::Context;
use mapsentry_agent::{Capture, KernelCounters, shipper::Shipper};
use mapsentry_policy::MmapEvent;

use crate::signals::Shutdown;

/// How often the capture's loss counters are handed to the shipper.
const COUNTER_INTERVAL: Duration = Duration::from_secs(1);

/// Run until a stop signal, or until `each` returns false. `each` sees every batch before it is
/// shipped. Returns the kernel's final counters; the shipper is left to the caller to finish.
pub async fn pump(
    capture: &mut Capture,
    shipper: &Shipper,
    shutdown: &mut Shutdown,
    mut each: impl FnMut(&[MmapEvent]) -> anyhow::Result<bool>,
) -> anyhow::Result<KernelCounters> {
    let mut batch = Vec::with_capacity(1024);
    let mut counters = tokio::time::interval(COUNTER_INTERVAL);
    let mut go_on = true;
    while go_on {
        tokio::select! {
            read = capture.next_batch(&mut batch) => { read.context("reading the ring buffer")?; }
            _ = counters.tick() => {
                report_losses(capture, shipper)?;
                if let Some(reason) = shipper.refused() {
                    anyhow::bail!("the collector refused this agent: {reason}");
                }
                continue;
            }
            () = shutdown.requested() => break,
        }
        go_on = each(&batch)?;
        shipper
            .send(std::mem::take(&mut batch))
            .await
            .context("the shipper stopped")?;
    }
    capture.detach();
    capture.drain(&mut batch);
    if go_on {
        each(&batch)?;
    }
    shipper.send(batch).await.context("the shipper stopped")?;
    report_losses(capture, shipper)
}

fn report_losses(capture: &Capture, shipper: &Shipper) -> anyhow::Result<KernelCounters> {
    let counters = capture
        .kernel_counters()
        .context("reading the kernel counters")?;
    shipper.set_capture_losses(counters.dropped, capture.malformed());
    Ok(counters)
}
