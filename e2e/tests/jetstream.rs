//! Collector replicas on a real NATS JetStream (nats-server on loopback, started here): the
//! collector role (`mapsentry_collector::run`, as `mapsentry collector --jetstream` runs it) in
//! this process, driven over real gRPC by agent streams and subscribers.
//!
//! - a batch resent to another replica after a failover is stored once; a subscriber resumes on
//!   another replica from its cursor and gets every event once; a batch too large for one
//!   message is stored in parts under one cursor space;
//! - a cursor older than what the stream retains gets one loss notice with the exact count;
//! - NATS unreachable at start and mid-flow: clear errors, not ready, nothing acked that was not
//!   stored, recovery without a restart;
//! - a storm of W+X calls from one pod moved between two replicas is one alert series whose
//!   counts add up, and alerts resume from a cursor;
//! - the same storm under two replicas with a real kube-apiserver is one Kubernetes Event series
//!   with the storm's count, written by the holder of the Lease and carried on by the other
//!   after the holder crashed.
#![expect(
    clippy::float_cmp,
    reason = "metric counters are whole numbers, exact in f64"
)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use mapsentry_collector::{
    Config, HubConfig, ServerConfig,
    alerts::AlertConfig,
    app::{KubernetesConfig, LeaseConfig, PoliciesConfig},
    jetstream::{JetStreamConfig, NatsAuth, NatsTls, wire::Cursor},
    kube_events::EventsConfig,
};
use mapsentry_e2e::{
    kube_harness::{ApiServer, ChartTools, Kubectl, documents_of_kinds},
    nats::{Nats, free_port},
};
use mapsentry_proto::v1::{
    self, AgentMessage, CollectorMessage, Event, EventBatch, FileInfo, Hello, Kind, MmapArgs,
    PodAttribution, StatsRequest, SubscribeRequest, SubscribeResponse, agent_message::Msg,
    agent_service_client::AgentServiceClient, collector_message, event::Attribution,
    observer_client::ObserverClient, subscribe_response::Item,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};

