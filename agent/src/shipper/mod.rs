//! Ships captured events to a collector over one bidirectional gRPC stream
//! (`mapsentry.v1.AgentService/Connect`): Hello, then batches with sequence numbers (sealed by
//! size and time) and periodic loss reports; the collector acks stored batches. Protocol V2:
//! events carry an id of their attribution, each defined once per stream right before the
//! first batch on that stream that refers to it ([`dictionary`]).
//!
//! The shipper never blocks capture for long: events go into a bounded buffer (in bytes) that
//! drops its oldest batches when full and counts them. While the collector is away it reconnects
//! with exponential backoff and jitter, then resends every batch not yet acked (the collector
//! drops duplicates by node, boot id and seq).

pub mod backoff;
pub mod buffer;
pub mod dictionary;
pub mod encoded;

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use mapsentry_policy::MmapEvent;
use mapsentry_proto::client::{self, BearerToken, ClientError, ClientSecurity};
use mapsentry_proto::v1::{
    self, AgentMessage, CollectorMessage, agent_message::Msg, collector_message,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Endpoint};
use tracing::Instrument as _;

use self::{
    backoff::Backoff,
    buffer::{Buffer, Limits},
    encoded::Encoded,
};

/// Drop reasons as reported to the collector.
pub const DROPPED_RING_BUFFER_FULL: &str = "ring_buffer_full";
pub const DROPPED_MALFORMED: &str = "malformed";
pub const DROPPED_BUFFER_FULL: &str = "buffer_full";
pub const DROPPED_UNACKED_AT_EXIT: &str = "unacked_at_exit";

/// Batches of events queued between capture and the shipper task.
const INPUT_QUEUE: usize = 64;
/// Messages queued on one collector stream.
const OUTBOUND_QUEUE: usize = 16;
/// How long the shipper waits for the collector to close the stream when it stops.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("collector URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("the shipper task has stopped")]
    Stopped,
    #[error(transparent)]
    Client(#[from] ClientError),
}

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// `http://host:port` of the collector.
    pub collector: String,
    pub node: String,
    pub kernel: String,
    pub attach_mode: String,
    pub capabilities: Vec<String>,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    /// A batch is sent at the latest this long after its first event. 10 ms, the ring buffer's
    /// drain interval: at 10,000 events/s that is batches of ~100 and adds ~5 ms to the median
    /// syscall-to-subscriber latency (100 ms, the first choice, made the median 61 ms and 20 ms
    /// made it 26 ms with a p99 of 54 ms; BENCHMARKS.md, pipeline).
    pub batch_max_delay: Duration,
    /// Bytes of events held while the collector is slow or away.
    pub buffer_bytes: usize,
    pub backoff: Backoff,
    pub report_interval: Duration,
    /// How long `finish` waits for the last acks.
    pub flush_timeout: Duration,
    /// Where policy sets pushed by the collector go (latest wins), if this agent enforces.
    pub policy_sets: Option<watch::Sender<Option<v1::PolicySet>>>,
    /// TLS files and bearer token for an `https://` collector.
    pub security: ClientSecurity,
}

impl ShipperConfig {
    #[must_use]
    pub fn new(collector: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            collector: collector.into(),
            node: node.into(),
            kernel: kernel_release(),
            attach_mode: String::new(),
            capabilities: Vec::new(),
            batch_max_events: 1024,
            batch_max_bytes: 1 << 20,
            batch_max_delay: Duration::from_millis(10),
            buffer_bytes: 64 << 20,
            backoff: Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            report_interval: Duration::from_secs(1),
            flush_timeout: Duration::from_secs(5),
            policy_sets: None,
            security: ClientSecurity::default(),
        }
    }
}

/// The running kernel's release (`uname -r`), empty if unreadable.
#[must_use]
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A fresh id for this agent process: the kernel's random UUID, or time and pid without it.
#[must_use]
pub fn new_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_or_else(
        |_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-{}", now.as_nanos(), std::process::id())
        },
        |s| s.trim().to_owned(),
    )
}

