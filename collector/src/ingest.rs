//! `AgentService`: one bidirectional stream per agent. Hello first (within [`HELLO_DEADLINE`]),
//! then batches (their attribution references resolved from the stream's dictionary, validated,
//! within the field limits of [`crate::budgets`], paced by the agent's ingest budget,
//! deduplicated, stored, then acked), attribution definitions (protocol V2) and loss reports.

mod attributions;
pub mod in_process;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mapsentry_proto::{
    convert,
    received::{ReceivedAgentMessage, server::agent_service_server::AgentService},
    v1::{self, AgentMessage, CollectorMessage, agent_message, collector_message},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

pub use self::{attributions::StreamAttributions, in_process::InProcess};
use crate::{
    budgets::{self, IngestBudget, LimitError},
    hub::{AgentInfo, Hub, Stored},
    nodes::NodesFull,
};

/// Acks queued per agent stream before ingest waits for the agent to read them.
const ACK_QUEUE: usize = 256;
/// How long a new agent stream may take to send its Hello.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the first message on AgentService.Connect must be Hello, got {got}")]
    NoHello { got: &'static str },
    #[error("Hello.version is missing (this collector speaks PROTOCOL_VERSION_V1 and V2)")]
    NoVersion,
    #[error(
        "Hello.version {version} is not supported (this collector speaks PROTOCOL_VERSION_V1 = 1 \
         and PROTOCOL_VERSION_V2 = 2)"
    )]
    Version { version: i32 },
    #[error("Hello.{field} is empty")]
    EmptyHelloField { field: &'static str },
    #[error("no Hello within {} s of opening the stream", HELLO_DEADLINE.as_secs())]
    HelloDeadline,
    #[error("{0}")]
    Hello(#[source] LimitError),
    #[error(transparent)]
    NodesFull(#[from] NodesFull),
    #[error("LossReport: {0}")]
    Loss(#[source] LimitError),
    #[error("EventBatch seq {seq}, event {index}: {source}")]
    EventLimit {
        seq: u64,
        index: usize,
        #[source]
        source: LimitError,
    },
    #[error("a second Hello on the same stream")]
    SecondHello,
    #[error("an AgentMessage without content")]
    Empty,
    #[error("EventBatch.seq must be at least 1")]
    ZeroSeq,
    #[error("EventBatch seq {seq} has {count} events, more than the limit of {max}")]
    TooManyEvents { seq: u64, count: usize, max: usize },
    #[error("storing EventBatch seq {seq} failed: {reason}")]
    Store { seq: u64, reason: String },
    #[error("Attributions on a protocol V1 stream (attribution ids need PROTOCOL_VERSION_V2)")]
    AttributionsOnV1,
    #[error("Attributions: the definition of id {id} has no attribution")]
    EmptyDefinition { id: u64 },
    #[error("Attributions: id {id} is defined again with a different attribution")]
    Redefined { id: u64 },
    #[error(
        "Attributions: defining id {id} would hold more than {max} attributions on this stream \
         (release ids no batch refers to any more)"
    )]
    TooManyAttributions { id: u64, max: usize },
    #[error("Attributions: the definition of id {id}: {source}")]
    DefinitionLimit {
        id: u64,
        #[source]
        source: LimitError,
    },
    #[error(
        "EventBatch seq {seq}, event {index}: attribution_ref {id} is not defined on this stream"
    )]
    UndefinedRef { seq: u64, index: usize, id: u64 },
    #[error("EventBatch seq {seq}, event {index}: {source}")]
    Event {
        seq: u64,
        index: usize,
        #[source]
        source: convert::ConvertError,
    },
}

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Version { .. } => Status::failed_precondition(error.to_string()),
            IngestError::Store { .. } => Status::unavailable(error.to_string()),
            IngestError::HelloDeadline => Status::deadline_exceeded(error.to_string()),
            IngestError::NodesFull(_) => Status::resource_exhausted(error.to_string()),
            _ => Status::invalid_argument(error.to_string()),
        }
    }
}

/// The `AgentService` of a collector.
#[derive(Debug, Clone)]
pub struct Ingest {
    hub: Arc<Hub>,
    max_batch_events: usize,
    /// The enforce-mode policy set pushed to every agent, if the collector publishes one.
    policy_sets: Option<watch::Receiver<Option<v1::PolicySet>>>,
    /// Where the agents' enforcement reports go.
    node_reports: Option<crate::NodeReports>,
    auth: Arc<crate::auth::Auth>,
    /// Each stream's ingest rate, bytes a second (0: no limit), and its burst.
    budget: (u64, u64),
}

