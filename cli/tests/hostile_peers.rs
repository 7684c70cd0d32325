//! The collector binary under faults and hostile peers (issue 22), all on loopback: raw gRPC
//! clients from the protos, a 2 MB tmpfs as the data dir, byte-flipped segments, hostile policy
//! files appearing in a watched `--policy` directory, idle and trickling sockets, exhausted file
//! descriptors, tokens of one namespace, oversized fields. Each test prints its figures as
//! `FIGURES ...` lines (`--nocapture`). `MAPSENTRY_BIN` runs the tests against another build of
//! the binary (how BENCHMARKS.md shows what each one catches).

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use mapsentry_proto::v1::{
    self, AgentMessage, CollectorMessage, EventBatch, Hello, StatsRequest, StatsResponse,
    agent_message::Msg, agent_service_client::AgentServiceClient, collector_message,
    observer_client::ObserverClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, transport::Channel};

fn bin() -> PathBuf {
    std::env::var_os("MAPSENTRY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_mapsentry")),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A directory of its own under the target's tmp dir, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hostile-peers-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of `size` mounted on `dir` (root only), unmounted at the end.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} needs root (CAP_SYS_ADMIN): {status}",
            dir.display()
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A `mapsentry collector` process, plaintext on loopback, its log in a file.
struct Collector {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
}

#[derive(Default)]
struct Options<'a> {
    args: Vec<String>,
    env: Vec<(&'a str, &'a str)>,
    /// The open-file limit (`ulimit -n`).
    nofile: Option<u32>,
    /// Wait for /readyz.
    no_wait: bool,
}

impl Collector {
    fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_with(
            dir,
            &Options {
                args: args.iter().map(ToString::to_string).collect(),
                ..Options::default()
            },
        )
    }

    fn start_with(dir: &Path, options: &Options<'_>) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("collector-{}.log", grpc.port()));
        let mut command = match options.nofile {
            None => Command::new(bin()),
            Some(limit) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(bin());
                command
            }
        };
        command
            .args(["collector", "--plaintext", "--listen"])
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(http.to_string())
            .args(&options.args)
            .envs(options.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("collector starts");
        let mut collector = Self {
            child,
            grpc,
            http,
            log,
        };
        if !options.no_wait {
            collector.wait_ready(Duration::from_mins(1));
        }
        collector
    }

    fn wait_ready(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("the collector exited: {status}\n{}", self.log_text());
            }
            if matches!(
                http_get(self.http, "/readyz", Duration::from_secs(1)),
                Ok((200, _))
            ) {
                return start.elapsed();
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the collector was not ready within {within:?}\n{}",
            self.log_text()
        );
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let (status, text) =
            http_get(self.http, "/metrics", Duration::from_secs(5)).expect("/metrics answers");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// SIGTERM, then how long it took to exit (killed after 20 s).
    fn stop(mut self) -> Duration {
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while start.elapsed() < Duration::from_secs(20) {
            if self.child.try_wait().expect("wait").is_some() {
                return start.elapsed();
            }
            thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// Peak resident memory so far, KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET: status and the whole response.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    tcp.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// The sum of the samples of metric `name` (every label set).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn event(namespace: &str, path_bytes: usize, n: u64) -> v1::Event {
    v1::Event {
        time_ns: 1_795_772_647_000_000_000 + n,
        syscall: v1::Syscall::Mmap.into(),
        pid: 4242,
        tid: 4242,
        ppid: 1,
        comm: "java".into(),
        cgroup_id: 9137,
        ret: 0x7f00_0000_0000,
        args: Some(v1::MmapArgs {
            addr: 0,
            length: 8192,
            prot: 7,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        }),
        file: (path_bytes > 0).then(|| v1::FileInfo {
            path: format!("/opt/{}", "x".repeat(path_bytes)),
            ..v1::FileInfo::default()
        }),
        attribution: Some(v1::event::Attribution::Pod(Box::new(v1::PodAttribution {
            namespace: Some(namespace.into()),
            pod: Some("api-7d9f".into()),
            resolved: true,
            ..v1::PodAttribution::default()
        }))),
        ..v1::Event::default()
    }
}

fn events(namespace: &str, count: u64, path_bytes: usize) -> Vec<v1::Event> {
    (0..count)
        .map(|n| event(namespace, path_bytes, n))
        .collect()
}

/// A raw agent stream: Hello sent, batches sent one at a time, each waiting for its ack.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<CollectorMessage>,
}

