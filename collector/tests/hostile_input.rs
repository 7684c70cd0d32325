//! Hostile input to the collector's real request handlers, as a stable-toolchain fuzz loop
//! (proptest), through `mapsentry_collector::hostile`: arbitrary bytes as an agent stream (Hello,
//! attribution definitions and references (V2), batch and field limits, `convert::validate`,
//! `Hub::store_batch`, acks) and as a `Subscribe` call (the
//! bearer token, the filter's validation and scope, the cursor, catch-up and matching of what the
//! stream stored); arbitrary tokens files. Nothing may panic; bad input is an error. `fuzz/` holds
//! the same targets for cargo-fuzz (coverage-guided, from the seed corpus this file checks).
//! PROPTEST_CASES raises the case count (default 256 here).

use std::path::{Path, PathBuf};

use mapsentry_collector::{
    auth::Tokens,
    hostile::{Handlers, frames},
};
use mapsentry_proto::v1::{
    self, AgentMessage, EventBatch, Filter, Hello, Kind, LossReport, SubscribeRequest,
    agent_message::Msg, subscribe_response::Item,
};
use proptest::prelude::*;
use prost::Message as _;

fn hello(node: &str) -> Vec<u8> {
    hello_of_version(node, v1::ProtocolVersion::V1)
}

fn hello_of_version(node: &str, version: v1::ProtocolVersion) -> Vec<u8> {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version: version.into(),
            node: node.into(),
            boot_id: "7d3c5f0e-boot".into(),
            kernel: "6.18.0".into(),
            attach_mode: "tracepoint".into(),
            capabilities: vec!["kill".into()],
            started_unix_ns: 1_795_772_647_000_000_000,
        })),
    }
    .encode_to_vec()
}

fn batch(seq: u64, events: Vec<v1::Event>) -> Vec<u8> {
    AgentMessage {
        msg: Some(Msg::Batch(EventBatch { seq, events })),
    }
    .encode_to_vec()
}

/// Events as agents send them: a pod's anonymous W+X mapping, a memfd mapping killed in the
/// kernel, a host process's mprotect flip, an unknown cgroup's file mapping.
fn events() -> Vec<v1::Event> {
    let args = |prot, flags, fd| v1::MmapArgs {
        addr: 0,
        length: 8192,
        prot,
        flags,
        fd,
        pgoffset: 0,
        offset: 0,
    };
    let base = v1::Event {
        time_ns: 1_795_772_647_570_592_000,
        syscall: v1::Syscall::Mmap.into(),
        pid: 4242,
        tid: 4242,
        ppid: 1,
        comm: "java".into(),
        cgroup_id: 9137,
        ret: 0x7f00_0000_0000,
        ..v1::Event::default()
    };
    vec![
        v1::Event {
            args: Some(args(7, 0x22, -1)),
            attribution: Some(v1::event::Attribution::Pod(Box::new(v1::PodAttribution {
                namespace: Some("team-a".into()),
                pod: Some("api-7d9f".into()),
                container: Some("api".into()),
                pod_uid: Some("5b0e7a52-uid".into()),
                container_id: Some("c0ffee".into()),
                image: Some("registry.example/api:1.2".into()),
                labels: [("app".to_owned(), "api".to_owned())].into(),
                namespace_labels: [("team".to_owned(), "a".to_owned())].into(),
                workload: Some(v1::Workload {
                    kind: "Deployment".into(),
                    name: "api".into(),
                }),
                resolved: true,
            }))),
            ..base.clone()
        },
        v1::Event {
            comm: "loader".into(),
            args: Some(args(5, 0x02, 3)),
            file: Some(v1::FileInfo {
                path: "/memfd:payload (deleted)".into(),
                inode: 1234,
                dev: 1,
                memfd: true,
                fs_magic: 0x0102_1994,
                ..v1::FileInfo::default()
            }),
            enforced: Some(v1::Enforcement {
                action: v1::EnforceAction::Kill.into(),
                rule_id: 3,
            }),
            attribution: Some(v1::event::Attribution::Pod(Box::new(v1::PodAttribution {
                namespace: Some("team-b".into()),
                pod: Some("batch-1".into()),
                resolved: true,
                ..v1::PodAttribution::default()
            }))),
            ..base.clone()
        },
        v1::Event {
            syscall: v1::Syscall::Mprotect.into(),
            comm: "node".into(),
            args: Some(args(5, 0, -1)),
            target_mapping: Some(v1::TargetMapping {
                prev_prot: 3,
                file_backed: false,
            }),
            attribution: Some(v1::event::Attribution::Host(v1::HostAttribution {
                cgroup: "/system.slice/app.service".into(),
                unit: Some("app.service".into()),
            })),
            ..base.clone()
        },
        v1::Event {
            syscall: v1::Syscall::Mmap2.into(),
            args: Some(args(5, 0x02, 4)),
            file: Some(v1::FileInfo {
                path: "/tmp/lib.so".into(),
                inode: 77,
                dev: 2049,
                ..v1::FileInfo::default()
            }),
            attribution: Some(v1::event::Attribution::Unknown(v1::UnknownCgroup {})),
            ..base
        },
    ]
}

