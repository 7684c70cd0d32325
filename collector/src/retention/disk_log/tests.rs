use super::*;

fn event(pid: u32) -> v1::Event {
    v1::Event {
        pid,
        comm: "x".into(),
        args: Some(v1::MmapArgs {
            fd: -1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapsentry-log-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn batches_come_back_in_order_after_reopening() {
    let dir = temp_dir("reopen");
    let (mut log, replayed) = Log::open(LogConfig::new(&dir)).unwrap();
    assert!(replayed.is_empty());
    log.append("n", "b", 1, 10, &[event(1), event(2)]).unwrap();
    log.append("n", "b", 2, 12, &[event(3)]).unwrap();
    drop(log);
    let (mut log, replayed) = Log::open(LogConfig::new(&dir)).unwrap();
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
    log.append("n", "b", 3, 13, &[event(4)]).unwrap();
    drop(log);
    assert_eq!(Log::open(LogConfig::new(&dir)).unwrap().1.len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_record_is_cut_off() {
    let dir = temp_dir("torn");
    let (mut log, _) = Log::open(LogConfig::new(&dir)).unwrap();
    log.append("n", "b", 1, 1, &[event(1)]).unwrap();
    log.append("n", "b", 2, 2, &[event(2)]).unwrap();
    drop(log);
    let segment = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let whole = fs::read(&segment).unwrap();
    fs::write(&segment, &whole[..whole.len() - 3]).unwrap();
    let (mut log, replayed) = Log::open(LogConfig::new(&dir)).unwrap();
    assert_eq!(replayed.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![1]);
    log.append("n", "b", 2, 2, &[event(2)]).unwrap();
    drop(log);
    assert_eq!(
        Log::open(LogConfig::new(&dir))
            .unwrap()
            .1
            .iter()
            .map(|b| b.seq)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn segments_rotate_and_the_oldest_go_beyond_the_byte_bound() {
    let dir = temp_dir("rotate");
    let config = LogConfig {
        dir: dir.clone(),
        segment_bytes: 100,
        max_bytes: 300,
    };
    let (mut log, _) = Log::open(config.clone()).unwrap();
    for seq in 1..=40 {
        log.append("n", "b", seq, seq, &[event(seq as u32)])
            .unwrap();
    }
    assert!(log.bytes() <= 300 + 100, "{} bytes", log.bytes());
    drop(log);
    let segments = fs::read_dir(&dir).unwrap().count();
    assert!(segments > 1 && segments <= 5, "{segments} segments");
    let replayed = Log::open(config).unwrap().1;
    let seqs: Vec<u64> = replayed.iter().map(|b| b.seq).collect();
    assert_eq!(seqs.last(), Some(&40));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail: {seqs:?}"
    );
    assert!(seqs[0] > 1, "the oldest were deleted");
    fs::remove_dir_all(&dir).unwrap();
}
