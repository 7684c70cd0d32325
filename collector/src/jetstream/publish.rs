//! Ingest on the backbone: an agent batch becomes one message (or a few, [`wire::split`]) on its
//! node's subject, and the agent's ack waits for JetStream's.
//!
//! Each node's subject is a chain: every message is published with
//! `Nats-Expected-Last-Subject-Sequence` set to the sequence of the node's previous message, so
//! JetStream stores it only if nobody wrote the node's subject meanwhile. A replica keeps the
//! chain's head per node ([`Chain`]: the last message's sequence, boot id, batch seq and part);
//! when the publish is refused (another replica served the node meanwhile: a failover, an agent
//! that reconnected elsewhere), it reads the head from the stream and decides again. So whether
//! a batch is stored already is decided against the one true last message of its node, by any
//! replica, at any time, not within a time window; the message id (`node/boot/seq`) and
//! JetStream's duplicate window are a second guard against a publish whose ack was lost.
//!
//! A new boot id on a node's chain is an agent restart: its notice is published on the node's
//! subject (once, by the same compare-and-set) before the new agent's first batch, so every
//! replica's subscribers get it in stream order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use async_nats::jetstream::{
    context::PublishErrorKind, message::PublishMessage, stream::LastRawMessageErrorKind,
};
use mapsentry_proto::v1;
use prost::Message as _;

use super::{
    Backbone, JetStreamError,
    wire::{self, Cursor, StoredBatch},
};
use crate::nodes::AgentInfo;

/// Publishes refused by a newer head before giving up (each one re-reads the head).
const MAX_CONFLICTS: usize = 8;
/// Chains kept per replica; beyond, all are forgotten (each is re-read from the stream).
const MAX_CHAINS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    NotReady(#[from] JetStreamError),
    #[error("reading the last message of {subject}")]
    Head {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::LastRawMessageError,
    },
    #[error("the last message of {subject} (sequence {sequence}) is not a stored batch")]
    Decode {
        subject: String,
        sequence: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error("publishing to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("{subject} kept changing under {attempts} publishes (other replicas writing it)")]
    Contended { subject: String, attempts: usize },
}

/// What became of a batch on the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored: the first event's cursor and how many events were stored now.
    New { first: u64, count: u64 },
    /// Stored before (by this replica or another).
    Duplicate,
}

/// The head of one node's chain as this replica knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The stream sequence of the node's last message (0: the node has none retained).
    pub last: u64,
    pub boot_id: String,
    pub seq: u64,
    pub part: u32,
    pub parts: u32,
    pub boot_events: u64,
    pub last_event_ns: u64,
    pub captured: u64,
}

impl Chain {
    fn from_stored(last: u64, stored: &StoredBatch) -> Self {
        Self {
            last,
            boot_id: stored.boot_id.clone(),
            seq: stored.seq,
            part: stored.part,
            parts: stored.parts,
            boot_events: stored.boot_events,
            last_event_ns: stored.last_event_ns,
            captured: stored.captured,
        }
    }

    /// Where batch `seq` of `boot_id` stands on this chain: already stored whole, stored up to a
    /// part (the next part to publish), or not at all (0).
    fn stored_parts(&self, boot_id: &str, seq: u64) -> Option<u32> {
        if self.boot_id != boot_id || self.seq < seq {
            return Some(0);
        }
        if self.seq > seq || self.part + 1 >= self.parts {
            return None;
        }
        Some(self.part + 1)
    }
}

/// The chains this replica has heads for, each behind its own lock (one publisher per node at a
/// time on this replica).
#[derive(Debug, Default)]
pub struct Chains(Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Chain>>>>>);

impl Chains {
    fn get(&self, node: &str) -> Arc<tokio::sync::Mutex<Option<Chain>>> {
        let mut chains = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if chains.len() >= MAX_CHAINS && !chains.contains_key(node) {
            chains.clear();
        }
        Arc::clone(chains.entry(node.to_owned()).or_default())
    }
}

