use mapsentry_policy::{MmapArgs, Syscall};

use super::*;

fn line() -> AlertLine {
    let event = MmapEvent {
        time_ns: 1_795_772_647_570_592_000,
        syscall: Syscall::Mmap,
        pid: 7,
        tid: 7,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "jit".into(),
        cgroup_id: 3,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 7,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x7f00_0000_0000,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    };
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
