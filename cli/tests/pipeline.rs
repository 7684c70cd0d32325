//! Agent shipper -> collector -> subscriber, over real gRPC on 127.0.0.1, with real BPF capture
//! where the test says so.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use mapsentry_agent::{
    Capture, CaptureConfig,
    shipper::{Shipper, ShipperConfig, backoff::Backoff},
};
use mapsentry_collector::{
    Hub, HubConfig, ServerConfig,
    follow::{Followed, Follower},
    serve,
};
use mapsentry_policy::{MmapArgs, MmapEvent, Syscall};
use mapsentry_proto::v1::{EventRecord, SubscribeRequest};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

struct Collector {
    hub: Arc<Hub>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start_collector(listener: TcpListener) -> Collector {
    let hub = Hub::new(HubConfig::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = Arc::clone(&hub);
    let task = tokio::spawn(async move {
        serve(serving, &ServerConfig::default(), listener, async {
            drop(stopped.await);
        })
        .await
        .expect("collector serves");
    });
    Collector { hub, stop, task }
}

impl Collector {
    async fn stop(self) -> Arc<Hub> {
        drop(self.stop);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("collector stops in 10 s")
            .unwrap();
        self.hub
    }
}

fn shipper_config(addr: SocketAddr) -> ShipperConfig {
    let mut config = ShipperConfig::new(format!("http://{addr}"), "node-a");
    config.batch_max_events = 100;
    config.batch_max_delay = Duration::from_millis(20);
    config.backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    config.flush_timeout = Duration::from_secs(10);
    config
}

fn follower(addr: SocketAddr, since: Option<u64>) -> Follower {
    Follower::new(
        &format!("http://{addr}"),
        SubscribeRequest {
            since,
            ..SubscribeRequest::default()
        },
        8 << 20,
    )
    .unwrap()
    .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Read records until `count` arrived (failing on any loss notice), then make sure no more come.
async fn read_records(follower: &mut Follower, count: usize) -> (Vec<EventRecord>, u32) {
    let mut records = Vec::new();
    let mut disconnects = 0;
    while records.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(20), follower.next()).await;
        match next
            .unwrap_or_else(|_| panic!("stuck after {} of {count} records", records.len()))
            .unwrap()
        {
            Followed::Record(record) => records.push(record),
            Followed::Loss(loss) => panic!(
                "unexpected loss notice {loss:?} after {} records",
                records.len()
            ),
            Followed::Started(_) | Followed::AgentRestart(_) => {}
            Followed::Alert(alert) => panic!("an events subscription got an alert: {alert:?}"),
            Followed::Disconnected { .. } => disconnects += 1,
        }
    }
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(500), follower.next()).await {
        assert!(
            !matches!(extra, Ok(Followed::Record(_))),
            "more records than sent: {extra:?} ({disconnects} disconnects)"
        );
    }
    (records, disconnects)
}