fn attributions(definitions: Vec<v1::AttributionDefinition>, released: Vec<u64>) -> Vec<u8> {
    AgentMessage {
        msg: Some(Msg::Attributions(v1::Attributions {
            definitions,
            released,
        })),
    }
    .encode_to_vec()
}

/// `events` as a V2 agent sends them: each attribution defined under an id (the event's index +
/// 1), the events referring to it. Returns the definitions and the events.
fn by_reference(events: Vec<v1::Event>) -> (Vec<v1::AttributionDefinition>, Vec<v1::Event>) {
    use v1::{attribution_definition::Attribution as Defined, event::Attribution as Inline};
    let mut definitions = Vec::new();
    let events = (1u64..)
        .zip(events)
        .map(|(id, mut event)| {
            let attribution = match event.attribution.take() {
                Some(Inline::Pod(pod)) => Defined::Pod(*pod),
                Some(Inline::Host(host)) => Defined::Host(host),
                Some(Inline::Unknown(unknown)) => Defined::Unknown(unknown),
                other => panic!("{other:?} is no inline attribution"),
            };
            definitions.push(v1::AttributionDefinition {
                id,
                attribution: Some(attribution),
            });
            event.attribution = Some(Inline::AttributionRef(id));
            event
        })
        .collect();
    (definitions, events)
}

/// A V2 agent stream: Hello, the attributions, two batches referring to them, a resend.
fn agent_stream_v2() -> Vec<u8> {
    let (definitions, events) = by_reference(events());
    frames([
        &hello_of_version("node-a", v1::ProtocolVersion::V2)[..],
        &attributions(definitions, vec![]),
        &batch(1, events[..2].to_vec()),
        &batch(2, events[2..].to_vec()),
        &batch(2, events[2..].to_vec()),
    ])
}

/// A V2 stream whose second batch refers to an id the stream never defined.
fn undefined_reference() -> Vec<u8> {
    let (definitions, events) = by_reference(events());
    frames([
        &hello_of_version("node-a", v1::ProtocolVersion::V2)[..],
        &attributions(definitions[..2].to_vec(), vec![]),
        &batch(1, events[..2].to_vec()),
        &batch(2, events[2..].to_vec()),
    ])
}

/// A V2 stream that defines id 1 again with another attribution.
fn redefinition() -> Vec<u8> {
    let (mut definitions, events) = by_reference(events());
    let first = definitions[0].clone();
    definitions[1].id = 1;
    frames([
        &hello_of_version("node-a", v1::ProtocolVersion::V2)[..],
        &attributions(vec![first], vec![]),
        &batch(1, events[..1].to_vec()),
        &attributions(vec![definitions[1].clone()], vec![]),
    ])
}

/// A whole agent stream: Hello, two batches, a resend, a loss report.
fn agent_stream() -> Vec<u8> {
    let loss = AgentMessage {
        msg: Some(Msg::Loss(LossReport {
            dropped: [("ring_buffer_full".to_owned(), 2)].into(),
            captured: 40,
            shipped: 38,
        })),
    }
    .encode_to_vec();
    let events = events();
    frames([
        &hello("node-a")[..],
        &batch(1, events[..2].to_vec()),
        &batch(2, events[2..].to_vec()),
        &batch(2, events[2..].to_vec()),
        &loss,
    ])
}

fn subscribe_call(authorization: &str, request: &SubscribeRequest) -> Vec<u8> {
    frames([authorization.as_bytes(), &request.encode_to_vec()])
}

/// Each seed of `grpc_subscribe`: the agent stream as its first frame, then the call.
fn stream_then(call: &[u8]) -> Vec<u8> {
    let mut input = frames([&agent_stream()[..]]);
    input.extend_from_slice(call);
    input
}

