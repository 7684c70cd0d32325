use std::collections::HashMap;

use mapsentry_proto::v1::{FileInfo, HostAttribution, PodAttribution};

use super::*;

fn pod_event(pod: PodAttribution) -> v1::Event {
    v1::Event {
        comm: "java".into(),
        attribution: Some(Attribution::Pod(Box::new(pod))),
        ..v1::Event::default()
    }
}

#[test]
fn a_real_agents_event_passes() {
    let event = pod_event(PodAttribution {
        namespace: Some("shop".into()),
        pod: Some("web-5d8f7c9b6-x2x4q".into()),
        container: Some("app".into()),
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("0".repeat(64)),
        image: Some("registry.example/web:1".into()),
        labels: HashMap::from([("app.kubernetes.io/name".into(), "web".into())]),
        ..PodAttribution::default()
    });
    assert_eq!(check_event(&event), Ok(()));
    let held = Attributed::from(event.clone());
    assert_eq!(check_attributed(&held), Ok(()));
    assert_eq!(record_bytes(&held), event.encoded_len() + RECORD_OVERHEAD);
}

#[test]
fn each_field_beyond_its_limit_is_named_with_its_size_and_limit() {
    let long = "x".repeat(7 << 20);
    let mut event = v1::Event {
        comm: long.clone(),
        ..v1::Event::default()
    };
    assert_eq!(
        check_event(&event).unwrap_err().to_string(),
        format!("comm is {} bytes, more than the limit of 64", 7 << 20)
    );
    event.comm = "c".into();
    event.file = Some(FileInfo {
        path: "/".repeat(5000),
        ..FileInfo::default()
    });
    assert!(
        check_event(&event)
            .unwrap_err()
            .to_string()
            .starts_with("file.path is 5000 bytes")
    );
    event.file = None;
    event.attribution = Some(Attribution::Host(HostAttribution {
        cgroup: "/system.slice".into(),
        unit: Some("u".repeat(300)),
    }));
    assert!(
        check_event(&event)
            .unwrap_err()
            .to_string()
            .starts_with("host.unit is 300 bytes")
    );
    let labels: HashMap<String, String> = (0..300).map(|i| (format!("k{i}"), "v".into())).collect();
    let too_many = pod_event(PodAttribution {
        labels,
        ..PodAttribution::default()
    });
    assert_eq!(
        check_event(&too_many).unwrap_err().to_string(),
        "pod.labels has 300 entries, more than the limit of 256"
    );
    let value = pod_event(PodAttribution {
        labels: HashMap::from([("app".into(), "v".repeat(64))]),
        ..PodAttribution::default()
    });
    assert_eq!(
        check_event(&value).unwrap_err().to_string(),
        "pod.labels[\"app\"] is 64 bytes, more than the limit of 63"
    );
}

#[test]
fn an_event_of_allowed_fields_is_still_bounded_in_total() {
    let labels: HashMap<String, String> = (0..256)
        .map(|i| (format!("{i:0>300}"), "v".repeat(63)))
        .collect();
    let event = pod_event(PodAttribution {
        labels,
        ..PodAttribution::default()
    });
    assert!(matches!(
        check_event(&event),
        Err(LimitError::TooLong {
            max: MAX_EVENT_BYTES,
            ..
        })
    ));
    // Held apart (a V2 definition), the attribution passes on its own, and the event that names
    // it is still bounded by the whole's size.
    let held = Attributed::from(event);
    assert_eq!(check_attribution(held.attribution().unwrap().get()), Ok(()));
    assert!(matches!(
        check_attributed(&held),
        Err(LimitError::TooLong {
            max: MAX_EVENT_BYTES,
            ..
        })
    ));
}

#[test]
fn hello_and_loss_report_strings_are_bounded() {
    let mut hello = v1::Hello {
        node: "n".repeat(254),
        boot_id: "b".into(),
        ..v1::Hello::default()
    };
    assert_eq!(
        check_hello(&hello).unwrap_err().to_string(),
        "Hello.node is 254 bytes, more than the limit of 253"
    );
    hello.node = "n".repeat(253);
    assert_eq!(check_hello(&hello), Ok(()));
    hello.capabilities = vec!["c".into(); 33];
    assert!(check_hello(&hello).is_err());
    let report = v1::LossReport {
        dropped: (0..33).map(|i| (format!("r{i}"), 1)).collect(),
        ..v1::LossReport::default()
    };
    assert_eq!(
        check_loss_report(&report).unwrap_err().to_string(),
        "LossReport.dropped has 33 entries, more than the limit of 32"
    );
}

#[test]
fn the_ingest_budget_paces_a_stream_over_its_rate() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    assert!(IngestBudget::new(0, 1, start).is_none(), "0 is no limit");
    let mut budget = IngestBudget::new(1000, 1000, start).unwrap();
    assert_eq!(
        budget.take(1000, at(0)),
        Duration::ZERO,
        "a burst of one second"
    );
    assert_eq!(budget.take(500, at(0)), Duration::from_millis(500));
    assert_eq!(budget.take(0, at(500)), Duration::ZERO, "paid back");
    assert_eq!(
        budget.take(1000, at(10_500)),
        Duration::ZERO,
        "refilled to the burst"
    );
    assert!(budget.take(1, at(10_500)) > Duration::ZERO, "and no more");
}
