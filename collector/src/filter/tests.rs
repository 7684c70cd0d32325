use mapsentry_proto::v1::{Event, EventRecord, Filter, MmapArgs, Syscall};

use super::*;

fn record(node: &str, comm: &str, syscall: Syscall, prot: u64, flags: u64) -> EventRecord {
    EventRecord {
        cursor: 1,
        node: node.into(),
        event: Some(Event {
            syscall: syscall.into(),
            comm: comm.into(),
            args: Some(MmapArgs {
                prot,
                flags,
                fd: -1,
                ..MmapArgs::default()
            }),
            ..Event::default()
        }),
    }
}

/// Five records that differ in one field each from the first.
fn records() -> Vec<EventRecord> {
    vec![
        record("n1", "app", Syscall::Mmap, 0x3, 0x22), // rw, private|anon
        record("n2", "app", Syscall::Mmap, 0x3, 0x22), // other node
        record("n1", "jit", Syscall::Mmap, 0x3, 0x22), // other comm
        record("n1", "app", Syscall::Mmap2, 0x3, 0x22), // other syscall
        record("n1", "app", Syscall::Mmap, 0x7, 0x01), // rwx, shared
    ]
}

#[test]
fn each_filter_field_narrows_the_stream() {
    let cases: &[(&str, Filter, &[i32], &[usize])] = &[
        (
            "no filter passes all",
            Filter::default(),
            &[],
            &[0, 1, 2, 3, 4],
        ),
        (
            "nodes",
            Filter {
                nodes: vec!["n2".into()],
                ..Filter::default()
            },
            &[],
            &[1],
        ),
        (
            "nodes any of",
            Filter {
                nodes: vec!["n2".into(), "n1".into()],
                ..Filter::default()
            },
            &[],
            &[0, 1, 2, 3, 4],
        ),
        (
            "comms",
            Filter {
                comms: vec!["jit".into()],
                ..Filter::default()
            },
            &[],
            &[2],
        ),
        (
            "syscalls",
            Filter {
                syscalls: vec![Syscall::Mmap2.into()],
                ..Filter::default()
            },
            &[],
            &[3],
        ),
        (
            "prot_any",
            Filter {
                prot_any: 0x4,
                ..Filter::default()
            },
            &[],
            &[4],
        ),
        (
            "prot_any of several",
            Filter {
                prot_any: 0x4 | 0x2,
                ..Filter::default()
            },
            &[],
            &[0, 1, 2, 3, 4],
        ),
        (
            "prot_all",
            Filter {
                prot_all: 0x2 | 0x4,
                ..Filter::default()
            },
            &[],
            &[4],
        ),
        (
            "flags_any",
            Filter {
                flags_any: 0x20,
                ..Filter::default()
            },
            &[],
            &[0, 1, 2, 3],
        ),
        (
            "flags_all",
            Filter {
                flags_all: 0x22,
                ..Filter::default()
            },
            &[],
            &[0, 1, 2, 3],
        ),
        (
            "flags_all not met",
            Filter {
                flags_all: 0x21,
                ..Filter::default()
            },
            &[],
            &[],
        ),
        (
            "fields combine",
            Filter {
                nodes: vec!["n1".into()],
                comms: vec!["app".into()],
                syscalls: vec![Syscall::Mmap.into()],
                ..Filter::default()
            },
            &[],
            &[0, 4],
        ),
        (
            "namespaces: unattributed events never match",
            Filter {
                namespaces: vec!["default".into()],
                ..Filter::default()
            },
            &[],
            &[],
        ),
        (
            "pods: unattributed events never match",
            Filter {
                pods: vec!["web-0".into()],
                ..Filter::default()
            },
            &[],
            &[],
        ),
        (
            "kinds events",
            Filter::default(),
            &[Kind::Events as i32],
            &[0, 1, 2, 3, 4],
        ),
        (
            "kinds alerts only",
            Filter::default(),
            &[Kind::Alerts as i32],
            &[],
        ),
        (
            "kinds both",
            Filter::default(),
            &[Kind::Alerts as i32, Kind::Events as i32],
            &[0, 1, 2, 3, 4],
        ),
    ];
    let records = records();
    for (name, filter, kinds, expected) in cases {
        let compiled =
            RecordFilter::new(Some(filter), kinds).unwrap_or_else(|e| panic!("{name}: {e}"));
        let passed: Vec<usize> = (0..records.len())
            .filter(|&i| compiled.matches(&records[i].node, records[i].event.as_ref().unwrap()))
            .collect();
        assert_eq!(passed, *expected, "case {name:?}");
    }
}

#[test]
fn unknown_syscalls_and_kinds_are_named() {
    let bad_syscall = Filter {
        syscalls: vec![0],
        ..Filter::default()
    };
    assert_eq!(
        RecordFilter::new(Some(&bad_syscall), &[]),
        Err(FilterError::Syscall { value: 0 })
    );
    let bad_syscall = Filter {
        syscalls: vec![17],
        ..Filter::default()
    };
    assert!(
        RecordFilter::new(Some(&bad_syscall), &[])
            .unwrap_err()
            .to_string()
            .starts_with("filter.syscalls: 17")
    );
    assert_eq!(
        RecordFilter::new(None, &[9]),
        Err(FilterError::Kind { value: 9 })
    );
    assert_eq!(
        RecordFilter::new(None, &[0]),
        Err(FilterError::Kind { value: 0 })
    );
}

#[test]
fn a_scoped_filter_refuses_other_namespaces_and_unattributed_events() {
    use crate::auth::Scope;
    let scope = Scope::Namespaces(vec!["a".into()]);
    let asks_b = v1::Filter {
        namespaces: vec!["b".into()],
        ..v1::Filter::default()
    };
    let error = RecordFilter::new(Some(&asks_b), &[])
        .unwrap()
        .within(scope.clone())
        .unwrap_err();
    assert_eq!(
        error,
        FilterError::OutOfScope {
            namespace: "b".into()
        }
    );
    let scoped = RecordFilter::new(None, &[]).unwrap().within(scope).unwrap();
    let unscoped = RecordFilter::new(None, &[]).unwrap();
    let event = v1::Event::default();
    assert!(unscoped.matches("n", &event));
    // Events carry no namespace until the attribution fields land: none is in namespace a.
    assert!(!scoped.matches("n", &event));
}
