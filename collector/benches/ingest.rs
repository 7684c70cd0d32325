//! Collector throughput on loopback gRPC (run: `cargo bench -p mapsentry-collector --bench ingest`).
//!
//! 1. Ingest: agents stream batches of 1000 events (up to 32 unacked per stream) into a
//!    collector, side by side in one run: on a current-thread runtime (what `mapsentry
//!    collector` ran on before) and on a multi-threaded one with a worker per core (what it runs
//!    on now), each with retention in memory and with the retention log on disk (`--data-dir`,
//!    written from blocking threads). Rounds alternate between the four; the medians are
//!    reported, in wall clock and per CPU-second of the collector's own threads (its runtime's
//!    workers and blocking threads, read from /proc/self/task/*/schedstat). The agents speak
//!    protocol V2 as `mapsentry agent` does: 16 pod attributions defined once per stream, every
//!    event referring to one of them, so the collector expands a pod's attribution into each
//!    event as it does for a real node.
//! 2. Fan-out: one agent paced at a target rate, 10 subscribers each reading every event
//!    (counted from the raw bytes, so the figure is the collector's, not the readers' decoding);
//!    reports the achieved rate, deliveries and losses.
//!
//! Settings through the environment: `BENCH_EVENTS` (ingest total per round, default
//! 2,000,000), `BENCH_AGENTS` (default 2), `BENCH_ROUNDS` (default 3), `BENCH_RATE` (fan-out
//! events/s, default 100,000), `BENCH_SECONDS` (fan-out duration, default 5),
//! `BENCH_SETUPS` (ingest setups to run: parts of their labels separated by `;`, e.g.
//! `multi-thread`; default all),
//! `BENCH_FANOUT_THREADS` (collector worker threads in the fan-out part, default 2).

#![expect(
    clippy::cast_precision_loss,
    reason = "rates printed as f64 are approximate by nature"
)]

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use mapsentry_collector::{Hub, HubConfig, ServerConfig, retention::LogConfig, serve};
use mapsentry_proto::v1::{
    self, AgentMessage, Hello, MmapArgs, SubscribeRequest, SubscribeResponse, agent_message::Msg,
    collector_message, subscribe_response::Item,
};
use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const BATCH: usize = 1000;
const WINDOW: usize = 32;
/// Pods the events of each agent come from.
const PODS: u64 = 16;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn batch_events() -> Vec<v1::Event> {
    (0..BATCH as u32)
        .map(|i| v1::Event {
            time_ns: 1_764_000_000_000_000_000 + u64::from(i),
            syscall: v1::Syscall::Mmap.into(),
            pid: 4000 + i % 50,
            tid: 4000 + i % 50,
            ppid: 1,
            comm: "bench-worker".into(),
            cgroup_id: 12345,
            args: Some(MmapArgs {
                length: 4096 * u64::from(i % 16 + 1),
                prot: 3,
                flags: 0x22,
                fd: -1,
                ..Default::default()
            }),
            ret: 0x7f00_0000_0000 + i64::from(i) * 4096,
            file: (i % 4 == 0).then(|| v1::FileInfo {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                inode: 1234,
                dev: 0x803,
                fs_magic: 0xef53,
                ..Default::default()
            }),
            attribution: Some(v1::event::Attribution::AttributionRef(
                1 + u64::from(i) % PODS,
            )),
            ..Default::default()
        })
        .collect()
}