fn event(n: u32) -> MmapEvent {
    MmapEvent {
        time_ns: 1_764_000_000_000_000_000 + u64::from(n),
        syscall: if n.is_multiple_of(3) {
            Syscall::Mmap2
        } else {
            Syscall::Mmap
        },
        pid: n,
        tid: n + 1,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        comm: format!("w{}", n % 7),
        cgroup_id: 4242,
        args: MmapArgs {
            addr: 0,
            length: 4096 * u64::from(n % 5 + 1),
            prot: 3,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x7f00_0000_0000 + i64::from(n) * 4096,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpf_captured_calls_reach_a_subscriber_once_with_exact_fields() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = start_collector(listener);
    let mut follow = follower(addr, Some(0));

    // The child waits on stdin until the capture is attached, then execs cat (loader mmaps,
    // libc mapped from a file).
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", "read _ && exec cat /etc/hostname"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut capture = Capture::start(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    })
    .expect("capture starts (needs root and BPF)");
    let mode = capture.attached().mode.as_str();
    let mut config = shipper_config(addr);
    config.attach_mode = mode.into();
    let shipper = Shipper::start(config).unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
    }
    let mut captured = Vec::new();
    let mut batch = Vec::new();
    let exited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                status = child.wait() => break status.unwrap(),
                read = capture.next_batch(&mut batch) => { read.unwrap(); }
            }
            captured.extend(batch.iter().cloned());
            shipper.send(std::mem::take(&mut batch)).await.unwrap();
        }
    })
    .await
    .expect("the child exits");
    assert!(exited.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    capture.detach();
    capture.drain(&mut batch);
    captured.extend(batch.iter().cloned());
    shipper.send(batch).await.unwrap();
    let kernel = capture.kernel_counters().unwrap();
    assert_eq!(kernel.dropped, 0);
    assert!(
        captured.iter().all(|e| e.pid == pid),
        "only the child's calls"
    );
    assert!(
        captured
            .iter()
            .any(|e| e.comm == "cat" && e.file.as_ref().is_some_and(|f| f.path.contains("libc"))),
        "cat mapped libc: {captured:#?}"
    );

    let (records, _) = read_records(&mut follow, captured.len()).await;
    let delivered: Vec<MmapEvent> = records
        .iter()
        .map(|r| MmapEvent::try_from(r.event.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        delivered, captured,
        "every captured call once, in order, every field equal"
    );
    assert!(records.windows(2).all(|w| w[1].cursor == w[0].cursor + 1));
    assert!(records.iter().all(|r| r.node == "node-a"));

    let stats = shipper.finish().await;
    assert_eq!(
        (stats.captured, stats.acked),
        (captured.len() as u64, captured.len() as u64),
        "{stats:?}"
    );
    let hub = collector.stop().await;
    let node = &hub.stats().nodes[0];
    assert_eq!(
        (node.acked, node.attach_mode.as_str()),
        (captured.len() as u64, mode),
        "the collector records the mode the agent attached in"
    );
    assert_eq!(
        (node.captured, node.shipped),
        (captured.len() as u64, captured.len() as u64),
        "the agent's last report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_restarted_while_events_flow_a_resuming_subscriber_gets_each_event_once() {
    const TOTAL: u32 = 6000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = start_collector(listener);
    let shipper = Arc::new(Shipper::start(shipper_config(addr)).unwrap());
    let mut follow = follower(addr, Some(0));

    let producer = {
        let shipper = Arc::clone(&shipper);
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 20 {
                shipper
                    .send((chunk * 20..chunk * 20 + 20).map(event).collect())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let reader = tokio::spawn(async move { read_records(&mut follow, TOTAL as usize).await });

    // Restart once about a third of the events went through.
    while first.hub.stats().retained < u64::from(TOTAL / 3) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_hub = first.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await; // events keep coming while it is down
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebinding the collector's port");
    let second = start_collector(listener);

    producer.await.unwrap();
    let (records, disconnects) = tokio::time::timeout(Duration::from_mins(1), reader)
        .await
        .unwrap()
        .unwrap();
    let shipper = Arc::into_inner(shipper).expect("the producer is done");
    let stats = shipper.finish().await;

    let mut seen = BTreeMap::new();
    for record in &records {
        *seen.entry(record.event.as_ref().unwrap().pid).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), TOTAL as usize, "every event arrived");
    assert!(seen.values().all(|&n| n == 1), "no event twice");
    for record in &records {
        let pid = record.event.as_ref().unwrap().pid;
        assert_eq!(
            MmapEvent::try_from(record.event.as_ref().unwrap()).unwrap(),
            event(pid)
        );
    }
    assert!(
        records.windows(2).all(|w| w[1].cursor > w[0].cursor),
        "cursors grow across the restart"
    );
    assert!(disconnects > 0, "the subscriber saw the restart");

    let first_stats = first_hub.stats();
    let second_hub = second.stop().await;
    let second_stats = second_hub.stats();
    assert!(
        first_stats.nodes[0].acked > 0 && second_stats.nodes[0].acked > 0,
        "both collectors stored events"
    );
    assert_eq!(
        first_stats.nodes[0].acked + second_stats.nodes[0].acked,
        u64::from(TOTAL)
    );
    assert!(stats.connects >= 2, "the shipper reconnected: {stats:?}");
    assert_eq!(stats.dropped, BTreeMap::new(), "nothing dropped: {stats:?}");
    assert_eq!(
        stats.captured,
        records.len() as u64 + stats.dropped.values().sum::<u64>()
    );
    assert_eq!(stats.acked, u64::from(TOTAL));
}

/// `mapsentry collector` as its own process, so that it can be killed.
async fn spawn_collector_process(addr: SocketAddr, dir: &std::path::Path) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapsentry"))
        .args([
            "collector",
            "--plaintext",
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the collector did not listen on {addr} within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_and_restarted_on_its_retention_log_loses_and_doubles_nothing() {
    const TOTAL: u32 = 6000;
    let dir = std::env::temp_dir().join(format!("mapsentry-kill-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut collector = spawn_collector_process(addr, &dir).await;
    let shipper = Arc::new(Shipper::start(shipper_config(addr)).unwrap());
    let mut follow = follower(addr, Some(0));
    let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));

    let producer = {
        let (shipper, sent) = (Arc::clone(&shipper), Arc::clone(&sent));
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 20 {
                shipper
                    .send((chunk * 20..chunk * 20 + 20).map(event).collect())
                    .await
                    .unwrap();
                sent.fetch_add(20, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let reader = tokio::spawn(async move { read_records(&mut follow, TOTAL as usize).await });

    while sent.load(std::sync::atomic::Ordering::Relaxed) < TOTAL / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    collector.start_kill().unwrap(); // SIGKILL: no goodbyes, acks in flight are lost
    collector.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut collector = spawn_collector_process(addr, &dir).await;

    producer.await.unwrap();
    let (records, disconnects) = tokio::time::timeout(Duration::from_mins(1), reader)
        .await
        .unwrap()
        .unwrap();
    let shipper = Arc::into_inner(shipper).expect("the producer is done");
    let stats = shipper.finish().await;

    let mut seen = BTreeMap::new();
    for record in &records {
        *seen.entry(record.event.as_ref().unwrap().pid).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), TOTAL as usize, "every event arrived");
    assert!(seen.values().all(|&n| n == 1), "no event twice");
    assert!(
        records.windows(2).all(|w| w[1].cursor == w[0].cursor + 1),
        "one cursor sequence across the kill"
    );
    assert!(disconnects > 0, "the subscriber saw the kill");
    assert!(stats.connects >= 2, "the shipper reconnected: {stats:?}");
    assert_eq!(stats.dropped, BTreeMap::new(), "nothing dropped: {stats:?}");
    assert_eq!(
        (stats.captured, stats.acked),
        (u64::from(TOTAL), u64::from(TOTAL))
    );
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_collector_is_away_the_oldest_are_dropped_and_totals_add_up() {
    use mapsentry_agent::shipper::DROPPED_BUFFER_FULL;
    const TOTAL: u32 = 3000;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = shipper_config(addr);
    // Room for about 1000 of these events (pids 10000.. all encode to the same size).
    let size = prost::Message::encoded_len(&mapsentry_proto::v1::Event::from(event(10_000))) + 4;
    config.buffer_bytes = size * 1000;
    let shipper = Shipper::start(config).unwrap();
    for chunk in 0..TOTAL / 100 {
        shipper
            .send(
                (10_000 + chunk * 100..10_000 + chunk * 100 + 100)
                    .map(event)
                    .collect(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let away = shipper.stats();
    assert!(!away.connected && away.buffered_events <= 1000, "{away:?}");

    let collector = start_collector(tokio::net::TcpListener::bind(addr).await.unwrap());
    let mut follow = follower(addr, Some(0));
    let stats = shipper.finish().await;
    let dropped = stats.dropped.get(DROPPED_BUFFER_FULL).copied().unwrap_or(0);
    assert!(dropped >= u64::from(TOTAL) - 1000, "{stats:?}");
    assert_eq!(
        stats.captured,
        stats.acked + dropped,
        "captured = acked + counted drops: {stats:?}"
    );
    let (records, _) = read_records(&mut follow, stats.acked as usize).await;
    let pids: Vec<u32> = records
        .iter()
        .map(|r| r.event.as_ref().unwrap().pid)
        .collect();
    let newest: Vec<u32> = (10_000 + TOTAL - pids.len() as u32..10_000 + TOTAL).collect();
    assert_eq!(pids, newest, "the newest events were kept, in order");
    let hub = collector.stop().await;
    assert_eq!(
        hub.stats().nodes[0].dropped.get(DROPPED_BUFFER_FULL),
        Some(&dropped),
        "the drops reached the collector"
    );
}
