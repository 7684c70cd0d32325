//! An agent in the collector's own process (`mapsentry run`): its captured events go into the
//! hub as the agent stream's would, under the agent's node and boot id, in sequence-numbered
//! batches, each event within the field limits of [`crate::budgets`], but without being encoded
//! for the stream and decoded again. Each cgroup's attribution is converted once and shared by
//! its events ([`SharedAttribution`]), as a protocol V2 stream's definitions are.
//!
//! Like the shipper, it takes batches on a bounded queue and stores them on a task of its own,
//! so capture waits only while that task catches up, never on a retention log's write.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use mapsentry_policy::{Attribution, MmapEvent};
use mapsentry_proto::{convert, v1};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::Instrument as _;

use crate::{
    budgets,
    hub::{AgentInfo, Hub, Stored},
    nodes::NodesFull,
    retention::{Attributed, SharedAttribution},
};

/// Batches queued between capture and the storing task (as the shipper's input).
const INPUT_QUEUE: usize = 64;
/// Converted attributions kept, one per cgroup; past this the cache starts again empty.
const MAX_CACHED_ATTRIBUTIONS: usize = 16_384;

/// The store task has ended (the hub closed, or it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-process collector stopped taking events")]
pub struct Stopped;

/// What an in-process agent's events came to (cumulative). At rest,
/// `captured = stored + refused + not_stored`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InProcessStats {
    /// Events handed over.
    pub captured: u64,
    /// Events the hub stored.
    pub stored: u64,
    /// Events over a field limit of [`crate::budgets`] (each one logged).
    pub refused: u64,
    /// Events in batches the hub failed to store (a retention log's write failed, the hub
    /// closed).
    pub not_stored: u64,
}

#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    stored: AtomicU64,
    refused: AtomicU64,
    not_stored: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> InProcessStats {
        InProcessStats {
            captured: self.captured.load(Relaxed),
            stored: self.stored.load(Relaxed),
            refused: self.refused.load(Relaxed),
            not_stored: self.not_stored.load(Relaxed),
        }
    }
}

/// An agent feeding a hub in the same process.
#[derive(Debug)]
pub struct InProcess {
    hub: Arc<Hub>,
    agent: AgentInfo,
    input: mpsc::Sender<Vec<MmapEvent>>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl InProcess {
    /// Connect `agent` to `hub` (as its Hello would) and start storing. Must run inside a tokio
    /// runtime.
    pub fn start(hub: Arc<Hub>, agent: AgentInfo) -> Result<Self, NodesFull> {
        hub.agent_connected(&agent)?;
        let (input, batches) = mpsc::channel(INPUT_QUEUE);
        let counters = Arc::new(Counters::default());
        let span = tracing::info_span!("in_process_agent", node = %agent.node);
        let task = tokio::spawn(
            Store {
                hub: Arc::clone(&hub),
                agent: agent.clone(),
                counters: Arc::clone(&counters),
                attributions: Attributions::default(),
                seq: 0,
            }
            .run(batches)
            .instrument(span),
        );
        Ok(Self {
            hub,
            agent,
            input,
            counters,
            task,
        })
    }

    /// Hand over a batch of captured, attributed events. Waits only while the store task
    /// catches up on its queue.
    pub async fn send(&self, events: Vec<MmapEvent>) -> Result<(), Stopped> {
        if events.is_empty() {
            return Ok(());
        }
        self.counters
            .captured
            .fetch_add(events.len() as u64, Relaxed);
        self.input.send(events).await.map_err(|_| Stopped)
    }

    /// The agent's losses before it handed events over (cumulative, by reason), reported to
    /// the hub as an agent's `LossReport`, with what it handed over so far.
    pub fn report_losses(&self, dropped: BTreeMap<String, u64>) {
        let captured = self.counters.captured.load(Relaxed);
        let report = v1::LossReport {
            dropped: dropped.into_iter().collect(),
            captured,
            shipped: captured,
        };
        self.hub.agent_report(&self.agent, report);
    }

    #[must_use]
    pub fn stats(&self) -> InProcessStats {
        self.counters.snapshot()
    }

    /// Stop taking events, store what is queued, and disconnect the agent.
    pub async fn finish(self) -> InProcessStats {
        let Self {
            hub,
            agent,
            input,
            counters,
            task,
        } = self;
        drop(input);
        if let Err(error) = task.await {
            tracing::error!(%error, "the in-process agent's store task failed");
        }
        hub.agent_disconnected(&agent.node);
        counters.snapshot()
    }
}

struct Store {
    hub: Arc<Hub>,
    agent: AgentInfo,
    counters: Arc<Counters>,
    attributions: Attributions,
    seq: u64,
}

impl Store {
    async fn run(mut self, mut batches: mpsc::Receiver<Vec<MmapEvent>>) {
        while let Some(batch) = batches.recv().await {
            self.store(&batch).await;
        }
    }

