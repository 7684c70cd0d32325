use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::{
    EventLine,
    event::attribution::Workload,
    event::{Enforcement, FileInfo, MmapArgs, Syscall, TargetMapping},
};

/// What serde writes for the contract form: the reference.
fn serde_line(event: &MmapEvent) -> String {
    serde_json::to_string(&EventLine::from(event.clone())).unwrap()
}

fn written(event: &MmapEvent) -> String {
    let mut out = Vec::new();
    write_event_line(&mut out, event);
    String::from_utf8(out).expect("the line is UTF-8")
}

fn file(path: &str) -> FileInfo {
    FileInfo {
        path: path.into(),
        inode: 11,
        dev: 0x803,
        memfd: true,
        shm: false,
        deleted: true,
        path_truncated: false,
        fs_magic: 0x0102_1994,
    }
}

fn pod(namespace_labels: bool) -> Attribution {
    Attribution::Pod(K8sMeta {
        namespace: Some("shop".into()),
        pod: Some("web-7d9f-abcde".into()),
        container: None,
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("0123".repeat(16)),
        image: Some("nginx:1.27".into()),
        labels: [
            ("app".to_owned(), "web".to_owned()),
            ("tier\"x".to_owned(), "a\\b".to_owned()),
        ]
        .into(),
        namespace_labels: if namespace_labels {
            [("team".to_owned(), "a".to_owned())].into()
        } else {
            BTreeMap::new()
        },
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        resolved: true,
    })
}

fn corpus() -> Vec<MmapEvent> {
    let base = MmapEvent {
        time_ns: 1_764_236_000_123_456_789,
        cgroup_id: 7,
        ret: 0x7f00_0000_0000,
        ..MmapEvent::anonymous("app", 42, 8192, 3, 0x22)
    };
    let attributed = |attribution: Attribution| MmapEvent {
        attribution: Some(Arc::new(attribution)),
        ..base.clone()
    };
    vec![
        base.clone(),
        MmapEvent {
            syscall: Syscall::Mmap2,
            args: MmapArgs {
                addr: u64::MAX,
                length: 1 << 40,
                prot: 5,
                flags: 0x4_0001,
                fd: 3,
                pgoffset: 2,
                offset: 8192,
            },
            ret: -9,
            file: Some(file("/tmp/new\nline \u{e9}\u{1}\u{7f}\t\"q\"")),
            ..base.clone()
        },
        MmapEvent {
            syscall: Syscall::OldMmap,
            args_unreadable: true,
            ret: -14,
            comm: "\u{0}\u{8}\u{c}\r\\".into(),
            ..base.clone()
        },
        MmapEvent {
            syscall: Syscall::Mprotect,
            target_mapping: Some(TargetMapping {
                prev_prot: 3,
                file_backed: true,
            }),
            enforced: Some(Enforcement {
                action: EnforceAction::Kill,
                rule_id: 9,
            }),
            ..base.clone()
        },
        MmapEvent {
            enforced: Some(Enforcement {
                action: EnforceAction::Deny,
                rule_id: u32::MAX,
            }),
            ret: -1,
            ..base.clone()
        },
        attributed(pod(true)),
        attributed(pod(false)),
        attributed(Attribution::Pod(K8sMeta::default())),
        attributed(Attribution::Host {
            cgroup: "/system.slice/sshd.service".into(),
            unit: Some("sshd.service".into()),
        }),
        attributed(Attribution::Host {
            cgroup: "/".into(),
            unit: None,
        }),
        attributed(Attribution::Unknown { cgroup_id: 7 }),
    ]
}

#[test]
fn every_kind_of_event_is_written_as_serde_writes_it() {
    for event in corpus() {
        assert_eq!(written(&event), serde_line(&event));
    }
}

#[test]
fn lines_are_appended() {
    let events = corpus();
    let mut out = b"x".to_vec();
    write_event_line(&mut out, &events[0]);
    write_event_line(&mut out, &events[1]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("x{}{}", serde_line(&events[0]), serde_line(&events[1]))
    );
}

#[test]
fn one_writer_renders_a_stream_as_single_lines_do() {
    // Repeated and changing seconds, prot and flags values (more values than the memo has
    // slots), times at the edges of a second and a failed call.
    let mut writer = LineWriter::default();
    let base = corpus().remove(0);
    let mut out = Vec::new();
    let mut expected = String::new();
    for i in 0u64..200 {
        let mut event = base.clone();
        event.time_ns = 1_764_000_000_000_000_000 + (i / 3) * 999_999_999 + (i % 3) * 1000;
        event.args.prot = i % 11;
        event.args.flags = 0x22 | ((i % 13) << 8) | ((i % 5) << 26);
        if i % 7 == 0 {
            event.ret = -9;
        }
        writer.write(&mut out, &event);
        expected.push_str(&serde_line(&event));
    }
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

proptest! {
    #[test]
    fn any_strings_and_numbers_are_written_as_serde_writes_them(
        comm in any::<String>(),
        path in any::<String>(),
        key in any::<String>(),
        value in any::<String>(),
        numbers in any::<(u64, u32, i64, i32, u64, u64)>(),
        time_ns in 0u64..4_000_000_000_000_000_000,
    ) {
        let (cgroup_id, pid, ret, fd, prot, flags) = numbers;
        let mut labels = BTreeMap::new();
        labels.insert(key, value.clone());
        let event = MmapEvent {
            time_ns,
            pid,
            cgroup_id,
            ret,
            comm,
            args: MmapArgs { addr: prot ^ flags, length: flags, prot, flags, fd, pgoffset: prot, offset: flags },
            file: Some(file(&path)),
            attribution: Some(Arc::new(Attribution::Pod(K8sMeta {
                namespace: Some(value),
                labels,
                ..K8sMeta::default()
            }))),
            ..MmapEvent::anonymous("x", 1, 1, 1, 1)
        };
        prop_assert_eq!(written(&event), serde_line(&event));
    }
}