/// One collector replica in this process, on a runtime of its own (so that a crash drops every
/// task it started, as a killed process would).
struct Replica {
    grpc: SocketAddr,
    metrics: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    task: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Replica {
    fn start(jetstream: JetStreamConfig, policies: Vec<PathBuf>) -> Self {
        Self::start_with(jetstream, policies, None)
    }

    /// With `kubernetes`: the policy objects, and the Events written by the Lease's holder.
    fn start_with(
        jetstream: JetStreamConfig,
        policies: Vec<PathBuf>,
        kubernetes: Option<KubernetesConfig>,
    ) -> Self {
        logs();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = Config {
            listen: grpc,
            metrics_listen: Some(metrics),
            policies: PoliciesConfig {
                files: policies,
                // Short windows: a storm's updates come within the test.
                alerts: AlertConfig {
                    window: Duration::from_secs(1),
                    ..AlertConfig::default()
                },
                export: mapsentry_collector::export::ExportConfig::default(),
                workload_labels: mapsentry_collector::metrics::WorkloadLabels::default(),
            },
            hub: HubConfig::default(),
            retention_log: None,
            server: ServerConfig::default(),
            kubernetes,
            jetstream: Some(jetstream),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the replica");
        let task = runtime.spawn(async move {
            mapsentry_collector::run(config, async {
                let _ = stopped.await;
            })
            .await
            .expect("the collector runs");
        });
        Self {
            grpc,
            metrics,
            runtime: Some(runtime),
            task,
            stop: Some(stop),
        }
    }

    async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Channel::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => return channel,
                Err(error) => {
                    assert!(Instant::now() < deadline, "replica {}: {error}", self.grpc);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `/readyz`: Ok when ready, else the body.
    async fn ready(&self) -> Result<(), String> {
        let (status, body) = http_get(self.metrics, "/readyz").await;
        if status == 200 { Ok(()) } else { Err(body) }
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.ready().await {
                Ok(()) => return,
                Err(body) => assert!(
                    Instant::now() < deadline,
                    "replica {} not ready within {within:?}: {body}",
                    self.grpc
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stop cleanly (the partitions' aggregations are published, the leases released).
    async fn stop(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("a replica stops within 30 s")
            .expect("the replica's task");
    }

    /// Stop abruptly: every task of the replica is dropped where it stands (no release, no
    /// flush, connections cut), as a kill would.
    fn crash(mut self) {
        drop(self.stop.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The replicas' logs (info and up, or `RUST_LOG`), in the output libtest shows for a failing
/// test.
fn logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// GET `path` on `addr` (HTTP/1.0, for `/readyz` and `/metrics`).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, "not listening".into());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn jetstream(nats: &Nats) -> JetStreamConfig {
    JetStreamConfig {
        partitions: 4,
        ..small(nats.url())
    }
}

/// Streams that fit the test servers' 4 GB stores, leases that expire in 3 s.
fn small(url: String) -> JetStreamConfig {
    JetStreamConfig {
        lease_ttl: Duration::from_secs(3),
        events_max_bytes: 256 << 20,
        alerts_max_bytes: 64 << 20,
        ..JetStreamConfig::new(url)
    }
}

/// A W+X mmap from pod `shop/web` (`pid` tells the calls apart), or a plain one.
fn event(pid: u32, wx: bool) -> Event {
    Event {
        time_ns: now_ns(),
        syscall: v1::Syscall::Mmap.into(),
        pid,
        tid: pid,
        ppid: 1,
        comm: "app".into(),
        cgroup_id: 77,
        args: Some(MmapArgs {
            length: 4096,
            prot: if wx { 7 } else { 3 },
            flags: 0x22,
            fd: -1,
            ..MmapArgs::default()
        }),
        ret: 0x7f00_0000_0000,
        attribution: Some(Attribution::Pod(Box::new(PodAttribution {
            namespace: Some("shop".into()),
            pod: Some("web".into()),
            container: Some("app".into()),
            resolved: true,
            ..PodAttribution::default()
        }))),
        ..Event::default()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn hello(node: &str, boot: &str) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version: v1::ProtocolVersion::V1.into(),
            node: node.into(),
            boot_id: boot.into(),
            kernel: "6.18".into(),
            attach_mode: "tracepoint".into(),
            capabilities: vec![],
            started_unix_ns: now_ns(),
        })),
    }
}

/// An agent stream to one replica.
struct Agent {
    out: mpsc::Sender<AgentMessage>,
    acks: Streaming<CollectorMessage>,
}

impl Agent {
    async fn open(channel: Channel, node: &str, boot: &str) -> Self {
        let (out, rx) = mpsc::channel(64);
        out.send(hello(node, boot)).await.unwrap();
        let acks = AgentServiceClient::new(channel)
            .max_encoding_message_size(16 << 20)
            .connect(ReceiverStream::new(rx))
            .await
            .expect("the agent stream opens")
            .into_inner();
        Self { out, acks }
    }

    /// Send batch `seq`; Ok when acked, Err(status) when the stream ended with it.
    async fn try_ship(&mut self, seq: u64, events: Vec<Event>) -> Result<(), tonic::Status> {
        self.out
            .send(AgentMessage {
                msg: Some(Msg::Batch(EventBatch { seq, events })),
            })
            .await
            .map_err(|_| tonic::Status::unavailable("stream closed"))?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(15), self.acks.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no ack within 15 s"))??;
            match message {
                Some(CollectorMessage {
                    msg: Some(collector_message::Msg::Ack(ack)),
                }) => {
                    assert_eq!(ack.seq, seq, "acks come in order");
                    return Ok(());
                }
                Some(_) => {}
                None => return Err(tonic::Status::unavailable("the collector ended the stream")),
            }
        }
    }

    /// The next policy set the replica pushes that holds a policy named `name`.
    async fn policy_set_with(&mut self, name: &str) -> v1::PolicySet {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.acks.message())
                .await
                .unwrap_or_else(|_| panic!("no policy set with {name} within 30 s"))
                .expect("the agent stream")
                .expect("the agent stream open");
            if let Some(collector_message::Msg::PolicySet(set)) = message.msg
                && set
                    .policies_json
                    .iter()
                    .any(|json| json.contains(&format!("\"name\":\"{name}\"")))
            {
                return set;
            }
        }
    }

    /// Say which set this agent enforces and why it could not persist it.
    async fn report(&self, version: u64, persist_error: &str) {
        self.out
            .send(AgentMessage {
                msg: Some(Msg::Enforcement(v1::EnforcementReport {
                    policy_set_version: version,
                    persist_error: persist_error.into(),
                    refused: vec![],
                })),
            })
            .await
            .expect("the agent stream open");
    }

    async fn ship(&mut self, seq: u64, events: Vec<Event>) {
        self.try_ship(seq, events)
            .await
            .unwrap_or_else(|status| panic!("batch {seq} not acked: {status}"));
    }
}

async fn subscribe(
    channel: Channel,
    request: SubscribeRequest,
) -> (v1::Started, Streaming<SubscribeResponse>) {
    let mut stream = ObserverClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .subscribe(request)
        .await
        .expect("subscribed")
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(Item::Started(started)) = first.item else {
        panic!("Started first, got {first:?}");
    };
    (started, stream)
}

async fn next_item(stream: &mut Streaming<SubscribeResponse>) -> Item {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an item within 20 s")
        .expect("stream ok")
        .expect("stream open")
        .item
        .expect("item set")
}

/// The next `n` events (other items are returned beside them).
async fn events(
    stream: &mut Streaming<SubscribeResponse>,
    n: usize,
) -> (Vec<v1::EventRecord>, Vec<Item>) {
    let mut records = Vec::new();
    let mut other = Vec::new();
    while records.len() < n {
        match next_item(stream).await {
            Item::Event(record) => records.push(record),
            item => other.push(item),
        }
    }
    (records, other)
}

/// An agent's batch through `replica` is acked, and a subscriber from the stream's start gets
/// its event.
async fn stores_and_serves(replica: &Replica) {
    let mut agent = Agent::open(replica.channel().await, "node-a", "boot-1").await;
    agent.ship(1, vec![event(1, false)]).await;
    let (_, mut sub) = subscribe(
        replica.channel().await,
        SubscribeRequest {
            since: Some(0),
            ..SubscribeRequest::default()
        },
    )
    .await;
    let (records, _) = events(&mut sub, 1).await;
    assert_eq!(records[0].event.as_ref().map(|e| e.pid), Some(1));
}

fn tmp() -> tempfile_dir::Dir {
    tempfile_dir::Dir::new()
}

/// A directory removed at the end of the test.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "mapsentry-jetstream-{}-{}",
                std::process::id(),
                super::now_ns()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_to_another_replica_is_stored_once_and_a_subscriber_resumes_on_another_replica()
 {
    let dir = tmp();
    let nats = Nats::single(dir.path());
    let a = Replica::start(jetstream(&nats), vec![]);
    let b = Replica::start(jetstream(&nats), vec![]);
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;

    // A live subscriber on A from the start.
    let (started, mut on_a) = subscribe(a.channel().await, SubscribeRequest::default()).await;
    assert!(
        started.alerts_next_cursor.is_some(),
        "a replica keeps alerts: {started:?}"
    );

    // Batches 1-3 through A, then the agent fails over to B and resends 2 and 3 (their acks
    // were lost), then sends 4.
    let mut agent = Agent::open(a.channel().await, "node-a", "boot-1").await;
    let batch = |seq: u64| -> Vec<Event> {
        (0..10)
            .map(|i| event((seq * 100 + i) as u32, false))
            .collect()
    };
    for seq in 1..=3 {
        agent.ship(seq, batch(seq)).await;
    }
    drop(agent);
    let mut agent = Agent::open(b.channel().await, "node-a", "boot-1").await;
    for seq in 2..=4 {
        agent.ship(seq, batch(seq)).await;
    }

    // A's subscriber reads half, then resumes on B from its cursor: every event once.
    let (first, _) = events(&mut on_a, 20).await;
    drop(on_a);
    let last = first.last().unwrap().cursor;
    let (_, mut on_b) = subscribe(
        b.channel().await,
        SubscribeRequest {
            since: Some(last),
            ..SubscribeRequest::default()
        },
    )
    .await;
    let (rest, other) = events(&mut on_b, 20).await;
    assert!(other.is_empty(), "nothing but events: {other:?}");
    let pids: Vec<u32> = first
        .iter()
        .chain(&rest)
        .map(|r| r.event.as_ref().unwrap().pid)
        .collect();
    let expected: Vec<u32> = (1..=4u32)
        .flat_map(|s| (0..10).map(move |i| s * 100 + i))
        .collect();
    assert_eq!(
        pids, expected,
        "every event once, in order, across the two replicas"
    );
    let cursors: Vec<u64> = first.iter().chain(&rest).map(|r| r.cursor).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursors grow: {cursors:?}"
    );
    // Four messages in the stream: the resent batches were not stored again.
    assert_eq!(Cursor::decode(*cursors.last().unwrap()).sequence, 4);
    // Stats read the stream's state as of the last second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = ObserverClient::new(b.channel().await)
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let node = stats.nodes.iter().find(|n| n.node == "node-a").unwrap();
    assert_eq!(node.duplicate_batches, 2, "{stats:?}");
    assert_eq!(stats.retained, 4, "{stats:?}");
    assert_eq!(stats.next_cursor, Cursor::new(5, 0).encode(), "{stats:?}");
    assert_eq!(
        b.metric("mapsentry_jetstream_publish_duplicates_total")
            .await,
        2.0
    );

    // A batch too large for one message (1024 events of ~600 bytes) is stored in parts, and
    // each event has its own cursor.
    let big: Vec<Event> = (0..1024)
        .map(|i| Event {
            file: Some(FileInfo {
                path: format!("/{}", "p".repeat(500)),
                inode: i,
                ..FileInfo::default()
            }),
            ..event(10_000 + i as u32, false)
        })
        .collect();
    agent.ship(5, big).await;
    let (big, _) = events(&mut on_b, 1024).await;
    let sequences: std::collections::BTreeSet<u64> = big
        .iter()
        .map(|r| Cursor::decode(r.cursor).sequence)
        .collect();
    assert!(sequences.len() >= 2, "stored in parts: {sequences:?}");
    assert_eq!(
        big.iter()
            .map(|r| r.event.as_ref().unwrap().pid)
            .collect::<Vec<_>>(),
        (10_000..11_024).collect::<Vec<_>>()
    );
    // Resent whole to A: a duplicate of every part.
    drop(agent);
    let mut agent = Agent::open(a.channel().await, "node-a", "boot-1").await;
    let again: Vec<Event> = (0..1024)
        .map(|i| Event {
            file: Some(FileInfo {
                path: format!("/{}", "p".repeat(500)),
                inode: i,
                ..FileInfo::default()
            }),
            ..event(10_000 + i as u32, false)
        })
        .collect();
    agent.ship(5, again).await;
    agent.ship(6, batch(6)).await;
    let (after, _) = events(&mut on_b, 10).await;
    assert_eq!(
        after[0].event.as_ref().unwrap().pid,
        600,
        "batch 5 was not stored twice"
    );

    // A new agent process on the node: one restart notice, in stream order, on every replica.
    drop(agent);
    let mut agent = Agent::open(a.channel().await, "node-a", "boot-2").await;
    agent.ship(1, batch(7)).await;
    let item = next_item(&mut on_b).await;
    let Item::AgentRestart(restart) = item else {
        panic!("a restart notice before the new agent's events, got {item:?}");
    };
    assert_eq!(
        (restart.previous_boot_id.as_str(), restart.boot_id.as_str()),
        ("boot-1", "boot-2")
    );
    assert_eq!(restart.previous_acked, 40 + 1024 + 10);
    let (new_boot, _) = events(&mut on_b, 10).await;
    assert_eq!(new_boot[0].event.as_ref().unwrap().pid, 700);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_stream_gets_the_exact_loss_count() {
    let dir = tmp();
    let nats = Nats::single(dir.path());
    // About 40 batches of 20 events fit; the oldest go beyond.
    let config = JetStreamConfig {
        events_max_bytes: 64 << 10,
        ..jetstream(&nats)
    };
    let replica = Replica::start(config, vec![]);
    replica.wait_ready(Duration::from_secs(20)).await;
    let mut agent = Agent::open(replica.channel().await, "node-a", "boot-1").await;
    let (_, mut live) = subscribe(replica.channel().await, SubscribeRequest::default()).await;
    // Batch sizes vary, so a count of messages would not do.
    let mut published = 0u64;
    let mut cursors = BTreeMap::new();
    for seq in 1..=120u64 {
        let n = 1 + (seq * 7) % 23;
        agent
            .ship(
                seq,
                (0..n)
                    .map(|i| event((seq * 100 + i) as u32, false))
                    .collect(),
            )
            .await;
        let (records, _) = events(&mut live, n as usize).await;
        for record in records {
            cursors.insert(published, record.cursor);
            published += 1;
        }
        if seq % 20 == 0 {
            // Give the ledger keeper a moment (it writes once a second).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Resume after event #10: long gone.
    let (started, mut resumed) = subscribe(
        replica.channel().await,
        SubscribeRequest {
            since: Some(cursors[&10]),
            ..SubscribeRequest::default()
        },
    )
    .await;
    assert!(
        started.oldest_cursor > cursors[&10],
        "retention moved on: {started:?}"
    );
    let Item::Loss(loss) = next_item(&mut resumed).await else {
        panic!("a loss notice first");
    };
    assert_eq!(loss.reason, v1::LossReason::Retention as i32);
    let mut received = 0u64;
    while received + loss.count + 11 < published {
        match next_item(&mut resumed).await {
            Item::Event(_) => received += 1,
            other => panic!("only events after the notice, got {other:?}"),
        }
    }
    assert_eq!(
        loss.count + received + 11,
        published,
        "lost + received = everything after the cursor"
    );
    assert_eq!(
        replica
            .metric("mapsentry_jetstream_inexact_loss_notices_total")
            .await,
        0.0
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_and_mid_flow_acks_nothing_unstored_and_recovers_without_a_restart()
 {
    let dir = tmp();
    // A port nothing listens on yet: the replica starts, unready, and says why. It stays bound
    // (not listening: connections to it are refused) until NATS takes it, so that no port the
    // replica picks can be this one (its gRPC port once was, and NATS could not start).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let port = reserved.local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    let replica = Replica::start(small(url.clone()), vec![]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        match replica.ready().await {
            Err(body) if body.contains("NATS") => break body,
            _ => {
                assert!(Instant::now() < deadline, "no not-ready reason naming NATS");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(reason.contains(&url), "the reason names the URL: {reason}");
    // A batch is refused, not acked.
    let mut agent = Agent::open(replica.channel().await, "node-a", "boot-1").await;
    let refused = agent.try_ship(1, vec![event(1, false)]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("NATS"), "{refused}");

    // NATS comes up on that port: ready without a restart, the resent batch stored once.
    drop(reserved);
    let mut nats = Nats::single_on(dir.path(), port);
    replica.wait_ready(Duration::from_secs(30)).await;
    let mut agent = Agent::open(replica.channel().await, "node-a", "boot-1").await;
    agent.ship(1, vec![event(1, false)]).await;
    let (_, mut sub) = subscribe(
        replica.channel().await,
        SubscribeRequest {
            since: Some(0),
            ..SubscribeRequest::default()
        },
    )
    .await;
    let (got, _) = events(&mut sub, 1).await;
    assert_eq!(got[0].event.as_ref().unwrap().pid, 1);

    // Mid-flow: NATS killed. Not ready, batches not acked; back: acked, stored once.
    nats.kill9(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.ready().await.is_ok() {
        assert!(Instant::now() < deadline, "still ready with NATS gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = agent.try_ship(2, vec![event(2, false)]).await.unwrap_err();
    assert!(
        matches!(refused.code(), tonic::Code::Unavailable),
        "batch 2 is not acked while NATS is away: {refused}"
    );
    nats.restart(0);
    replica.wait_ready(Duration::from_secs(30)).await;
    let mut agent = Agent::open(replica.channel().await, "node-a", "boot-1").await;
    agent.ship(2, vec![event(2, false)]).await;
    agent.ship(3, vec![event(3, false)]).await;
    let (_, mut sub) = subscribe(
        replica.channel().await,
        SubscribeRequest {
            since: Some(got[0].cursor),
            ..SubscribeRequest::default()
        },
    )
    .await;
    let (after, _) = events(&mut sub, 2).await;
    assert_eq!(
        after
            .iter()
            .map(|r| r.event.as_ref().unwrap().pid)
            .collect::<Vec<_>>(),
        vec![2, 3],
        "each batch once"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_moved_between_replicas_is_one_alert_series_and_alerts_resume_from_a_cursor() {
    let dir = tmp();
    let nats = Nats::single(dir.path());
    let policy = dir.path().join("wx.yaml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/policies/write-execute.yaml"
        ),
        &policy,
    )
    .unwrap();
    let a = Replica::start(jetstream(&nats), vec![policy.clone()]);
    let b = Replica::start(jetstream(&nats), vec![policy.clone()]);
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;
    // Both hold partitions before the storm.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.metric("mapsentry_jetstream_partitions_owned").await < 1.0
        || b.metric("mapsentry_jetstream_partitions_owned").await < 1.0
        || a.metric("mapsentry_jetstream_partitions_owned").await
            + b.metric("mapsentry_jetstream_partitions_owned").await
            < 4.0
    {
        assert!(
            Instant::now() < deadline,
            "partitions not shared within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alerts_only = SubscribeRequest {
        kinds: vec![Kind::Alerts as i32],
        ..SubscribeRequest::default()
    };
    let (_, mut alerts) = subscribe(b.channel().await, alerts_only.clone()).await;

    // 300 W+X calls through A, then the agent moves to B and makes 200 more; then A crashes.
    let mut agent = Agent::open(a.channel().await, "node-a", "boot-1").await;
    for seq in 1..=30u64 {
        agent
            .ship(
                seq,
                (0..10)
                    .map(|i| event((seq * 100 + i) as u32, true))
                    .collect(),
            )
            .await;
    }
    drop(agent);
    let mut agent = Agent::open(b.channel().await, "node-a", "boot-1").await;
    for seq in 31..=50u64 {
        agent
            .ship(
                seq,
                (0..10)
                    .map(|i| event((seq * 100 + i) as u32, true))
                    .collect(),
            )
            .await;
    }
    a.crash();
    // The series' updates: the first at 1, counts never going back, the last 500 (the crash's
    // partitions are taken over after the ttl, and the 1 s window publishes the rest).
    let mut counts = Vec::new();
    let mut cursors = Vec::new();
    let deadline = Instant::now() + Duration::from_mins(1);
    while counts.last() != Some(&500) {
        assert!(
            Instant::now() < deadline,
            "the series did not reach 500: {counts:?}"
        );
        let item = tokio::time::timeout(Duration::from_secs(20), alerts.message())
            .await
            .unwrap_or_else(|_| panic!("no alert update within 20 s after {counts:?}"))
            .expect("stream ok")
            .expect("stream open")
            .item;
        if let Some(Item::Alert(alert)) = item {
            assert_eq!(
                (alert.namespace.as_deref(), alert.pod.as_deref()),
                (Some("shop"), Some("web"))
            );
            assert_eq!(alert.policy, "write-execute");
            counts.push(alert.count);
            cursors.push(alert.cursor);
        }
    }
    assert_eq!(counts[0], 1, "one series, begun once: {counts:?}");
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "counts only grow: {counts:?}"
    );

    // Alerts resume from a cursor: a subscriber that had the first update gets the others.
    let (_, mut resumed) = subscribe(
        b.channel().await,
        SubscribeRequest {
            alerts_since: Some(cursors[0]),
            ..alerts_only
        },
    )
    .await;
    let mut again = Vec::new();
    while again.len() < counts.len() - 1 {
        if let Item::Alert(alert) = next_item(&mut resumed).await {
            again.push(alert.count);
        }
    }
    assert_eq!(
        again,
        counts[1..],
        "the updates after the cursor, each once"
    );
    b.stop().await;
}

/// A real kube-apiserver with the chart's CRDs (the replicas watch policy objects too) and the
/// namespaces `shop` and `mapsentry`; the replicas' Kubernetes configuration (the Lease
/// `mapsentry/mapsentry-collector`).
fn kubernetes(name: &str) -> (ApiServer, Kubectl, KubernetesConfig) {
    let (server, admin) = tokio::task::block_in_place(|| {
        let tools = ChartTools::ensure();
        let server = ApiServer::start(name);
        let admin = Kubectl::new(&tools.kubectl, &server.admin_kubeconfig());
        let rendered = tools.render_chart("mapsentry", "mapsentry", &[]);
        admin.apply(&documents_of_kinds(
            &rendered,
            &["CustomResourceDefinition"],
        ));
        admin.run(
            &[
                "wait",
                "--for=condition=established",
                "--timeout=30s",
                "crd/mmappolicies.mapsentry.dev",
                "crd/clustermmappolicies.mapsentry.dev",
            ],
            None,
        );
        for namespace in ["shop", "mapsentry"] {
            admin.run(&["create", "namespace", namespace], None);
        }
        (server, admin)
    });
    let kubernetes = KubernetesConfig {
        kubeconfig: Some(server.admin_kubeconfig()),
        events: EventsConfig::default(),
        lease: LeaseConfig {
            namespace: Some("mapsentry".into()),
            name: "mapsentry-collector".into(),
        },
    };
    (server, admin, kubernetes)
}

/// Wait until replica `r` holds the Kubernetes Lease.
async fn wait_leading(r: &Replica, within: Duration) {
    let deadline = Instant::now() + within;
    while r.metric("mapsentry_kube_leader").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "replica {} did not take the Lease within {within:?}",
            r.grpc
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `MmapPolicyViolation` Events (events.k8s.io/v1) of `namespace`.
fn violation_events(admin: &Kubectl, namespace: &str) -> Vec<serde_json::Value> {
    let events = admin.json(&["get", "events.events.k8s.io", "-n", namespace]);
    events["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reason"] == "MmapPolicyViolation")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_under_two_replicas_is_one_kubernetes_event_series_across_a_lease_takeover() {
    let dir = tmp();
    let nats = Nats::single(dir.path());
    let (server, admin, kubernetes) = kubernetes("jetstream-events");
    let policy = dir.path().join("wx.yaml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/policies/write-execute.yaml"
        ),
        &policy,
    )
    .unwrap();
    let a = Replica::start_with(
        jetstream(&nats),
        vec![policy.clone()],
        Some(kubernetes.clone()),
    );
    a.wait_ready(Duration::from_secs(30)).await;
    // A leads: it started first, and holds the Lease before B exists.
    wait_leading(&a, Duration::from_secs(20)).await;
    let b = Replica::start_with(jetstream(&nats), vec![policy.clone()], Some(kubernetes));
    b.wait_ready(Duration::from_secs(30)).await;

    // 300 W+X calls through A, 200 through B; then A (the Events' writer) crashes.
    let mut agent = Agent::open(a.channel().await, "node-a", "boot-1").await;
    for seq in 1..=30u64 {
        agent
            .ship(
                seq,
                (0..10)
                    .map(|i| event((seq * 100 + i) as u32, true))
                    .collect(),
            )
            .await;
    }
    drop(agent);
    let mut agent = Agent::open(b.channel().await, "node-a", "boot-1").await;
    for seq in 31..=50u64 {
        agent
            .ship(
                seq,
                (0..10)
                    .map(|i| event((seq * 100 + i) as u32, true))
                    .collect(),
            )
            .await;
    }
    // A has written the series' Event before it goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::task::block_in_place(|| violation_events(&admin, "shop")).is_empty() {
        assert!(Instant::now() < deadline, "no Event within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.crash();
    // B takes the Lease over and carries the series on: one Event whose count is every call.
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let events = tokio::task::block_in_place(|| violation_events(&admin, "shop"));
        assert!(events.len() <= 1, "one Event series, not two: {events:#?}");
        if events.first().is_some_and(|e| e["series"]["count"] == 500) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the series did not reach 500 within 90 s: {events:#?}; api server: {}",
            server.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let event = &events[0];
    assert_eq!(event["regarding"]["name"], "web", "{event}");
    assert_eq!(event["type"], "Warning", "{event}");
    assert!(
        b.metric("mapsentry_kube_leader").await >= 1.0,
        "B writes the Events now"
    );
    // Nothing more comes: still one Event, still 500.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = tokio::task::block_in_place(|| violation_events(&admin, "shop"));
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["series"]["count"], 500, "{events:#?}");
    b.stop().await;
}

/// Each agent streams to one replica; the Lease's holder writes the status. Two nodes report a
/// set they enforce but could not persist, one through each replica: the `KernelEnforced`
/// condition names both, and after the holder crashes the other replica, now writing, has both
/// and takes a node's new report in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_reports_sent_to_either_replica_reach_the_policy_status() {
    let dir = tmp();
    let nats = Nats::single(dir.path());
    let (_server, admin, kubernetes) = kubernetes("jetstream-reports");
    let a = Replica::start_with(jetstream(&nats), vec![], Some(kubernetes.clone()));
    a.wait_ready(Duration::from_secs(30)).await;
    wait_leading(&a, Duration::from_secs(20)).await;
    let b = Replica::start_with(jetstream(&nats), vec![], Some(kubernetes));
    b.wait_ready(Duration::from_secs(30)).await;
    tokio::task::block_in_place(|| {
        admin.apply(
            r#"{"apiVersion": "mapsentry.dev/v1alpha1", "kind": "MmapPolicy",
                "metadata": {"name": "no-wx", "namespace": "shop"},
                "spec": {"mode": "Enforce", "rules": [
                  {"name": "wx", "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"]}, "action": "Kill"}]}}"#,
        )
    });
    let kernel_enforced = || {
        let object = tokio::task::block_in_place(|| {
            admin.json(&["get", "mmappolicies.mapsentry.dev", "-n", "shop", "no-wx"])
        });
        object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "KernelEnforced")
            .cloned()
            .unwrap_or_default()
    };
    let wait_for = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let condition = kernel_enforced();
            if ok(&condition) {
                return condition;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within 30 s; KernelEnforced: {condition}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    let mut on_a = Agent::open(a.channel().await, "node-a", "boot-1").await;
    let mut on_b = Agent::open(b.channel().await, "node-b", "boot-1").await;
    let set_a = on_a.policy_set_with("no-wx").await;
    let set_b = on_b.policy_set_with("no-wx").await;
    on_a.report(set_a.version, "Read-only file system (os error 30)")
        .await;
    on_b.report(set_b.version, "No space left on device (os error 28)")
        .await;
    let condition = wait_for("both nodes' reports in the status", &|c| {
        let message = c["message"].as_str().unwrap_or_default();
        message.contains("node node-a") && message.contains("node node-b")
    });
    assert_eq!(condition["reason"], "NotPersisted", "{condition}");
    assert_eq!(
        condition["status"], "True",
        "enforced all the same: {condition}"
    );
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Read-only file system") && message.contains("No space left on device"),
        "{condition}"
    );

    // A (the writer) crashes; B takes the Lease over with both reports, and node-b's next one
    // (persisted now) changes the status.
    drop(on_a);
    a.crash();
    wait_leading(&b, Duration::from_secs(30)).await;
    on_b.report(set_b.version, "").await;
    let condition = wait_for("node-b's new report in the status", &|c| {
        let message = c["message"].as_str().unwrap_or_default();
        message.contains("node node-a") && !message.contains("node node-b")
    });
    assert_eq!(
        condition["reason"], "NotPersisted",
        "node-a's report stays: {condition}"
    );
    b.stop().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM files
/// in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &std::path::Path) -> [PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf("127.0.0.1");
    let (client, client_key) = leaf("mapsentry-collector");
    let files = [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ]
    .map(|name| dir.join(name));
    for (path, pem) in files
        .iter()
        .zip([ca_pem, server, server_key, client, client_key])
    {
        std::fs::write(path, pem).unwrap();
    }
    files
}

/// NATS requiring mutual TLS: a replica with the CA and a client certificate is ready and
/// serves; one without its certificate, or without TLS at all, stays unready and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_nats_over_mutual_tls_and_without_its_certificate_stays_unready() {
    let dir = tmp();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let nats = Nats::single_with(
        dir.path(),
        &format!(
            "tls {{ cert_file: {server_cert:?}, key_file: {server_key:?}, ca_file: {ca:?}, verify: true, timeout: 2 }}"
        ),
    );
    let good = Replica::start(
        JetStreamConfig {
            tls: NatsTls {
                ca: Some(ca.clone()),
                cert: Some(client_cert),
                key: Some(client_key),
            },
            ..jetstream(&nats)
        },
        vec![],
    );
    let no_certificate = Replica::start(
        JetStreamConfig {
            tls: NatsTls {
                ca: Some(ca),
                cert: None,
                key: None,
            },
            ..jetstream(&nats)
        },
        vec![],
    );
    let plain = Replica::start(jetstream(&nats), vec![]);
    good.wait_ready(Duration::from_secs(20)).await;
    stores_and_serves(&good).await;
    // The others never get through: after a few of their attempts (2 s each at most), still
    // unready, naming NATS, and an agent's batch is refused, not acked.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (name, replica) in [
        ("without a certificate", &no_certificate),
        ("without TLS", &plain),
    ] {
        let body = replica
            .ready()
            .await
            .expect_err(&format!("a replica {name} is not ready"));
        assert!(body.contains("NATS"), "a replica {name}: {body}");
        let mut agent = Agent::open(replica.channel().await, "node-b", "boot-1").await;
        let refused = agent.try_ship(1, vec![event(2, false)]).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{name}: {refused}"
        );
    }
    good.stop().await;
}

/// A NATS JWT (v2) for `subject`, of `kind` (`operator`, `account`, `user`), signed by `issuer`.
fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &nkeys::KeyPair,
    kind: &str,
    mut claims: serde_json::Value,
) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    claims["type"] = kind.into();
    claims["version"] = 2.into();
    let body = serde_json::json!({
        "jti": format!("{:x}", now_ns()),
        "iat": now_ns() / 1_000_000_000,
        "iss": issuer.public_key(),
        "name": kind,
        "sub": subject.public_key(),
        "nats": claims,
    });
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = URL_SAFE_NO_PAD.encode(body.to_string());
    let signed = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// A `.creds` file (the user's JWT and seed) at `path`.
fn creds_file(path: &std::path::Path, user_jwt: &str, user: &nkeys::KeyPair) -> PathBuf {
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    path.to_owned()
}

/// NATS in operator mode (decentralized JWT authentication, as NGS/Synadia Cloud and operator-run
/// clusters use): a replica with a creds file of a user of the trusted account is ready and
/// stores; one whose user's account the server does not know stays unready; a creds file that
/// does not exist is refused at start, naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_authenticates_to_nats_with_a_creds_file() {
    let dir = tmp();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let stranger_account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(&operator, &operator, "operator", serde_json::json!({}));
    let unlimited = serde_json::json!({"limits": {
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1}});
    let account_jwt = nats_jwt(&operator, &account, "account", unlimited);
    // The server's own account (JetStream needs one).
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(&operator, &system, "account", serde_json::json!({}));
    let user = nkeys::KeyPair::new_user();
    let user_limits = serde_json::json!({"subs": -1, "data": -1, "payload": -1});
    let user_jwt = nats_jwt(&account, &user, "user", user_limits.clone());
    let good = creds_file(&dir.path().join("good.creds"), &user_jwt, &user);
    // Signed by an account the operator never issued.
    let stranger = nkeys::KeyPair::new_user();
    let stranger_jwt = nats_jwt(&stranger_account, &stranger, "user", user_limits);
    let unknown = creds_file(&dir.path().join("stranger.creds"), &stranger_jwt, &stranger);
    let nats = Nats::single_with(
        dir.path(),
        &format!(
            "operator: {operator_jwt:?}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{ {}: {account_jwt:?}, {}: {system_jwt:?} }}",
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    );
    let with = |creds: PathBuf| JetStreamConfig {
        auth: NatsAuth::Creds(creds),
        ..jetstream(&nats)
    };
    let replica = Replica::start(with(good), vec![]);
    let refused = Replica::start(with(unknown), vec![]);
    replica.wait_ready(Duration::from_secs(20)).await;
    stores_and_serves(&replica).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reason = refused
        .ready()
        .await
        .expect_err("not ready as a user of an unknown account");
    assert!(reason.contains("NATS"), "{reason}");
    // A creds file that is not there: the collector does not start, and says which file.
    let missing = dir.path().join("missing.creds");
    let error = mapsentry_collector::jetstream::Backbone::connect(with(missing.clone()))
        .await
        .expect_err("a missing creds file is refused");
    let text = error.to_string();
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("creds"),
        "{text}"
    );
    replica.stop().await;
    drop(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_authenticates_to_nats_and_a_wrong_token_keeps_it_unready() {
    let dir = tmp();
    let nats = Nats::single_with(dir.path(), "authorization { token: \"s3cret-token\" }");
    let with = |token: &str| JetStreamConfig {
        auth: NatsAuth::Token(token.into()),
        ..jetstream(&nats)
    };
    let good = Replica::start(with("s3cret-token"), vec![]);
    let bad = Replica::start(with("wrong"), vec![]);
    good.wait_ready(Duration::from_secs(20)).await;
    stores_and_serves(&good).await;
    // The wrong token: not ready (it says NATS), and nothing acked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reason = bad.ready().await.expect_err("not ready with a wrong token");
    assert!(reason.contains("NATS"), "{reason}");
    let mut agent = Agent::open(bad.channel().await, "node-b", "boot-1").await;
    let refused = agent.try_ship(1, vec![event(2, false)]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    good.stop().await;
    drop(bad);
}
