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
