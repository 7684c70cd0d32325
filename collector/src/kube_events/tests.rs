use std::time::{Duration, Instant};

use mapsentry_policy::Mode;

use super::*;

fn alert(pod: Option<&str>, rule: &str, count: u64) -> AlertLine {
    AlertLine {
        policy: "shop/no-wx".into(),
        action: Action::Kill,
        mode: Mode::Enforce,
        container: Some("app".into()),
        ..crate::testing::alert_line(pod.map(|_| "shop"), pod, "app", rule, count)
    }
}

fn count_of(write: &Write) -> u64 {
    match write {
        Write::Create { count, .. } | Write::Patch { count, .. } => *count,
    }
}

#[test]
fn a_storm_is_one_event_whose_series_counts_the_calls() {
    let mut planner = Planner::new(10, Duration::from_mins(10));
    let t0 = Instant::now();
    let (key, first) = planner
        .alert(&alert(Some("web"), "wx", 1), t0)
        .expect("a write");
    let Write::Create {
        namespace,
        pod,
        action,
        note,
        count,
        ..
    } = &first
    else {
        panic!("the first alert creates an Event: {first:?}")
    };
    assert_eq!((namespace.as_str(), pod.as_str()), ("shop", "web"));
    assert_eq!((action.as_str(), *count), ("Kill", 1));
    assert!(
        note.starts_with("policy shop/no-wx rule wx action kill (enforce mode) container=app"),
        "{note}"
    );
    planner.written(&key, Some("web.1".into()), 1, t0);
    // The aggregator's later updates carry cumulative counts.
    let (_, update) = planner
        .alert(&alert(Some("web"), "wx", 250), t0 + Duration::from_mins(1))
        .expect("a write");
    assert_eq!(
        update,
        Write::Patch {
            namespace: "shop".into(),
            name: "web.1".into(),
            count: 250
        }
    );
    planner.written(&key, Some("web.1".into()), 250, t0);
    // A new aggregation (the key was forgotten after a quiet window) adds to the series.
    let (_, again) = planner
        .alert(&alert(Some("web"), "wx", 3), t0 + Duration::from_secs(200))
        .expect("a write");
    assert_eq!(count_of(&again), 253);
    assert!(matches!(again, Write::Patch { .. }));
}

#[test]
fn host_processes_get_no_events() {
    let mut planner = Planner::new(10, Duration::from_mins(10));
    assert_eq!(planner.alert(&alert(None, "wx", 1), Instant::now()), None);
    assert!(planner.pending(Instant::now()).is_empty());
}

#[test]
fn writes_per_pod_are_rate_limited_and_the_count_catches_up() {
    let mut planner = Planner::new(3, Duration::from_mins(10));
    let t0 = Instant::now();
    let mut writes = 0;
    for i in 0..10 {
        if let Some((key, write)) = planner.alert(&alert(Some("web"), &format!("r{i}"), 1), t0) {
            writes += 1;
            planner.written(&key, Some(format!("e{i}")), count_of(&write), t0);
        }
    }
    assert_eq!(writes, 3, "three writes per pod per minute");
    assert_eq!(planner.suppressed, 7);
    // Another pod has its own budget.
    let (db, write) = planner
        .alert(&alert(Some("db"), "r0", 1), t0)
        .expect("db has its own budget");
    planner.written(&db, Some("db.1".into()), count_of(&write), t0);
    // Within the minute nothing more goes out for web; after it, the waiting series do.
    assert!(planner.pending(t0 + Duration::from_secs(30)).is_empty());
    let later = planner.pending(t0 + Duration::from_secs(61));
    assert_eq!(later.len(), 3, "{later:?}");
    assert!(later.iter().all(|(_, w)| matches!(w, Write::Create { .. })));
}

#[test]
fn an_idle_series_starts_a_new_event() {
    let mut planner = Planner::new(10, Duration::from_mins(10));
    let t0 = Instant::now();
    let (key, _) = planner
        .alert(&alert(Some("web"), "wx", 1), t0)
        .expect("write");
    planner.written(&key, Some("web.1".into()), 1, t0);
    let (_, write) = planner
        .alert(&alert(Some("web"), "wx", 1), t0 + Duration::from_mins(11))
        .expect("write");
    assert!(matches!(write, Write::Create { count: 1, .. }), "{write:?}");
}

#[test]
fn a_create_retried_later_keeps_the_name_its_series_started_with() {
    let mut planner = Planner::new(10, Duration::from_mins(10));
    let t0 = Instant::now();
    planner.name_suffix = Some("1".into());
    let (key, first) = planner
        .alert(&alert(Some("web"), "wx", 1), t0)
        .expect("a write");
    assert!(
        matches!(&first, Write::Create { name, .. } if name == "web.1"),
        "{first:?}"
    );
    // The create failed (nothing written); the stream moved on before it is retried.
    planner.name_suffix = Some("2".into());
    let (_, retry) = planner
        .alert(&alert(Some("web"), "wx", 5), t0 + Duration::from_secs(1))
        .expect("a write");
    assert!(
        matches!(&retry, Write::Create { name, count: 5, .. } if name == "web.1"),
        "the series is still web.1, whoever writes it: {retry:?}"
    );
    // Gone (404): the next Event of the key is a new series, named from the alert starting it.
    planner.written(&key, Some("web.1".into()), 5, t0 + Duration::from_secs(1));
    planner.written(&key, None, 0, t0 + Duration::from_secs(2));
    planner.name_suffix = Some("3".into());
    let (_, anew) = planner
        .alert(&alert(Some("web"), "wx", 6), t0 + Duration::from_secs(3))
        .expect("a write");
    assert!(
        matches!(&anew, Write::Create { name, .. } if name == "web.3"),
        "{anew:?}"
    );
}
