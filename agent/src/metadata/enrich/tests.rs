//! The enricher over a real cgroup index (directories made under this host's cgroup2 mount) and
//! a pod cache fed pod objects; the whole path from a real BPF capture and a real API server is
//! in `pods::apiserver_tests`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use mapsentry_policy::{Attribution, MmapArgs, MmapEvent, Syscall};

use super::{EnrichConfig, Enricher};
use crate::metadata::{
    cgroup_index::CgroupIndex,
    pods::{PodCache, PodCacheConfig, PodInfo},
    testing::TestTree,
};

const UID: &str = "7b3d0e5f-2c40-4b6d-9e8f-a0b1c2d3e4f5";

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn event(cgroup_id: u64) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        syscall: Syscall::Mmap,
        pid: 10,
        tid: 10,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "app".into(),
        cgroup_id,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 3,
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
    }
}

fn pod_info(container_id: Option<String>) -> PodInfo {
    let mut status = serde_json::json!({});
    if let Some(cid) = container_id {
        status = serde_json::json!({"containerStatuses": [{"name": "app", "image": "shop/web:1.2", "imageID": "",
            "ready": true, "restartCount": 0, "containerID": format!("containerd://{cid}")}]});
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": UID, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "shop/web:1.2"}]},
        "status": status,
    }))
    .expect("pod parses");
    PodInfo::from_pod(&pod).expect("pod info")
}

struct Fixture {
    tree: TestTree,
    pod_cgroup: u64,
    host_cgroup: u64,
    cache: PodCache,
    enricher: Enricher,
}

fn fixture(name: &str, config: EnrichConfig) -> Fixture {
    let tree = TestTree::new(name);
    let (_, pod_cgroup) = tree.mkdir(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
        UID.replace('-', "_"),
        id(7)
    ));
    let (_, host_cgroup) = tree.mkdir("system.slice/sshd.service");
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("index");
    let cache = PodCache::new(PodCacheConfig::new("node-a").expect("node"));
    let enricher = Enricher::new(index, Some(cache.clone()), config);
    Fixture {
        tree,
        pod_cgroup,
        host_cgroup,
        cache,
        enricher,
    }
}

fn short_hold() -> EnrichConfig {
    EnrichConfig {
        hold_for: Duration::from_millis(100),
        container_hold_for: Duration::from_millis(50),
        hold_max: 16,
    }
}

