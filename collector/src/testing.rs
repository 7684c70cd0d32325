//! Fixtures shared by the collector's unit tests.

use mapsentry_policy::{Action, AlertLine, Attribution, EventLine, K8sMeta, MmapEvent, Mode};

/// An anonymous W+X `mmap` by `comm`, in `namespace/pod` when both are given.
pub fn event(namespace: Option<&str>, pod: Option<&str>, comm: &str) -> MmapEvent {
    MmapEvent {
        comm: comm.into(),
        attribution: namespace.zip(pod).map(|(namespace, pod)| {
            std::sync::Arc::new(Attribution::Pod(K8sMeta {
                namespace: Some(namespace.into()),
                pod: Some(pod.into()),
                pod_uid: Some(format!("uid-{pod}")),
                ..K8sMeta::default()
            }))
        }),
        ..crate::policy::files::tests::wx_event(1_795_772_647_570_592_000)
    }
}

/// An alert of rule `rule` of policy `wx` (action alert, audit) raised by [`event`].
pub fn alert_line(
    namespace: Option<&str>,
    pod: Option<&str>,
    comm: &str,
    rule: &str,
    count: u64,
) -> AlertLine {
    AlertLine {
        policy: "wx".into(),
        rule: rule.into(),
        action: Action::Alert,
        mode: Mode::Audit,
        namespace: namespace.map(Into::into),
        pod: pod.map(Into::into),
        container: None,
        count,
        first_seen: "2026-11-27T09:44:07.570592Z".into(),
        last_seen: "2026-11-27T09:44:07.570592Z".into(),
        event: EventLine::from(event(namespace, pod, comm)),
    }
}

/// Whole events as ingest hands them to the hub, each attribution held apart.
pub fn attributed(
    events: impl IntoIterator<Item = mapsentry_proto::v1::Event>,
) -> Vec<crate::retention::Attributed> {
    events.into_iter().map(Into::into).collect()
}
