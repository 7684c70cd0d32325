use std::sync::Arc;

use mapsentry_policy::{Attribution, K8sMeta};
use prost::Message as _;

use super::*;

fn event(pid: u32) -> v1::Event {
    v1::Event {
        pid,
        comm: "x".into(),
        args: Some(v1::MmapArgs::default()),
        ..v1::Event::default()
    }
}

/// What one event adds to a batch: its `EventBatch.events` field, encoded.
fn field_len(event: &v1::Event) -> usize {
    prost::encoding::message::encoded_len(2, event)
}

fn limits(events: usize, batch_bytes: usize, buffer_bytes: usize) -> Limits {
    Limits {
        batch_max_events: events,
        batch_max_bytes: batch_bytes,
        buffer_bytes,
    }
}

#[test]
fn batches_seal_by_count_with_consecutive_seqs() {
    let mut buffer = Buffer::new(limits(3, 1 << 20, 1 << 20));
    (0..7).for_each(|pid| buffer.push_wire(&event(pid)));
    assert_eq!(buffer.get_mut(1).unwrap().count, 3);
    assert_eq!(buffer.get_mut(2).unwrap().count, 3);
    assert!(
        buffer.get_mut(3).is_none(),
        "the seventh event is still open"
    );
    buffer.seal();
    assert_eq!(events_of(buffer.get_mut(3).unwrap()), vec![event(6)]);
    assert_eq!(buffer.held().0, 7);
}

#[test]
fn batches_seal_by_size() {
    let size = field_len(&event(1));
    let mut buffer = Buffer::new(limits(1000, size * 2, 1 << 20));
    (0..5).for_each(|pid| buffer.push_wire(&event(pid)));
    assert_eq!(buffer.get_mut(1).unwrap().count, 2);
    assert_eq!(buffer.get_mut(2).unwrap().count, 2);
    assert!(buffer.has_open());
}

#[test]
fn a_sealed_batch_is_the_message_prost_encodes() {
    // Small and large seqs (one- and multi-byte varints), and a batch over 127 bytes (its
    // length a two-byte varint), split by size.
    let long = |pid| v1::Event {
        comm: "c".repeat(60),
        ..event(pid)
    };
    let size = field_len(&long(1));
    let mut buffer = Buffer::new(limits(1000, size * 3, 1 << 20));
    buffer.next_seq = 300;
    (0..7).for_each(|pid| buffer.push_wire(&long(pid)));
    buffer.seal();
    let mut pid = 0;
    for seq in [300, 301, 302] {
        let batch = buffer.get_mut(seq).unwrap();
        let events: Vec<_> = (pid..pid + batch.count as u32).map(long).collect();
        pid += batch.count as u32;
        let expected = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Batch(v1::EventBatch {
                seq,
                events,
            })),
        };
        assert_eq!(
            batch.message.as_bytes(),
            expected.encode_to_vec().as_slice(),
            "batch {seq}"
        );
    }
    assert_eq!(pid, 7);
    assert!(buffer.get_mut(300).unwrap().message.len() > 127);
}

#[test]
fn acks_release_batches_up_to_the_seq() {
    let mut buffer = Buffer::new(limits(2, 1 << 20, 1 << 20));
    (0..6).for_each(|pid| buffer.push_wire(&event(pid)));
    assert_eq!(buffer.ack(2), 4);
    assert_eq!(buffer.first_seq(), 3);
    assert_eq!(buffer.ack(2), 0, "a repeated ack releases nothing");
    assert_eq!(buffer.ack(9), 2);
    assert!(buffer.is_empty());
    assert_eq!(buffer.first_seq(), 4, "the next batch gets the next seq");
}

#[test]
fn over_budget_the_oldest_batches_go_and_are_counted() {
    let size = field_len(&event(1));
    // Two events per batch, room for three batches.
    let mut buffer = Buffer::new(limits(2, 1 << 20, size * 6));
    (0..10).for_each(|pid| buffer.push_wire(&event(pid)));
    assert_eq!(buffer.dropped, 4, "batches 1 and 2 dropped");
    assert_eq!(buffer.first_seq(), 3);
    assert_eq!(
        events_of(buffer.get_mut(3).unwrap()),
        vec![event(4), event(5)]
    );
    let (events, bytes) = buffer.held();
    assert_eq!((events, bytes), (6, size * 6));
}

