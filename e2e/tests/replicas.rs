//! Collector replicas on a three-server JetStream cluster, every part real and a process of its
//! own: nats-server x3 (streams with 3 replicas), `mapsentry collector --jetstream` x2,
//! `mapsentry agent` x2 (real BPF in tracepoint mode, node names `node-1` and `node-2`, each
//! capturing only its own helper process with `--pid`, so the other programs of this shared host
//! do not reach the stream), and `mapsentry tail` x2. Agents and tails reach the replicas through
//! local TCP proxies standing in for the collector Service: each proxy prefers one replica and
//! falls back to the other when the first refuses connections, as kube-proxy sends a new
//! connection to a ready endpoint. The first agent and tail prefer replica A, the others B.
//!
//! Under a steady flow of calls (each with its own address hint, `marker`):
//! - collector A is killed (SIGKILL): agent 1 reconnects to B and resends what A never acked,
//!   tail 1 resumes on B from its cursor;
//! - one nats-server is killed (SIGKILL): publishes wait for the stream's new leader;
//!
//! and every call made is received exactly once by each tail (no call missing, none twice), and
//! once in the stream. The calls are W+X, so each node's calls are one alert series of the
//! example host policy, evaluated in the node's partition (node-1 and node-2 are in different
//! ones): an alerts tail through A (resuming on B) sees each series begin at 1, only grow, and end
//! at exactly the node's calls, across A's evaluation taken over and the NATS server's death. Then everything is stopped (collector B and the NATS servers killed) and
//! started again: a tail resuming from a cursor of before gets exactly the calls after it, and
//! the new agents' calls after the restart notices.
//!
//! Needs root and BPF (tracepoint mode), the nats-server of `e2e/nats/build-nats-server.sh`
//! (built into its cache on first use) and the `mapsentry` binary (`cargo build --workspace
//! --bins`). Prints `FIGURES` lines (`--nocapture`).

mod common;
#[path = "faults/procs.rs"]
mod procs;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::{Helper, mmap_call};
use mapsentry_collector::jetstream::wire::partition_of;
use mapsentry_e2e::{
    nats::{Nats, free_port},
    unmark,
};
use procs::Proc;
use serde_json::Value;

/// Calls per helper (one thread), one every `PACE_US`: a steady flow of ~10 s.
const CALLS: u64 = 4000;
const PACE_US: u64 = 2000;

/// A replica's ports.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: u16,
    metrics: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            grpc: free_port(),
            metrics: free_port(),
        }
    }

    fn grpc(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc))
    }
}

fn collector(name: &str, ports: Ports, nats_url: &str) -> Proc {
    Proc::start(
        name,
        &[
            "collector",
            "--plaintext",
            "--listen",
            &format!("127.0.0.1:{}", ports.grpc),
            "--metrics-listen",
            &format!("127.0.0.1:{}", ports.metrics),
            "--jetstream",
            nats_url,
            "--jetstream-replicas",
            "3",
            "--jetstream-partitions",
            "4",
            "--jetstream-max-bytes",
            "268435456",
            "--jetstream-alerts-max-bytes",
            "67108864",
            "--lease-seconds",
            "3",
            "--policy",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/policies/write-execute.yaml"
            ),
            // Longer than any stall of the flow here (a failover, a NATS server's death), so
            // each node's calls stay one series.
            "--alert-window",
            "30",
        ],
    )
}

/// GET `path` on 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
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

