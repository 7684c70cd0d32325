//! Collector replicas on NATS JetStream against the embedded single collector, side by side in
//! one run (issue 17's benchmark): `cargo bench -p mapsentry-e2e --bench replicas`.
//!
//! Many synthetic agents (one process, one gRPC stream each, distinct node names) send batches
//! at a fixed rate each, spread over the replicas as the Service would; one subscriber on the
//! first replica reads every event live. Per setup (the embedded collector with its retention
//! log, then 1, 2, 3 replicas on one fresh nats-server or cluster) it reports, over the measured
//! seconds after a warm-up: events/s acked to the agents (stored), events/s delivered to the
//! subscriber, the ingest-to-subscriber latency (event time, stamped when the agent sends the
//! batch, to its arrival at the subscriber: p50, p99), the CPU of each replica (its runtime's
//! threads, /proc/self/task/*/schedstat) and of the nats-server(s).
//!
//! Settings through the environment: `BENCH_AGENTS` (default 500), `BENCH_RATE` (events/s per
//! agent, default 2000), `BENCH_BATCH` (events per batch, default 100), `BENCH_SECONDS`
//! (measured, default 10), `BENCH_WARMUP` (seconds, default 3), `BENCH_SETUPS` (default
//! `embedded,1,2,3`), `BENCH_NATS_SERVERS` (1 or 3, default 1; with 3 the streams have 3
//! replicas), `BENCH_REPLICA_THREADS` (worker threads per replica, default 1).

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "rates and percentiles printed as approximate figures"
)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mapsentry_collector::{
    Config, HubConfig, ServerConfig, app::PoliciesConfig, jetstream::JetStreamConfig,
    retention::LogConfig,
};
use mapsentry_e2e::nats::{Nats, free_port};
use mapsentry_proto::v1::{
    self, AgentMessage, EventBatch, Hello, MmapArgs, SubscribeRequest, agent_message::Msg,
    agent_service_client::AgentServiceClient, collector_message, observer_client::ObserverClient,
    subscribe_response::Item,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Unacked batches per agent stream.
const WINDOW: u64 = 32;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
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

/// CPU time of process `pid` (utime + stime of /proc/PID/stat, in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// One collector (embedded, or a JetStream replica) on a runtime of its own whose threads are
/// named `name`.
struct Collector {
    grpc: SocketAddr,
    metrics: SocketAddr,
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    fn start(
        name: &str,
        threads: usize,
        jetstream: Option<JetStreamConfig>,
        log: Option<PathBuf>,
    ) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = Config {
            listen: grpc,
            metrics_listen: Some(metrics),
            policies: PoliciesConfig::default(),
            hub: HubConfig::default(),
            retention_log: log.map(LogConfig::new),
            server: ServerConfig::default(),
            kubernetes: None,
            jetstream,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
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
            name: name.to_owned(),
            runtime: Some(runtime),
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn cpu(&self) -> Duration {
        thread_cpu(&self.name)
    }

    /// Wait until `/readyz` says 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            use std::io::{Read as _, Write as _};
            if let Ok(mut stream) = std::net::TcpStream::connect(self.metrics) {
                let _ = write!(stream, "GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n");
                let mut response = String::new();
                let _ = stream.read_to_string(&mut response);
                if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within a minute",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        drop(self.stop.take());
        if let (Some(runtime), Some(task)) = (self.runtime.take(), self.task.take()) {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
            runtime.shutdown_background();
        }
    }
}

/// What the agents and the subscriber count, shared with the measuring thread.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    measuring: AtomicBool,
    /// Latencies (µs) of events delivered while measuring.
    latencies: std::sync::Mutex<Vec<u32>>,
}

fn events(n: usize) -> Vec<v1::Event> {
    (0..n as u32)
        .map(|i| v1::Event {
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
                ..MmapArgs::default()
            }),
            ret: 0x7f00_0000_0000 + i64::from(i) * 4096,
            file: (i % 4 == 0).then(|| v1::FileInfo {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                inode: 1234,
                dev: 0x803,
                fs_magic: 0xef53,
                ..v1::FileInfo::default()
            }),
            ..v1::Event::default()
        })
        .collect()
}

