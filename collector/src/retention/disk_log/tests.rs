use prost::Message as _;

use super::{format::SEGMENT_MAGIC_V2, *};

fn event(pid: u32) -> v1::Event {
    v1::Event {
        pid,
        comm: "x".into(),
        args: Some(v1::MmapArgs {
            fd: -1,
            ..Default::default()
        }),
        attribution: Some(v1::event::Attribution::Pod(Box::new(v1::PodAttribution {
            namespace: Some("shop".into()),
            pod: Some(format!("web-{pid}")),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

/// `event(pid)` as ingest hands it to the log, its attribution held apart.
fn logged(pid: u32) -> Attributed {
    Attributed::from(event(pid))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapsentry-log-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        sync: SyncPolicy::Never,
        ..LogConfig::new(dir)
    }
}

fn seqs(batches: &[LoggedBatch]) -> Vec<u64> {
    batches.iter().map(|b| b.seq).collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.remove(0)
}

/// Ten batches `seq` 1..=10 of `seq` events each, cursors contiguous from 100; returns the
/// segment and the byte offset where each record starts.
fn ten_batches(dir: &Path) -> (PathBuf, Vec<u64>) {
    let (mut log, _) = Log::open(config(dir)).unwrap();
    let mut cursor = 100;
    let mut offsets = Vec::new();
    for seq in 1..=10u64 {
        offsets.push(log.bytes().max(SEGMENT_MAGIC.len() as u64));
        let events: Vec<_> = (0..seq as u32).map(logged).collect();
        log.append("n", "b", seq, cursor, &events).unwrap();
        cursor += seq;
    }
    drop(log);
    (only_segment(dir), offsets)
}

#[test]
fn batches_come_back_in_order_after_reopening() {
    let dir = temp_dir("reopen");
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    assert!(replayed.is_empty());
    log.append("n", "b", 1, 10, &[logged(1), logged(2)])
        .unwrap();
    log.append("n", "b", 2, 12, &[logged(3)]).unwrap();
    drop(log);
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    let seen: Vec<_> = replayed
        .iter()
        .map(|b| (b.seq, b.first_cursor, b.events.len()))
        .collect();
    assert_eq!(seen, vec![(1, 10, 2), (2, 12, 1)]);
    assert_eq!(replayed[0].events[1], event(2));
    assert_eq!(
        (replayed[1].node.as_str(), replayed[1].boot_id.as_str()),
        ("n", "b")
    );
    assert_eq!(
        log.recovery(),
        &Recovery {
            batches: 2,
            events: 3,
            ..Recovery::default()
        }
    );
    log.append("n", "b", 3, 13, &[logged(4)]).unwrap();
    drop(log);
    assert_eq!(Log::open(config(&dir)).unwrap().1.len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unfinished_last_record_is_cut_off_and_counted_as_torn() {
    let dir = temp_dir("torn");
    let (mut log, _) = Log::open(config(&dir)).unwrap();
    log.append("n", "b", 1, 1, &[logged(1)]).unwrap();
    log.append("n", "b", 2, 2, &[logged(2)]).unwrap();
    drop(log);
    let segment = only_segment(&dir);
    let whole = fs::read(&segment).unwrap();
    fs::write(&segment, &whole[..whole.len() - 3]).unwrap();
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1]);
    let torn = log.recovery().dropped[&DropCause::Torn];
    assert_eq!(
        (torn.batches, torn.events),
        (1, 0),
        "never acked: no events known"
    );
    log.append("n", "b", 2, 2, &[logged(2)]).unwrap();
    drop(log);
    let (log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2]);
    assert!(log.recovery().dropped.is_empty(), "the torn bytes are gone");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flipped_byte_costs_its_batch_only_and_nothing_is_cut_from_the_file() {
    let dir = temp_dir("flip");
    let (segment, offsets) = ten_batches(&dir);
    let mut data = fs::read(&segment).unwrap();
    let size = data.len();
    // A byte inside the body of batch 4 (an event field): served silently before checksums.
    let at = offsets[3] as usize + 40;
    data[at] ^= 0x01;
    fs::write(&segment, &data).unwrap();
    let (log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
    let dropped = log.recovery().dropped[&DropCause::Checksum];
    assert_eq!((dropped.batches, dropped.events), (1, 4));
    assert_eq!(log.recovery().dropped_events(), 4);
    assert_eq!(fs::metadata(&segment).unwrap().len() as usize, size);
    // Appends continue after the last record; the damage is still skipped.
    drop(log);
    let (mut log, _) = Log::open(config(&dir)).unwrap();
    log.append("n", "b", 11, 155, &[logged(11)]).unwrap();
    drop(log);
    let (_, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3, 5, 6, 7, 8, 9, 10, 11]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_length_or_magic_resynchronizes_at_the_next_record() {
    for (what, offset_in_record) in [("length", 5), ("magic", 1), ("checksum", 9)] {
        let dir = temp_dir(&format!("resync-{what}"));
        let (segment, offsets) = ten_batches(&dir);
        let mut data = fs::read(&segment).unwrap();
        data[offsets[6] as usize + offset_in_record] ^= 0x80;
        fs::write(&segment, &data).unwrap();
        let (log, replayed) = Log::open(config(&dir)).unwrap();
        assert_eq!(
            seqs(&replayed),
            vec![1, 2, 3, 4, 5, 6, 8, 9, 10],
            "a damaged {what}"
        );
        assert_eq!(log.recovery().dropped_batches(), 1, "{what}");
        assert_eq!(log.recovery().dropped_events(), 7, "{what}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn garbage_between_records_is_skipped_and_counted() {
    let dir = temp_dir("garbage");
    let (segment, offsets) = ten_batches(&dir);
    let data = fs::read(&segment).unwrap();
    let at = offsets[2] as usize;
    let mut spliced = data[..at].to_vec();
    spliced.extend_from_slice(&[0xAB; 100]);
    spliced.extend_from_slice(&data[at..]);
    fs::write(&segment, &spliced).unwrap();
    let (log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), (1..=10).collect::<Vec<_>>());
    let header = log.recovery().dropped[&DropCause::Header];
    assert_eq!((header.bytes, header.events), (100, 0));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_segment_header_keeps_the_records_after_it() {
    let dir = temp_dir("header");
    let (segment, _) = ten_batches(&dir);
    let mut data = fs::read(&segment).unwrap();
    data[2] ^= 0xFF;
    fs::write(&segment, &data).unwrap();
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), (1..=10).collect::<Vec<_>>());
    assert_eq!(log.recovery().dropped[&DropCause::Header].bytes, 8);
    // Nothing is appended to a segment without its header: a new one starts.
    log.append("n", "b", 11, 155, &[logged(11)]).unwrap();
    drop(log);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
    assert_eq!(seqs(&Log::open(config(&dir)).unwrap().1).len(), 11);
    fs::remove_dir_all(&dir).unwrap();
}

/// Batch `seq` (cursor `10 + seq`) of one whole event, as earlier formats wrote every batch.
fn whole_batch(seq: u64) -> LoggedBatch {
    LoggedBatch {
        node: "n".into(),
        boot_id: "b".into(),
        seq,
        first_cursor: 10 + seq,
        events: vec![event(seq as u32)],
        definitions: Vec::new(),
    }
}

#[test]
fn segments_of_the_previous_format_are_read_and_never_appended_to() {
    let dir = temp_dir("legacy");
    fs::create_dir_all(&dir).unwrap();
    let mut old = Vec::new();
    for seq in 1..=3u64 {
        whole_batch(seq).encode_length_delimited(&mut old).unwrap();
    }
    let legacy = dir.join(format!("{:020}.seg", 11));
    fs::write(&legacy, &old).unwrap();
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3]);
    assert_eq!(log.recovery().legacy_segments, 1);
    log.append("n", "b", 4, 14, &[logged(4)]).unwrap();
    drop(log);
    assert_eq!(
        fs::read(&legacy).unwrap(),
        old,
        "the old segment is untouched"
    );
    assert_eq!(seqs(&Log::open(config(&dir)).unwrap().1), vec![1, 2, 3, 4]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn segments_rotate_and_the_oldest_go_beyond_the_byte_bound() {
    let dir = temp_dir("rotate");
    let config = LogConfig {
        dir: dir.clone(),
        segment_bytes: 100,
        max_bytes: 300,
        sync: SyncPolicy::Never,
    };
    let (mut log, _) = Log::open(config.clone()).unwrap();
    for seq in 1..=40 {
        log.append("n", "b", seq, seq, &[logged(seq as u32)])
            .unwrap();
    }
    assert!(log.bytes() <= 300, "{} bytes", log.bytes());
    drop(log);
    let segments = fs::read_dir(&dir).unwrap().count();
    assert!(segments > 1 && segments <= 5, "{segments} segments");
    let replayed = Log::open(config).unwrap().1;
    let seqs = seqs(&replayed);
    assert_eq!(seqs.last(), Some(&40));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail: {seqs:?}"
    );
    assert!(seqs[0] > 1, "the oldest were deleted");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_bytes_holds_within_one_segment_whatever_the_sync_policy() {
    for sync in [SyncPolicy::Always, SyncPolicy::default(), SyncPolicy::Never] {
        let dir = temp_dir(&format!("max-{sync}"));
        let config = LogConfig {
            sync,
            ..LogConfig::with_max_bytes(&dir, 200_000)
        };
        assert_eq!(config.segment_bytes, 25_000);
        let (mut log, _) = Log::open(config.clone()).unwrap();
        let events: Vec<_> = (0..50).map(logged).collect();
        for seq in 1..=400u64 {
            log.append("n", "b", seq, seq * 50, &events).unwrap();
        }
        drop(log);
        let on_disk: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            on_disk <= config.max_bytes + config.segment_bytes,
            "{sync}: {on_disk} bytes on disk"
        );
        assert!(on_disk > config.max_bytes / 2, "{sync}: {on_disk}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn sync_policies_parse_by_name() {
    assert_eq!("always".parse(), Ok(SyncPolicy::Always));
    assert_eq!(
        "interval".parse(),
        Ok(SyncPolicy::Interval(SyncPolicy::INTERVAL))
    );
    assert_eq!("never".parse(), Ok(SyncPolicy::Never));
    assert!(
        "sometimes"
            .parse::<SyncPolicy>()
            .unwrap_err()
            .contains("always, interval or never")
    );
}

/// `n` events of one pod as ingest hands them over from an agent stream: one shared attribution.
fn sharing(n: u32) -> Vec<Attributed> {
    let shared = logged(0).attribution().unwrap().clone();
    (1..=n)
        .map(|pid| {
            let call = v1::Event {
                attribution: None,
                ..event(pid)
            };
            Attributed::new(call, Some(shared.clone()))
        })
        .collect()
}

#[test]
fn a_shared_attribution_is_written_once_per_record_and_read_back_into_every_event() {
    let dir = temp_dir("shared");
    let events = sharing(100);
    let whole: Vec<v1::Event> = events
        .iter()
        .map(|e| v1::Event {
            attribution: e.attribution().map(|a| a.get().clone()),
            ..e.event().clone()
        })
        .collect();
    let (mut log, _) = Log::open(config(&dir)).unwrap();
    log.append("n", "b", 1, 10, &events).unwrap();
    // The attribution once, and each event with a reference (field key and id: 3 bytes) in its
    // place: at most a header's worth (record header, node, boot id, seq, cursor) beyond that.
    let record = log.bytes() as usize - SEGMENT_MAGIC.len();
    let attribution_bytes = events[0].attribution().unwrap().encoded_len();
    let whole_bytes: usize = whole.iter().map(|e| e.encoded_len() + 2).sum();
    let expected = whole_bytes - 100 * attribution_bytes + 100 * 3 + (attribution_bytes + 4);
    assert!(
        record <= expected + 32,
        "{record} bytes for {whole_bytes} bytes of whole events ({attribution_bytes} bytes of attribution each), expected {expected} + header"
    );
    // A second record defines it again: each record reads back on its own.
    log.append("n", "b", 2, 110, &events[..1]).unwrap();
    // An event without an attribution stays without one.
    let bare = Attributed::new(
        v1::Event {
            attribution: None,
            ..event(7)
        },
        None,
    );
    log.append("n", "b", 3, 111, &[bare]).unwrap();
    drop(log);
    let data = fs::read(only_segment(&dir)).unwrap();
    assert!(data.starts_with(SEGMENT_MAGIC));
    let (_, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3]);
    assert_eq!(replayed[0].events, whole);
    assert_eq!(replayed[1].events, whole[..1]);
    assert_eq!(replayed[2].events[0].attribution, None);
    assert!(replayed.iter().all(|b| b.definitions.is_empty()));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_record_referring_to_an_attribution_it_does_not_define_is_dropped_as_undecodable() {
    let dir = temp_dir("undefined");
    fs::create_dir_all(&dir).unwrap();
    let batch = |seq: u64, reference: u64| LoggedBatch {
        node: "n".into(),
        boot_id: "b".into(),
        seq,
        first_cursor: seq,
        events: vec![v1::Event {
            attribution: Some(v1::event::Attribution::AttributionRef(reference)),
            ..event(1)
        }],
        definitions: vec![LoggedDefinition {
            id: 1,
            attribution: event(1).attribution,
        }],
    };
    let mut data = SEGMENT_MAGIC.to_vec();
    for (seq, reference) in [(1, 1), (2, 2), (3, 1)] {
        let mut record = Vec::new();
        encode_record(&batch(seq, reference).encode_to_vec(), &mut record);
        data.extend_from_slice(&record);
    }
    fs::write(dir.join(format!("{:020}.seg", 1)), &data).unwrap();
    let (log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 3]);
    assert_eq!(replayed[1].events, vec![event(1)]);
    let decode = log.recovery().dropped[&DropCause::Decode];
    assert_eq!(decode.batches, 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn format_2_segments_are_read_and_never_appended_to() {
    let dir = temp_dir("format-2");
    fs::create_dir_all(&dir).unwrap();
    let mut data = SEGMENT_MAGIC_V2.to_vec();
    for seq in 1..=3u64 {
        let mut record = Vec::new();
        encode_record(&whole_batch(seq).encode_to_vec(), &mut record);
        data.extend_from_slice(&record);
    }
    let old = dir.join(format!("{:020}.seg", 11));
    fs::write(&old, &data).unwrap();
    let (mut log, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3]);
    assert_eq!(replayed[2].events, vec![event(3)]);
    assert!(log.recovery().dropped.is_empty());
    log.append("n", "b", 4, 14, &[logged(4)]).unwrap();
    drop(log);
    assert_eq!(
        fs::read(&old).unwrap(),
        data,
        "the old segment is untouched"
    );
    let (_, replayed) = Log::open(config(&dir)).unwrap();
    assert_eq!(seqs(&replayed), vec![1, 2, 3, 4]);
    assert_eq!(replayed[3].events, vec![event(4)]);
    fs::remove_dir_all(&dir).unwrap();
}