impl Ingest {
    #[must_use]
    pub fn new(hub: Arc<Hub>, max_batch_events: usize) -> Self {
        Self {
            hub,
            max_batch_events,
            policy_sets: None,
            node_reports: None,
            auth: Arc::default(),
            budget: (0, 0),
        }
    }

    /// Pace each agent stream to `bytes_per_second` of batches (bursts of `burst` bytes, at
    /// least one second's worth; 0: no limit).
    #[must_use]
    pub fn with_budget(mut self, bytes_per_second: u64, burst: u64) -> Self {
        self.budget = (bytes_per_second, burst);
        self
    }

    /// Push the sets published on `sets` to every agent: the current one on connect, then each
    /// change (latest wins).
    #[must_use]
    pub fn with_policy_sets(mut self, sets: watch::Receiver<Option<v1::PolicySet>>) -> Self {
        self.policy_sets = Some(sets);
        self
    }

    /// Keep each agent's enforcement report in `reports`.
    #[must_use]
    pub fn with_node_reports(mut self, reports: crate::NodeReports) -> Self {
        self.node_reports = Some(reports);
        self
    }

    /// Refuse agent streams that `auth` does not admit.
    #[must_use]
    pub fn with_auth(mut self, auth: Arc<crate::auth::Auth>) -> Self {
        self.auth = auth;
        self
    }
}

/// The agent and the stream's (empty) attribution dictionary, from the stream's first message.
pub(crate) fn hello_of(
    message: Option<AgentMessage>,
) -> Result<(AgentInfo, StreamAttributions), IngestError> {
    let hello = match message.and_then(|m| m.msg) {
        Some(agent_message::Msg::Hello(hello)) => hello,
        Some(agent_message::Msg::Batch(_)) => {
            return Err(IngestError::NoHello { got: "EventBatch" });
        }
        Some(agent_message::Msg::Loss(_)) => {
            return Err(IngestError::NoHello { got: "LossReport" });
        }
        Some(agent_message::Msg::Enforcement(_)) => {
            return Err(IngestError::NoHello {
                got: "EnforcementReport",
            });
        }
        Some(agent_message::Msg::Attributions(_)) => {
            return Err(IngestError::NoHello {
                got: "Attributions",
            });
        }
        None => {
            return Err(IngestError::NoHello {
                got: "an empty message",
            });
        }
    };
    let version = match v1::ProtocolVersion::try_from(hello.version) {
        Ok(v1::ProtocolVersion::Unspecified) => return Err(IngestError::NoVersion),
        Ok(version) => version,
        Err(_) => {
            return Err(IngestError::Version {
                version: hello.version,
            });
        }
    };
    for (field, value) in [("node", &hello.node), ("boot_id", &hello.boot_id)] {
        if value.is_empty() {
            return Err(IngestError::EmptyHelloField { field });
        }
    }
    budgets::check_hello(&hello).map_err(IngestError::Hello)?;
    let agent = AgentInfo {
        node: hello.node,
        boot_id: hello.boot_id,
        kernel: hello.kernel,
        attach_mode: hello.attach_mode,
        started_unix_ns: hello.started_unix_ns,
    };
    Ok((agent, StreamAttributions::new(version)))
}