    async fn store(&mut self, batch: &[MmapEvent]) {
        let arrived = Instant::now();
        self.seq += 1;
        let mut events = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for event in batch {
            match self.attributed(event) {
                Ok(attributed) => events.push(attributed),
                Err(error) => refused.push((event, error)),
            }
        }
        if let Some((event, error)) = refused.first() {
            self.counters
                .refused
                .fetch_add(refused.len() as u64, Relaxed);
            tracing::warn!(seq = self.seq, refused = refused.len(), first_pid = event.pid,
                first_comm = %event.comm, %error, "events over a field limit are not stored");
        }
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        match self.hub.store(&self.agent, self.seq, events).await {
            Ok(Stored::New { count, .. }) => {
                self.counters.stored.fetch_add(count, Relaxed);
                self.hub
                    .ingest_latency()
                    .observe(arrived.elapsed().as_secs_f64());
            }
            Ok(Stored::Duplicate) => {
                // Each batch has a new seq; the hub would only say this of a seq seen before.
                self.counters.not_stored.fetch_add(count, Relaxed);
                tracing::warn!(seq = self.seq, "the hub took a new batch for a duplicate");
            }
            Err(error) => {
                self.counters.not_stored.fetch_add(count, Relaxed);
                tracing::warn!(seq = self.seq, count,
                    error = %mapsentry_service::error::chain(&error), "storing a batch failed");
            }
        }
    }

    /// `event` as ingest holds it, checked as the agent stream's events are.
    fn attributed(&mut self, event: &MmapEvent) -> Result<Attributed, budgets::LimitError> {
        let attribution = event
            .attribution
            .as_ref()
            .map(|attribution| self.attributions.shared(event.cgroup_id, attribution))
            .transpose()?;
        let attributed = Attributed::new(convert::capture_fields(event), attribution);
        budgets::check_attributed(&attributed)?;
        Ok(attributed)
    }
}

/// Each cgroup's attribution converted once: the enricher shares one `Arc` per cgroup, so the
/// per-event path is a lookup and a pointer comparison. Holding the `Arc` keeps its pointer from
/// being reused.
#[derive(Debug, Default)]
struct Attributions {
    by_cgroup: HashMap<u64, (Arc<Attribution>, SharedAttribution)>,
}

impl Attributions {
    fn shared(
        &mut self,
        cgroup_id: u64,
        attribution: &Arc<Attribution>,
    ) -> Result<SharedAttribution, budgets::LimitError> {
        if let Some((seen, shared)) = self.by_cgroup.get(&cgroup_id)
            && Arc::ptr_eq(seen, attribution)
        {
            return Ok(shared.clone());
        }
        let wire = convert::attribution_to_wire(attribution);
        budgets::check_attribution(&wire)?;
        let shared = SharedAttribution::new(wire);
        if self.by_cgroup.len() >= MAX_CACHED_ATTRIBUTIONS {
            self.by_cgroup.clear();
        }
        self.by_cgroup
            .insert(cgroup_id, (Arc::clone(attribution), shared.clone()));
        Ok(shared)
    }
}

#[cfg(test)]
mod tests;
