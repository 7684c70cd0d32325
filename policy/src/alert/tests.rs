use super::*;
use crate::context::PodContext;

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_764_236_101_000_000_000;

fn call(at: u64) -> MmapEvent {
    MmapEvent {
        time_ns: at,
        ppid: 1,
        cgroup_id: 1,
        ret: 0x7f00_0000_0000,
        ..MmapEvent::anonymous("app", 7, 4096, 6, 0x22)
    }
}

fn pod(name: &str) -> EvalContext {
    EvalContext {
        executable: None,
        workload: Some(PodContext {
            namespace: "shop".into(),
            pod: name.into(),
            container: Some("web".into()),
            ..PodContext::default()
        }),
    }
}

fn ids() -> (PolicyId, PolicyId) {
    (
        PolicyId {
            namespace: Some("shop".into()),
            name: "no-wx".into(),
        },
        PolicyId {
            namespace: None,
            name: "cluster".into(),
        },
    )
}

#[test]
fn a_storm_is_one_alert_whose_count_grows() {
    let (id, _) = ids();
    let m = Match {
        policy: &id,
        rule: "wx",
        action: Action::Kill,
        mode: Mode::Enforce,
    };
    let mut aggregator = Aggregator::new(10 * SECOND, 100);
    let first = aggregator
        .record(&m, &call(T0), &pod("a"))
        .expect("the first match is reported at once");
    assert_eq!(first.count, 1);
    // 999 more within the window: counted, not reported.
    for i in 1..1000 {
        assert_eq!(
            aggregator.record(&m, &call(T0 + i * 1_000_000), &pod("a")),
            None
        );
    }
    assert!(
        aggregator.flush(T0 + 5 * SECOND).is_empty(),
        "window not over"
    );
    let update = aggregator.flush(T0 + 10 * SECOND);
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].count, 1000);
    assert_eq!(update[0].first_seen, first.first_seen);
    assert_eq!(update[0].last_seen, "2025-11-27T09:35:01.999000Z");
    assert_eq!(update[0].event, first.event, "the sample is the first call");
    assert!(
        aggregator.flush(T0 + 10 * SECOND + SECOND / 2).is_empty(),
        "nothing new"
    );
    assert_eq!(aggregator.len(), 1, "seen within the window: still tracked");
    assert!(aggregator.flush(T0 + 30 * SECOND).is_empty());
    assert_eq!(aggregator.len(), 0, "idle for a window: forgotten");
    let again = aggregator
        .record(&m, &call(T0 + 31 * SECOND), &pod("a"))
        .unwrap();
    assert_eq!(again.count, 1, "a new storm is a new alert");
}

#[test]
fn a_match_after_the_window_reports_the_count_so_far() {
    let (id, _) = ids();
    let m = Match {
        policy: &id,
        rule: "wx",
        action: Action::Alert,
        mode: Mode::Audit,
    };
    let mut aggregator = Aggregator::new(10 * SECOND, 100);
    aggregator.record(&m, &call(T0), &pod("a")).unwrap();
    assert_eq!(aggregator.record(&m, &call(T0 + SECOND), &pod("a")), None);
    let update = aggregator
        .record(&m, &call(T0 + 11 * SECOND), &pod("a"))
        .unwrap();
    assert_eq!(update.count, 3);
    assert!(aggregator.drain().is_empty());
}

#[test]
fn keys_are_pod_policy_and_rule() {
    let (namespaced, cluster) = ids();
    let mut aggregator = Aggregator::new(10 * SECOND, 100);
    let at = call(T0);
    let wx = Match {
        policy: &namespaced,
        rule: "wx",
        action: Action::Kill,
        mode: Mode::Enforce,
    };
    let other_rule = Match { rule: "anon", ..wx };
    let other_policy = Match {
        policy: &cluster,
        ..wx
    };
    for (m, ctx) in [
        (&wx, pod("a")),
        (&wx, pod("b")),
        (&other_rule, pod("a")),
        (&other_policy, pod("a")),
        (&wx, EvalContext::default()),
    ] {
        assert!(
            aggregator.record(m, &at, &ctx).is_some(),
            "{m:?} {ctx:?} is a new key"
        );
    }
    assert!(aggregator.record(&wx, &at, &pod("a")).is_none());
    assert_eq!(aggregator.len(), 5);
    let drained = aggregator.drain();
    assert_eq!(drained.len(), 1);
    assert_eq!(
        (
            drained[0].pod.as_deref(),
            drained[0].rule.as_str(),
            drained[0].count
        ),
        (Some("a"), "wx", 2)
    );
}