/// What the shipper counted (cumulative for this boot id). At rest,
/// `captured = acked + dropped[buffer_full] + dropped[unacked_at_exit] + buffered`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipperStats {
    /// Events handed to the shipper.
    pub captured: u64,
    /// Events sent to a collector at least once.
    pub shipped: u64,
    /// Events in batches the collector acked.
    pub acked: u64,
    /// Events lost on the node, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub buffered_events: u64,
    pub buffered_bytes: u64,
    pub connected: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Batches sent again after a reconnect.
    pub resent_batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    shipped: AtomicU64,
    acked: AtomicU64,
    ring_buffer_full: AtomicU64,
    malformed: AtomicU64,
    buffer_full: AtomicU64,
    unacked_at_exit: AtomicU64,
    buffered_events: AtomicU64,
    buffered_bytes: AtomicU64,
    connected: AtomicBool,
    connects: AtomicU64,
    resent_batches: AtomicU64,
    /// Why the collector refused the last connection (credentials), if it did.
    refused: std::sync::Mutex<Option<String>>,
    /// The latest enforcement report and its revision (0: none yet), sent on each connection
    /// and again when it changes.
    enforcement: std::sync::Mutex<(u64, Option<v1::EnforcementReport>)>,
}

impl Counters {
    fn snapshot(&self) -> ShipperStats {
        let dropped = [
            (DROPPED_RING_BUFFER_FULL, &self.ring_buffer_full),
            (DROPPED_MALFORMED, &self.malformed),
            (DROPPED_BUFFER_FULL, &self.buffer_full),
            (DROPPED_UNACKED_AT_EXIT, &self.unacked_at_exit),
        ]
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count.load(Relaxed)))
        .filter(|(_, count)| *count > 0)
        .collect();
        ShipperStats {
            captured: self.captured.load(Relaxed),
            shipped: self.shipped.load(Relaxed),
            acked: self.acked.load(Relaxed),
            dropped,
            buffered_events: self.buffered_events.load(Relaxed),
            buffered_bytes: self.buffered_bytes.load(Relaxed),
            connected: self.connected.load(Relaxed),
            connects: self.connects.load(Relaxed),
            resent_batches: self.resent_batches.load(Relaxed),
        }
    }

    fn report(&self) -> v1::LossReport {
        let stats = self.snapshot();
        v1::LossReport {
            dropped: stats.dropped.into_iter().collect(),
            captured: stats.captured,
            shipped: stats.shipped,
        }
    }
}

/// Handle of a running shipper task.
#[derive(Debug)]
pub struct Shipper {
    input: mpsc::Sender<Vec<MmapEvent>>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
    boot_id: String,
}

impl Shipper {
    /// Start shipping to `config.collector` (connecting in the background). Must run inside a
    /// tokio runtime.
    pub fn start(config: ShipperConfig) -> Result<Self, ShipperError> {
        let (endpoint, token) =
            client::endpoint(&config.collector, &config.security).map_err(|e| match e {
                ClientError::Url { url, reason } => ShipperError::Url { url, reason },
                other => ShipperError::Client(other),
            })?;
        let endpoint = endpoint
            .tcp_nodelay(true)
            // A collector that vanished without closing the connection is noticed within ~40 s.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let boot_id = new_boot_id();
        let (input, rx) = mpsc::channel(INPUT_QUEUE);
        let counters = Arc::new(Counters::default());
        let hello = v1::Hello {
            version: v1::ProtocolVersion::V2.into(),
            node: config.node.clone(),
            boot_id: boot_id.clone(),
            kernel: config.kernel.clone(),
            attach_mode: config.attach_mode.clone(),
            capabilities: config.capabilities.clone(),
            started_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        };
        let span = tracing::info_span!("shipper", collector = %config.collector);
        let task = tokio::spawn(
            Task {
                config,
                endpoint,
                token,
                hello,
                counters: Arc::clone(&counters),
                input: rx,
            }
            .run()
            .instrument(span),
        );
        Ok(Self {
            input,
            counters,
            task,
            boot_id,
        })
    }

    /// Why the collector refused the last connection attempt (authentication, permission or
    /// certificate), until a connection succeeds.
    #[must_use]
    pub fn refused(&self) -> Option<String> {
        lock(&self.counters.refused).clone()
    }

    /// This agent process's boot id, as sent in Hello.
    #[must_use]
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Hand over captured events. Waits only while the shipper task catches up on its input.
    pub async fn send(&self, events: Vec<MmapEvent>) -> Result<(), ShipperError> {
        if events.is_empty() {
            return Ok(());
        }
        self.counters
            .captured
            .fetch_add(events.len() as u64, Relaxed);
        self.input
            .send(events)
            .await
            .map_err(|_| ShipperError::Stopped)
    }

    /// What the agent enforces now (latest wins): sent to the collector on each connection and
    /// whenever it changes.
    pub fn set_enforcement(&self, report: v1::EnforcementReport) {
        let mut current = lock(&self.counters.enforcement);
        if current.1.as_ref() != Some(&report) {
            *current = (current.0 + 1, Some(report));
        }
    }

