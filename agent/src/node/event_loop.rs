//! The agent's main loop, shared by `agent` and `run`: read captured batches, attribute them to
//! their pod (or host unit), let the caller see them, hand them to the [`Sink`] (the shipper, or
//! `run`'s embedded collector), keep the sink's loss counters current and the kernel's
//! enforcement rules current (when enforcing); on a stop signal, detach, drain, and flush.
//! Events held for their pod metadata are emitted when it arrives or at the hold bound,
//! whichever comes first.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use mapsentry_policy::MmapEvent;

use crate::{
    Capture, KernelCounters, capture,
    metadata::Attributor,
    node::{
        enforcing::{Enforcing, next_work},
        sink::Sink,
        status::AgentStatus,
    },
    shipper::ShipperError,
};

/// How often the capture's loss counters are handed to the sink.
const COUNTER_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("reading the ring buffer")]
    Read {
        #[source]
        source: capture::Error,
    },
    #[error("reading the kernel counters")]
    Counters {
        #[source]
        source: capture::Error,
    },
    #[error("the collector refused this agent: {reason}")]
    Refused { reason: String },
    #[error("the sink of the events stopped")]
    Shipper {
        #[source]
        source: ShipperError,
    },
    #[error("writing the records")]
    Output {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = EventLoopError> = std::result::Result<T, E>;

/// Run until `shutdown` resolves, or until `each` returns false. `each` sees every batch
/// (attributed) before it goes to `sink`. `status` (the agent's HTTP endpoint) is kept current:
/// each turn of the loop, each read of the ring buffer, the counters every second. Returns the
/// kernel's final counters; the sink is left to the caller to finish.
pub async fn event_loop(
    capture: &mut Capture,
    attributor: &mut Attributor,
    sink: &impl Sink,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    mut enforcing: Option<&mut Enforcing>,
    status: Option<&AgentStatus>,
    mut each: impl FnMut(&[MmapEvent]) -> std::io::Result<bool>,
) -> Result<KernelCounters> {
    let mut batch = Vec::with_capacity(1024);
    let mut counters = tokio::time::interval(COUNTER_INTERVAL);
    let mut go_on = true;
    while go_on {
        if let Some(status) = status {
            status.turned(Instant::now());
        }
        let deadline = attributor.next_deadline();
        tokio::select! {
            read = capture.next_batch(&mut batch) => {
                read.map_err(|source| EventLoopError::Read { source })?;
                let now = Instant::now();
                if let Some(status) = status {
                    status.read(now);
                }
                attributor.attribute(&mut batch, now);
            }
            () = held_until(deadline) => attributor.poll(Instant::now(), &mut batch),
            _ = counters.tick() => {
                let kernel = report_losses(capture, sink)?;
                if let Some(enforcing) = enforcing.as_deref() {
                    sink.set_enforcement(enforcing.report());
                }
                if let Some(status) = status {
                    let enforce = enforcing.as_deref().map(Enforcing::stats);
                    status.observe(Instant::now(), kernel, capture, sink.stats(), enforce);
                }
                if let Some(reason) = sink.refused() {
                    return Err(EventLoopError::Refused { reason });
                }
                continue;
            }
            work = next_work(enforcing.as_deref_mut()) => {
                if let Some(enforcing) = enforcing.as_deref_mut() {
                    enforcing.handle(work, capture);
                }
                continue;
            }
            () = shutdown.as_mut() => break,
        }
        if batch.is_empty() {
            continue;
        }
        go_on = each(&batch).map_err(|source| EventLoopError::Output { source })?;
        sink.send(std::mem::take(&mut batch))
            .await
            .map_err(|source| EventLoopError::Shipper { source })?;
    }
    capture.detach();
    if let Some(status) = status {
        status.detached();
    }
    let mut drained = Vec::new();
    capture.drain(&mut drained);
    attributor.attribute(&mut drained, Instant::now());
    batch.append(&mut drained);
    attributor.flush(&mut batch);
    if go_on {
        each(&batch).map_err(|source| EventLoopError::Output { source })?;
    }
    sink.send(batch)
        .await
        .map_err(|source| EventLoopError::Shipper { source })?;
    report_losses(capture, sink)
}

/// Wakes when the oldest held event is due; never without one.
async fn held_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn report_losses(capture: &Capture, sink: &impl Sink) -> Result<KernelCounters> {
    let counters = capture
        .kernel_counters()
        .map_err(|source| EventLoopError::Counters { source })?;
    sink.set_capture_losses(counters.dropped, capture.malformed());
    Ok(counters)
}