impl Ingest {
    /// Handle one message after Hello on a stream with dictionary `attributions`; returns the
    /// ack to send, if any.
    pub(crate) async fn handle(
        &self,
        agent: &AgentInfo,
        attributions: &mut StreamAttributions,
        message: ReceivedAgentMessage,
    ) -> Result<Option<u64>, IngestError> {
        let (message, calls) = message.into_parts();
        match message.msg {
            Some(agent_message::Msg::Batch(batch)) => {
                let arrived = Instant::now();
                if batch.seq == 0 {
                    return Err(IngestError::ZeroSeq);
                }
                if batch.events.len() > self.max_batch_events {
                    return Err(IngestError::TooManyEvents {
                        seq: batch.seq,
                        count: batch.events.len(),
                        max: self.max_batch_events,
                    });
                }
                let events = attributions.resolve(batch.seq, batch.events, calls)?;
                for (index, event) in events.iter().enumerate() {
                    convert::validate(event.event()).map_err(|source| IngestError::Event {
                        seq: batch.seq,
                        index,
                        source,
                    })?;
                    budgets::check_attributed(event).map_err(|source| IngestError::EventLimit {
                        seq: batch.seq,
                        index,
                        source,
                    })?;
                }
                let stored = self
                    .hub
                    .store(agent, batch.seq, events)
                    .await
                    .map_err(|e| IngestError::Store {
                        seq: batch.seq,
                        reason: mapsentry_service::error::chain(&e),
                    })?;
                if let Stored::New { first, count } = stored {
                    self.hub
                        .ingest_latency()
                        .observe(arrived.elapsed().as_secs_f64());
                    tracing::trace!(seq = batch.seq, first, count, "stored");
                }
                Ok(Some(batch.seq))
            }
            Some(agent_message::Msg::Loss(report)) => {
                budgets::check_loss_report(&report).map_err(IngestError::Loss)?;
                self.hub.agent_report(agent, report);
                Ok(None)
            }
            Some(agent_message::Msg::Enforcement(report)) => {
                tracing::debug!(node = %agent.node, version = report.policy_set_version,
                    persist_error = %report.persist_error, refused = report.refused.len(),
                    "enforcement report");
                if let Some(reports) = &self.node_reports {
                    reports.set(&agent.node, &report);
                }
                Ok(None)
            }
            Some(agent_message::Msg::Attributions(message)) => {
                attributions.apply(message)?;
                Ok(None)
            }
            Some(agent_message::Msg::Hello(_)) => Err(IngestError::SecondHello),
            None => Err(IngestError::Empty),
        }
    }

    async fn serve_stream(
        self,
        agent: AgentInfo,
        mut attributions: StreamAttributions,
        mut inbound: Streaming<ReceivedAgentMessage>,
        tx: mpsc::Sender<Result<CollectorMessage, Status>>,
    ) {
        let mut closed = self.hub.closed_watch();
        let mut budget = IngestBudget::new(self.budget.0, self.budget.1, std::time::Instant::now());
        let mut policy_sets = self.policy_sets.clone();
        if let Some(sets) = &mut policy_sets {
            sets.mark_changed();
        }
        loop {
            let message = tokio::select! {
                message = inbound.message() => Ok(message),
                _ = closed.wait_for(|c| *c) => break,
                () = tx.closed() => break,
                Some(set) = next_policy_set(policy_sets.as_mut()) => Err(set),
            };
            let message = match message {
                Ok(message) => message,
                Err(set) => {
                    tracing::info!(node = %agent.node, version = set.version, "pushing the policy set");
                    let push = CollectorMessage {
                        msg: Some(collector_message::Msg::PolicySet(set)),
                    };
                    if tx.send(Ok(push)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if let (Some(budget), Ok(Some(message))) = (budget.as_mut(), &message) {
                let wait = budget.take(message.wire_len(), std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = closed.wait_for(|c| *c) => break,
                    }
                }
            }
            let outcome = match message {
                Ok(Some(message)) => self
                    .handle(&agent, &mut attributions, message)
                    .await
                    .map_err(Status::from),
                Ok(None) => break,
                Err(status) => Err(status),
            };
            match outcome {
                Ok(Some(seq)) => {
                    let ack = CollectorMessage {
                        msg: Some(collector_message::Msg::Ack(v1::Ack { seq })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    tracing::warn!(node = %agent.node, %status, "ending an agent stream");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
        }
        self.hub.agent_disconnected(&agent.node);
        tracing::info!(node = %agent.node, boot_id = %agent.boot_id, "agent stream ended");
    }
}

#[tonic::async_trait]
impl AgentService for Ingest {
    type ConnectStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<ReceivedAgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.auth.agent(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_DEADLINE, inbound.message())
            .await
            .map_err(|_| IngestError::HelloDeadline)??;
        let (agent, attributions) = hello_of(first.map(|first| first.message))?;
        tracing::info!(node = %agent.node, boot_id = %agent.boot_id, kernel = %agent.kernel,
            mode = %agent.attach_mode, "agent connected");
        // A restart (new boot id) is announced to subscribers by the hub.
        self.hub
            .agent_connected(&agent)
            .map_err(IngestError::from)?;
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let span = tracing::info_span!("agent", node = %agent.node);
        tokio::spawn(
            self.clone()
                .serve_stream(agent, attributions, inbound, tx)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The next set published on `sets` (pending forever without a publisher or once it is gone).
async fn next_policy_set(
    sets: Option<&mut watch::Receiver<Option<v1::PolicySet>>>,
) -> Option<v1::PolicySet> {
    let Some(sets) = sets else {
        return std::future::pending().await;
    };
    loop {
        if sets.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(set) = sets.borrow_and_update().clone() {
            return Some(set);
        }
    }
}

#[cfg(test)]
mod tests;
