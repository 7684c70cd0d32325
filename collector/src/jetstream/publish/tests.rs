use super::*;

fn chain(boot: &str, seq: u64, part: u32, parts: u32) -> Chain {
    Chain {
        last: 9,
        boot_id: boot.into(),
        seq,
        part,
        parts,
        ..Chain::default()
    }
}

#[test]
fn the_chain_head_says_what_of_a_batch_is_stored() {
    // Stored whole: a duplicate.
    assert_eq!(chain("b1", 5, 0, 1).stored_parts("b1", 5), None);
    assert_eq!(chain("b1", 5, 0, 1).stored_parts("b1", 4), None);
    // Newer than the head: all of it.
    assert_eq!(chain("b1", 5, 0, 1).stored_parts("b1", 6), Some(0));
    // The head is part 1 of 3 of this batch: the rest from part 2.
    assert_eq!(chain("b1", 5, 1, 3).stored_parts("b1", 5), Some(2));
    assert_eq!(chain("b1", 5, 2, 3).stored_parts("b1", 5), None);
    // Another boot: nothing of this agent's is stored.
    assert_eq!(chain("b0", 90, 0, 1).stored_parts("b1", 1), Some(0));
    // An empty subject.
    assert_eq!(Chain::default().stored_parts("b1", 1), Some(0));
}

#[test]
fn a_stored_message_becomes_the_head() {
    let stored = StoredBatch {
        node: "n".into(),
        boot_id: "b1".into(),
        seq: 3,
        part: 1,
        parts: 2,
        boot_events: 70,
        last_event_ns: 123,
        captured: 80,
        ..StoredBatch::default()
    };
    let head = Chain::from_stored(41, &stored);
    assert_eq!(
        head,
        Chain {
            last: 41,
            boot_id: "b1".into(),
            seq: 3,
            part: 1,
            parts: 2,
            boot_events: 70,
            last_event_ns: 123,
            captured: 80,
        }
    );
}
