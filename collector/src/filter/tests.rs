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
            .filter(|&i| {
                let event = records[i].event.as_ref().unwrap();
                compiled.matches(&records[i].node, event, event.attribution.as_ref())
            })
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

fn alert(namespace: Option<&str>, pod: Option<&str>, comm: &str) -> mapsentry_policy::AlertLine {
    crate::testing::alert_line(namespace, pod, comm, "wx", 1)
}

fn attributed(attribution: Option<mapsentry_proto::v1::event::Attribution>) -> Event {
    Event {
        attribution,
        ..record("n1", "app", Syscall::Mmap, 0x3, 0x22).event.unwrap()
    }
}

fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Event {
    attributed(Some(mapsentry_proto::v1::event::Attribution::Pod(
        Box::new(mapsentry_proto::v1::PodAttribution {
            namespace: Some(namespace.into()),
            pod: Some(name.into()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            resolved: true,
            ..mapsentry_proto::v1::PodAttribution::default()
        }),
    )))
}

/// Attributed events: namespace, pod and label selector filters.
#[test]
fn attribution_filters_select_pods() {
    let events = [
        pod("shop", "web-0", &[("app", "web"), ("tier", "fe")]), // 0
        pod("shop", "db-0", &[("app", "db")]),                   // 1
        pod("kube-system", "web-0", &[("app", "web")]),          // 2
        attributed(Some(mapsentry_proto::v1::event::Attribution::Host(
            mapsentry_proto::v1::HostAttribution {
                cgroup: "/system.slice/sshd.service".into(),
                unit: Some("sshd.service".into()),
            },
        ))), // 3
        attributed(Some(mapsentry_proto::v1::event::Attribution::Pod(
            Box::new(mapsentry_proto::v1::PodAttribution {
                pod_uid: Some("u".into()),
                ..mapsentry_proto::v1::PodAttribution::default()
            }),
        ))), // 4: unresolved pod
        attributed(None),                                        // 5
    ];
    let labels = |terms: &[&str]| Filter {
        labels: terms.iter().map(|t| (*t).to_owned()).collect(),
        ..Filter::default()
    };
    let cases: &[(&str, Filter, &[usize])] = &[
        ("none", Filter::default(), &[0, 1, 2, 3, 4, 5]),
        (
            "namespace",
            Filter {
                namespaces: vec!["shop".into()],
                ..Filter::default()
            },
            &[0, 1],
        ),
        (
            "pod in any namespace",
            Filter {
                pods: vec!["web-0".into()],
                ..Filter::default()
            },
            &[0, 2],
        ),
        (
            "namespace and pod",
            Filter {
                namespaces: vec!["shop".into()],
                pods: vec!["web-0".into()],
                ..Filter::default()
            },
            &[0],
        ),
        ("label equals", labels(&["app=web"]), &[0, 2]),
        ("label double equals", labels(&["app==db"]), &[1]),
        ("labels all hold", labels(&["app=web", "tier=fe"]), &[0]),
        (
            "label not equals (pods only)",
            labels(&["app!=web"]),
            &[1, 4],
        ),
        ("label exists", labels(&["tier"]), &[0]),
        ("label absent", labels(&["!tier"]), &[1, 2, 4]),
        ("label in a set", labels(&["app in (db,cache)"]), &[1]),
        ("label not in a set", labels(&["app notin (web)"]), &[1, 4]),
        (
            "one entry, two requirements",
            labels(&["app=web,!tier"]),
            &[2],
        ),
    ];
    for (name, filter, want) in cases {
        let compiled = RecordFilter::new(Some(filter), &[]).expect(name);
        let got: Vec<usize> = (0..events.len())
            .filter(|&i| compiled.matches("n1", &events[i], events[i].attribution.as_ref()))
            .collect();
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn alerts_only_when_asked_and_narrowed_by_node_namespace_pod_and_comm() {
    let events_only = RecordFilter::new(None, &[]).unwrap();
    assert!(!events_only.wants_alerts());
    assert!(!events_only.matches_alert("n1", &alert(None, None, "app")));

    let alerts_only = RecordFilter::new(None, &[Kind::Alerts as i32]).unwrap();
    assert!(alerts_only.matches_alert("n1", &alert(None, None, "app")));
    let event = record("n1", "app", Syscall::Mmap, 0x7, 0x22);
    assert!(
        !alerts_only.matches("n1", event.event.as_ref().unwrap(), None),
        "an alerts-only subscriber gets no events"
    );

    let narrowed = RecordFilter::new(
        Some(&Filter {
            nodes: vec!["n1".into()],
            namespaces: vec!["web".into()],
            pods: vec!["api".into()],
            comms: vec!["app".into()],
            // Bit filters are for events: they do not narrow alerts.
            prot_all: 0x4,
            ..Filter::default()
        }),
        &[Kind::Alerts as i32, Kind::Events as i32],
    )
    .unwrap();
    assert!(narrowed.matches_alert("n1", &alert(Some("web"), Some("api"), "app")));
    assert!(!narrowed.matches_alert("n2", &alert(Some("web"), Some("api"), "app")));
    assert!(!narrowed.matches_alert("n1", &alert(Some("db"), Some("api"), "app")));
    assert!(!narrowed.matches_alert("n1", &alert(Some("web"), Some("web-1"), "app")));
    assert!(!narrowed.matches_alert("n1", &alert(Some("web"), Some("api"), "jit")));
    assert!(
        !narrowed.matches_alert("n1", &alert(None, None, "app")),
        "a host alert has no namespace to match"
    );
}

#[test]
fn bad_label_terms_are_named() {
    for term in ["", "=web", "app=we b", "a b", "!", "app=web=x"] {
        let filter = Filter {
            labels: vec![term.into()],
            ..Filter::default()
        };
        let error = RecordFilter::new(Some(&filter), &[]).expect_err(term);
        assert_eq!(
            error,
            FilterError::Label {
                term: term.to_owned()
            },
            "{term:?}"
        );
        assert!(error.to_string().contains("filter.labels"), "{error}");
    }
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
    assert!(unscoped.matches("n", &event, event.attribution.as_ref()));
    // Events carry no namespace until the attribution fields land: none is in namespace a.
    assert!(!scoped.matches("n", &event, event.attribution.as_ref()));
}

#[test]
fn a_scoped_filter_passes_only_its_namespaces_alerts() {
    use crate::auth::Scope;
    let scoped = RecordFilter::new(None, &[Kind::Alerts as i32])
        .unwrap()
        .within(Scope::Namespaces(vec!["a".into()]))
        .unwrap();
    assert!(scoped.matches_alert("n1", &alert(Some("a"), Some("p"), "app")));
    assert!(
        !scoped.matches_alert("n1", &alert(Some("b"), Some("p"), "app")),
        "another namespace's alert"
    );
    assert!(
        !scoped.matches_alert("n1", &alert(None, None, "app")),
        "a host process's alert is in no namespace"
    );
}