/// The seed corpus of the cargo-fuzz targets these loops mirror, by target and file name.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut bad_event = events()[0].clone();
    bad_event.syscall = 9;
    let all = |since| SubscribeRequest {
        since,
        ..SubscribeRequest::default()
    };
    let filtered = SubscribeRequest {
        filter: Some(Filter {
            namespaces: vec!["team-a".into()],
            comms: vec!["java".into()],
            syscalls: vec![v1::Syscall::Mmap.into()],
            prot_all: 7,
            labels: vec!["app=api".into()],
            ..Filter::default()
        }),
        since: Some(0),
        kinds: vec![Kind::Events.into(), Kind::Alerts.into()],
        alerts_since: None,
        since_unix_ns: None,
    };
    vec![
        ("grpc_agent_message", "stream", agent_stream()),
        ("grpc_agent_message", "stream-v2", agent_stream_v2()),
        (
            "grpc_agent_message",
            "undefined-reference",
            undefined_reference(),
        ),
        ("grpc_agent_message", "redefinition", redefinition()),
        (
            "grpc_agent_message",
            "bad-event",
            frames([&hello("node-b")[..], &batch(1, vec![bad_event])]),
        ),
        (
            "grpc_agent_message",
            "no-hello",
            frames([&batch(1, events())[..]]),
        ),
        (
            "grpc_subscribe",
            "everything-since-0",
            stream_then(&subscribe_call("Bearer agent-secret", &all(Some(0)))),
        ),
        (
            "grpc_subscribe",
            "scoped-filtered",
            stream_then(&subscribe_call("Bearer team-a", &filtered)),
        ),
        (
            "grpc_subscribe",
            "no-token-live",
            stream_then(&subscribe_call("", &all(None))),
        ),
    ]
}

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// The committed seeds are exactly what `seeds()` makes from today's messages (so they stay
/// valid as the protocol changes). `MAPSENTRY_WRITE_FUZZ_SEEDS=1` rewrites them.
#[test]
fn fuzz_seeds_are_current() {
    let write = std::env::var_os("MAPSENTRY_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = seeds_dir(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; MAPSENTRY_WRITE_FUZZ_SEEDS=1 writes it",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} differs from what this test makes; MAPSENTRY_WRITE_FUZZ_SEEDS=1 rewrites it",
            path.display()
        );
    }
}