#[test]
fn beyond_max_keys_matches_are_reported_one_by_one() {
    let (id, _) = ids();
    let m = Match {
        policy: &id,
        rule: "wx",
        action: Action::Alert,
        mode: Mode::Enforce,
    };
    let mut aggregator = Aggregator::new(10 * SECOND, 2);
    for name in ["a", "b", "c", "c"] {
        assert_eq!(
            aggregator
                .record(&m, &call(T0), &pod(name))
                .map(|a| a.count),
            Some(1),
            "{name}"
        );
    }
    assert_eq!(aggregator.len(), 2);
    assert_eq!(aggregator.untracked(), 2);
}

#[test]
fn a_policy_switched_from_audit_to_enforce_is_reported_at_once_with_the_new_mode() {
    let (id, _) = ids();
    let audit = Match {
        policy: &id,
        rule: "wx",
        action: Action::Kill,
        mode: Mode::Audit,
    };
    let enforce = Match {
        mode: Mode::Enforce,
        ..audit
    };
    let mut aggregator = Aggregator::new(60 * SECOND, 100);
    assert!(aggregator.record(&audit, &call(T0), &pod("a")).is_some());
    assert_eq!(
        aggregator.record(&audit, &call(T0 + SECOND), &pod("a")),
        None,
        "within the window"
    );
    let mut killed = call(T0 + 2 * SECOND);
    killed.pid = 8;
    let switched = aggregator
        .record(&enforce, &killed, &pod("a"))
        .expect("a new mode is reported within the window");
    assert_eq!(switched.mode, Mode::Enforce);
    assert_eq!(switched.count, 1, "the count starts over");
    assert_eq!(switched.first_seen, switched.last_seen);
    let crate::EventLine::Event { event, .. } = &switched.event;
    assert_eq!(event.pid, 8, "the sample is the call of the new mode");
    assert_eq!(aggregator.len(), 1, "still one key per (pod, policy, rule)");
    assert_eq!(
        aggregator.record(&enforce, &call(T0 + 3 * SECOND), &pod("a")),
        None,
        "then aggregated again"
    );
}

#[test]
fn window_zero_reports_every_match() {
    let (id, _) = ids();
    let m = Match {
        policy: &id,
        rule: "wx",
        action: Action::Alert,
        mode: Mode::Enforce,
    };
    let mut aggregator = Aggregator::new(0, 10);
    assert!(aggregator.record(&m, &call(T0), &pod("a")).is_some());
    assert!(aggregator.record(&m, &call(T0), &pod("a")).is_some());
    assert!(aggregator.is_empty());
}

#[test]
fn the_alert_line_has_the_contract_fields() {
    let (id, cluster) = ids();
    let m = Match {
        policy: &id,
        rule: "wx",
        action: Action::Kill,
        mode: Mode::Enforce,
    };
    let alert = Aggregator::default()
        .record(&m, &call(T0), &pod("a"))
        .unwrap();
    let json = serde_json::to_value(&alert).unwrap();
    assert_eq!(json["kind"], "alert");
    assert_eq!(json["policy"], "shop/no-wx");
    assert_eq!(json["rule"], "wx");
    assert_eq!(json["action"], "kill");
    assert_eq!(json["mode"], "enforce");
    assert_eq!(json["namespace"], "shop");
    assert_eq!(json["pod"], "a");
    assert_eq!(json["container"], "web");
    assert_eq!(json["count"], 1);
    assert_eq!(json["event"]["kind"], "event");
    assert_eq!(json["event"]["args"]["prot"], 6);
    assert_eq!(json["event"]["prot_names"], "PROT_WRITE|PROT_EXEC");
    assert_eq!(
        serde_json::from_value::<AlertLine>(json).unwrap(),
        alert,
        "round trip"
    );

    let host = Match {
        policy: &cluster,
        rule: "wx",
        action: Action::Deny,
        mode: Mode::Audit,
    };
    let json = serde_json::to_value(
        Aggregator::default()
            .record(&host, &call(T0), &EvalContext::default())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["policy"], "cluster");
    assert_eq!(json["action"], "deny");
    assert_eq!(json["mode"], "audit");
    assert!(
        json["namespace"].is_null() && json["pod"].is_null() && json["container"].is_null(),
        "{json}"
    );
}
