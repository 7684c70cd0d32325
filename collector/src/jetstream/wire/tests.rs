use super::*;

#[test]
fn cursors_hold_the_sequence_and_the_index_in_order() {
    let a = Cursor::new(7, 0);
    let b = Cursor::new(7, 1023);
    let c = Cursor::new(8, 0);
    assert!(a.encode() < b.encode() && b.encode() < c.encode());
    for cursor in [a, b, c, Cursor::new(1 << 43, 5)] {
        assert_eq!(Cursor::decode(cursor.encode()), cursor);
    }
    assert_eq!(Cursor::end_of(7), b);
    // Exact as a JSON number up to 2^43 messages.
    assert!(Cursor::end_of((1 << 43) - 1).encode() < 1 << 53);
}

#[test]
fn node_tokens_are_one_subject_token_and_never_shared() {
    assert_eq!(node_token("worker-1_a"), "worker-1_a");
    assert_eq!(
        node_token("ip-10-0-0-1.ec2.internal"),
        "ip-10-0-0-1%2Eec2%2Einternal"
    );
    assert_eq!(node_token("a b*>"), "a%20b%2A%3E");
    assert_eq!(node_token(""), "%");
    // "%" itself is escaped, so an escaped name cannot equal another name's token.
    assert_ne!(node_token("a.b"), node_token("a%2Eb"));
    let subject = event_subject("ip-10-0-0-1.ec2.internal", 16);
    assert_eq!(subject.split('.').count(), 4, "{subject}");
    assert!(subject.starts_with(&format!("{EVENTS_PREFIX}.")));
}

#[test]
fn partitions_spread_nodes_and_stay_stable() {
    let mut counts = [0; 4];
    for i in 0..400 {
        counts[partition_of(&format!("node-{i}"), 4) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    // FNV-1a: the same node lands in the same partition in every process and release.
    assert_eq!(partition_of("node-a", 16), partition_of("node-a", 16));
    assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
    assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
}

#[test]
fn series_tokens_tell_pods_policies_and_rules_apart() {
    let t = |ns, pod, policy, rule| series_token(ns, pod, policy, rule);
    let base = t(Some("shop"), Some("web"), "wx", "r");
    assert_eq!(base.len(), 16);
    assert_ne!(base, t(Some("shop"), Some("api"), "wx", "r"));
    assert_ne!(base, t(Some("shop"), Some("web"), "wx", "s"));
    assert_ne!(base, t(Some("shop"), Some("web"), "shop/wx", "r"));
    assert_ne!(t(None, None, "wx", "r"), t(Some("host"), None, "wx", "r"));
}

#[test]
fn message_ids_name_node_boot_seq_and_the_part_of_a_split_batch() {
    assert_eq!(batch_message_id("n1", "b1", 42, 0, 1), "n1/b1/42");
    assert_eq!(batch_message_id("n1", "b1", 42, 2, 3), "n1/b1/42/2");
    assert_eq!(restart_message_id("n1", "b2"), "n1/b2/restart");
}

fn event_with_path(len: usize) -> v1::Event {
    v1::Event {
        comm: "x".into(),
        file: Some(v1::FileInfo {
            path: "p".repeat(len),
            ..v1::FileInfo::default()
        }),
        ..v1::Event::default()
    }
}

#[test]
fn a_batch_splits_by_events_and_bytes_the_same_way_every_time() {
    assert_eq!(split(&[]), vec![0..0], "an empty batch is one empty part");
    let small: Vec<v1::Event> = (0..1024).map(|_| event_with_path(10)).collect();
    assert_eq!(split(&small), vec![0..1024]);
    let many: Vec<v1::Event> = (0..2500).map(|_| event_with_path(10)).collect();
    assert_eq!(split(&many), vec![0..1024, 1024..2048, 2048..2500]);
    let large: Vec<v1::Event> = (0..1000).map(|_| event_with_path(1000)).collect();
    let parts = split(&large);
    assert!(parts.len() >= 2, "{parts:?}");
    for part in &parts {
        let bytes: usize = large[part.clone()]
            .iter()
            .map(|e| e.encoded_len() + 4)
            .sum();
        assert!(bytes <= MAX_PART_BYTES, "{part:?}: {bytes} bytes");
    }
    assert_eq!(parts, split(&large));
    assert_eq!(parts.last().unwrap().end, 1000);
    // One event larger than a part is a part of its own.
    let huge = vec![
        event_with_path(10),
        event_with_path(600 << 10),
        event_with_path(10),
    ];
    assert_eq!(split(&huge), vec![0..1, 1..2, 2..3]);
}