    /// Record losses before the shipper (cumulative counts, latest wins).
    pub fn set_capture_losses(&self, ring_buffer_full: u64, malformed: u64) {
        self.counters
            .ring_buffer_full
            .store(ring_buffer_full, Relaxed);
        self.counters.malformed.store(malformed, Relaxed);
    }

    #[must_use]
    pub fn stats(&self) -> ShipperStats {
        self.counters.snapshot()
    }

    /// Stop taking events, send what is buffered and wait for its acks (up to the configured
    /// flush timeout); what is still unacked then counts as dropped. Returns the final counters.
    pub async fn finish(self) -> ShipperStats {
        let Self {
            input,
            counters,
            task,
            ..
        } = self;
        drop(input);
        if let Err(error) = task.await {
            tracing::error!(%error, "the shipper task failed");
        }
        counters.snapshot()
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Link, tonic::Status>> + Send>>;

struct Link {
    out: mpsc::Sender<Encoded>,
    inbound: Streaming<CollectorMessage>,
}

struct Task {
    config: ShipperConfig,
    endpoint: Endpoint,
    token: Option<BearerToken>,
    hello: v1::Hello,
    counters: Arc<Counters>,
    input: mpsc::Receiver<Vec<MmapEvent>>,
}

async fn connect(
    endpoint: Endpoint,
    hello: v1::Hello,
    token: Option<BearerToken>,
) -> Result<Link, tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(mapsentry_service::error::chain(&e)))?;
    let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
    out.send(Encoded::from(AgentMessage {
        msg: Some(Msg::Hello(hello)),
    }))
    .await
    .map_err(|_| tonic::Status::internal("outbound queue closed"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &token {
        token.apply(&mut request);
    }
    let inbound = encoded::connect(channel, request).await?;
    Ok(Link { out, inbound })
}

async fn next_message(
    inbound: Option<&mut Streaming<CollectorMessage>>,
) -> Result<Option<CollectorMessage>, tonic::Status> {
    match inbound {
        Some(inbound) => inbound.message().await,
        None => std::future::pending().await,
    }
}

async fn reserve(out: Option<mpsc::Sender<Encoded>>) -> Option<mpsc::OwnedPermit<Encoded>> {
    match out {
        Some(out) => out.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self) {
        let mut buffer = Buffer::new(Limits {
            batch_max_events: self.config.batch_max_events,
            batch_max_bytes: self.config.batch_max_bytes,
            buffer_bytes: self.config.buffer_bytes,
        });
        let far = Instant::now() + Duration::from_hours(24 * 365);
        let mut out: Option<mpsc::Sender<Encoded>> = None;
        let mut inbound: Option<Streaming<CollectorMessage>> = None;
        let mut connecting: Option<Connecting> = None;
        let mut attempt = 0u32;
        let mut delays = self.config.backoff.delays();
        let mut retry_at = Instant::now();
        let mut next_send = 1u64;
        let mut batch_deadline = far;
        let mut input_open = true;
        let mut flush_deadline = far;
        let mut report_at = Instant::now();
        // The enforcement report revision this connection has.
        let mut enforcement_sent = 0u64;
        loop {
            if !input_open && (buffer.is_empty() || Instant::now() >= flush_deadline) {
                break;
            }
            if out.is_none() && connecting.is_none() && Instant::now() >= retry_at {
                connecting = Some(Box::pin(connect(
                    self.endpoint.clone(),
                    self.hello.clone(),
                    self.token.clone(),
                )));
            }
            let unsent = out.is_some() && buffer.get_mut(next_send).is_some();
            let wake = if out.is_none() && connecting.is_none() {
                retry_at
            } else {
                far
            };
            tokio::select! {
                events = self.input.recv(), if input_open => {
                    if let Some(events) = events {
                        if !buffer.has_open() {
                            batch_deadline = Instant::now() + self.config.batch_max_delay;
                        }
                        for event in &events {
                            buffer.push(event);
                        }
                        if !buffer.has_open() {
                            batch_deadline = far;
                        }
                    } else {
                        input_open = false;
                        buffer.seal();
                        flush_deadline = Instant::now() + self.config.flush_timeout;
                    }
                }
                () = sleep_until(batch_deadline), if buffer.has_open() => {
                    buffer.seal();
                    batch_deadline = far;
                }
                () = sleep_until(flush_deadline), if !input_open => {}
                () = sleep_until(wake), if wake != far => {}
                result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match result {
                        Ok(new) => {
                            tracing::info!(attempt, "connected to the collector");
                            self.counters.connected.store(true, Relaxed);
                            *lock(&self.counters.refused) = None;
                            self.counters.connects.fetch_add(1, Relaxed);
                            attempt = 0;
                            delays = self.config.backoff.delays();
                            next_send = buffer.first_seq();
                            buffer.new_stream();
                            report_at = Instant::now();
                            enforcement_sent = 0;
                            out = Some(new.out);
                            inbound = Some(new.inbound);
                        }
                        Err(status) => {
                            attempt += 1;
                            let delay = delays.next().unwrap_or(self.config.backoff.max);
                            if let Some(reason) = client::refusal(&status) {
                                tracing::error!(attempt, ?delay, %reason, "the collector refuses this agent");
                                *lock(&self.counters.refused) = Some(reason);
                            } else {
                                tracing::warn!(attempt, ?delay, %status, "cannot reach the collector");
                            }
                            retry_at = Instant::now() + delay;
                        }
                    }
                }
                permit = reserve(out.clone()), if unsent => {
                    let Some(permit) = permit else { continue };
                    // The attributions the batch refers to that this stream has not had yet go
                    // first; the batch itself with the next permit.
                    if let Some(definitions) = buffer.definitions(next_send) {
                        permit.send(Encoded::from(AgentMessage { msg: Some(Msg::Attributions(definitions)) }));
                    } else if let Some(batch) = buffer.get_mut(next_send) {
                        if batch.sent {
                            self.counters.resent_batches.fetch_add(1, Relaxed);
                        } else {
                            batch.sent = true;
                            self.counters.shipped.fetch_add(batch.count as u64, Relaxed);
                        }
                        permit.send(batch.message.clone());
                        next_send += 1;
                    }
                }
                () = sleep_until(report_at), if out.is_some() => {
                    report_at = Instant::now() + self.config.report_interval;
                    if let Some(out) = &out {
                        let _ = out.try_send(Encoded::from(AgentMessage { msg: Some(Msg::Loss(self.counters.report())) }));
                        let (revision, report) = lock(&self.counters.enforcement).clone();
                        if revision > enforcement_sent
                            && let Some(report) = report
                            && out.try_send(Encoded::from(AgentMessage { msg: Some(Msg::Enforcement(report)) })).is_ok()
                        {
                            enforcement_sent = revision;
                        }
                    }
                }
                message = next_message(inbound.as_mut()) => {
                    match message {
                        Ok(Some(CollectorMessage { msg: Some(collector_message::Msg::Ack(ack)) })) => {
                            let acked = buffer.ack(ack.seq);
                            self.counters.acked.fetch_add(acked, Relaxed);
                            next_send = next_send.max(buffer.first_seq());
                        }
                        Ok(Some(CollectorMessage { msg: Some(collector_message::Msg::PolicySet(set)) })) => {
                            tracing::info!(version = set.version, policies = set.policies_json.len(), "policy set received");
                            if let Some(sets) = &self.config.policy_sets {
                                sets.send_replace(Some(set));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            if let Err(status) = message {
                                tracing::warn!(%status, "collector stream failed");
                            } else {
                                tracing::info!("collector ended the stream");
                            }
                            out = None;
                            inbound = None;
                            self.counters.connected.store(false, Relaxed);
                            attempt += 1;
                            retry_at = Instant::now()
                                + delays.next().unwrap_or(self.config.backoff.max);
                        }
                    }
                }
            }
            // A batch dropped for room may have been the next to send.
            next_send = next_send.max(buffer.first_seq());
            let (events, bytes) = buffer.held();
            self.counters.buffered_events.store(events, Relaxed);
            self.counters.buffered_bytes.store(bytes as u64, Relaxed);
            self.counters.buffer_full.store(buffer.dropped, Relaxed);
        }
        let (left, _) = buffer.held();
        self.counters.unacked_at_exit.store(left, Relaxed);
        if let (Some(out), Some(mut inbound)) = (out.take(), inbound.take()) {
            // The final counters, then a clean end of the stream: close our side and wait for
            // the collector to close its side, so the last report is not cut off.
            let report = Encoded::from(AgentMessage {
                msg: Some(Msg::Loss(self.counters.report())),
            });
            let goodbye = async move {
                let _ = out.send(report).await;
                drop(out);
                while let Ok(Some(_)) = inbound.message().await {}
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
        }
        self.counters.buffered_events.store(0, Relaxed);
        self.counters.buffered_bytes.store(0, Relaxed);
        if left > 0 {
            tracing::warn!(
                events = left,
                "stopping with events the collector did not ack"
            );
        }
    }
}

#[cfg(test)]
mod tests;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
