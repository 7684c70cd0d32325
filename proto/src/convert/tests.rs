use prost::Message;

use super::*;

pub(super) fn file_backed() -> MmapEvent {
    MmapEvent {
        time_ns: 1_764_236_000_123_456_789,
        syscall: Syscall::Mmap2,
        pid: 42,
        tid: 43,
        ppid: 1,
        uid: 1000,
        gid: 1001,
        comm: "app".into(),
        cgroup_id: 7,
        args: MmapArgs {
            addr: 0x7f00_0000_0000,
            length: 8192,
            prot: 5,
            flags: 0x12,
            fd: 3,
            pgoffset: 2,
            offset: 8192,
        },
        ret: 0x7f00_0000_0000,
        file: Some(FileInfo {
            path: "/memfd:jit (deleted)".into(),
            inode: 11,
            dev: 0x803,
            memfd: true,
            shm: false,
            deleted: true,
            path_truncated: true,
            fs_magic: 0x0102_1994,
        }),
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

fn extremes() -> MmapEvent {
    MmapEvent {
        time_ns: u64::MAX,
        syscall: Syscall::OldMmap,
        pid: u32::MAX,
        tid: 0,
        ppid: u32::MAX,
        uid: u32::MAX,
        gid: 0,
        comm: String::new(),
        cgroup_id: u64::MAX,
        args: MmapArgs {
            addr: u64::MAX,
            length: u64::MAX,
            prot: u64::MAX,
            flags: u64::MAX,
            fd: -1,
            pgoffset: u64::MAX,
            offset: 0,
        },
        ret: -4095,
        file: None,
        args_unreadable: true,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

#[test]
fn every_field_survives_the_wire_and_back() {
    let mmap = MmapEvent {
        syscall: Syscall::Mmap,
        ret: i64::MIN,
        ..file_backed()
    };
    let killed_flip = MmapEvent {
        syscall: Syscall::Mprotect,
        file: None,
        target_mapping: Some(mapsentry_policy::TargetMapping {
            prev_prot: 3,
            file_backed: false,
        }),
        enforced: Some(mapsentry_policy::Enforcement {
            action: mapsentry_policy::EnforceAction::Kill,
            rule_id: 7,
        }),
        ..file_backed()
    };
    let denied = MmapEvent {
        enforced: Some(mapsentry_policy::Enforcement {
            action: mapsentry_policy::EnforceAction::Deny,
            rule_id: u32::MAX,
        }),
        ..extremes()
    };
    for event in [file_backed(), extremes(), mmap, killed_flip, denied] {
        let bytes = v1::Event::from(&event).encode_to_vec();
        let decoded = v1::Event::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(MmapEvent::try_from(decoded).expect("converts"), event);
    }
}

#[test]
fn wire_event_without_syscall_is_rejected_by_name() {
    let mut wire = v1::Event::from(file_backed());
    wire.syscall = 0;
    let error = MmapEvent::try_from(&wire).unwrap_err();
    assert_eq!(error, ConvertError::Syscall { value: 0 });
    assert!(error.to_string().contains("`syscall`"), "{error}");
    wire.syscall = 99;
    assert_eq!(validate(&wire), Err(ConvertError::Syscall { value: 99 }));
}

#[test]
fn wire_event_with_an_unknown_enforcement_action_is_rejected() {
    let mut wire = v1::Event::from(file_backed());
    wire.enforced = Some(v1::Enforcement {
        action: 0,
        rule_id: 1,
    });
    assert_eq!(
        validate(&wire),
        Err(ConvertError::EnforceAction { value: 0 })
    );
    wire.enforced = Some(v1::Enforcement {
        action: 42,
        rule_id: 1,
    });
    assert_eq!(
        MmapEvent::try_from(&wire).unwrap_err(),
        ConvertError::EnforceAction { value: 42 }
    );
}

#[test]
fn wire_event_without_args_is_rejected() {
    let mut wire = v1::Event::from(file_backed());
    wire.args = None;
    assert_eq!(validate(&wire), Err(ConvertError::MissingArgs));
}

#[test]
fn descriptor_set_names_the_services_for_reflection() {
    let text = String::from_utf8_lossy(v1::FILE_DESCRIPTOR_SET);
    for name in [
        "mapsentry/v1/agent.proto",
        "AgentService",
        "Observer",
        "Subscribe",
    ] {
        assert!(
            text.contains(name),
            "{name} missing from the descriptor set"
        );
    }
}

#[test]
fn attribution_round_trips_in_fields_100_and_up() {
    let pod = Attribution::Pod(K8sMeta {
        namespace: Some("shop".into()),
        pod: Some("web-0".into()),
        container: Some("app".into()),
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("ab".repeat(32)),
        image: Some("nginx:1.27".into()),
        labels: [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "fe".to_owned()),
        ]
        .into(),
        namespace_labels: [("team".to_owned(), "a".to_owned())].into(),
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        resolved: true,
    });
    let unresolved = Attribution::Pod(K8sMeta {
        pod_uid: Some("u".into()),
        ..K8sMeta::default()
    });
    let host = Attribution::Host {
        cgroup: "/system.slice/sshd.service".into(),
        unit: Some("sshd.service".into()),
    };
    let unknown = Attribution::Unknown { cgroup_id: 7 };
    for attribution in [pod, unresolved, host, unknown] {
        let event = MmapEvent {
            attribution: Some(Arc::new(attribution)),
            ..file_backed()
        };
        let wire = v1::Event::from(&event);
        let bytes = wire.encode_to_vec();
        let back = MmapEvent::try_from(v1::Event::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, event);
        validate(&wire).unwrap();
    }
    // Absent: not enriched.
    let back = MmapEvent::try_from(v1::Event::from(&file_backed())).unwrap();
    assert_eq!(back.attribution, None);
}

/// A definition of the agent stream (V2) carries exactly the attribution an event carries inline,
/// and an event with a reference left in it converts to nothing.
#[test]
fn a_definition_is_the_inline_attribution_and_a_reference_does_not_convert() {
    let host = Attribution::Host {
        cgroup: "/system.slice/sshd.service".into(),
        unit: Some("sshd.service".into()),
    };
    let pod = Attribution::Pod(K8sMeta {
        pod: Some("web-0".into()),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ..K8sMeta::default()
    });
    for attribution in [pod, host, Attribution::Unknown { cgroup_id: 7 }] {
        let definition = definition(9, &attribution);
        assert_eq!(definition.id, 9);
        assert_eq!(
            defined_attribution(definition.attribution.as_ref().unwrap()),
            attribution_to_wire(&attribution)
        );
    }
    let event = MmapEvent {
        attribution: Some(Arc::new(Attribution::Unknown { cgroup_id: 1 })),
        ..file_backed()
    };
    assert_eq!(
        v1::Event {
            attribution: None,
            ..v1::Event::from(&event)
        },
        capture_fields(&event)
    );
    let referring = v1::Event {
        attribution: Some(v1::event::Attribution::AttributionRef(4)),
        ..capture_fields(&event)
    };
    assert_eq!(
        validate(&referring),
        Err(ConvertError::AttributionRef { id: 4 })
    );
    assert_eq!(
        MmapEvent::try_from(&referring),
        Err(ConvertError::AttributionRef { id: 4 })
    );
}

#[test]
fn attribution_uses_the_reserved_field_numbers() {
    use prost::encoding::{WireType, decode_key};
    let event = MmapEvent {
        attribution: Some(Arc::new(Attribution::Host {
            cgroup: "/init.scope".into(),
            unit: Some("init.scope".into()),
        })),
        ..extremes()
    };
    let bytes = v1::Event::from(&event).encode_to_vec();
    let plain = v1::Event::from(&extremes()).encode_to_vec();
    let mut rest = &bytes[plain.len()..];
    let (tag, wire_type) = decode_key(&mut rest).unwrap();
    assert_eq!((tag, wire_type), (101, WireType::LengthDelimited));
}
