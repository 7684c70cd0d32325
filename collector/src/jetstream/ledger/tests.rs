use super::*;

fn keeper_at(first: u64) -> Keeper {
    let start = range_of(first) * RANGE + 1;
    let mut keeper = Keeper {
        range: LedgerRange {
            first_sequence: start,
            ..LedgerRange::default()
        },
        next: start,
        dirty: true,
    };
    keeper.fill_unknown(first);
    keeper
}

#[test]
fn ranges_are_1024_sequences_from_1() {
    assert_eq!(range_of(1), 0);
    assert_eq!(range_of(1024), 0);
    assert_eq!(range_of(1025), 1);
    assert_eq!(key(3), "r.3");
}

#[test]
fn counts_fill_ranges_and_carry_their_sums_on() {
    let mut keeper = keeper_at(1);
    let mut full = Vec::new();
    for sequence in 1..=2100u64 {
        if let Some(range) = keeper.record(sequence, Some((sequence % 5) as u32)) {
            full.push(range);
        }
    }
    assert_eq!(full.len(), 2);
    assert_eq!(full[0].first_sequence, 1);
    assert_eq!(full[0].base, 0);
    assert_eq!(full[1].first_sequence, 1025);
    let first_sum: u64 = (1..=1024u64).map(|s| s % 5).sum();
    assert_eq!(full[1].base, first_sum);
    assert_eq!(keeper.range.first_sequence, 2049);
    assert_eq!(keeper.range.counts.len(), 2100 - 2048);
    assert_eq!(keeper.next, 2101);
}

#[test]
fn messages_skipped_or_without_a_count_are_unknown_and_say_so() {
    // The stream's first message was 10: 1..=9 were gone before the keeper began.
    let mut keeper = keeper_at(10);
    assert_eq!(keeper.range.counts.len(), 9);
    assert!(keeper.range.counts.iter().all(|&c| c == UNKNOWN_COUNT));
    keeper.record(10, Some(4));
    // 11 and 12 deleted unread, 13 without a header.
    keeper.record(13, None);
    keeper.record(14, Some(2));
    let (events, unknown) = sums(&keeper.range.counts);
    assert_eq!((events, unknown), (6, 12));
    // A message seen again (a recreated consumer) changes nothing.
    assert_eq!(keeper.record(10, Some(4)), None);
    assert_eq!(keeper.range.counts.len(), 14);
}