#[test]
fn host_processes_get_their_cgroup_and_unit() {
    let mut f = fixture("enrich-host", short_hold());
    let mut out = Vec::new();
    f.enricher
        .push(event(f.host_cgroup), Instant::now(), &mut out);
    let [(_, attribution)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let Attribution::Host { cgroup, unit } = attribution.as_ref() else {
        panic!("{out:?}")
    };
    assert!(cgroup.ends_with("/system.slice/sshd.service"), "{cgroup}");
    assert_eq!(unit.as_deref(), Some("sshd.service"));
}

#[test]
fn a_known_pod_is_attributed_at_once() {
    let mut f = fixture("enrich-known", short_hold());
    f.cache.apply(pod_info(Some(id(7))));
    let mut out = Vec::new();
    f.enricher
        .push(event(f.pod_cgroup), Instant::now(), &mut out);
    let [(_, attribution)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let Attribution::Pod(meta) = attribution.as_ref() else {
        panic!("{out:?}")
    };
    assert!(meta.resolved);
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(meta.pod.as_deref(), Some("web"));
    assert_eq!(meta.container.as_deref(), Some("app"));
    assert_eq!(meta.image.as_deref(), Some("shop/web:1.2"));
    assert_eq!(meta.container_id, Some(id(7)));
    assert_eq!(f.enricher.stats().held_total, 0);
}

#[test]
fn an_event_is_held_until_its_pod_and_container_arrive() {
    let mut f = fixture("enrich-late", short_hold());
    let start = Instant::now();
    let mut out = Vec::new();
    f.enricher.push(event(f.pod_cgroup), start, &mut out);
    assert!(out.is_empty());
    // The pod arrives without the container's id: still held.
    f.cache.apply(pod_info(None));
    f.enricher.poll(start, &mut out);
    assert!(out.is_empty());
    f.cache.apply(pod_info(Some(id(7))));
    f.enricher.poll(start, &mut out);
    let [(_, attribution)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let Attribution::Pod(meta) = attribution.as_ref() else {
        panic!("{out:?}")
    };
    assert!(meta.resolved);
    assert_eq!(meta.container.as_deref(), Some("app"));
    let stats = f.enricher.stats();
    assert_eq!((stats.held, stats.held_total, stats.missing), (0, 1, 0));
}

/// A pod whose container never shows up in its status (an init or ephemeral container the
/// kubelet has not reported yet): after the container hold its events go out with the pod.
#[test]
fn once_the_pod_is_known_an_event_waits_only_the_container_hold() {
    let mut f = fixture("enrich-pod-only", short_hold());
    f.cache.apply(pod_info(None));
    let start = Instant::now();
    let mut out = Vec::new();
    f.enricher.push(event(f.pod_cgroup), start, &mut out);
    assert!(out.is_empty(), "held for its container first");
    f.enricher.poll(start + Duration::from_millis(49), &mut out);
    assert!(out.is_empty());
    f.enricher.poll(start + Duration::from_millis(50), &mut out);
    let [(_, attribution)] = out.as_slice() else {
        panic!("emitted with its pod at the container hold, before the pod hold: {out:?}")
    };
    let Attribution::Pod(meta) = attribution.as_ref() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (
            meta.namespace.as_deref(),
            meta.pod.as_deref(),
            meta.container.as_deref()
        ),
        (Some("shop"), Some("web"), None)
    );
    assert_eq!(
        meta.container_id,
        Some(id(7)),
        "the id from the cgroup stays"
    );
    let stats = f.enricher.stats();
    assert_eq!(
        (stats.held, stats.container_unknown, stats.missing),
        (0, 1, 0)
    );
}

/// A pod the API server shows this node late (5 s after its first calls, inside the 10 s
/// default hold): every held call gets it.
#[test]
fn a_pod_known_5_s_late_is_attributed_to_every_held_call() {
    let mut f = fixture("enrich-5s", EnrichConfig::default());
    let start = Instant::now();
    let mut out = Vec::new();
    for ms in [0, 1000, 2000, 4900] {
        f.enricher.push(
            event(f.pod_cgroup),
            start + Duration::from_millis(ms),
            &mut out,
        );
        f.enricher.poll(start + Duration::from_millis(ms), &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    f.cache.apply(pod_info(Some(id(7))));
    f.enricher.poll(start + Duration::from_secs(5), &mut out);
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(out.iter().all(|(_, a)| matches!(a.as_ref(),
        Attribution::Pod(meta) if meta.pod.as_deref() == Some("web") && meta.container.as_deref() == Some("app"))), "{out:?}");
    assert_eq!(f.enricher.stats().missing, 0);
}

#[test]
fn an_event_whose_pod_never_arrives_is_emitted_unresolved_and_counted() {
    let mut f = fixture("enrich-never", short_hold());
    let start = Instant::now();
    let mut out = Vec::new();
    f.enricher.push(event(f.pod_cgroup), start, &mut out);
    f.enricher.push(event(u64::MAX), start, &mut out);
    assert_eq!(
        f.enricher.next_deadline(),
        Some(start + Duration::from_millis(100))
    );
    f.enricher.poll(start + Duration::from_millis(99), &mut out);
    assert!(out.is_empty());
    f.enricher
        .poll(start + Duration::from_millis(100), &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    let Attribution::Pod(meta) = out[0].1.as_ref() else {
        panic!("{out:?}")
    };
    assert!(!meta.resolved);
    assert_eq!(meta.pod_uid.as_deref(), Some(UID));
    assert_eq!(meta.container_id, Some(id(7)));
    assert_eq!(meta.pod, None);
    assert_eq!(
        *out[1].1,
        Attribution::Unknown {
            cgroup_id: u64::MAX
        }
    );
    assert_eq!(f.enricher.stats().missing, 2);
}

#[test]
fn the_hold_is_bounded_in_count() {
    let mut f = fixture(
        "enrich-bound",
        EnrichConfig {
            hold_for: Duration::from_hours(1),
            container_hold_for: Duration::from_hours(1),
            hold_max: 2,
        },
    );
    let mut out = Vec::new();
    let now = Instant::now();
    for _ in 0..3 {
        f.enricher.push(event(f.pod_cgroup), now, &mut out);
    }
    assert_eq!(out.len(), 1, "the oldest is emitted when a third arrives");
    assert!(!out[0].1.resolved());
    let stats = f.enricher.stats();
    assert_eq!((stats.held, stats.evicted, stats.missing), (2, 1, 1));
    f.enricher.flush(&mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(f.enricher.stats().held, 0);
}

#[test]
fn remembered_attributions_follow_pod_changes() {
    let mut f = fixture("enrich-memo", short_hold());
    f.cache.apply(pod_info(Some(id(7))));
    let first = f.enricher.attribution(f.pod_cgroup).expect("known pod");
    let again = f.enricher.attribution(f.pod_cgroup).expect("known pod");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "the second lookup is the remembered one"
    );
    // The same pod again (a status heartbeat): still remembered.
    f.cache.apply(pod_info(Some(id(7))));
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &f.enricher.attribution(f.pod_cgroup).expect("known")
    ));
    // The pod's labels change: the next lookup sees it.
    let mut relabeled = pod_info(Some(id(7)));
    relabeled.labels.insert("tier".into(), "front".into());
    f.cache.apply(relabeled);
    let fresh = f.enricher.attribution(f.pod_cgroup).expect("known pod");
    let Attribution::Pod(meta) = fresh.as_ref() else {
        panic!("{fresh:?}")
    };
    assert_eq!(meta.labels.get("tier").map(String::as_str), Some("front"));
}

#[test]
fn without_kubernetes_pod_cgroups_are_reported_by_uid_at_once() {
    let f = fixture("enrich-nokube", short_hold());
    let index = CgroupIndex::open(&f.tree.root, Duration::from_hours(1)).expect("index");
    let mut enricher = Enricher::new(index, None, short_hold());
    let mut out = Vec::new();
    enricher.push(event(f.pod_cgroup), Instant::now(), &mut out);
    let [(_, attribution)] = out.as_slice() else {
        panic!("not held: {out:?}")
    };
    let Attribution::Pod(meta) = attribution.as_ref() else {
        panic!("{out:?}")
    };
    assert!(!meta.resolved);
    assert_eq!(
        (meta.pod_uid.as_deref(), meta.container_id.clone()),
        (Some(UID), Some(id(7)))
    );
    assert_eq!(enricher.stats().missing, 1);
}