fn wait_ready(collector: &Proc, ports: Ports, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http_get(ports.metrics, "/readyz");
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready within {within:?}: {status} {body}; stderr:\n{}",
            collector.name,
            collector.err.everything()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP proxy on loopback that sends each new connection to the first of `backends` that
/// accepts it (a Service with one preferred endpoint): its address.
fn proxy(runtime: &tokio::runtime::Runtime, backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in &backends {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `mapsentry agent` for node `node`, capturing only `pid`, shipping through `proxy`.
fn agent(node: &str, pid: u32, proxy: SocketAddr, state: &Path) -> Proc {
    let agent = Proc::start(
        node,
        &[
            "agent",
            "--collector",
            &format!("http://{proxy}"),
            "--node",
            node,
            "--pid",
            &pid.to_string(),
            "--attach",
            "tracepoint",
            "--state-dir",
            state.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    agent.wait_err("capturing in");
    agent.wait_err("connected to the collector");
    agent
}

/// `mapsentry tail` through `proxy`, JSON lines, with `args`.
fn tail_with(name: &str, proxy: SocketAddr, args: &[&str]) -> Proc {
    let server = format!("http://{proxy}");
    let mut all = vec!["tail", "--server", &server, "--output", "json"];
    all.extend_from_slice(args);
    Proc::start(name, &all)
}

fn tail(name: &str, proxy: SocketAddr, since: u64) -> Proc {
    tail_with(name, proxy, &["--since", &since.to_string()])
}

/// A tail of the alerts, from the alerts stream's start.
fn alerts_tail(name: &str, proxy: SocketAddr) -> Proc {
    tail_with(name, proxy, &["--kind", "alerts", "--alerts-since", "0"])
}

/// The updates of each node's alert series (its counts, in order) from an alerts tail's lines.
#[derive(Debug, Default)]
struct AlertCounts(BTreeMap<String, Vec<u64>>);

impl AlertCounts {
    fn add(&mut self, line: &str) {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if value["kind"] == "alert" {
            assert_eq!(value["policy"], "host-write-execute", "{value}");
            let node = value["node"].as_str().expect("node").to_owned();
            let count = value["count"].as_u64().expect("count");
            self.0.entry(node).or_default().push(count);
        }
    }

    fn last(&self, node: &str) -> Option<u64> {
        self.0.get(node).and_then(|c| c.last().copied())
    }
}

/// What a tail received: per (node, call) the cursors it came with, the restart notices, the
/// loss notices, and its last cursor.
#[derive(Debug, Default)]
struct Received {
    calls: BTreeMap<(String, u64), Vec<u64>>,
    restarts: Vec<Value>,
    losses: Vec<Value>,
    last_cursor: u64,
    cursors: Vec<u64>,
}

impl Received {
    fn add(&mut self, line: &str) {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return;
        };
        match value["kind"].as_str() {
            Some("event") => {
                let cursor = value["cursor"].as_u64().expect("cursor");
                let node = value["node"].as_str().expect("node").to_owned();
                let addr = value["args"]["addr"].as_u64().expect("addr");
                let Some((_, call)) = unmark(addr) else {
                    return;
                };
                self.calls.entry((node, call)).or_default().push(cursor);
                self.last_cursor = cursor;
                self.cursors.push(cursor);
            }
            Some("agent_restart") => self.restarts.push(value),
            Some("loss") => self.losses.push(value),
            _ => {}
        }
    }

    /// Calls of `node` received.
    fn of(&self, node: &str) -> usize {
        self.calls.keys().filter(|(n, _)| n == node).count()
    }

    fn twice(&self) -> Vec<&(String, u64)> {
        self.calls
            .iter()
            .filter(|(_, c)| c.len() > 1)
            .map(|(k, _)| k)
            .collect()
    }
}

/// Read `tail`'s lines into `received` until `done` holds (or `within` passes: panics).
fn follow(
    tail: &Proc,
    received: &mut Received,
    within: Duration,
    done: impl Fn(&Received) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(received) {
        assert!(
            Instant::now() < deadline,
            "{}: not done within {within:?}: node-1 {} node-2 {} calls, twice {:?}, losses {:?}; stderr:\n{}",
            tail.name,
            received.of("node-1"),
            received.of("node-2"),
            received.twice(),
            received.losses,
            tail.err.everything()
        );
        for line in tail
            .out
            .until_quiet(Duration::from_millis(200), Duration::from_secs(1))
        {
            received.add(&line);
        }
    }
}

#[test]
fn replicas_lose_and_double_nothing_when_a_collector_and_a_nats_server_die_and_cursors_outlive_a_restart()
 {
    let dir = std::env::temp_dir().join(format!("mapsentry-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut nats = Nats::cluster(&dir.join("nats"), 3);
    let url = nats.url();
    let (ports_a, ports_b) = (Ports::new(), Ports::new());
    let a = collector("collector-a", ports_a, &url);
    let b = collector("collector-b", ports_b, &url);
    wait_ready(&a, ports_a, Duration::from_mins(1));
    wait_ready(&b, ports_b, Duration::from_mins(1));
    let via_a = vec![ports_a.grpc(), ports_b.grpc()];
    let via_b = vec![ports_b.grpc(), ports_a.grpc()];
    let (agent_1_proxy, agent_2_proxy) = (
        proxy(&runtime, via_a.clone()),
        proxy(&runtime, via_b.clone()),
    );
    let (tail_1_proxy, tail_2_proxy) = (proxy(&runtime, via_a), proxy(&runtime, via_b));

    // The two nodes' series are evaluated in different partitions (so each series is one node's).
    assert_ne!(
        partition_of("node-1", 4),
        partition_of("node-2", 4),
        "the test's node names share a partition"
    );
    let alerts = alerts_tail("tail-alerts", tail_1_proxy);
    // W+X calls: each one matches the host policy.
    let spec = format!(r#"{{"threads":1,"per_thread":{CALLS},"pace_us":{PACE_US},"prot":7}}"#);
    let helper_1 = Helper::spawn(mmap_call(), &[&spec]);
    let helper_2 = Helper::spawn(mmap_call(), &[&spec]);
    let agent_1 = agent("node-1", helper_1.pid, agent_1_proxy, &dir.join("state-1"));
    let agent_2 = agent("node-2", helper_2.pid, agent_2_proxy, &dir.join("state-2"));
    // From the stream's start: whatever the timing, each tail must get every call.
    let tail_1 = tail("tail-1", tail_1_proxy, 0);
    let tail_2 = tail("tail-2", tail_2_proxy, 0);

    let started = Instant::now();
    let flows: Vec<_> = [helper_1, helper_2]
        .into_iter()
        .map(|helper| thread::spawn(move || helper.go()))
        .collect();
    // A third of the way: collector A dies. Two thirds: a NATS server dies.
    thread::sleep(Duration::from_millis(CALLS * PACE_US / 3000));
    a.kill9();
    let killed_collector_at = started.elapsed();
    thread::sleep(Duration::from_millis(CALLS * PACE_US / 3000));
    nats.kill9(0);
    let killed_nats_at = started.elapsed();
    for flow in flows {
        let report = flow.join().expect("a helper's flow");
        assert_eq!(
            report["threads"][0]["calls"].as_u64(),
            Some(CALLS),
            "{report}"
        );
    }
    let flow_took = started.elapsed();

    let complete = |r: &Received| r.of("node-1") as u64 == CALLS && r.of("node-2") as u64 == CALLS;
    let mut received_1 = Received::default();
    let mut received_2 = Received::default();
    follow(&tail_1, &mut received_1, Duration::from_mins(2), complete);
    let tail_1_at = started.elapsed();
    follow(&tail_2, &mut received_2, Duration::from_mins(1), complete);
    let delivered_all_at = started.elapsed();
    // Nothing more comes: every call once.
    for (tail, received) in [(&tail_1, &mut received_1), (&tail_2, &mut received_2)] {
        for line in tail
            .out
            .until_quiet(Duration::from_secs(2), Duration::from_secs(5))
        {
            received.add(&line);
        }
        assert!(
            received.twice().is_empty(),
            "{}: calls received twice: {:?}",
            tail.name,
            received.twice()
        );
        assert!(
            received.losses.is_empty(),
            "{}: {:?}",
            tail.name,
            received.losses
        );
        assert!(
            received.cursors.windows(2).all(|w| w[0] < w[1]),
            "{}: cursors grow",
            tail.name
        );
        assert_eq!(received.calls.len() as u64, 2 * CALLS);
    }
    // Each node's calls are one alert series: begun at 1, only growing, ending at every call.
    let mut series = AlertCounts::default();
    let deadline = Instant::now() + Duration::from_mins(2);
    while series.last("node-1") != Some(CALLS) || series.last("node-2") != Some(CALLS) {
        assert!(
            Instant::now() < deadline,
            "alert series not at {CALLS} calls each within 2 min: {series:?}; stderr:\n{}",
            alerts.err.everything()
        );
        for line in alerts
            .out
            .until_quiet(Duration::from_millis(200), Duration::from_secs(1))
        {
            series.add(&line);
        }
    }
    let alerts_at = started.elapsed();
    for line in alerts
        .out
        .until_quiet(Duration::from_secs(2), Duration::from_secs(5))
    {
        series.add(&line);
    }
    for (node, counts) in &series.0 {
        assert_eq!(
            counts.first(),
            Some(&1),
            "{node}: one series, begun once: {counts:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "{node}: counts only grow: {counts:?}"
        );
        assert_eq!(counts.last(), Some(&CALLS), "{node}: {counts:?}");
    }
    assert_eq!(series.0.len(), 2, "{series:?}");
    let alerts_log = alerts.err.everything();
    alerts.terminate();

    // Tail 1 was on A: it resumed on B from its cursor (its log says so).
    assert!(
        tail_1.err.everything().contains("resuming after cursor"),
        "tail-1 resumed: {}",
        tail_1.err.everything()
    );
    // The stream holds each call once, whichever replica stored it: a fresh tail from 0.
    let check = tail("tail-check", tail_2_proxy, 0);
    let mut stored = Received::default();
    follow(&check, &mut stored, Duration::from_mins(1), complete);
    for line in check
        .out
        .until_quiet(Duration::from_secs(1), Duration::from_secs(3))
    {
        stored.add(&line);
    }
    assert!(
        stored.twice().is_empty(),
        "stored twice: {:?}",
        stored.twice()
    );
    check.terminate();
    let agent_1_log = agent_1.err.everything();
    assert!(
        agent_1_log.matches("connected to the collector").count() >= 2,
        "agent 1 reconnected (to B): {agent_1_log}"
    );
    let duplicates = metric(
        ports_b.metrics,
        "mapsentry_collector_duplicate_batches_total",
    );
    let publish_errors = metric(ports_b.metrics, "mapsentry_jetstream_publish_errors");
    // What the failover looked like, for the figures: the agent's and the tail's own words.
    for (name, log) in [
        ("agent-1", &agent_1_log),
        ("tail-1", &tail_1.err.everything()),
        ("tail-alerts", &alerts_log),
        ("agent-2", &agent_2.err.everything()),
        ("tail-2", &tail_2.err.everything()),
    ] {
        for line in log
            .lines()
            .filter(|l| l.contains("collector") || l.contains("resum") || l.contains("WARN"))
        {
            println!("{name}: {line}");
        }
    }
    for line in b
        .err
        .everything()
        .lines()
        .filter(|l| l.contains("WARN"))
        .take(20)
    {
        println!("collector-b: {line}");
    }
    println!(
        "FIGURES replicas: {CALLS} calls x 2 nodes; collector A killed at {killed_collector_at:?}, nats-server 0 at {killed_nats_at:?}; \
         flow took {flow_took:?}, every call at tail-1 (resumed on B) after {tail_1_at:?}, at both tails after {delivered_all_at:?}; \
         B counted {duplicates} resent batches already stored, {publish_errors} failed publishes; agent 1 connected {} times; each node's alert series complete after {alerts_at:?}: {:?}",
        agent_1_log.matches("connected to the collector").count(),
        series.0
    );

    // Everything stops hard (the agents cleanly), and starts again.
    let (last_1, middle) = (
        received_1.last_cursor,
        received_1.cursors[received_1.cursors.len() / 2],
    );
    let after_middle = received_1.cursors.len() - received_1.cursors.len() / 2 - 1;
    tail_1.terminate();
    tail_2.terminate();
    agent_1.terminate();
    agent_2.terminate();
    b.kill9();
    for i in 1..3 {
        nats.kill9(i);
    }
    for i in 0..3 {
        nats.restart(i);
    }
    let a = collector("collector-a", ports_a, &url);
    let b = collector("collector-b", ports_b, &url);
    wait_ready(&a, ports_a, Duration::from_mins(1));
    wait_ready(&b, ports_b, Duration::from_mins(1));
    let resumed = tail("tail-resumed", tail_1_proxy, last_1);
    let from_middle = tail("tail-middle", tail_2_proxy, middle);
    let again = format!(r#"{{"threads":1,"per_thread":100,"pace_us":{PACE_US}}}"#);
    let helper_1 = Helper::spawn(mmap_call(), &[&again]);
    let agent_1 = agent("node-1", helper_1.pid, agent_1_proxy, &dir.join("state-1"));
    assert_eq!(helper_1.go()["threads"][0]["calls"].as_u64(), Some(100));
    let mut after_restart = Received::default();
    follow(&resumed, &mut after_restart, Duration::from_mins(1), |r| {
        r.of("node-1") == 100
    });
    for line in resumed
        .out
        .until_quiet(Duration::from_secs(1), Duration::from_secs(3))
    {
        after_restart.add(&line);
    }
    assert_eq!(
        after_restart.calls.len(),
        100,
        "only the new calls after the old cursor: {:?}",
        after_restart.calls.keys().next()
    );
    assert!(after_restart.twice().is_empty());
    assert_eq!(
        after_restart.restarts.len(),
        1,
        "node-1's new agent is announced: {:?}",
        after_restart.restarts
    );
    assert!(
        after_restart.cursors[0] > last_1,
        "cursors continue after the restart"
    );
    let mut middle_on = Received::default();
    follow(&from_middle, &mut middle_on, Duration::from_mins(1), |r| {
        r.calls.values().map(Vec::len).sum::<usize>() == after_middle + 100
    });
    assert!(
        middle_on.twice().is_empty() && middle_on.losses.is_empty(),
        "{middle_on:?}"
    );
    println!(
        "FIGURES replicas: after a restart of everything, a cursor of before resumed with exactly the {after_middle} older and 100 new events after it"
    );
    agent_1.terminate();
    resumed.terminate();
    from_middle.terminate();
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sum of a metric's samples on a replica's `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