impl Agent {
    async fn connect(url: &str, node: &str, token: Option<&str>) -> Result<Self, Status> {
        let channel = Channel::from_shared(url.to_owned())
            .expect("url")
            .connect()
            .await
            .map_err(|error| Status::unavailable(format!("connect: {error}")))?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(AgentMessage {
            msg: Some(Msg::Hello(Hello {
                version: v1::ProtocolVersion::V1.into(),
                node: node.into(),
                boot_id: "7d3c5f0e-boot".into(),
                kernel: "6.18.0".into(),
                attach_mode: "tracepoint".into(),
                capabilities: vec![],
                started_unix_ns: 1_795_772_647_000_000_000,
            })),
        })
        .await
        .expect("queue Hello");
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let rx = AgentServiceClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .connect(request)
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// Send batch `seq`; Ok once it is acked, else the stream's status.
    async fn send(&mut self, seq: u64, events: Vec<v1::Event>) -> Result<(), Status> {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Batch(EventBatch { seq, events })),
            })
            .await
            .map_err(|_| Status::unavailable("the request stream is closed"))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
                Err(_) => return Err(Status::deadline_exceeded("no ack within 20 s")),
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => return Err(Status::unavailable("the stream ended")),
                Ok(Ok(Some(CollectorMessage {
                    msg: Some(collector_message::Msg::Ack(ack)),
                }))) => {
                    assert_eq!(ack.seq, seq, "acks come in order");
                    return Ok(());
                }
                Ok(Ok(Some(_))) => {}
            }
        }
    }
}

async fn stats(url: &str, token: Option<&str>) -> Result<StatsResponse, Status> {
    let channel = Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .map_err(|error| Status::unavailable(format!("connect: {error}")))?;
    let mut client = ObserverClient::new(channel).max_decoding_message_size(64 << 20);
    let mut request = Request::new(StatsRequest {});
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    Ok(client.stats(request).await?.into_inner())
}