impl Backbone {
    /// Store agent batch `seq` of `events` (validated) on its node's subject, unless the chain
    /// shows it stored already; returns once JetStream has acked every part. `captured` is what
    /// the agent last reported it captured (kept in the message for a later restart notice).
    pub async fn publish_batch(
        &self,
        agent: &AgentInfo,
        seq: u64,
        events: &[v1::Event],
        captured: u64,
    ) -> Result<Published, PublishError> {
        let streams = self.streams()?;
        let subject = wire::event_subject(&agent.node, streams.partitions);
        let parts = wire::split(events);
        let lock = self.chains.get(&agent.node);
        let mut held = lock.lock().await;
        let mut conflicts = 0;
        'attempt: loop {
            if conflicts > MAX_CONFLICTS {
                return Err(PublishError::Contended {
                    subject,
                    attempts: conflicts,
                });
            }
            let chain = match held.as_mut() {
                Some(chain) => chain,
                None => held.insert(self.read_head(&subject).await?),
            };
            let Some(next_part) = chain.stored_parts(&agent.boot_id, seq) else {
                self.metrics.duplicates.inc();
                return Ok(Published::Duplicate);
            };
            if chain.boot_id != agent.boot_id && !chain.boot_id.is_empty() {
                match self.publish_restart(&subject, chain, agent).await {
                    Ok(()) => {}
                    Err(Outcome::Conflict) => {
                        conflicts += 1;
                        *held = None;
                        continue 'attempt;
                    }
                    Err(Outcome::Failed(error)) => {
                        *held = None;
                        return Err(error);
                    }
                }
            } else if chain.boot_id.is_empty() {
                chain.boot_id.clone_from(&agent.boot_id);
            }
            let total_parts = parts.len() as u32;
            let mut first = None;
            let mut count = 0;
            for (part, range) in parts.iter().enumerate().skip(next_part as usize) {
                let part = part as u32;
                let slice = &events[range.clone()];
                let last_event_ns = slice
                    .iter()
                    .map(|e| e.time_ns)
                    .fold(chain.last_event_ns, u64::max);
                let stored = StoredBatch {
                    node: agent.node.clone(),
                    boot_id: agent.boot_id.clone(),
                    seq,
                    part,
                    parts: total_parts,
                    events: slice.to_vec(),
                    boot_events: chain.boot_events + slice.len() as u64,
                    last_event_ns,
                    captured,
                    restart: None,
                };
                let message = PublishMessage::build()
                    .payload(wire::encode(&stored))
                    .message_id(wire::batch_message_id(
                        &agent.node,
                        &agent.boot_id,
                        seq,
                        part,
                        total_parts,
                    ))
                    .expected_last_subject_sequence(chain.last)
                    .header(wire::EVENTS_HEADER, slice.len().to_string())
                    .header(wire::KIND_HEADER, "batch");
                match self.publish(&subject, message).await {
                    Ok((sequence, false)) => {
                        *chain = Chain::from_stored(sequence, &stored);
                        first.get_or_insert(Cursor::new(sequence, 0).encode());
                        count += slice.len() as u64;
                    }
                    Ok((_, true)) => {
                        // Stored before under this id (a publish whose ack was lost): the head
                        // is not known any more; read it and decide again.
                        *held = None;
                        continue 'attempt;
                    }
                    Err(Outcome::Conflict) => {
                        conflicts += 1;
                        *held = None;
                        continue 'attempt;
                    }
                    Err(Outcome::Failed(error)) => {
                        *held = None;
                        return Err(error);
                    }
                }
            }
            return Ok(match first {
                Some(first) => Published::New { first, count },
                None => Published::Duplicate,
            });
        }
    }

    /// Publish the restart notice of `agent`'s node (the chain's head is the previous boot's).
    async fn publish_restart(
        &self,
        subject: &str,
        chain: &mut Chain,
        agent: &AgentInfo,
    ) -> Result<(), Outcome> {
        let notice = v1::AgentRestart {
            node: agent.node.clone(),
            previous_boot_id: chain.boot_id.clone(),
            boot_id: agent.boot_id.clone(),
            previous_last_event_ns: chain.last_event_ns,
            started_unix_ns: agent.started_unix_ns,
            previous_captured: chain.captured,
            previous_acked: chain.boot_events,
        };
        let stored = StoredBatch {
            node: agent.node.clone(),
            boot_id: agent.boot_id.clone(),
            restart: Some(notice),
            ..StoredBatch::default()
        };
        let message = PublishMessage::build()
            .payload(wire::encode(&stored))
            .message_id(wire::restart_message_id(&agent.node, &agent.boot_id))
            .expected_last_subject_sequence(chain.last)
            .header(wire::EVENTS_HEADER, "0")
            .header(wire::KIND_HEADER, "restart");
        let (sequence, duplicate) = self.publish(subject, message).await?;
        if duplicate {
            return Err(Outcome::Conflict);
        }
        self.metrics.restarts.inc();
        tracing::warn!(node = %agent.node, previous_boot_id = %chain.boot_id, boot_id = %agent.boot_id,
            "the agent restarted: its capture had a gap (notice published)");
        *chain = Chain::from_stored(sequence, &stored);
        Ok(())
    }

    /// Publish one message and wait for JetStream's ack: its sequence, and whether it was a
    /// duplicate of a stored message id.
    async fn publish(
        &self,
        subject: &str,
        message: PublishMessage,
    ) -> Result<(u64, bool), Outcome> {
        let started = Instant::now();
        let result = match self
            .context()
            .send_publish(subject.to_owned(), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        match result {
            Ok(ack) => {
                self.metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.acks.inc();
                Ok((ack.sequence, ack.duplicate))
            }
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                self.metrics.conflicts.inc();
                Err(Outcome::Conflict)
            }
            Err(source) => {
                self.metrics.errors.inc();
                Err(Outcome::Failed(PublishError::Publish {
                    subject: subject.to_owned(),
                    source,
                }))
            }
        }
    }

    /// The head of `subject`'s chain, read from the stream's leader.
    async fn read_head(&self, subject: &str) -> Result<Chain, PublishError> {
        let streams = self.streams()?;
        match streams
            .events
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(message) => {
                let stored = StoredBatch::decode(message.payload.as_ref()).map_err(|source| {
                    PublishError::Decode {
                        subject: subject.to_owned(),
                        sequence: message.sequence,
                        source,
                    }
                })?;
                Ok(Chain::from_stored(message.sequence, &stored))
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok(Chain::default())
            }
            Err(source) => Err(PublishError::Head {
                subject: subject.to_owned(),
                source,
            }),
        }
    }
}

/// How one publish went wrong.
enum Outcome {
    /// The subject's head moved: re-read it and decide again.
    Conflict,
    Failed(PublishError),
}

impl From<Outcome> for PublishError {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Conflict => PublishError::Contended {
                subject: String::new(),
                attempts: 1,
            },
            Outcome::Failed(error) => error,
        }
    }
}

#[cfg(test)]
mod tests;