/// The events a sealed batch sends, read back from its encoded message.
fn events_of(batch: &Batch) -> Vec<v1::Event> {
    match batch.message.decode().unwrap().msg {
        Some(v1::agent_message::Msg::Batch(sent)) => {
            assert_eq!(sent.seq, batch.seq);
            assert_eq!(sent.events.len(), batch.count);
            sent.events
        }
        other => panic!("batch {} encodes {other:?}", batch.seq),
    }
}

// ---- attributions by id (protocol V2) ----

fn pod(name: &str) -> Arc<Attribution> {
    Arc::new(Attribution::Pod(K8sMeta {
        namespace: Some("team-a".into()),
        pod: Some(name.into()),
        labels: [("app".to_owned(), name.to_owned())].into(),
        resolved: true,
        ..K8sMeta::default()
    }))
}

/// An mmap of cgroup `cgroup_id` attributed to `attribution`.
fn attributed(cgroup_id: u64, attribution: &Arc<Attribution>) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        syscall: mapsentry_policy::Syscall::Mmap,
        pid: 7,
        tid: 7,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "x".into(),
        cgroup_id,
        args: mapsentry_policy::MmapArgs {
            addr: 0,
            length: 4096,
            prot: 3,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: Some(Arc::clone(attribution)),
    }
}

/// The ids of the attributions `definitions` defines, and the pods they name.
fn defined(definitions: Option<v1::Attributions>) -> Vec<(u64, String)> {
    definitions
        .map(|d| d.definitions)
        .unwrap_or_default()
        .into_iter()
        .map(|d| match d.attribution {
            Some(v1::attribution_definition::Attribution::Pod(pod)) => {
                (d.id, pod.pod.unwrap_or_default())
            }
            other => panic!("definition {} is {other:?}", d.id),
        })
        .collect()
}

fn refs_of(batch: &Batch) -> Vec<u64> {
    events_of(batch)
        .iter()
        .map(|e| match e.attribution {
            Some(v1::event::Attribution::AttributionRef(id)) => id,
            ref other => panic!("an event carries {other:?} instead of an id"),
        })
        .collect()
}

#[test]
fn events_carry_ids_and_each_definition_goes_once_per_stream_before_its_first_batch() {
    let (web, db) = (pod("web"), pod("db"));
    // The first stream: no `new_stream` needed.
    let mut buffer = Buffer::new(limits(2, 1 << 20, 1 << 20));
    buffer.push(&attributed(1, &web));
    buffer.push(&attributed(1, &web));
    buffer.push(&attributed(1, &web));
    buffer.push(&attributed(2, &db));
    assert_eq!(refs_of(buffer.get_mut(1).unwrap()), vec![1, 1]);
    assert_eq!(refs_of(buffer.get_mut(2).unwrap()), vec![1, 2]);
    assert_eq!(defined(buffer.definitions(1)), vec![(1, "web".to_owned())]);
    assert_eq!(defined(buffer.definitions(1)), vec![], "sent once");
    assert_eq!(
        defined(buffer.definitions(2)),
        vec![(2, "db".to_owned())],
        "only what the stream has not had"
    );
    // An equal attribution in another Arc (the enricher re-resolved the pod) keeps its id.
    buffer.push(&attributed(1, &pod("web")));
    buffer.seal();
    assert_eq!(refs_of(buffer.get_mut(3).unwrap()), vec![1]);
    assert_eq!(defined(buffer.definitions(3)), vec![]);
}

#[test]
fn a_new_stream_gets_the_definitions_again_before_the_batches_resent_on_it() {
    let (web, db) = (pod("web"), pod("db"));
    let mut buffer = Buffer::new(limits(1, 1 << 20, 1 << 20));
    buffer.new_stream();
    buffer.push(&attributed(1, &web));
    buffer.push(&attributed(2, &db));
    assert_eq!(defined(buffer.definitions(1)), vec![(1, "web".to_owned())]);
    assert_eq!(defined(buffer.definitions(2)), vec![(2, "db".to_owned())]);
    assert_eq!(buffer.ack(1), 1);
    // Reconnect: batch 2 is resent, and the new stream must learn id 2 first; id 1 (no longer
    // referred to) is not sent.
    buffer.new_stream();
    assert_eq!(defined(buffer.definitions(2)), vec![(2, "db".to_owned())]);
    assert_eq!(defined(buffer.definitions(2)), vec![]);
}