/// One synthetic agent: a stream to `url`, a batch every `every`, at most `WINDOW` unacked.
async fn agent(
    url: String,
    node: String,
    batch: Vec<v1::Event>,
    every: Duration,
    counters: Arc<Counters>,
    until: Instant,
) {
    let channel = loop {
        match Channel::from_shared(url.clone()).unwrap().connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (out, rx) = mpsc::channel(WINDOW as usize + 2);
    out.send(AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version: v1::ProtocolVersion::V1.into(),
            node,
            boot_id: format!("bench-{}", now_ns()),
            kernel: "6.18".into(),
            attach_mode: "tracepoint".into(),
            capabilities: vec![],
            started_unix_ns: now_ns(),
        })),
    })
    .await
    .unwrap();
    let Ok(response) = AgentServiceClient::new(channel)
        .max_encoding_message_size(16 << 20)
        .connect(ReceiverStream::new(rx))
        .await
    else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut acks = response.into_inner();
    let acked_seq = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked_seq = Arc::clone(&acked_seq);
        let counters = Arc::clone(&counters);
        let per_batch = batch.len() as u64;
        tokio::spawn(async move {
            while let Ok(Some(message)) = acks.message().await {
                if let Some(collector_message::Msg::Ack(ack)) = message.msg {
                    acked_seq.store(ack.seq, Ordering::Relaxed);
                    if counters.measuring.load(Ordering::Relaxed) {
                        counters.acked.fetch_add(per_batch, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        if seq - acked_seq.load(Ordering::Relaxed) >= WINDOW {
            continue;
        }
        seq += 1;
        let now = now_ns();
        let events = batch
            .iter()
            .map(|e| v1::Event {
                time_ns: now,
                ..e.clone()
            })
            .collect();
        if out
            .send(AgentMessage {
                msg: Some(Msg::Batch(EventBatch { seq, events })),
            })
            .await
            .is_err()
        {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    drop(out);
    reader.abort();
}

/// One live subscriber reading every event from `url`.
async fn subscriber(url: String, counters: Arc<Counters>, until: Instant) {
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut stream = ObserverClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribed")
        .into_inner();
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(1), stream.message()).await
        else {
            continue;
        };
        if let Some(Item::Event(record)) = message.item
            && counters.measuring.load(Ordering::Relaxed)
        {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            let sent = record.event.map_or(0, |e| e.time_ns);
            latencies.push((now_ns().saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32);
        }
    }
    counters.latencies.lock().unwrap().extend(latencies);
}

struct Figures {
    setup: String,
    offered: f64,
    stored: f64,
    delivered: f64,
    p50_ms: f64,
    p99_ms: f64,
    replica_cores: Vec<f64>,
    nats_cores: f64,
    refused: u64,
}

fn run_setup(setup: &str, dir: &Path) -> Figures {
    let agents = env("BENCH_AGENTS", 500);
    let rate = env("BENCH_RATE", 2000);
    let batch = env("BENCH_BATCH", 100).max(1);
    let seconds = env("BENCH_SECONDS", 10);
    let warmup = env("BENCH_WARMUP", 3);
    let servers = env("BENCH_NATS_SERVERS", 1) as usize;
    let threads = env("BENCH_REPLICA_THREADS", 1) as usize;
    let store = dir.join(setup);
    std::fs::create_dir_all(&store).unwrap();

    let (nats, collectors) = if setup == "embedded" {
        let collector = Collector::start("embedded", threads, None, Some(store.join("log")));
        (None, vec![collector])
    } else {
        let n: usize = setup
            .parse()
            .expect("a setup is `embedded` or a number of replicas");
        let nats = Nats::cluster(&store.join("nats"), servers);
        let collectors = (0..n)
            .map(|i| {
                let config = JetStreamConfig {
                    replicas: servers,
                    events_max_bytes: 2 << 30,
                    ..JetStreamConfig::new(nats.url())
                };
                Collector::start(&format!("replica-{i}"), threads, Some(config), None)
            })
            .collect();
        (Some(nats), collectors)
    };
    for collector in &collectors {
        collector.wait_ready();
    }
    let urls: Vec<String> = collectors
        .iter()
        .map(|c| format!("http://{}", c.grpc))
        .collect();

    let counters = Arc::new(Counters::default());
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-clients")
        .enable_all()
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(warmup + seconds + 1);
    let every = Duration::from_secs_f64(batch as f64 / rate as f64);
    let template = events(batch as usize);
    let subscriber_task = clients.spawn(subscriber(
        urls[0].clone(),
        Arc::clone(&counters),
        until + Duration::from_secs(2),
    ));
    let agent_tasks: Vec<_> = (0..agents)
        .map(|a| {
            clients.spawn(agent(
                urls[a as usize % urls.len()].clone(),
                format!("bench-node-{a}"),
                template.clone(),
                every,
                Arc::clone(&counters),
                until,
            ))
        })
        .collect();

    std::thread::sleep(Duration::from_secs(warmup));
    let cpu_before: Vec<Duration> = collectors.iter().map(Collector::cpu).collect();
    let nats_before: Duration = nats.as_ref().map_or(Duration::ZERO, |n| {
        n.pids().into_iter().map(process_cpu).sum()
    });
    counters.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    counters.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let replica_cores = collectors
        .iter()
        .zip(&cpu_before)
        .map(|(c, before)| c.cpu().saturating_sub(*before).as_secs_f64() / elapsed)
        .collect();
    let nats_cores = nats.as_ref().map_or(0.0, |n| {
        n.pids()
            .into_iter()
            .map(process_cpu)
            .sum::<Duration>()
            .saturating_sub(nats_before)
            .as_secs_f64()
            / elapsed
    });
    clients.block_on(async {
        for task in agent_tasks {
            let _ = task.await;
        }
        let _ = subscriber_task.await;
    });
    clients.shutdown_background();
    for collector in collectors {
        collector.stop();
    }
    drop(nats);
    let _ = std::fs::remove_dir_all(&store);

    let mut latencies = std::mem::take(&mut *counters.latencies.lock().unwrap());
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(latencies[i]) / 1000.0
    };
    Figures {
        setup: if setup == "embedded" {
            "embedded collector (retention log)".into()
        } else {
            format!("{setup} replica(s) on JetStream ({servers} server(s))")
        },
        offered: (agents * rate) as f64,
        stored: counters.acked.load(Ordering::Relaxed) as f64 / elapsed,
        delivered: counters.delivered.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        replica_cores,
        nats_cores,
        refused: counters.refused.load(Ordering::Relaxed),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let setups = std::env::var("BENCH_SETUPS").unwrap_or_else(|_| "embedded,1,2,3".into());
    let dir = std::env::temp_dir().join(format!("mapsentry-bench-replicas-{}", std::process::id()));
    println!(
        "agents {} x {} events/s (batches of {}), {} s measured after {} s warm-up, {} nats-server(s), {} worker thread(s) per collector",
        env("BENCH_AGENTS", 500),
        env("BENCH_RATE", 2000),
        env("BENCH_BATCH", 100),
        env("BENCH_SECONDS", 10),
        env("BENCH_WARMUP", 3),
        env("BENCH_NATS_SERVERS", 1),
        env("BENCH_REPLICA_THREADS", 1),
    );
    println!();
    println!(
        "| setup | offered | stored (acked) | delivered to 1 subscriber | p50 | p99 | CPU per replica (cores) | nats-server CPU (cores) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|");
    for setup in setups.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let f = run_setup(setup, &dir);
        let cores: Vec<String> = f.replica_cores.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "| {} | {:.0}k/s | {:.0}k/s | {:.0}k/s | {:.0} ms | {:.0} ms | {} | {:.2} |{}",
            f.setup,
            f.offered / 1000.0,
            f.stored / 1000.0,
            f.delivered / 1000.0,
            f.p50_ms,
            f.p99_ms,
            cores.join(" + "),
            f.nats_cores,
            if f.refused > 0 {
                format!(" ({} streams refused)", f.refused)
            } else {
                String::new()
            },
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
