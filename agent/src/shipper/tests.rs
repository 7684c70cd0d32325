use std::net::TcpListener;

use mapsentry_policy::{MmapArgs, Syscall};

use super::*;

fn event(pid: u32) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        syscall: Syscall::Mmap,
        pid,
        tid: pid,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "t".into(),
        cgroup_id: 1,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 3,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x1000,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

#[test]
fn a_bad_collector_url_is_named() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let error = Shipper::start(ShipperConfig::new("not a url", "n")).unwrap_err();
    assert!(error.to_string().contains("\"not a url\""), "{error}");
}

#[tokio::test]
async fn without_a_collector_events_are_buffered_within_bounds_and_every_one_is_counted() {
    // A port nobody listens on: bind, note the port, close. Pids 1000.. encode in equal sizes.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ShipperConfig::new(format!("http://127.0.0.1:{port}"), "n");
    config.batch_max_events = 10;
    let one: v1::Event = (&event(1000)).into();
    let event_bytes = prost::Message::encoded_len(&one) + 4;
    config.buffer_bytes = event_bytes * 50;
    config.backoff = Backoff {
        min: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    config.flush_timeout = Duration::from_millis(200);
    let shipper = Shipper::start(config).unwrap();
    for chunk in 0..20 {
        shipper
            .send(
                (1000 + chunk * 10..1000 + chunk * 10 + 10)
                    .map(event)
                    .collect(),
            )
            .await
            .unwrap();
    }
    // Wait for the condition (every event counted, as buffered or dropped), not for a time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = shipper.stats();
        if stats.buffered_events + stats.dropped.values().sum::<u64>() == 200 {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event accounted for within 20 s: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!stats.connected);
    assert_eq!(stats.captured, 200);
    assert_eq!(stats.buffered_events, 50, "{stats:?}");
    assert_eq!(
        stats.dropped.get(DROPPED_BUFFER_FULL),
        Some(&150),
        "{stats:?}"
    );
    let last = shipper.finish().await;
    assert_eq!(
        last.dropped.get(DROPPED_UNACKED_AT_EXIT),
        Some(&50),
        "{last:?}"
    );
    assert_eq!(
        last.acked + last.dropped.values().sum::<u64>(),
        last.captured
    );
    assert_eq!((last.shipped, last.connects), (0, 0));
}