fn retained(url: &str) -> u64 {
    runtime()
        .block_on(stats(url, None))
        .expect("Stats answers")
        .retained
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("data dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

#[test]
fn out_of_order_sequence_numbers_are_acked_stored_and_kept_across_a_restart() {
    let dir = TempDir::new("order");
    let data = dir.path().join("data");
    let args = ["--data-dir", data.to_str().expect("utf-8")];
    let collector = Collector::start(dir.path(), &args);
    runtime().block_on(async {
        let mut agent = Agent::connect(&collector.url(), "node-a", None)
            .await
            .expect("Hello");
        for seq in [1, 1, 5, 3, 2, 7, 8] {
            agent
                .send(seq, events("team-a", 10, 0))
                .await
                .unwrap_or_else(|status| panic!("seq {seq} not acked: {status}"));
        }
    });
    let before = retained(&collector.url());
    collector.stop();
    let collector = Collector::start(dir.path(), &args);
    let after = retained(&collector.url());
    println!("FIGURES acked_seqs=1,1,5,3,2,7,8 retained_before={before} retained_after={after}");
    assert_eq!(before, 60, "six distinct batches of 10 events were acked");
    assert_eq!(after, 60, "what was acked is kept across a restart");
}

#[test]
fn a_flipped_byte_mid_segment_costs_one_batch_counted_and_keeps_every_later_one() {
    let dir = TempDir::new("flip");
    let data = dir.path().join("data");
    let args = ["--data-dir", data.to_str().expect("utf-8")];
    let collector = Collector::start(dir.path(), &args);
    runtime().block_on(async {
        let mut agent = Agent::connect(&collector.url(), "node-a", None)
            .await
            .expect("Hello");
        for seq in 1..=20 {
            agent
                .send(seq, events("team-a", 10, 200))
                .await
                .expect("acked");
        }
    });
    collector.stop();
    let segment = segments(&data).pop().expect("a segment");
    let mut bytes = fs::read(&segment).expect("segment");
    let length = bytes.len();
    bytes[length / 2] ^= 0x5a;
    fs::write(&segment, &bytes).expect("flip a byte");

    let collector = Collector::start(dir.path(), &args);
    let after = retained(&collector.url());
    let metrics = collector.metrics();
    let dropped_batches = metric_sum(
        &metrics,
        "mapsentry_collector_retention_log_dropped_batches_total",
    );
    let dropped_events = metric_sum(
        &metrics,
        "mapsentry_collector_retention_log_dropped_events_total",
    );
    let length_after = fs::metadata(&segment).expect("segment").len();
    println!(
        "FIGURES events=200 flipped_at={} retained_after={after} dropped_batches={dropped_batches} dropped_events={dropped_events} segment_bytes={length}->{length_after}",
        length / 2
    );
    assert_eq!(after, 190, "only the damaged batch is lost");
    assert_eq!((dropped_batches, dropped_events), (1, 10), "and counted");
    assert!(
        length_after >= length as u64,
        "good data is never truncated on disk"
    );
}

#[test]
fn a_full_disk_refuses_batches_and_everything_acked_survives_a_restart() {
    let dir = TempDir::new("full");
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "2m");
    let filler = data.join("filler");
    fs::write(&filler, vec![0u8; 700 << 10]).expect("filler");
    let args = ["--data-dir", data.to_str().expect("utf-8")];
    let collector = Collector::start(dir.path(), &args);
    let url = collector.url();
    let (acked, refused_at) = runtime().block_on(async {
        let mut acked = 0;
        let mut seq = 1;
        let mut agent = Agent::connect(&url, "node-a", None).await.expect("Hello");
        let refused_at = loop {
            assert!(seq < 1000, "the 2 MB disk never filled up");
            match agent.send(seq, events("team-a", 10, 1500)).await {
                Ok(()) => acked += 10,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status}");
                    break seq;
                }
            }
            seq += 1;
        };
        fs::remove_file(&filler).expect("space back");
        let mut agent = Agent::connect(&url, "node-a", None).await.expect("Hello");
        for seq in refused_at..refused_at + 30 {
            agent
                .send(seq, events("team-a", 10, 1500))
                .await
                .unwrap_or_else(|status| panic!("seq {seq} with space back: {status}"));
            acked += 10;
        }
        (acked, refused_at)
    });
    let before = retained(&url);
    let failures = metric_sum(
        &collector.metrics(),
        "mapsentry_collector_store_failures_total",
    );
    collector.stop();
    let collector = Collector::start(dir.path(), &args);
    let after = retained(&collector.url());
    println!(
        "FIGURES tmpfs=2m refused_at_seq={refused_at} store_failures={failures} acked={acked} retained_before={before} retained_after={after}"
    );
    assert_eq!(before, acked);
    assert_eq!(after, acked, "every acked event is kept across a restart");
}

/// `text` as a new file `name` of `dir` at once (written aside, then renamed in).
fn drop_in(dir: &Path, name: &str, text: &str) {
    let aside = dir.with_extension("aside");
    fs::write(&aside, text).expect("write");
    fs::rename(&aside, dir.join(name)).expect("rename");
}

fn policy_dir(root: &Path) -> PathBuf {
    let dir = root.join("policies");
    fs::create_dir_all(&dir).expect("policies");
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/policies/write-execute.yaml"
        ),
        dir.join("write-execute.yaml"),
    )
    .expect("copy a policy");
    dir
}