/// The definitions of the pods the events refer to: what a node's agent sends once per stream.
fn pod_definitions() -> v1::Attributions {
    let definitions = (1..=PODS)
        .map(|id| v1::AttributionDefinition {
            id,
            attribution: Some(v1::attribution_definition::Attribution::Pod(
                v1::PodAttribution {
                    namespace: Some("shop".into()),
                    pod: Some(format!("web-7d9f8c6b5-{id:05}")),
                    container: Some("web".into()),
                    pod_uid: Some(format!("2b1c9a6e-3f4d-4e5a-9b8c-{id:012}")),
                    container_id: Some(format!("{id:064x}")),
                    image: Some("registry.example.com/shop/web:1.42.0".into()),
                    labels: [
                        ("app".to_owned(), "web".to_owned()),
                        ("pod-template-hash".to_owned(), "7d9f8c6b5".to_owned()),
                    ]
                    .into(),
                    namespace_labels: [(
                        "kubernetes.io/metadata.name".to_owned(),
                        "shop".to_owned(),
                    )]
                    .into(),
                    workload: Some(v1::Workload {
                        kind: "Deployment".into(),
                        name: "web".into(),
                    }),
                    resolved: true,
                },
            )),
        })
        .collect();
    v1::Attributions {
        definitions,
        released: Vec::new(),
    }
}

/// A collector on its own runtime, on 127.0.0.1; it stops when the returned sender is dropped.
struct Collector {
    url: String,
    hub: Arc<Hub>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// The name of every thread of its runtime.
    name: String,
}

impl Collector {
    /// `threads` worker threads (0: a current-thread runtime), retention in memory or in a log
    /// under `data_dir`; its threads are named `name`.
    fn start(hub: HubConfig, threads: usize, data_dir: Option<PathBuf>, name: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let hub = match data_dir {
            None => Hub::with_first_cursor(hub, 1),
            Some(dir) => Hub::open(hub, LogConfig::new(dir)).unwrap(),
        };
        let serving = Arc::clone(&hub);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut builder = if threads == 0 {
                    tokio::runtime::Builder::new_current_thread()
                } else {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(threads);
                    builder
                };
                let runtime = builder
                    .thread_name(thread_name)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    serve(serving, &ServerConfig::default(), listener, async {
                        drop(stopped.await);
                    })
                    .await
                    .unwrap();
                });
            })
            .unwrap();
        Self {
            url: format!("http://{}", rx.recv().unwrap()),
            hub,
            stop,
            thread,
            name: name.to_owned(),
        }
    }

    /// CPU time so far of the threads named like this collector's.
    fn cpu(&self) -> Duration {
        thread_cpu(&self.name)
    }

    fn stop(self) {
        drop(self.stop);
        self.thread.join().unwrap();
    }
}

/// CPU time of this process's live threads named `name` (schedstat: nanoseconds on a CPU).
fn thread_cpu(name: &str) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

/// A collector on its own runtime with `threads` worker threads (1: current-thread), on 127.0.0.1.
fn start_collector(hub: HubConfig, threads: usize) -> (String, Arc<Hub>) {
    let collector = Collector::start(
        hub,
        if threads == 1 { 0 } else { threads },
        None,
        "fanout-col",
    );
    let (url, hub) = (collector.url.clone(), Arc::clone(&collector.hub));
    // The fan-out part's collector runs until the process ends.
    std::mem::forget(collector);
    (url, hub)
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `AgentMessage { batch: EventBatch { seq, events } }` as bytes, around `events` already
/// encoded as field 2 entries: the agent side costs next to nothing, so the figures are the
/// collector's (a real agent encodes each batch once too, `agent/src/shipper/encoded.rs`).
fn batch_message(seq: u64, events: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, uint64};
    let mut batch = Vec::with_capacity(events.len() + 16);
    uint64::encode(1, &seq, &mut batch);
    batch.extend_from_slice(events);
    let mut message = Vec::with_capacity(batch.len() + 8);
    encode_key(2, WireType::LengthDelimited, &mut message);
    encode_varint(batch.len() as u64, &mut message);
    message.extend_from_slice(&batch);
    message
}