/// The seeds reach deep: the stream is acked whole, the calls read records back.
#[test]
fn seeds_reach_storage_and_matching() {
    let handlers = Handlers::new();
    let outcome = handlers.agent_stream(&agent_stream());
    assert_eq!(outcome.acked, vec![1, 2, 2]);
    assert_eq!(outcome.refused, None);

    let records = |input: &[u8]| {
        let subscribed = Handlers::new().stream_then_subscribe(input).unwrap();
        assert!(matches!(
            subscribed.responses.first().and_then(|r| r.item.as_ref()),
            Some(Item::Started(_))
        ));
        subscribed
            .responses
            .iter()
            .filter(|r| matches!(r.item, Some(Item::Event(_))))
            .count()
    };
    let seeds = seeds();
    let seed = |name| &seeds.iter().find(|(_, n, _)| *n == name).unwrap().2;
    assert_eq!(records(seed("everything-since-0")), 4);
    // team-a's token and the filter leave the one team-a W+X mapping of `java`.
    assert_eq!(records(seed("scoped-filtered")), 1);
    let refused = Handlers::new()
        .stream_then_subscribe(seed("no-token-live"))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// Events the handlers stored, read back through `Subscribe` (since the first record).
fn stored(handlers: &Handlers) -> Vec<v1::Event> {
    let call = subscribe_call(
        "Bearer agent-secret",
        &SubscribeRequest {
            since: Some(0),
            ..SubscribeRequest::default()
        },
    );
    handlers
        .subscribe(&call)
        .unwrap()
        .responses
        .into_iter()
        .filter_map(|r| match r.item {
            Some(Item::Event(record)) => record.event,
            _ => None,
        })
        .collect()
}

/// A V2 stream (attributions defined once, events referring to them) is stored and served as
/// the same stream with its attributions inline (V1).
#[test]
fn a_v2_stream_is_stored_with_its_attributions_expanded() {
    let v2 = Handlers::new();
    let outcome = v2.agent_stream(&agent_stream_v2());
    assert_eq!((outcome.acked, outcome.refused), (vec![1, 2, 2], None));
    let v1 = Handlers::new();
    let outcome = v1.agent_stream(&agent_stream());
    assert_eq!(outcome.refused, None);
    let served = stored(&v2);
    assert_eq!(served.len(), 4);
    assert_eq!(served, stored(&v1));
    assert!(matches!(
        &served[0].attribution,
        Some(v1::event::Attribution::Pod(pod)) if pod.pod.as_deref() == Some("api-7d9f")
    ));
}

#[test]
fn a_batch_referring_to_an_undefined_id_ends_the_stream_and_is_not_stored() {
    let handlers = Handlers::new();
    let outcome = handlers.agent_stream(&undefined_reference());
    assert_eq!(outcome.acked, vec![1]);
    let refused = outcome.refused.expect("refused");
    assert_eq!(
        refused.to_string(),
        "EventBatch seq 2, event 0: attribution_ref 3 is not defined on this stream"
    );
    assert_eq!(
        stored(&handlers).len(),
        2,
        "batch 1 stored, nothing of batch 2"
    );
}

#[test]
fn an_id_defined_again_with_another_value_ends_the_stream() {
    let outcome = Handlers::new().agent_stream(&redefinition());
    assert_eq!(outcome.acked, vec![1]);
    assert_eq!(
        outcome.refused.map(|e| e.to_string()).as_deref(),
        Some("Attributions: id 1 is defined again with a different attribution")
    );
}

#[test]
fn a_definition_flood_beyond_the_bound_ends_the_stream() {
    let (definitions, events) = by_reference(events()[..1].to_vec());
    let max = mapsentry_proto::MAX_STREAM_ATTRIBUTIONS as u64;
    let flood: Vec<_> = (1..=max + 1)
        .map(|id| v1::AttributionDefinition {
            id,
            ..definitions[0].clone()
        })
        .collect();
    let handlers = Handlers::new();
    let outcome = handlers.agent_stream(&frames([
        &hello_of_version("node-a", v1::ProtocolVersion::V2)[..],
        &attributions(flood, vec![]),
        &batch(1, events),
    ]));
    assert!(outcome.acked.is_empty());
    assert_eq!(
        outcome.refused.map(|e| e.to_string()).as_deref(),
        Some(
            format!(
                "Attributions: defining id {} would hold more than {max} attributions on this \
                 stream (release ids no batch refers to any more)",
                max + 1
            )
            .as_str()
        )
    );
    assert!(stored(&handlers).is_empty());
}

#[test]
fn a_v1_stream_may_neither_define_nor_refer() {
    let (definitions, events) = by_reference(events());
    let outcome = Handlers::new().agent_stream(&frames([
        &hello("node-a")[..],
        &attributions(definitions, vec![]),
    ]));
    assert_eq!(
        outcome.refused.map(|e| e.to_string()).as_deref(),
        Some("Attributions on a protocol V1 stream (attribution ids need PROTOCOL_VERSION_V2)")
    );
    let outcome = Handlers::new().agent_stream(&frames([&hello("node-a")[..], &batch(1, events)]));
    let refused = outcome.refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.contains("`attribution_ref` (1) is only valid on an agent stream of protocol V2"),
        "{refused}"
    );
}

proptest! {
    #[test]
    fn agent_streams_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Handlers::new().agent_stream(&bytes);
    }

    #[test]
    fn agent_streams_with_a_valid_hello_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut stream = frames([&hello("node-a")[..]]);
        stream.extend_from_slice(&bytes);
        let _ = Handlers::new().agent_stream(&stream);
    }

    #[test]
    fn mutated_streams_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        for mut stream in [agent_stream(), agent_stream_v2()] {
            for (index, byte) in &flips {
                let at = index.index(stream.len());
                stream[at] ^= byte;
            }
            let _ = Handlers::new().agent_stream(&stream);
        }
    }

    #[test]
    fn subscribe_calls_of_arbitrary_bytes_never_panic(call in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Handlers::new().stream_then_subscribe(&stream_then(&call));
    }

    #[test]
    fn mutated_subscribe_calls_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let seeds = seeds();
        for (_, _, seed) in seeds.iter().filter(|(target, _, _)| *target == "grpc_subscribe") {
            let mut input = seed.clone();
            for (index, byte) in &flips {
                let at = index.index(input.len());
                input[at] ^= byte;
            }
            let _ = Handlers::new().stream_then_subscribe(&input);
        }
    }

    #[test]
    fn arbitrary_tokens_files_are_parsed_or_refused(text in "(\\{\"token\": \"[a-z]{0,3}\", \"namespaces\": \\[(\"[a-z*]{0,2}\",? ?){0,3}\\]\\}\n|.{0,20}\n){0,4}") {
        let _ = Tokens::parse("fuzz", &text);
    }
}