#[test]
fn a_deeply_nested_policy_file_dropped_in_a_watched_directory_never_stops_serving() {
    let dir = TempDir::new("nested");
    let policies = policy_dir(dir.path());
    // One worker thread, as on a node or pod limited to one CPU.
    let collector = Collector::start_with(
        dir.path(),
        &Options {
            args: vec!["--policy".into(), policies.display().to_string()],
            env: vec![("TOKIO_WORKER_THREADS", "1")],
            ..Options::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (http, url, stop) = (collector.http, collector.url(), Arc::clone(&stop));
        thread::spawn(move || {
            let runtime = runtime();
            let (mut worst_http, mut worst_grpc, mut polls) = (Duration::ZERO, Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let answer = http_get(http, "/healthz", Duration::from_secs(30));
                assert!(matches!(answer, Ok((200, _))), "/healthz: {answer:?}");
                worst_http = worst_http.max(start.elapsed());
                let start = Instant::now();
                runtime.block_on(stats(&url, None)).expect("Stats");
                worst_grpc = worst_grpc.max(start.elapsed());
                polls += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (worst_http, worst_grpc, polls)
        })
    };
    thread::sleep(Duration::from_secs(1));
    // 60,000 levels of flow mappings (300 KB): a YAML parser takes tens of seconds on them.
    let depth = 60_000;
    let nested = format!("a: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth));
    drop_in(&policies, "nested.yaml", &nested);
    let dropped = Instant::now();
    while dropped.elapsed() < Duration::from_secs(20)
        && !collector.log_text().contains("nesting depth")
    {
        thread::sleep(Duration::from_millis(100));
    }
    let refused_after = dropped.elapsed();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (worst_http, worst_grpc, polls) = poller.join().expect("poller");
    println!(
        "FIGURES nested_depth={depth} file_bytes={} refused_after_ms={} polls={polls} worst_healthz_ms={} worst_stats_ms={}",
        nested.len(),
        refused_after.as_millis(),
        worst_http.as_millis(),
        worst_grpc.as_millis()
    );
    let log = collector.log_text();
    assert!(
        log.contains("nesting depth 65 at line 1 is more than the limit of 64"),
        "the file is refused with the limit named:\n{log}"
    );
    assert!(
        worst_http < Duration::from_secs(1),
        "/healthz took {worst_http:?}"
    );
    assert!(
        worst_grpc < Duration::from_secs(1),
        "Stats took {worst_grpc:?}"
    );
    assert!(
        matches!(
            http_get(collector.http, "/readyz", Duration::from_secs(1)),
            Ok((200, _))
        ),
        "still ready"
    );
}

#[test]
fn a_policy_file_of_45_000_documents_neither_delays_readiness_nor_shutdown() {
    let dir = TempDir::new("documents");
    let policies = policy_dir(dir.path());
    fs::write(
        policies.join("many.yaml"),
        "---\nkind: MmapPolicy\n".repeat(45_000),
    )
    .expect("many documents");
    let mut collector = Collector::start_with(
        dir.path(),
        &Options {
            args: vec!["--policy".into(), policies.display().to_string()],
            env: vec![("TOKIO_WORKER_THREADS", "1")],
            no_wait: true,
            ..Options::default()
        },
    );
    let ready = collector.wait_ready(Duration::from_mins(2));
    let log = collector.log_text();
    let stopped = collector.stop();
    println!(
        "FIGURES documents=45000 ready_ms={} stop_ms={}",
        ready.as_millis(),
        stopped.as_millis()
    );
    assert!(
        log.contains("more than the limit of 1000 YAML documents in one policy file"),
        "refused with the limit named:\n{log}"
    );
    assert!(ready < Duration::from_secs(5), "ready after {ready:?}");
    assert!(
        stopped < Duration::from_secs(5),
        "stopped after {stopped:?}"
    );
}

/// How long until the peer closes `tcp` (None: still open after `within`), sending `trickle`
/// one byte every `every` meanwhile.
fn closed_after(
    mut tcp: TcpStream,
    trickle: &[u8],
    every: Duration,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    tcp.set_read_timeout(Some(every)).expect("timeout");
    let mut bytes = trickle.iter().cycle();
    let mut buffer = [0u8; 4096];
    while start.elapsed() < within {
        if !trickle.is_empty() && tcp.write_all(&[*bytes.next().expect("cycle")]).is_err() {
            return Some(start.elapsed());
        }
        match tcp.read(&mut buffer) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_connection_that_never_speaks_grpc_is_closed() {
    let dir = TempDir::new("idle");
    let collector = Collector::start(dir.path(), &[]);
    let tcp = TcpStream::connect(collector.grpc).expect("connect");
    let closed = closed_after(tcp, &[], Duration::from_secs(1), Duration::from_secs(30));
    println!(
        "FIGURES idle_grpc_closed_after_ms={:?}",
        closed.map(|d| d.as_millis())
    );
    let closed = closed.expect("the idle connection was still open after 30 s");
    assert!(closed < Duration::from_secs(12), "closed after {closed:?}");
}

#[test]
fn a_client_trickling_its_request_to_the_http_endpoint_is_cut_off() {
    let dir = TempDir::new("slow");
    let collector = Collector::start(dir.path(), &[]);
    let tcp = TcpStream::connect(collector.http).expect("connect");
    let request = b"GET /metrics HTTP/1.1\r\nHost: mapsentry\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let closed = closed_after(
        tcp,
        request,
        Duration::from_secs(2),
        Duration::from_secs(40),
    );
    println!(
        "FIGURES slow_http_closed_after_ms={:?}",
        closed.map(|d| d.as_millis())
    );
    let closed = closed.expect("the trickling client was still served after 40 s");
    assert!(closed < Duration::from_secs(12), "closed after {closed:?}");
    assert!(matches!(
        http_get(collector.http, "/healthz", Duration::from_secs(1)),
        Ok((200, _))
    ));
}

#[test]
fn accepts_failing_for_want_of_file_descriptors_recover() {
    let dir = TempDir::new("emfile");
    let collector = Collector::start_with(
        dir.path(),
        &Options {
            nofile: Some(64),
            ..Options::default()
        },
    );
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(collector.grpc).expect("the kernel's backlog accepts"));
    }
    thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        held.push(TcpStream::connect(collector.http).expect("the kernel's backlog accepts"));
    }
    thread::sleep(Duration::from_secs(1));
    drop(held);
    let start = Instant::now();
    let mut http_back = None;
    let mut grpc_back = None;
    let runtime = runtime();
    while start.elapsed() < Duration::from_secs(15) && (http_back.is_none() || grpc_back.is_none())
    {
        if http_back.is_none()
            && matches!(
                http_get(collector.http, "/healthz", Duration::from_secs(1)),
                Ok((200, _))
            )
        {
            http_back = Some(start.elapsed());
        }
        if grpc_back.is_none()
            && runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(1), stats(&collector.url(), None))
                        .await
                })
                .is_ok_and(|answer| answer.is_ok())
        {
            grpc_back = Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let log = collector.log_text();
    let failed_accepts = log.matches("accepting a connection failed").count();
    println!(
        "FIGURES nofile=64 held=120 failed_accept_lines={failed_accepts} http_back_ms={:?} grpc_back_ms={:?}",
        http_back.map(|d| d.as_millis()),
        grpc_back.map(|d| d.as_millis())
    );
    assert!(failed_accepts > 0, "the failed accepts are logged:\n{log}");
    assert!(http_back.is_some(), "the HTTP endpoint recovered:\n{log}");
    assert!(grpc_back.is_some(), "gRPC recovered:\n{log}");
}

