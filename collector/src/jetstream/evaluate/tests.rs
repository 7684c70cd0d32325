use super::*;

#[test]
fn an_alert_line_names_its_series_key() {
    let key = key_of(&AlertLine {
        policy: "shop/no-wx".into(),
        rule: "wx".into(),
        action: Action::Kill,
        mode: Mode::Audit,
        namespace: Some("shop".into()),
        pod: Some("web".into()),
        container: None,
        count: 3,
        first_seen: "2026-11-27T09:44:07.570592Z".into(),
        last_seen: "2026-11-27T09:44:08Z".into(),
        event: mapsentry_policy::EventLine::from(MmapEvent::anonymous("app", 7, 4096, 7, 0x22)),
    });
    assert_eq!(
        key.policy,
        mapsentry_policy::PolicyId {
            namespace: Some("shop".into()),
            name: "no-wx".into()
        }
    );
    assert_eq!(
        (
            key.namespace.as_deref(),
            key.pod.as_deref(),
            key.rule.as_str()
        ),
        (Some("shop"), Some("web"), "wx")
    );
    let cluster = key_of(&AlertLine {
        policy: "write-execute".into(),
        namespace: None,
        pod: None,
        ..AlertLine {
            policy: String::new(),
            rule: "wx".into(),
            action: Action::Alert,
            mode: Mode::Audit,
            namespace: None,
            pod: None,
            container: None,
            count: 1,
            first_seen: String::new(),
            last_seen: String::new(),
            event: mapsentry_policy::EventLine::from(MmapEvent::anonymous("app", 7, 4096, 7, 0x22)),
        }
    });
    assert_eq!(cluster.policy.namespace, None);
    assert_eq!(cluster.policy.name, "write-execute");
}

#[test]
fn alert_times_read_back_to_nanoseconds() {
    assert_eq!(parse_ns("1970-01-01T00:00:01.000002Z"), 1_000_002_000);
    assert_eq!(parse_ns("not a time"), 0);
}

#[test]
fn a_published_update_reads_back_as_what_the_series_reported() {
    let line = AlertLine {
        policy: "write-execute".into(),
        rule: "wx".into(),
        action: Action::Alert,
        mode: Mode::Audit,
        namespace: Some("shop".into()),
        pod: Some("web".into()),
        container: Some("app".into()),
        count: 10,
        first_seen: "2026-11-27T09:44:07.570592Z".into(),
        last_seen: "2026-11-27T09:44:08Z".into(),
        event: mapsentry_policy::EventLine::from(MmapEvent::anonymous("app", 7, 4096, 7, 0x22)),
    };
    let stored = StoredAlert {
        record: Some(convert::alert_record(&line, "node-a", 0)),
        through: 42,
        first_seen_ns: parse_ns(&line.first_seen),
        last_seen_ns: parse_ns(&line.last_seen),
        partition: 0,
    };
    let back = StoredAlert::decode(wire::encode(&stored).as_ref()).expect("decodes");
    let reported = reported(&back, 1).expect("an update carries its series on");
    assert_eq!(
        (reported.count, reported.mode, reported.action),
        (10, Mode::Audit, Action::Alert)
    );
    assert_eq!(reported.last_seen, parse_ns("2026-11-27T09:44:08Z"));
}

/// A new holder re-reads a storm seconds after it happened; a flush between two of its batches
/// is judged at the backlog's time, so the storm stays one series.
#[test]
fn a_backlog_read_after_a_takeover_is_aggregated_at_its_own_time() {
    const SECOND: u64 = 1_000_000_000;
    const T0: u64 = 1_764_236_100 * SECOND;
    let policy = mapsentry_policy::PolicyId {
        namespace: None,
        name: "write-execute".into(),
    };
    let m = Match {
        policy: &policy,
        rule: "wx",
        action: Action::Alert,
        mode: Mode::Audit,
    };
    let call = |at: u64| MmapEvent {
        time_ns: at,
        ..MmapEvent::anonymous("app", 7, 4096, 7, 0x22)
    };
    let ctx = mapsentry_policy::EvalContext::default();
    // The storm's first batch (10 calls in 10 ms), read 9 s later; then a flush; then the
    // second batch.
    let read_at = T0 + 9 * SECOND;
    let read_storm = |aggregator: &mut Aggregator, backlog: bool| {
        let mut lines = Vec::new();
        for i in 0..10 {
            lines.extend(aggregator.record(&m, &call(T0 + i * 1_000_000), &ctx));
        }
        lines.extend(aggregator.flush(aggregation_clock(backlog, T0 + 9_000_000, read_at)));
        for i in 10..20 {
            lines.extend(aggregator.record(&m, &call(T0 + i * 1_000_000), &ctx));
        }
        lines.extend(aggregator.drain());
        lines.iter().map(|l| l.count).collect::<Vec<_>>()
    };
    assert_eq!(
        read_storm(&mut Aggregator::new(SECOND, 100), true),
        [1, 20],
        "one series"
    );
    // Judged at the wall clock, the flush would publish the first batch, forget the series as
    // idle for 9 s and begin another at the second batch's first call.
    assert_eq!(
        read_storm(&mut Aggregator::new(SECOND, 100), false),
        [1, 10, 1, 10]
    );
    assert_eq!(
        aggregation_clock(true, read_at + SECOND, read_at),
        read_at,
        "never past the wall clock"
    );
}
