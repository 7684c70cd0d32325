//! `PodInfo` reading and the cache's bookkeeping on pod objects; the watch against a real
//! kube-apiserver is in `apiserver_tests`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use mapsentry_policy::Workload;

use super::{
    PodCache, PodCacheConfig, PodInfo, choose_node, client_from_kubeconfig, direct_workload,
};

const UID: &str = "6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e";

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("test pod does not parse: {e}"))
}

fn web_pod() -> Pod {
    pod(serde_json::json!({
        "metadata": {
            "name": "web-5d8f7c9b6-x2x4q", "namespace": "shop", "uid": UID,
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b6",
                                 "uid": "11111111-1111-1111-1111-111111111111", "controller": true}]
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "shop/migrate:3"}],
            "containers": [{"name": "app", "image": "shop/web:1.2"}, {"name": "sidecar", "image": "envoy:1.30"}],
            "ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36"}]
        },
        "status": {
            "initContainerStatuses": [{"name": "migrate", "image": "docker.io/shop/migrate:3", "imageID": "",
                "ready": false, "restartCount": 0, "containerID": format!("containerd://{}", id(1))}],
            "containerStatuses": [{"name": "app", "image": "docker.io/shop/web:1.2", "imageID": "", "ready": true,
                "restartCount": 0, "containerID": format!("containerd://{}", id(2))}],
            "ephemeralContainerStatuses": [{"name": "debugger", "image": "docker.io/library/busybox:1.36",
                "imageID": "", "ready": false, "restartCount": 0, "containerID": format!("cri-o://{}", id(3))}]
        }
    }))
}

#[test]
fn containers_are_joined_on_their_runtime_ids_with_spec_images() {
    let info = PodInfo::from_pod(&web_pod()).expect("pod with uid");
    assert_eq!(info.uid, UID);
    assert_eq!(
        (info.namespace.as_str(), info.name.as_str()),
        ("shop", "web-5d8f7c9b6-x2x4q")
    );
    let by_id = |n| {
        info.container(&id(n))
            .map(|c| (c.name.as_str(), c.image.as_deref()))
    };
    assert_eq!(by_id(1), Some(("migrate", Some("shop/migrate:3"))));
    assert_eq!(by_id(2), Some(("app", Some("shop/web:1.2"))));
    assert_eq!(by_id(3), Some(("debugger", Some("busybox:1.36"))));
    // The sidecar has no status yet: known by name, no id.
    let sidecar = info
        .containers
        .iter()
        .find(|c| c.name == "sidecar")
        .expect("sidecar listed");
    assert_eq!(sidecar.id, None);
    assert_eq!(sidecar.image.as_deref(), Some("envoy:1.30"));
    assert!(info.container(&id(9)).is_none());
}

#[test]
fn owners_resolve_to_workloads() {
    let workload = |kind: &str, name: &str| {
        Some(Workload {
            kind: kind.into(),
            name: name.into(),
        })
    };
    assert_eq!(direct_workload(&web_pod()), workload("Deployment", "web"));

    let owned = |kind: &str, name: &str, labels: serde_json::Value| {
        pod(
            serde_json::json!({"metadata": {"name": "p", "namespace": "n", "uid": UID, "labels": labels,
            "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": name, "uid": UID, "controller": true}]}}),
        )
    };
    // A ReplicaSet whose name does not end in the pod's hash is reported as itself.
    assert_eq!(
        direct_workload(&owned("ReplicaSet", "custom-rs", serde_json::json!({}))),
        workload("ReplicaSet", "custom-rs")
    );
    assert_eq!(
        direct_workload(&owned(
            "ReplicaSet",
            "custom-rs",
            serde_json::json!({"pod-template-hash": "abc"})
        )),
        workload("ReplicaSet", "custom-rs")
    );
    assert_eq!(
        direct_workload(&owned("DaemonSet", "node-agent", serde_json::json!({}))),
        workload("DaemonSet", "node-agent")
    );
    assert_eq!(
        direct_workload(&owned("StatefulSet", "db", serde_json::json!({}))),
        workload("StatefulSet", "db")
    );
    assert_eq!(
        direct_workload(&owned("Job", "nightly-29000000", serde_json::json!({}))),
        workload("Job", "nightly-29000000")
    );
    let bare = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "n", "uid": UID}}));
    assert_eq!(direct_workload(&bare), None);
}

#[test]
fn pods_without_uid_or_namespace_are_ignored() {
    assert!(
        PodInfo::from_pod(&pod(
            serde_json::json!({"metadata": {"name": "p", "namespace": "n"}})
        ))
        .is_none()
    );
    assert!(
        PodInfo::from_pod(&pod(
            serde_json::json!({"metadata": {"name": "p", "uid": UID}})
        ))
        .is_none()
    );
}