#[test]
fn stats_show_nodes_only_to_tokens_of_every_namespace() {
    let dir = TempDir::new("scope");
    let tokens = dir.path().join("tokens.jsonl");
    fs::write(
        &tokens,
        concat!(
            r#"{"token": "agent-secret", "namespaces": [], "agent": true}"#,
            "\n",
            r#"{"token": "team-a-secret", "namespaces": ["team-a"]}"#,
            "\n",
            r#"{"token": "ops-secret", "namespaces": ["*"]}"#,
            "\n"
        ),
    )
    .expect("tokens");
    let collector = Collector::start(dir.path(), &["--tokens", tokens.to_str().expect("utf-8")]);
    let url = collector.url();
    runtime().block_on(async {
        let mut agent = Agent::connect(&url, "node-secret-7", Some("agent-secret"))
            .await
            .expect("Hello");
        agent.send(1, events("team-a", 3, 0)).await.expect("acked");
        agent.send(2, events("team-b", 3, 0)).await.expect("acked");
        let team = stats(&url, Some("team-a-secret")).await.expect("Stats");
        let ops = stats(&url, Some("ops-secret")).await.expect("Stats");
        let anonymous = stats(&url, None).await.map(drop);
        println!(
            "FIGURES team_a_nodes={} team_a_omitted={} ops_nodes={} anonymous={anonymous:?}",
            team.nodes.len(),
            team.nodes_omitted,
            ops.nodes.len()
        );
        assert!(
            team.nodes.is_empty(),
            "a namespace's token sees no node: {team:?}"
        );
        assert_eq!(team.nodes_omitted, 1);
        assert_eq!(ops.nodes.len(), 1);
        assert_eq!(ops.nodes[0].node, "node-secret-7");
        assert_eq!(
            anonymous.expect_err("no token").code(),
            Code::Unauthenticated
        );
    });
}

