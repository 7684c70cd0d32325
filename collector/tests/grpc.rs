//! The collector over real gRPC on 127.0.0.1: ingest, subscriptions, loss notices, bad input.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mapsentry_collector::{Hub, HubConfig, ServerConfig, serve};
use mapsentry_proto::v1::{
    self, AgentMessage, CollectorMessage, Event, EventBatch, Hello, MmapArgs, SubscribeRequest,
    SubscribeResponse, agent_message::Msg, agent_service_client::AgentServiceClient,
    collector_message, observer_client::ObserverClient, subscribe_response::Item,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

struct Collector {
    addr: SocketAddr,
    hub: Arc<Hub>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Collector {
    async fn start(hub: HubConfig, server: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::with_first_cursor(hub, 1);
        let (stop, stopped) = oneshot::channel();
        let serving = Arc::clone(&hub);
        let task = tokio::spawn(async move {
            serve(serving, &server, listener, async { drop(stopped.await) })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            hub,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

fn event(pid: u32, comm: &str) -> Event {
    Event {
        time_ns: u64::from(pid) * 1000,
        syscall: v1::Syscall::Mmap.into(),
        pid,
        tid: pid,
        comm: comm.into(),
        args: Some(MmapArgs {
            length: 4096,
            prot: 3,
            flags: 0x22,
            fd: -1,
            ..MmapArgs::default()
        }),
        ret: 0x7f00_0000_0000,
        ..Event::default()
    }
}

fn hello(node: &str, version: i32) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version,
            node: node.into(),
            boot_id: format!("{node}-boot"),
            kernel: "6.18".into(),
            attach_mode: "tracepoint".into(),
            capabilities: vec![],
            started_unix_ns: 0,
        })),
    }
}

fn batch(seq: u64, events: Vec<Event>) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Batch(EventBatch { seq, events })),
    }
}

/// An agent stream: send messages, read acks.
struct Agent {
    out: mpsc::Sender<AgentMessage>,
    acks: Streaming<CollectorMessage>,
}

impl Agent {
    async fn open(channel: Channel, first: AgentMessage) -> Result<Self, tonic::Status> {
        let (out, rx) = mpsc::channel(64);
        out.send(first).await.unwrap();
        let mut client = AgentServiceClient::new(channel);
        let acks = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { out, acks })
    }

    async fn ship(&mut self, seq: u64, events: Vec<Event>) {
        self.out.send(batch(seq, events)).await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(5), self.acks.message())
            .await
            .unwrap();
        let Some(CollectorMessage {
            msg: Some(collector_message::Msg::Ack(ack)),
        }) = message.unwrap()
        else {
            panic!("expected an ack for seq {seq}");
        };
        assert_eq!(ack.seq, seq);
    }

    /// Send `message` and return the status the collector ends the stream with.
    async fn refused(&mut self, message: AgentMessage) -> tonic::Status {
        self.out.send(message).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), self.acks.message())
            .await
            .expect("an answer within 5 s")
        {
            Err(status) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }
}

async fn subscribe(channel: Channel, request: SubscribeRequest) -> Streaming<SubscribeResponse> {
    let mut stream = ObserverClient::new(channel)
        .subscribe(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.item, Some(Item::Started(_))),
        "Started first, got {first:?}"
    );
    stream
}