/// Stream `batches` batches (optionally paced to `rate` events/s), keeping up to WINDOW unacked.
async fn agent(url: String, node: String, batches: u64, rate: Option<u64>) {
    let (out, rx) = mpsc::channel::<Vec<u8>>(WINDOW + 2);
    let hello = Hello {
        version: v1::ProtocolVersion::V2.into(),
        node: node.clone(),
        boot_id: node,
        ..Default::default()
    };
    for msg in [Msg::Hello(hello), Msg::Attributions(pod_definitions())] {
        out.send(AgentMessage { msg: Some(msg) }.encode_to_vec())
            .await
            .unwrap();
    }
    let mut grpc = tonic::client::Grpc::new(channel(&url).await);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/mapsentry.v1.AgentService/Connect");
    let mut acks = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    for event in batch_events() {
        prost::encoding::message::encode(2, &event, &mut events);
    }
    let start = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < batches {
        if sent < batches && sent - acked < WINDOW as u64 {
            if let Some(rate) = rate {
                let due =
                    start + Duration::from_secs_f64((sent * BATCH as u64) as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            sent += 1;
            out.send(batch_message(sent, &events)).await.unwrap();
            continue;
        }
        let bytes = acks
            .message()
            .await
            .unwrap()
            .expect("the collector answers");
        match v1::CollectorMessage::decode(bytes.as_slice()).unwrap() {
            v1::CollectorMessage {
                msg: Some(collector_message::Msg::Ack(ack)),
            } => acked = ack.seq,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A subscription whose messages arrive as bytes.
async fn subscribe_raw(channel: Channel) -> tonic::Streaming<Vec<u8>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/mapsentry.v1.Observer/Subscribe");
    let request = tonic::Request::new(SubscribeRequest::default().encode_to_vec());
    grpc.server_streaming(request, path, RawCodec)
        .await
        .unwrap()
        .into_inner()
}

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

/// One way to run the collector in the ingest comparison.
#[derive(Debug, Clone, Copy)]
struct Setup {
    label: &'static str,
    /// Worker threads (0: current-thread).
    threads: usize,
    log: bool,
}

/// One ingest round: (events, wall clock, collector CPU).
async fn ingest_round(
    setup: Setup,
    round: usize,
    total: u64,
    agents: u64,
) -> (u64, Duration, Duration) {
    let data_dir = setup.log.then(|| {
        let dir = std::env::temp_dir().join(format!(
            "mapsentry-bench-ingest-{}-{round}-{}",
            std::process::id(),
            setup.threads
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    });
    let collector = Collector::start(
        HubConfig {
            retention_events: 1 << 20,
            subscriber_queue: 4096,
            ..HubConfig::default()
        },
        setup.threads,
        data_dir.clone(),
        &format!("ingest-{round}-{}", setup.threads),
    );
    let per_agent = total / BATCH as u64 / agents;
    let cpu0 = collector.cpu();
    let start = Instant::now();
    let tasks: Vec<_> = (0..agents)
        .map(|i| {
            tokio::spawn(agent(
                collector.url.clone(),
                format!("node-{i}"),
                per_agent,
                None,
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = collector.cpu().saturating_sub(cpu0);
    let stored: u64 = collector.hub.stats().nodes.iter().map(|n| n.acked).sum();
    assert_eq!(stored, per_agent * agents * BATCH as u64);
    collector.stop();
    if let Some(dir) = data_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    (stored, elapsed, cpu)
}

/// Whether `BENCH_SETUPS` (parts of labels, separated by `;`: a setup's label contains one of
/// them) picks `setup`; all when unset.
fn selected(setup: &Setup) -> bool {
    std::env::var("BENCH_SETUPS").map_or(true, |parts| {
        parts
            .split(';')
            .any(|part| setup.label.contains(part.trim()))
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The four setups side by side, rounds interleaved; medians.
async fn ingest(total: u64, agents: u64, rounds: usize) {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let setups = [
        Setup {
            label: "current-thread (before), in memory",
            threads: 0,
            log: false,
        },
        Setup {
            label: "multi-thread (now), in memory",
            threads: cores,
            log: false,
        },
        Setup {
            label: "current-thread (before), retention log",
            threads: 0,
            log: true,
        },
        Setup {
            label: "multi-thread (now), retention log",
            threads: cores,
            log: true,
        },
    ];
    let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); setups.len()];
    for round in 0..rounds {
        for (i, setup) in setups.iter().enumerate() {
            if !selected(setup) {
                continue;
            }
            let (events, wall, cpu) = ingest_round(*setup, round, total, agents).await;
            let (rates, per_cpu, cpu_share) = &mut results[i];
            rates.push(events as f64 / wall.as_secs_f64());
            per_cpu.push(events as f64 / cpu.as_secs_f64());
            cpu_share.push(cpu.as_secs_f64() / wall.as_secs_f64());
        }
    }
    println!(
        "ingest: {agents} agent(s), {total} events per round in batches of {BATCH}, {rounds} rounds, {cores} cores; medians"
    );
    println!("| collector | wall clock | per collector CPU-second | collector CPU (cores busy) |");
    println!("|---|---:|---:|---:|");
    for (setup, (rates, per_cpu, cpu_share)) in setups.iter().zip(results) {
        if rates.is_empty() {
            continue;
        }
        println!(
            "| {} | {:.0}k events/s | {:.2}M events | {:.2} |",
            setup.label,
            median(rates) / 1e3,
            median(per_cpu) / 1e6,
            median(cpu_share)
        );
    }
}

async fn fan_out(rate: u64, seconds: u64, subscribers: usize) {
    let threads = env("BENCH_FANOUT_THREADS", 2) as usize;
    let (url, hub) = start_collector(
        HubConfig {
            retention_events: 1 << 20,
            subscriber_queue: 16_384,
            ..HubConfig::default()
        },
        threads,
    );
    let batches = rate * seconds / BATCH as u64;
    let total = batches * BATCH as u64;
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let mut stream = subscribe_raw(channel(&url).await).await;
        readers.push(tokio::spawn(async move {
            let (mut events, mut missed) = (0u64, 0u64);
            while events + missed < total {
                let Some(message) = stream.message().await.unwrap() else {
                    break;
                };
                // Field 1 of SubscribeResponse is an event: count it without decoding it, so the
                // numbers are the collector's, not this process's decoders'.
                if message.first() == Some(&0x0a) {
                    events += 1;
                    continue;
                }
                match SubscribeResponse::decode(message.as_slice()).unwrap().item {
                    Some(Item::Loss(notice)) => missed += notice.count,
                    Some(Item::Event(_)) => events += 1,
                    Some(Item::Started(_) | Item::Alert(_) | Item::AgentRestart(_)) | None => {}
                }
            }
            (events, missed)
        }));
    }
    let start = Instant::now();
    agent(url, "node-0".into(), batches, Some(rate)).await;
    let ingested = start.elapsed();
    let mut results = Vec::new();
    for reader in readers {
        results.push(reader.await.unwrap());
    }
    let drained = start.elapsed();
    let lost: u64 = results.iter().map(|(_, lost)| lost).sum();
    println!(
        "fan-out: collector on {threads} thread(s), {total} events at a target of {rate}/s took {:.2} s to ingest ({:.0} events/s), {:.2} s until all {subscribers} subscribers had them; \
         delivered {} of {} ({} lost, collector counted {})",
        ingested.as_secs_f64(),
        total as f64 / ingested.as_secs_f64(),
        drained.as_secs_f64(),
        results.iter().map(|(events, _)| events).sum::<u64>(),
        total * subscribers as u64,
        lost,
        hub.stats().subscriber_losses,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks one part.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if only.as_deref().is_none_or(|o| o == "ingest") {
            ingest(
                env("BENCH_EVENTS", 2_000_000),
                env("BENCH_AGENTS", 2),
                env("BENCH_ROUNDS", 3) as usize,
            )
            .await;
        }
        if only.as_deref().is_none_or(|o| o == "fan-out") {
            fan_out(env("BENCH_RATE", 100_000), env("BENCH_SECONDS", 5), 10).await;
        }
    });
}