#[test]
fn oversized_names_and_events_leave_the_collector_memory_bounded_and_stats_whole() {
    let dir = TempDir::new("memory");
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    let start_kib = collector.peak_rss_kib();
    let refused = runtime().block_on(async {
        let mut refused = 0;
        for n in 0..20 {
            // A 7 MB node name in Hello, then a batch of one 7.5 MB event.
            let node = format!("node-{n}-{}", "n".repeat(7 << 20));
            match Agent::connect(&url, &node, None).await {
                Err(_) => refused += 1,
                Ok(mut agent) => {
                    if agent.send(1, events("team-a", 1, 0)).await.is_err() {
                        refused += 1;
                    }
                }
            }
            let mut agent = Agent::connect(&url, &format!("node-{n}"), None)
                .await
                .expect("Hello");
            let mut big = event("team-a", 0, 0);
            big.comm = "c".repeat(7 << 20) + &"d".repeat(512 << 10);
            if agent.send(1, vec![big]).await.is_err() {
                refused += 1;
            }
        }
        refused
    });
    let stats = runtime().block_on(stats(&url, None));
    let peak_kib = collector.peak_rss_kib();
    println!(
        "FIGURES hostile_messages=40 refused={refused} rss_start_mib={} rss_peak_mib={}",
        start_kib >> 10,
        peak_kib >> 10
    );
    let stats = stats.expect("Stats answers for every client");
    assert!(stats.nodes.len() <= 20, "{} nodes", stats.nodes.len());
    assert_eq!(refused, 40, "every oversized name and event is refused");
    assert!(peak_kib < 200 << 10, "peak RSS {} MiB", peak_kib >> 10);
}

#[test]
fn metrics_can_keep_namespaces_and_pods_out_of_the_violation_series() {
    let dir = TempDir::new("labels");
    let policies = policy_dir(dir.path());
    let policies = policies.to_str().expect("utf-8");
    for (labels, shows_namespace, shows_pod) in [
        ("pod", true, true),
        ("namespace", true, false),
        ("none", false, false),
    ] {
        let collector = Collector::start(
            dir.path(),
            &["--policy", policies, "--metrics-workload-labels", labels],
        );
        runtime().block_on(async {
            let mut agent = Agent::connect(&collector.url(), "node-a", None)
                .await
                .expect("Hello");
            agent
                .send(1, events("team-secret", 3, 0))
                .await
                .expect("acked");
        });
        let start = Instant::now();
        let mut metrics = collector.metrics();
        while !metrics.contains("mapsentry_policy_violations_total{") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no violation counted:\n{metrics}"
            );
            thread::sleep(Duration::from_millis(100));
            metrics = collector.metrics();
        }
        let series: Vec<&str> = metrics
            .lines()
            .filter(|line| line.starts_with("mapsentry_policy_violations_total{"))
            .collect();
        println!("FIGURES metrics_workload_labels={labels} series={series:?}");
        assert_eq!(
            metrics.contains("team-secret"),
            shows_namespace,
            "{series:?}"
        );
        assert_eq!(metrics.contains("api-7d9f"), shows_pod, "{series:?}");
    }
}