async fn next_item(stream: &mut Streaming<SubscribeResponse>) -> Item {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an item within 5 s")
        .expect("stream ok")
        .expect("stream open")
        .item
        .expect("item set")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_a_subscriber_once_with_every_field_and_duplicates_are_acked_not_stored() {
    let collector = Collector::start(HubConfig::default(), ServerConfig::default()).await;
    let mut sub = subscribe(collector.channel().await, SubscribeRequest::default()).await;
    let mut agent = Agent::open(collector.channel().await, hello("n1", 1))
        .await
        .unwrap();
    let mut sent = vec![event(1, "a"), event(2, "b")];
    sent[1].file = Some(v1::FileInfo {
        path: "/lib/x.so".into(),
        inode: 9,
        dev: 0x803,
        deleted: true,
        ..Default::default()
    });
    agent.ship(1, sent.clone()).await;
    agent.ship(1, sent.clone()).await; // a resend after a lost ack
    agent.ship(2, vec![event(3, "c")]).await;
    sent.push(event(3, "c"));
    for (i, expected) in sent.iter().enumerate() {
        let Item::Event(record) = next_item(&mut sub).await else {
            panic!("an event")
        };
        assert_eq!((record.cursor, record.node.as_str()), (i as u64 + 1, "n1"));
        assert_eq!(record.event.as_ref(), Some(expected));
    }
    let stats = ObserverClient::new(collector.channel().await)
        .stats(v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.next_cursor, 4, "the duplicate was not stored");
    let node = &stats.nodes[0];
    assert_eq!(
        (
            node.node.as_str(),
            node.acked,
            node.duplicate_batches,
            node.connected
        ),
        ("n1", 3, 1, true)
    );
    assert_eq!(
        (node.kernel.as_str(), node.attach_mode.as_str()),
        ("6.18", "tracepoint")
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_gets_the_exact_loss_count_while_another_gets_everything() {
    const TOTAL: u32 = 20_000;
    let collector = Collector::start(
        HubConfig {
            retention_events: 100_000,
            subscriber_queue: 4096,
            ..HubConfig::default()
        },
        ServerConfig::default(),
    )
    .await;
    // The stalled client's HTTP/2 windows hold a few records only, so its queue on the
    // collector fills up.
    let small_windows = Channel::from_shared(format!("http://{}", collector.addr))
        .unwrap()
        .initial_stream_window_size(16 << 10)
        .initial_connection_window_size(16 << 10)
        .connect()
        .await
        .unwrap();
    let mut stalled = subscribe(small_windows, SubscribeRequest::default()).await;
    let mut reader = subscribe(collector.channel().await, SubscribeRequest::default()).await;
    let reading = tokio::spawn(async move {
        let mut pids = Vec::new();
        while pids.len() < TOTAL as usize {
            match next_item(&mut reader).await {
                Item::Event(record) => pids.push(record.event.unwrap().pid),
                other => panic!("the reading subscriber lost nothing, got {other:?}"),
            }
        }
        pids
    });
    let mut agent = Agent::open(collector.channel().await, hello("n1", 1))
        .await
        .unwrap();
    for seq in 0..u64::from(TOTAL / 500) {
        let base = seq as u32 * 500;
        agent
            .ship(
                seq + 1,
                (base..base + 500).map(|pid| event(pid, "x")).collect(),
            )
            .await;
    }
    assert_eq!(reading.await.unwrap(), (0..TOTAL).collect::<Vec<_>>());

    // The stalled one: records, then one notice for exactly the cursors it did not get.
    let (mut received, mut missed, mut expected_cursor) = (0u64, 0u64, 1u64);
    while received + missed < u64::from(TOTAL) {
        match next_item(&mut stalled).await {
            Item::Event(record) => {
                assert_eq!(
                    record.cursor, expected_cursor,
                    "records are in order, gaps only where notices are"
                );
                expected_cursor += 1;
                received += 1;
            }
            Item::Loss(loss) => {
                assert_eq!(loss.reason, v1::LossReason::SubscriberBehind as i32);
                expected_cursor += loss.count;
                missed += loss.count;
            }
            Item::Started(_) => panic!("one Started only"),
            Item::Alert(alert) => panic!("an events subscription got an alert: {alert:?}"),
            Item::AgentRestart(restart) => panic!("no agent restarted: {restart:?}"),
        }
    }
    assert!(
        missed > 0,
        "the stalled subscriber must have fallen behind (received {received})"
    );
    assert_eq!(received + missed, u64::from(TOTAL));
    let stats = ObserverClient::new(collector.channel().await)
        .stats(v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.subscriber_losses, missed);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_the_stream_on_the_server() {
    let collector = Collector::start(HubConfig::default(), ServerConfig::default()).await;
    let cases: Vec<(&str, v1::Filter, Vec<u32>)> = vec![
        (
            "node",
            v1::Filter {
                nodes: vec!["n2".into()],
                ..Default::default()
            },
            vec![3, 4],
        ),
        (
            "comm",
            v1::Filter {
                comms: vec!["jit".into()],
                ..Default::default()
            },
            vec![2, 4],
        ),
        (
            "syscall",
            v1::Filter {
                syscalls: vec![v1::Syscall::Mmap2.into()],
                ..Default::default()
            },
            vec![1],
        ),
        (
            "prot_any exec",
            v1::Filter {
                prot_any: 0x4,
                ..Default::default()
            },
            vec![2],
        ),
        (
            "prot_all rw",
            v1::Filter {
                prot_all: 0x3,
                ..Default::default()
            },
            vec![1, 2, 3, 4, 5],
        ),
        (
            "flags_all shared",
            v1::Filter {
                flags_all: 0x1,
                ..Default::default()
            },
            vec![5],
        ),
        (
            "namespace (no attribution yet)",
            v1::Filter {
                namespaces: vec!["default".into()],
                ..Default::default()
            },
            vec![],
        ),
    ];
    let mut n1 = Agent::open(collector.channel().await, hello("n1", 1))
        .await
        .unwrap();
    let mut n2 = Agent::open(collector.channel().await, hello("n2", 1))
        .await
        .unwrap();
    let mut one = event(1, "app");
    one.syscall = v1::Syscall::Mmap2.into();
    let mut two = event(2, "jit");
    two.args.as_mut().unwrap().prot = 0x7;
    let mut five = event(5, "app");
    five.args.as_mut().unwrap().flags = 0x1;
    n1.ship(1, vec![one, two]).await;
    n2.ship(1, vec![event(3, "app"), event(4, "jit")]).await;
    n1.ship(2, vec![five]).await;
    for (name, filter, expected) in cases {
        let mut stream = subscribe(
            collector.channel().await,
            SubscribeRequest {
                filter: Some(filter),
                since: Some(0),
                since_unix_ns: None,
                kinds: vec![],
                alerts_since: None,
            },
        )
        .await;
        let mut pids = Vec::new();
        // A marker event every case passes is not possible (namespace), so read with a short wait.
        while let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_millis(300), stream.message()).await
        {
            let Some(Item::Event(record)) = response.item else {
                panic!("{name}: only events")
            };
            pids.push(record.event.unwrap().pid);
        }
        assert_eq!(pids, expected, "case {name}");
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_gets_a_clear_status() {
    let server = ServerConfig {
        max_message_bytes: 64 << 10,
        max_batch_events: 100,
        policy_sets: None,
        ..ServerConfig::default()
    };
    let collector = Collector::start(HubConfig::default(), server).await;
    let refusal = |result: Result<Agent, tonic::Status>| result.err().expect("refused at Hello");

    // A version from the future (as V2 was to a V1 collector).
    let status = refusal(Agent::open(collector.channel().await, hello("n", 3)).await);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("version 3 is not supported"),
        "{status:?}"
    );
    let status = refusal(Agent::open(collector.channel().await, hello("n", 0)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = refusal(Agent::open(collector.channel().await, batch(1, vec![])).await);
    assert!(
        status.message().contains("must be Hello, got EventBatch"),
        "{status:?}"
    );

    let mut agent = Agent::open(collector.channel().await, hello("n", 1))
        .await
        .unwrap();
    let mut bad = event(1, "x");
    bad.syscall = 0;
    let status = agent.refused(batch(1, vec![event(0, "ok"), bad])).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("seq 1, event 1: event field `syscall`: 0"),
        "{status:?}"
    );

    let mut agent = Agent::open(collector.channel().await, hello("n", 1))
        .await
        .unwrap();
    let status = agent
        .refused(batch(1, (0..101).map(|pid| event(pid, "x")).collect()))
        .await;
    assert!(
        status
            .message()
            .contains("101 events, more than the limit of 100"),
        "{status:?}"
    );

    let mut agent = Agent::open(collector.channel().await, hello("n", 1))
        .await
        .unwrap();
    let status = agent
        .refused(batch(
            1,
            (0..90).map(|pid| event(pid, &"c".repeat(1000))).collect(),
        ))
        .await;
    assert_eq!(status.code(), Code::OutOfRange, "oversized: {status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert_eq!(collector.hub.stats().next_cursor, 1, "nothing was stored");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_get_a_clear_status_not_a_hang() {
    let collector = Collector::start(
        HubConfig {
            retention_events: 10,
            subscriber_queue: 64,
            ..HubConfig::default()
        },
        ServerConfig::default(),
    )
    .await;
    let mut agent = Agent::open(collector.channel().await, hello("n", 1))
        .await
        .unwrap();
    agent
        .ship(1, (0..25).map(|pid| event(pid, "x")).collect())
        .await; // cursors 1..=25, 16..=25 kept
    let mut observer = ObserverClient::new(collector.channel().await);
    let status = observer
        .subscribe(SubscribeRequest {
            since: Some(3),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status
            .message()
            .contains("the oldest retained cursor is 16; resume with since=15"),
        "{status:?}"
    );
    let status = observer
        .subscribe(SubscribeRequest {
            since: Some(99),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let status = observer
        .subscribe(SubscribeRequest {
            kinds: vec![7],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "kinds: 7 is not a known kind (expected KIND_EVENTS or KIND_ALERTS)"
        )
    );
    let mut resumed = subscribe(
        collector.channel().await,
        SubscribeRequest {
            since: Some(15),
            ..Default::default()
        },
    )
    .await;
    let Item::Event(record) = next_item(&mut resumed).await else {
        panic!("an event")
    };
    assert_eq!(record.cursor, 16);

    // By time (`tail --since 10m`): event pid N happened at N µs and is stored under cursor N+1.
    for (time_ns, first) in [(20_000, Some(21)), (1, Some(16)), (u64::MAX, None)] {
        let mut stream = subscribe(
            collector.channel().await,
            SubscribeRequest {
                since_unix_ns: Some(time_ns),
                ..Default::default()
            },
        )
        .await;
        let next = tokio::time::timeout(Duration::from_millis(300), next_item(&mut stream)).await;
        match (first, next) {
            (Some(first), Ok(Item::Event(record))) => {
                assert_eq!(record.cursor, first, "since_unix_ns {time_ns}");
            }
            (None, Err(_)) => {}
            (first, next) => panic!("since_unix_ns {time_ns}: expected {first:?}, got {next:?}"),
        }
    }
    let status = observer
        .subscribe(SubscribeRequest {
            since: Some(16),
            since_unix_ns: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let collector = Collector::start(HubConfig::default(), ServerConfig::default()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(collector.channel().await);
    for service in ["mapsentry.v1.AgentService", "mapsentry.v1.Observer"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_not_serving_until_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let ready = mapsentry_collector::Health::not_ready("policies not loaded yet");
    let server = ServerConfig {
        health: ready.clone(),
        ..ServerConfig::default()
    };
    let collector = Collector::start(HubConfig::default(), server).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(collector.channel().await);
    let mut status = async |service: &str| {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(status("").await, serving, "liveness: the server answers");
    assert_eq!(status("mapsentry.v1.AgentService").await, not_serving);
    assert_eq!(status("mapsentry.v1.Observer").await, not_serving);
    ready.set_ready();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status("mapsentry.v1.AgentService").await != serving {
        assert!(
            std::time::Instant::now() < deadline,
            "SERVING within 5 s of ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status("mapsentry.v1.Observer").await, serving);
    collector.stop().await;
}

/// Bytes as they are: to put what no generated client would send on the wire.
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
        use bytes::BufMut as _;
        dst.put_slice(&item);
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
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(channel: Channel, path: &'static str, messages: Vec<Vec<u8>>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc.streaming(request, path, RawCodec).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("an answer within 5 s")
                {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the stream ended without an error"),
                    Err(status) => break status,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_get_a_clear_status() {
    let collector = Collector::start(HubConfig::default(), ServerConfig::default()).await;
    // Field 1 (hello) declared as 100 bytes long, with 3 present.
    let status = raw_call(
        collector.channel().await,
        "/mapsentry.v1.AgentService/Connect",
        vec![vec![0x0a, 100, 1, 2, 3]],
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    // A good Hello, then garbage where a batch should be.
    let hello = prost::Message::encode_to_vec(&hello("n", 1));
    let status = raw_call(
        collector.channel().await,
        "/mapsentry.v1.AgentService/Connect",
        vec![hello, vec![0xff; 7]],
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    assert_eq!(collector.hub.stats().next_cursor, 1);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_for_grpcurl() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let collector = Collector::start(HubConfig::default(), ServerConfig::default()).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(collector.channel().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "mapsentry.v1.AgentService",
        "mapsentry.v1.Observer",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    collector.stop().await;
}
