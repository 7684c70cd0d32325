use super::*;

fn line() -> AlertLine {
    let event = crate::convert::tests::file_backed();
    AlertLine {
        policy: "web/wx".into(),
        rule: "write-and-execute".into(),
        action: Action::Kill,
        mode: Mode::Enforce,
        namespace: Some("web".into()),
        pod: Some("api".into()),
        container: Some("app".into()),
        count: 3,
        first_seen: "2026-11-27T09:44:07.570592Z".into(),
        last_seen: "2026-11-27T09:44:08.000000Z".into(),
        event: EventLine::from(event),
    }
}

#[test]
fn an_alert_survives_the_wire() {
    let alert = line();
    let record = alert_record(&alert, "n1", 42);
    assert_eq!((record.cursor, record.node.as_str()), (42, "n1"));
    assert_eq!(
        (record.action.as_str(), record.mode.as_str()),
        ("kill", "enforce")
    );
    assert_eq!(AlertLine::try_from(&record), Ok(alert));
}

#[test]
fn a_malformed_record_is_named() {
    let mut record = alert_record(&line(), "n1", 1);
    record.action = "explode".into();
    assert_eq!(
        AlertLine::try_from(&record).unwrap_err().to_string(),
        "alert field `action`: \"explode\" is not a known action (expected alert, kill or deny)"
    );
    let mut record = alert_record(&line(), "n1", 1);
    record.event = None;
    assert_eq!(AlertLine::try_from(&record), Err(AlertError::MissingEvent));
}
