//! Hostile input to the collector's request handling, as a stable-toolchain fuzz loop (proptest):
//! arbitrary bytes through the same decode -> validate -> convert path the gRPC handlers run
//! (`AgentMessage` -> Hello / batch events / loss report, their field limits -> `MmapEvent`; `SubscribeRequest` -> `RecordFilter`,
//! scoped, matched against decoded events), and arbitrary tokens files. Nothing may panic; bad
//! input is an error. `fuzz/` holds the same targets for cargo-fuzz (longer, coverage-guided runs).
//! PROPTEST_CASES raises the case count (default 256 here).

use mapsentry_collector::{
    auth::{Scope, Tokens},
    budgets,
    filter::RecordFilter,
};
use mapsentry_policy::MmapEvent;
use mapsentry_proto::v1::{AgentMessage, Event, SubscribeRequest, agent_message::Msg};
use proptest::prelude::*;
use prost::Message as _;

/// What the ingest handler does with one message off the wire.
fn agent_message(bytes: &[u8]) {
    let Ok(message) = AgentMessage::decode(bytes) else {
        return;
    };
    match &message.msg {
        Some(Msg::Batch(batch)) => {
            for event in &batch.events {
                let _ = budgets::check_event(event);
                let _ = MmapEvent::try_from(event);
            }
        }
        Some(Msg::Hello(hello)) => {
            let _ = budgets::check_hello(hello);
        }
        Some(Msg::Loss(report)) => {
            let _ = budgets::check_loss_report(report);
        }
        None => {}
    }
}

/// What the observer does with a subscription, and each record against it.
fn subscribe_request(bytes: &[u8], event: &[u8]) {
    let Ok(request) = SubscribeRequest::decode(bytes) else {
        return;
    };
    let Ok(filter) = RecordFilter::new(request.filter.as_ref(), &request.kinds) else {
        return;
    };
    let event = Event::decode(event).unwrap_or_default();
    let _ = filter.matches("node", &event);
    if let Ok(scoped) = filter.within(Scope::Namespaces(vec!["a".into()])) {
        let _ = scoped.matches("node", &event);
    }
}

proptest! {
    #[test]
    fn agent_messages_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        agent_message(&bytes);
    }

    #[test]
    fn subscriptions_of_arbitrary_bytes_never_panic(
        request in proptest::collection::vec(any::<u8>(), 0..256),
        event in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        subscribe_request(&request, &event);
    }

    #[test]
    fn arbitrary_tokens_files_are_parsed_or_refused(text in "(\\{\"token\": \"[a-z]{0,3}\", \"namespaces\": \\[(\"[a-z*]{0,2}\",? ?){0,3}\\]\\}\n|.{0,20}\n){0,4}") {
        let _ = Tokens::parse("fuzz", &text);
    }
}

#[test]
fn valid_messages_survive_the_same_path() {
    // The loops above must reach the conversion, not only fail decoding: a real event does.
    let event = Event {
        syscall: mapsentry_proto::v1::Syscall::Mmap.into(),
        args: Some(mapsentry_proto::v1::MmapArgs::default()),
        ..Event::default()
    };
    let message = AgentMessage {
        msg: Some(Msg::Batch(mapsentry_proto::v1::EventBatch {
            seq: 1,
            events: vec![event.clone()],
        })),
    };
    let bytes = message.encode_to_vec();
    agent_message(&bytes);
    assert!(MmapEvent::try_from(&event).is_ok());
    subscribe_request(
        &SubscribeRequest::default().encode_to_vec(),
        &event.encode_to_vec(),
    );
}