#[test]
fn a_changed_attribution_gets_a_new_id_and_each_event_keeps_its_own() {
    let pending = Arc::new(Attribution::Pod(K8sMeta {
        pod_uid: Some("uid-1".into()),
        resolved: false,
        ..K8sMeta::default()
    }));
    let resolved = pod("web");
    let mut buffer = Buffer::new(limits(2, 1 << 20, 1 << 20));
    buffer.new_stream();
    buffer.push(&attributed(1, &pending));
    buffer.push(&attributed(1, &resolved));
    assert_eq!(refs_of(buffer.get_mut(1).unwrap()), vec![1, 2]);
    let definitions = buffer.definitions(1).unwrap().definitions;
    assert!(
        matches!(&definitions[0].attribution,
            Some(v1::attribution_definition::Attribution::Pod(p)) if !p.resolved),
        "{definitions:?}"
    );
    assert_eq!(definitions[1].id, 2);
}

#[test]
fn entries_are_evicted_only_when_no_buffered_batch_refers_to_them() {
    // Room for two attributions; one batch per event.
    let mut buffer = Buffer::with_dictionary(limits(1, 1 << 20, 1 << 20), 2);
    buffer.new_stream();
    buffer.push(&attributed(1, &pod("a")));
    buffer.push(&attributed(2, &pod("b")));
    assert_eq!(defined(buffer.definitions(1)), vec![(1, "a".to_owned())]);
    // Both referred to by unacked batches: a third attribution goes inline, nothing evicted.
    buffer.push(&attributed(3, &pod("c")));
    let third = events_of(buffer.get_mut(3).unwrap());
    assert!(
        matches!(&third[0].attribution, Some(v1::event::Attribution::Pod(p)) if p.pod.as_deref() == Some("c")),
        "{third:?}"
    );
    assert_eq!(buffer.attributions(), (2, 2));
    // Batch 1 acked: "a" is unreferenced and makes room for "d"; the stream had "a", so its
    // release goes with the next definitions.
    buffer.ack(1);
    assert_eq!(buffer.attributions(), (2, 1));
    buffer.push(&attributed(4, &pod("d")));
    assert_eq!(refs_of(buffer.get_mut(4).unwrap()), vec![3]);
    assert_eq!(buffer.attributions(), (2, 2));
    let definitions = buffer.definitions(4).unwrap();
    assert_eq!(definitions.released, vec![1]);
    assert_eq!(definitions.definitions[0].id, 3);
    // "b" was never defined on the stream (batch 2 not sent yet) and is still there.
    assert_eq!(defined(buffer.definitions(2)), vec![(2, "b".to_owned())]);
}

#[test]
fn an_acked_batch_releases_its_attributions_which_stay_as_a_cache() {
    let mut buffer = Buffer::with_dictionary(limits(1, 1 << 20, 1 << 20), 1);
    buffer.new_stream();
    buffer.push(&attributed(1, &pod("a")));
    assert_eq!(buffer.attributions(), (1, 1));
    buffer.ack(1);
    assert_eq!(buffer.attributions(), (1, 0), "kept as a cache");
    buffer.push(&attributed(1, &pod("a")));
    assert_eq!(refs_of(buffer.get_mut(2).unwrap()), vec![1], "reused");
}

#[test]
fn the_collector_keeps_every_call_of_a_sealed_batch_as_sent() {
    // What the collector's decoder keeps of a batch (`mapsentry_proto::received`), it copies
    // into its retention log instead of encoding the call again: every event of the agent's
    // batches, with an attribution id or without one (events from a cgroup nothing resolved).
    let web = pod("web");
    let mut buffer = Buffer::new(limits(8, 1 << 20, 1 << 20));
    for i in 0..6 {
        let mut event = attributed(i, &web);
        if i.is_multiple_of(3) {
            event.attribution = None;
        }
        event.file = i.is_multiple_of(2).then(|| mapsentry_policy::FileInfo {
            path: "/usr/lib/libc.so.6".into(),
            inode: 77,
            dev: 0x803,
            memfd: false,
            shm: false,
            deleted: false,
            path_truncated: false,
            fs_magic: 0xef53,
        });
        buffer.push(&event);
    }
    buffer.seal();
    let batch = buffer.get_mut(1).unwrap();
    let bytes = prost::bytes::Bytes::copy_from_slice(batch.message.as_bytes());
    let received = mapsentry_proto::received::ReceivedAgentMessage::decode(&bytes).unwrap();
    let (message, calls) = received.into_parts();
    let Some(v1::agent_message::Msg::Batch(sent)) = message.msg else {
        panic!("a batch")
    };
    assert_eq!(calls.len(), 6);
    for (call, event) in calls.iter().zip(&sent.events) {
        let call = call.as_ref().expect("kept");
        let without = v1::Event {
            attribution: None,
            ..event.clone()
        };
        assert_eq!(call.as_ref(), without.encode_to_vec());
    }
}