#[test]
fn deleted_pods_stay_as_bounded_tombstones() {
    let mut config = PodCacheConfig::new("node-a").expect("node name");
    config.max_tombstones = 2;
    config.tombstone_ttl = Duration::from_millis(200);
    let cache = PodCache::new(config);
    let infos: Vec<PodInfo> = (1..=3u8)
        .map(|n| {
            let mut info = PodInfo::from_pod(&web_pod()).expect("pod");
            info.uid = format!("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4{n}");
            info
        })
        .collect();
    for info in &infos {
        cache.apply(info.clone());
    }
    let hit = cache.lookup(&infos[0].uid, Some(&id(2))).expect("live pod");
    assert!(!hit.deleted);
    assert_eq!(hit.container().map(|c| c.name.as_str()), Some("app"));
    for info in &infos {
        cache.delete(info.clone());
    }
    // Three deleted, two kept: the oldest went.
    assert!(cache.lookup(&infos[0].uid, None).is_none());
    let late = cache
        .lookup(&infos[2].uid, Some(&id(2)))
        .expect("tombstone");
    assert!(late.deleted);
    assert_eq!(late.to_meta(Some(&id(2))).container.as_deref(), Some("app"));
    assert_eq!(cache.stats().tombstones, 2);
    std::thread::sleep(Duration::from_millis(250));
    cache.prune_tombstones();
    assert_eq!(cache.stats().tombstones, 0);
    assert!(cache.lookup(&infos[2].uid, None).is_none());
}

#[test]
fn an_empty_node_name_is_refused() {
    let err = PodCacheConfig::new(" ").expect_err("empty node");
    assert!(err.to_string().contains("NODE_NAME"), "{err}");
}

#[test]
fn the_node_comes_from_the_flag_then_the_environment() {
    assert_eq!(choose_node(Some("a"), Some("b")).expect("flag"), "a");
    assert_eq!(choose_node(None, Some(" b ")).expect("env"), "b");
    assert!(choose_node(None, None).is_err());
    assert!(choose_node(Some(""), None).is_err());
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named_in_the_error() {
    let Err(err) = client_from_kubeconfig(std::path::Path::new("/nonexistent/kubeconfig")).await
    else {
        panic!("a client from a file that does not exist")
    };
    assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

#[test]
fn a_relist_replaces_the_pods_and_buries_the_missing() {
    let cache = PodCache::new(PodCacheConfig::new("node-a").expect("node"));
    let mut a = PodInfo::from_pod(&web_pod()).expect("pod");
    a.uid = "6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d41".into();
    let mut b = a.clone();
    b.uid = "6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d42".into();
    cache.apply(a.clone());
    cache.apply(b.clone());
    let before = cache.generation();
    // A relist (after 410 Gone) that no longer has b: until it completes, lookups see the old set.
    cache.start_list();
    cache.apply(a.clone());
    assert!(cache.lookup(&b.uid, None).is_some_and(|h| !h.deleted));
    cache.finish_list();
    assert!(cache.lookup(&a.uid, None).is_some_and(|h| !h.deleted));
    assert!(
        cache.lookup(&b.uid, None).is_some_and(|h| h.deleted),
        "b deleted while unwatched: a tombstone"
    );
    assert!(cache.synced());
    assert_eq!(cache.stats().lists, 1);
    assert_ne!(cache.generation(), before);
}

#[tokio::test]
async fn changes_wake_on_every_change_and_the_first_list_is_seen_complete() {
    let cache = PodCache::new(PodCacheConfig::new("node-a").expect("node"));
    let mut changes = cache.changes();
    let pod = PodInfo::from_pod(&web_pod()).expect("pod");
    cache.apply(pod.clone());
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("a pod applied wakes the receiver")
        .expect("the cache is alive");
    assert!(!cache.synced());
    changes.borrow_and_update();
    cache.start_list();
    cache.apply(pod.clone());
    cache.finish_list();
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("the completed list wakes the receiver")
        .expect("the cache is alive");
    assert!(cache.synced(), "who wakes on the list sees it complete");
    assert_eq!(*changes.borrow_and_update(), cache.generation());
    // Several changes while the receiver was busy are one wake-up, none lost.
    cache.delete(pod.clone());
    cache.apply(pod);
    changes.changed().await.expect("the cache is alive");
    assert_eq!(*changes.borrow_and_update(), cache.generation());
    assert!(!changes.has_changed().expect("the cache is alive"));
}
