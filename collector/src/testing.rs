//! Fixtures shared by the collector's unit tests.

use mapsentry_policy::{
    Action, AlertLine, Attribution, EventLine, K8sMeta, MmapArgs, MmapEvent, Mode, Syscall,
};

/// An anonymous W+X `mmap` by `comm`, in `namespace/pod` when both are given.
pub fn event(namespace: Option<&str>, pod: Option<&str>, comm: &str) -> MmapEvent {
    MmapEvent {
        time_ns: 1_795_772_647_570_592_000,
        syscall: Syscall::Mmap,
        pid: 7,
        tid: 7,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: comm.into(),
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
        attribution: namespace.zip(pod).map(|(namespace, pod)| {
            std::sync::Arc::new(Attribution::Pod(K8sMeta {
                namespace: Some(namespace.into()),
                pod: Some(pod.into()),
                pod_uid: Some(format!("uid-{pod}")),
                ..K8sMeta::default()
            }))
        }),
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
