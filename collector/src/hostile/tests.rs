use mapsentry_proto::v1::{
    self, AgentMessage, EventBatch, Hello, SubscribeRequest, agent_message::Msg,
    subscribe_response::Item,
};
use prost::Message as _;
use tonic::Code;

use super::*;

fn hello(node: &str) -> Vec<u8> {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version: v1::ProtocolVersion::V1.into(),
            node: node.into(),
            boot_id: "boot-1".into(),
            ..Hello::default()
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

fn anonymous_mmap() -> v1::Event {
    v1::Event {
        syscall: v1::Syscall::Mmap.into(),
        comm: "jit".into(),
        args: Some(v1::MmapArgs {
            prot: 7,
            flags: 0x22,
            fd: -1,
            ..v1::MmapArgs::default()
        }),
        ..v1::Event::default()
    }
}

fn subscribe_call(authorization: &str, since: Option<u64>) -> Vec<u8> {
    let request = SubscribeRequest {
        since,
        ..SubscribeRequest::default()
    };
    frames([authorization.as_bytes(), &request.encode_to_vec()])
}

#[test]
fn frames_round_trip_and_refuse_overruns() {
    let bytes = frames([&b"ab"[..], b"", b"xyz"]);
    let mut rest = &bytes[..];
    assert_eq!(take_frame(&mut rest), Some(&b"ab"[..]));
    assert_eq!(take_frame(&mut rest), Some(&b""[..]));
    assert_eq!(take_frame(&mut rest), Some(&b"xyz"[..]));
    assert_eq!(take_frame(&mut rest), None);
    // A length past the end is no frame, and consumes nothing.
    let mut overrun = &[5u8, b'a'][..];
    assert_eq!(take_frame(&mut overrun), None);
    assert_eq!(overrun, &[5u8, b'a'][..]);
}

#[test]
fn a_valid_stream_is_validated_stored_and_acked() {
    let handlers = Handlers::new();
    let stream = frames([
        &hello("node-a")[..],
        &batch(1, vec![anonymous_mmap(), anonymous_mmap()]),
        &batch(1, vec![anonymous_mmap()]), // a resend: acked, not stored twice
        &batch(2, vec![anonymous_mmap()]),
    ]);
    let outcome = handlers.agent_stream(&stream);
    assert_eq!(outcome.acked, vec![1, 1, 2]);
    assert_eq!(outcome.refused, None);
    assert_eq!(handlers.hub().stats().retained, 3);
}

#[test]
fn the_handlers_own_refusals_end_the_stream() {
    let handlers = Handlers::new();
    // No Hello first.
    let outcome = handlers.agent_stream(&frames([&batch(1, vec![anonymous_mmap()])[..]]));
    assert_eq!(
        outcome.refused,
        Some(IngestError::NoHello { got: "EventBatch" })
    );
    // An event that fails convert::validate: nothing of its batch is stored or acked.
    let mut bad = anonymous_mmap();
    bad.args = None;
    let outcome = handlers.agent_stream(&frames([
        &hello("node-b")[..],
        &batch(1, vec![anonymous_mmap(), bad]),
    ]));
    assert!(outcome.acked.is_empty());
    assert!(
        matches!(outcome.refused, Some(IngestError::Event { seq: 1, index: 1, .. })),
        "{:?}",
        outcome.refused
    );
    // More events than the batch limit.
    let outcome = handlers.agent_stream(&frames([
        &hello("node-c")[..],
        &batch(1, vec![anonymous_mmap(); MAX_BATCH_EVENTS + 1]),
    ]));
    assert!(matches!(
        outcome.refused,
        Some(IngestError::TooManyEvents { .. })
    ));
    assert_eq!(handlers.hub().stats().retained, 0);
}

#[test]
fn subscribe_checks_the_token_then_reads_back_what_was_stored() {
    let handlers = Handlers::new();
    let stream = frames([&hello("node-a")[..], &batch(1, vec![anonymous_mmap()])]);
    assert_eq!(handlers.agent_stream(&stream).acked, vec![1]);

    let refused = handlers.subscribe(&subscribe_call("", Some(0))).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = handlers.subscribe(&subscribe_call("Bearer nope", Some(0))).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let all = handlers
        .subscribe(&subscribe_call("Bearer agent-secret", Some(0)))
        .unwrap();
    let events = |s: &Subscribed| {
        s.responses
            .iter()
            .filter(|r| matches!(r.item, Some(Item::Event(_))))
            .count()
    };
    assert!(matches!(all.responses[0].item, Some(Item::Started(_))));
    assert_eq!(events(&all), 1, "{:?}", all.responses);
    // The team-a token sees only team-a's pods: not this host event.
    let scoped = handlers
        .subscribe(&subscribe_call("Bearer team-a", Some(0)))
        .unwrap();
    assert_eq!(events(&scoped), 0, "{:?}", scoped.responses);
    // A cursor ahead of the head is refused by the hub.
    let ahead = handlers
        .subscribe(&subscribe_call("Bearer agent-secret", Some(99)))
        .unwrap_err();
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
}

#[test]
fn stream_then_subscribe_reads_back_the_stream() {
    let handlers = Handlers::new();
    let stream = frames([&hello("node-a")[..], &batch(1, vec![anonymous_mmap()])]);
    let mut input = frames([&stream[..]]);
    input.extend(subscribe_call("Bearer agent-secret", Some(0)));
    let subscribed = handlers.stream_then_subscribe(&input).unwrap();
    assert_eq!(subscribed.responses.len(), 2, "{:?}", subscribed.responses);
}
