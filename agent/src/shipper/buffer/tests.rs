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
    (0..7).for_each(|pid| buffer.push(event(pid)));
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
    let size = event(1).encoded_len() + 4;
    let mut buffer = Buffer::new(limits(1000, size * 2, 1 << 20));
    (0..5).for_each(|pid| buffer.push(event(pid)));
    assert_eq!(buffer.get_mut(1).unwrap().count, 2);
    assert_eq!(buffer.get_mut(2).unwrap().count, 2);
    assert!(buffer.has_open());
}

#[test]
fn acks_release_batches_up_to_the_seq() {
    let mut buffer = Buffer::new(limits(2, 1 << 20, 1 << 20));
    (0..6).for_each(|pid| buffer.push(event(pid)));
    assert_eq!(buffer.ack(2), 4);
    assert_eq!(buffer.first_seq(), 3);
    assert_eq!(buffer.ack(2), 0, "a repeated ack releases nothing");
    assert_eq!(buffer.ack(9), 2);
    assert!(buffer.is_empty());
    assert_eq!(buffer.first_seq(), 4, "the next batch gets the next seq");
}

#[test]
fn over_budget_the_oldest_batches_go_and_are_counted() {
    let size = event(1).encoded_len() + 4;
    // Two events per batch, room for three batches.
    let mut buffer = Buffer::new(limits(2, 1 << 20, size * 6));
    (0..10).for_each(|pid| buffer.push(event(pid)));
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
