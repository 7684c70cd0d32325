use super::*;

fn sample() -> MmapEvent {
    MmapEvent {
        time_ns: 1_764_236_000_123_456_789,
        syscall: Syscall::Mmap2,
        pid: 42,
        tid: 43,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "app".into(),
        cgroup_id: 7,
        args: MmapArgs {
            addr: 0,
            length: 8192,
            prot: 5,
            flags: 1,
            fd: 3,
            pgoffset: 2,
            offset: 8192,
        },
        ret: -9,
        file: Some(FileInfo {
            path: "/data/f".into(),
            inode: 11,
            dev: 0x803,
            memfd: false,
            shm: false,
            deleted: false,
            path_truncated: false,
            fs_magic: 0xef53,
        }),
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

#[test]
fn event_line_has_the_contract_fields_as_numbers() {
    let line = serde_json::to_value(EventLine::from(sample())).unwrap();
    assert_eq!(line["kind"], "event");
    assert_eq!(line["syscall"], "mmap2");
    assert_eq!(line["pid"], 42);
    assert_eq!(line["tid"], 43);
    assert_eq!(line["comm"], "app");
    assert_eq!(line["args"]["fd"], 3);
    assert_eq!(line["args"]["pgoffset"], 2);
    assert_eq!(line["args"]["offset"], 8192);
    assert_eq!(line["args"]["prot"], 5);
    assert_eq!(line["ret"], -9);
    assert_eq!(line["error"], "EBADF");
    assert_eq!(line["prot_names"], "PROT_READ|PROT_EXEC");
    assert_eq!(line["flags_names"], "MAP_SHARED");
    assert_eq!(line["file"]["path"], "/data/f");
    assert_eq!(line["time"], "2025-11-27T09:33:20.123456Z");
    assert!(line.get("args_unreadable").is_none());
}

#[test]
fn event_line_round_trips_and_anonymous_file_is_null() {
    let mut event = sample();
    event.file = None;
    event.ret = 0x7f00_0000_0000;
    let text = serde_json::to_string(&EventLine::from(event.clone())).unwrap();
    assert!(text.contains("\"file\":null"), "{text}");
    let EventLine::Event { event: back, .. } = serde_json::from_str(&text).unwrap();
    assert_eq!(back, event);
}

#[test]
fn failed_means_the_errno_range() {
    let mut event = sample();
    for (ret, failed) in [
        (-1, true),
        (-4095, true),
        (-4096, false),
        (0, false),
        (4096, false),
    ] {
        event.ret = ret;
        assert_eq!(event.failed(), failed, "ret {ret}");
    }
}

#[test]
fn judged_prot_counts_a_write_exec_flip_as_write_exec_and_a_downgrade_as_itself() {
    let mut event = sample();
    event.syscall = Syscall::Mprotect;
    for (prev, new, judged) in [
        (3, 5, 7),
        (5, 3, 7),
        (3, 1, 1),
        (5, 1, 1),
        (1, 5, 5),
        (7, 4, 6),
    ] {
        event.args.prot = new;
        event.target_mapping = Some(TargetMapping {
            prev_prot: prev,
            file_backed: false,
        });
        assert_eq!(event.judged_prot(), judged, "{prev:#x} -> {new:#x}");
    }
    event.target_mapping = None;
    event.args.prot = 5;
    assert_eq!(event.judged_prot(), 5, "mmap calls are judged as passed");
}

fn attributed(attribution: crate::Attribution) -> MmapEvent {
    MmapEvent {
        attribution: Some(std::sync::Arc::new(attribution)),
        ..sample()
    }
}

fn web_pod() -> crate::Attribution {
    crate::Attribution::Pod(crate::K8sMeta {
        namespace: Some("shop".into()),
        pod: Some("web-7d9f-abcde".into()),
        container: Some("app".into()),
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("0123".repeat(16)),
        image: Some("nginx:1.27".into()),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        namespace_labels: [("team".to_owned(), "a".to_owned())].into(),
        workload: Some(crate::Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        resolved: true,
    })
}

#[test]
fn a_pod_line_has_the_attribution_contract() {
    let line = serde_json::to_value(EventLine::from(attributed(web_pod()))).unwrap();
    assert_eq!(line["namespace"], "shop");
    assert_eq!(line["pod"], "web-7d9f-abcde");
    assert_eq!(line["container"], "app");
    assert_eq!(
        line["k8s"],
        serde_json::json!({
            "pod_uid": "6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e",
            "container_id": "0123".repeat(16),
            "image": "nginx:1.27",
            "labels": {"app": "web"},
            "namespace_labels": {"team": "a"},
            "workload": {"kind": "Deployment", "name": "web"},
            "resolved": true,
        })
    );
    assert_eq!(line["host"], serde_json::Value::Null);
}

#[test]
fn host_unknown_and_unenriched_lines_have_null_names() {
    let host = crate::Attribution::Host {
        cgroup: "/system.slice/sshd.service".into(),
        unit: Some("sshd.service".into()),
    };
    let cases = [
        (
            attributed(host),
            serde_json::Value::Null,
            serde_json::json!({"cgroup": "/system.slice/sshd.service", "unit": "sshd.service"}),
        ),
        (
            attributed(crate::Attribution::Unknown { cgroup_id: 7 }),
            serde_json::json!({"pod_uid": null, "container_id": null, "image": null, "labels": {}, "workload": null, "resolved": false}),
            serde_json::Value::Null,
        ),
        (sample(), serde_json::Value::Null, serde_json::Value::Null),
    ];
    for (event, k8s, host) in cases {
        let line = serde_json::to_value(EventLine::from(event)).unwrap();
        for field in ["namespace", "pod", "container"] {
            assert_eq!(line[field], serde_json::Value::Null, "{field} in {line}");
            assert!(line.get(field).is_some(), "{field} present in {line}");
        }
        assert_eq!(line["k8s"], k8s, "{line}");
        assert_eq!(line["host"], host, "{line}");
    }
}

#[test]
fn attributed_lines_read_back() {
    let unresolved = crate::Attribution::Pod(crate::K8sMeta {
        pod_uid: Some("u".into()),
        container_id: Some("c".into()),
        ..crate::K8sMeta::default()
    });
    let host = crate::Attribution::Host {
        cgroup: "/user.slice".into(),
        unit: None,
    };
    for event in [
        attributed(web_pod()),
        attributed(unresolved),
        attributed(host),
        sample(),
    ] {
        let text = serde_json::to_string(&EventLine::from(event.clone())).unwrap();
        let EventLine::Event { event: back, .. } = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event, "{text}");
    }
    let text = serde_json::to_string(&EventLine::from(attributed(crate::Attribution::Unknown {
        cgroup_id: 7,
    })))
    .unwrap();
    let EventLine::Event { event: back, .. } = serde_json::from_str(&text).unwrap();
    assert_eq!(
        back.attribution.as_deref(),
        Some(&crate::Attribution::Unknown { cgroup_id: 0 }),
        "the id is the event's cgroup_id"
    );
}
