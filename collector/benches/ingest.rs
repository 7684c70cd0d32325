//! Collector throughput on loopback gRPC (run: `cargo bench -p mapsentry-collector --bench ingest`).
//!
//! 1. Ingest: agents stream batches of 1000 events (up to 32 unacked per stream) into a
//!    collector whose runtime has ONE worker thread: events/s on one core.
//! 2. Fan-out: one agent paced at a target rate, 10 subscribers each reading every event
//!    (counted from the raw bytes, so the figure is the collector's, not the readers' decoding);
//!    reports the achieved rate, deliveries and losses.
//!
//! Settings through the environment: `BENCH_EVENTS` (ingest total, default 2,000,000),
//! `BENCH_AGENTS` (default 1), `BENCH_RATE` (fan-out events/s, default 100,000),
//! `BENCH_SECONDS` (fan-out duration, default 5), `BENCH_FANOUT_THREADS` (collector worker
//! threads in the fan-out part, default 2).

#![expect(
    clippy::cast_precision_loss,
    reason = "rates printed as f64 are approximate by nature"
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mapsentry_collector::{Hub, HubConfig, ServerConfig, serve};
use mapsentry_proto::v1::{
    self, AgentMessage, EventBatch, Hello, MmapArgs, SubscribeRequest, SubscribeResponse,
    agent_message::Msg, agent_service_client::AgentServiceClient, collector_message,
    subscribe_response::Item,
};
use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const BATCH: usize = 1000;
const WINDOW: usize = 32;

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
            ..Default::default()
        })
        .collect()
}

/// A collector on its own runtime with `threads` worker threads (1: current-thread), on 127.0.0.1.
fn start_collector(hub: HubConfig, threads: usize) -> (String, Arc<Hub>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let hub = Hub::with_first_cursor(hub, 1);
    let serving = Arc::clone(&hub);
    std::thread::spawn(move || {
        let runtime = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .unwrap()
        };
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(
                serving,
                &ServerConfig::default(),
                listener,
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    (format!("http://{}", rx.recv().unwrap()), hub)
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Stream `batches` batches (optionally paced to `rate` events/s), keeping up to WINDOW unacked.
async fn agent(url: String, node: String, batches: u64, rate: Option<u64>) {
    let (out, rx) = mpsc::channel(WINDOW + 2);
    let hello = Hello {
        version: 1,
        node: node.clone(),
        boot_id: node,
        ..Default::default()
    };
    out.send(AgentMessage {
        msg: Some(Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut acks = AgentServiceClient::new(channel(&url).await)
        .max_encoding_message_size(64 << 20)
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let events = batch_events();
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
            let message = AgentMessage {
                msg: Some(Msg::Batch(EventBatch {
                    seq: sent,
                    events: events.clone(),
                })),
            };
            out.send(message).await.unwrap();
            continue;
        }
        match acks.message().await.unwrap() {
            Some(v1::CollectorMessage {
                msg: Some(collector_message::Msg::Ack(ack)),
            }) => acked = ack.seq,
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

async fn ingest(total: u64, agents: u64) {
    let (url, hub) = start_collector(
        HubConfig {
            retention_events: 1 << 20,
            subscriber_queue: 4096,
        },
        1,
    );
    let per_agent = total / BATCH as u64 / agents;
    let start = Instant::now();
    let tasks: Vec<_> = (0..agents)
        .map(|i| tokio::spawn(agent(url.clone(), format!("node-{i}"), per_agent, None)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let stored: u64 = hub.stats().nodes.iter().map(|n| n.acked).sum();
    assert_eq!(stored, per_agent * agents * BATCH as u64);
    println!(
        "ingest: {agents} agent(s), {stored} events in {:.2} s = {:.0} events/s (collector on 1 core, batches of {BATCH})",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
}

async fn fan_out(rate: u64, seconds: u64, subscribers: usize) {
    let threads = env("BENCH_FANOUT_THREADS", 2) as usize;
    let (url, hub) = start_collector(
        HubConfig {
            retention_events: 1 << 20,
            subscriber_queue: 16_384,
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
            ingest(env("BENCH_EVENTS", 2_000_000), env("BENCH_AGENTS", 1)).await;
        }
        if only.as_deref().is_none_or(|o| o == "fan-out") {
            fan_out(env("BENCH_RATE", 100_000), env("BENCH_SECONDS", 5), 10).await;
        }
    });
}
