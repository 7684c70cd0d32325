//! The pod cache and the enricher against a real kube-apiserver and etcd on loopback (the
//! versions e2e/kube/build-kube.sh pins)
//! (built once per machine by e2e/kube/build-kube.sh, started per test by
//! e2e/kube/start-apiserver.sh). Pods are created through the API with `nodeName` set and their
//! container statuses written through the status subresource, as a kubelet would.

use std::{
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mapsentry_policy::{Attribution, Workload};

use super::{PodCache, PodCacheConfig};
use crate::metadata::{
    cgroup_index::CgroupIndex,
    enrich::{EnrichConfig, Enricher},
    testing::{TestTree, Waiter},
};

const NODE: &str = "node-a";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e/kube")
        .join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One etcd + kube-apiserver, stopped and removed when dropped.
struct ApiServer {
    state: PathBuf,
}

impl ApiServer {
    fn start(name: &str, extra_args: &str) -> Self {
        // The build is cached per machine; the first test to get here does it (minutes, once).
        static BUILD: Mutex<()> = Mutex::new(());
        {
            let _once = BUILD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run(&mut Command::new(script("build-kube.sh")));
        }
        let state =
            std::env::temp_dir().join(format!("mapsentry-kube-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let server = Self { state };
        server.start_apiserver(extra_args, false);
        server
    }

    fn start_apiserver(&self, extra_args: &str, only: bool) {
        let mut cmd = Command::new(script("start-apiserver.sh"));
        cmd.arg(&self.state).env("APISERVER_EXTRA_ARGS", extra_args);
        if only {
            cmd.arg("--apiserver-only");
        }
        run(&mut cmd);
    }

    fn stop_apiserver(&self) {
        run(Command::new(script("stop-apiserver.sh"))
            .arg(&self.state)
            .arg("--apiserver-only"));
    }

    fn compact(&self) -> u64 {
        let rev = run(Command::new(script("etcd-compact.sh")).arg(&self.state));
        rev.parse()
            .unwrap_or_else(|e| panic!("etcd-compact.sh printed {rev:?}: {e}"))
    }

    async fn client(&self, kubeconfig: &str) -> Client {
        let path = self.state.join(kubeconfig);
        super::client_from_kubeconfig(&path)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(script("stop-apiserver.sh"))
            .arg(&self.state)
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn cid(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn pod_json(
    name: &str,
    node: &str,
    owner: Option<(&str, &str, &str)>,
    labels: &serde_json::Value,
) -> Pod {
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "app", "image": format!("registry.example/{name}:1")}]
        }
    });
    if let Some((api_version, kind, owner_name)) = owner {
        pod["metadata"]["ownerReferences"] = serde_json::json!([{
            "apiVersion": api_version, "kind": kind, "name": owner_name,
            "uid": "0b6e7d1c-5a4f-4e3d-9c2b-1a0f9e8d7c6b", "controller": true
        }]);
    }
    serde_json::from_value(pod).unwrap_or_else(|e| panic!("pod json: {e}"))
}

/// Create `pod` and report its containers running as a kubelet would (`app` = `app_id`, `init` =
/// `init_id`); returns the pod UID.
async fn create_running(api: &Api<Pod>, pod: &Pod, app_id: &str, init_id: &str) -> String {
    let created = api
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating a pod: {e}"));
    let name = created.metadata.name.clone().expect("name");
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "initContainerStatuses": [{"name": "init", "image": "docker.io/library/busybox:1.36", "imageID": "",
            "ready": false, "restartCount": 0, "containerID": format!("containerd://{init_id}")}],
        "containerStatuses": [{"name": "app", "image": "registry.example/x:1", "imageID": "", "ready": true,
            "restartCount": 0, "containerID": format!("containerd://{app_id}")}]
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("writing the status of {name}: {e}"));
    created.metadata.uid.expect("uid")
}

async fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn workload(kind: &str, name: &str) -> Workload {
    Workload {
        kind: kind.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn pods_that_exist_before_the_agent_are_attributed_with_owners_labels_and_images() {
    let server = ApiServer::start("sync", "");
    let admin = server.client("kubeconfig").await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shop", "labels": {"team": "payments"}}
    }))
    .expect("namespace json");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating namespace shop");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "shop");
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nightly-29000000", "ownerReferences": [{"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "name": "nightly", "uid": "2d4f6a8c-0e1f-4a3b-8c5d-7e9f0a1b2c3d", "controller": true}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .expect("job json");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("creating a Job");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let web = create_running(
        &pods,
        &pod_json(
            "web-5d8f7c9b6-x2x4q",
            NODE,
            Some(("apps/v1", "ReplicaSet", "web-5d8f7c9b6")),
            &serde_json::json!({"app": "web", "pod-template-hash": "5d8f7c9b6"}),
        ),
        &cid(1),
        &cid(2),
    )
    .await;
    let cron = create_running(
        &pods,
        &pod_json(
            "nightly-29000000-abcde",
            NODE,
            Some(("batch/v1", "Job", "nightly-29000000")),
            &serde_json::json!({}),
        ),
        &cid(3),
        &cid(4),
    )
    .await;
    let ds = create_running(
        &pods,
        &pod_json(
            "logs-7xk2p",
            NODE,
            Some(("apps/v1", "DaemonSet", "logs")),
            &serde_json::json!({}),
        ),
        &cid(5),
        &cid(6),
    )
    .await;
    let elsewhere = create_running(
        &pods,
        &pod_json("far", "node-b", None, &serde_json::json!({})),
        &cid(7),
        &cid(8),
    )
    .await;

    // The agent starts now, with its own RBAC-limited identity.
    let cache = PodCache::new(PodCacheConfig::new(NODE).expect("node"));
    let _reflector = cache.watch(server.client("kubeconfig-agent").await);
    let hit = eventually(
        "the web pod with namespace labels",
        Duration::from_secs(20),
        || {
            cache
                .lookup(&web, Some(&cid(1)))
                .filter(|h| h.namespace_labels.is_some())
        },
    )
    .await;
    let meta = hit.to_meta(Some(&cid(1)));
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(meta.pod.as_deref(), Some("web-5d8f7c9b6-x2x4q"));
    assert_eq!(meta.container.as_deref(), Some("app"));
    assert_eq!(
        meta.image.as_deref(),
        Some("registry.example/web-5d8f7c9b6-x2x4q:1")
    );
    assert_eq!(meta.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        meta.namespace_labels.get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(meta.workload, Some(workload("Deployment", "web")));
    assert!(meta.resolved);
    let init = cache
        .lookup(&web, Some(&cid(2)))
        .expect("web pod")
        .to_meta(Some(&cid(2)));
    assert_eq!(
        (init.container.as_deref(), init.image.as_deref()),
        (Some("init"), Some("busybox:1.36"))
    );

    let cron = cache
        .lookup(&cron, Some(&cid(3)))
        .expect("cron pod")
        .to_meta(None);
    assert_eq!(cron.workload, Some(workload("CronJob", "nightly")));
    let ds = cache
        .lookup(&ds, Some(&cid(5)))
        .expect("daemonset pod")
        .to_meta(None);
    assert_eq!(ds.workload, Some(workload("DaemonSet", "logs")));
    assert!(
        cache.lookup(&elsewhere, None).is_none(),
        "a pod of another node is not watched"
    );
    assert_eq!(cache.stats().pods, 3);

    // Deleted (no kubelet: immediately, with grace 0): kept as a tombstone.
    pods.delete(
        "web-5d8f7c9b6-x2x4q",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("deleting the web pod");
    let gone = eventually("the tombstone", Duration::from_secs(10), || {
        cache.lookup(&web, Some(&cid(1))).filter(|h| h.deleted)
    })
    .await;
    assert_eq!(gone.to_meta(None).container.as_deref(), Some("app"));
    assert_eq!(cache.stats().pods, 2);
}

#[tokio::test]
async fn the_cache_serves_through_an_outage_and_relists_after_410_gone() {
    // Without the watch cache, watches read etcd directly: after a compaction, a watch from an
    // older resourceVersion is answered 410 Gone.
    let server = ApiServer::start("outage", "--watch-cache=false");
    let admin = server.client("kubeconfig").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let before = create_running(
        &pods,
        &pod_json("before", NODE, None, &serde_json::json!({})),
        &cid(1),
        &cid(2),
    )
    .await;
    let cache = PodCache::new(PodCacheConfig::new(NODE).expect("node"));
    let _reflector = cache.watch(server.client("kubeconfig-agent").await);
    eventually("the first pod", Duration::from_secs(20), || {
        cache.lookup(&before, Some(&cid(1)))
    })
    .await;
    assert_eq!(cache.stats().lists, 1);

    server.stop_apiserver();
    // The API server is gone: the cache keeps answering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cache
            .lookup(&before, Some(&cid(1)))
            .is_some_and(|h| !h.deleted)
    );
    server.compact();
    server.start_apiserver("--watch-cache=false", true);

    let admin = server.client("kubeconfig").await;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let after = create_running(
        &pods,
        &pod_json("after", NODE, None, &serde_json::json!({})),
        &cid(3),
        &cid(4),
    )
    .await;
    eventually(
        "the pod made after the restart",
        Duration::from_mins(1),
        || cache.lookup(&after, Some(&cid(3))),
    )
    .await;
    let stats = cache.stats();
    assert!(
        stats.gone >= 1,
        "the resumed watch was answered 410 Gone: {stats:?}"
    );
    assert!(stats.lists >= 2, "and relisted: {stats:?}");
    assert!(
        cache
            .lookup(&before, Some(&cid(1)))
            .is_some_and(|h| !h.deleted),
        "still live after the relist"
    );
}

/// The kubelet's cgroup layouts for a pod UID and container id.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Systemd,
    Cgroupfs,
}

impl Layout {
    fn path(self, uid: &str, id: &str) -> String {
        match self {
            Self::Systemd => format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            ),
            Self::Cgroupfs => format!("kubepods/burstable/pod{uid}/{id}"),
        }
    }
}

/// A pod created, mapping memory in its (real, systemd-driver) cgroup and deleted within a
/// second: its events, captured by BPF, are attributed to it.
#[tokio::test]
async fn a_pod_that_lives_under_a_second_is_still_attributed() {
    short_lived_pod(Layout::Systemd).await;
}

/// The same with the cgroupfs driver's layout.
#[tokio::test]
async fn a_short_lived_pod_under_the_cgroupfs_driver_is_attributed() {
    short_lived_pod(Layout::Cgroupfs).await;
}

async fn short_lived_pod(layout: Layout) {
    let name = format!("{layout:?}").to_lowercase();
    let server = ApiServer::start(&name, "");
    let admin = server.client("kubeconfig").await;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let cache = PodCache::new(PodCacheConfig::new(NODE).expect("node"));
    let _reflector = cache.watch(server.client("kubeconfig-agent").await);
    eventually("the first list", Duration::from_secs(20), || {
        cache.synced().then_some(())
    })
    .await;

    let tree = TestTree::new(&format!("short-{name}"));
    let index = CgroupIndex::open(&tree.root, Duration::from_secs(1)).expect("cgroup index");
    let _watcher = index.watch().expect("cgroup watch");
    let mut enricher = Enricher::new(index, Some(cache.clone()), EnrichConfig::default());

    // The process and the capture are ready before the pod exists.
    let waiter = Waiter::spawn();
    let pid = waiter.pid();
    let mut capture = crate::Capture::start(&crate::CaptureConfig {
        pid: Some(pid),
        ..Default::default()
    })
    .expect("starting a capture");

    let born = Instant::now();
    let uid = create_running(
        &pods,
        &pod_json("blink", NODE, None, &serde_json::json!({"app": "blink"})),
        &cid(9),
        &cid(10),
    )
    .await;
    let (rel, _) = tree.mkdir(&layout.path(&uid, &cid(9)));
    tree.move_into(&rel, pid);
    tokio::task::spawn_blocking(move || waiter.release_and_wait())
        .await
        .expect("waiter");
    pods.delete(
        "blink",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("deleting the pod");
    // What makes it short-lived here is the order: the pod is gone before the enricher sees
    // any of its events. Its wall-clock life only says how loaded the machine was.
    println!("the pod lived {:?}", born.elapsed());

    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.is_empty() && Instant::now() < deadline {
        let _ =
            tokio::time::timeout(Duration::from_millis(200), capture.next_batch(&mut events)).await;
    }
    capture.detach();
    capture.drain(&mut events);
    assert!(!events.is_empty(), "no events from pid {pid}");
    let count = events.len();
    let mut out = Vec::new();
    for event in events {
        enricher.push(event, Instant::now(), &mut out);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        enricher.poll(Instant::now(), &mut out);
    }
    assert_eq!(out.len(), count, "every event came out of the hold");
    for (event, attribution) in &out {
        let Attribution::Pod(meta) = attribution.as_ref() else {
            panic!("{layout:?}: pid {} attributed {attribution:?}", event.pid)
        };
        assert!(meta.resolved, "{layout:?}: {meta:?}");
        assert_eq!(meta.pod_uid.as_deref(), Some(uid.as_str()));
        assert_eq!(meta.container_id, Some(cid(9)));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert_eq!(meta.pod.as_deref(), Some("blink"));
        assert_eq!(meta.container.as_deref(), Some("app"));
        assert_eq!(meta.image.as_deref(), Some("registry.example/blink:1"));
        assert_eq!(meta.labels.get("app").map(String::as_str), Some("blink"));
    }
    assert_eq!(enricher.stats().missing, 0);
}

/// The `agent`/`run` wiring ([`crate::metadata::Attributor`] with a kubeconfig) started after
/// the pod exists: a real process in a real kubelet-shaped cgroup maps memory, BPF captures it,
/// and from the first event on, every event carries the pod's namespace, name, container, image,
/// labels and workload, through the wire form the collector receives and the JSON line that
/// `run` and `tail` print.
#[tokio::test]
async fn the_agent_stage_started_after_the_pod_attributes_from_the_first_event() {
    use crate::metadata::{Attributor, Kubernetes};
    use mapsentry_policy::{EventLine, MmapEvent};
    use mapsentry_proto::v1;

    let server = ApiServer::start("stage", "");
    let admin = server.client("kubeconfig").await;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let uid = create_running(
        &pods,
        &pod_json(
            "api-6f7d8-q9w8e",
            NODE,
            Some(("apps/v1", "ReplicaSet", "api-6f7d8")),
            &serde_json::json!({"app": "api", "pod-template-hash": "6f7d8"}),
        ),
        &cid(11),
        &cid(12),
    )
    .await;
    let tree = TestTree::new("stage");
    let (rel, _) = tree.mkdir(&Layout::Cgroupfs.path(&uid, &cid(11)));
    let waiter = Waiter::spawn();
    let pid = waiter.pid();
    tree.move_into(&rel, pid);

    // Now the agent starts.
    let index = CgroupIndex::open(&tree.root, Duration::from_secs(1)).expect("cgroup index");
    let kubernetes = Kubernetes::Kubeconfig {
        path: server.state.join("kubeconfig-agent"),
        node: NODE.into(),
    };
    let mut stage = Attributor::with_index(index, &kubernetes, EnrichConfig::default())
        .await
        .expect("attribution stage");
    let mut capture = crate::Capture::start(&crate::CaptureConfig {
        pid: Some(pid),
        ..Default::default()
    })
    .expect("starting a capture");
    tokio::task::spawn_blocking(move || waiter.release_and_wait())
        .await
        .expect("waiter");

    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while batch.is_empty() && Instant::now() < deadline {
        let _ =
            tokio::time::timeout(Duration::from_millis(200), capture.next_batch(&mut batch)).await;
    }
    capture.detach();
    capture.drain(&mut batch);
    let count = batch.len();
    assert!(count > 0, "no events from pid {pid}");
    let mut out = Vec::new();
    stage.attribute(&mut batch, Instant::now());
    out.append(&mut batch);
    while out.len() < count {
        let due = stage.next_deadline().expect("events held");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            Instant::now() <= due + Duration::from_millis(500),
            "held past the bound"
        );
        stage.poll(Instant::now(), &mut out);
    }
    assert_eq!(stage.missing_counter().get(), 0, "every event resolved");
    for event in &out {
        // Agent -> collector wire, and back as the subscriber decodes it.
        let wire = v1::Event::from(event);
        let back = MmapEvent::try_from(&wire).expect("wire event converts");
        assert_eq!(&back, event);
        let line = serde_json::to_value(EventLine::from(back)).expect("json line");
        assert_eq!(line["namespace"], "default", "{line}");
        assert_eq!(line["pod"], "api-6f7d8-q9w8e");
        assert_eq!(line["container"], "app");
        assert_eq!(line["k8s"]["pod_uid"], uid.as_str());
        assert_eq!(line["k8s"]["container_id"], cid(11).as_str());
        assert_eq!(line["k8s"]["image"], "registry.example/api-6f7d8-q9w8e:1");
        assert_eq!(
            line["k8s"]["labels"],
            serde_json::json!({"app": "api", "pod-template-hash": "6f7d8"})
        );
        assert_eq!(
            line["k8s"]["workload"],
            serde_json::json!({"kind": "Deployment", "name": "api"})
        );
        assert_eq!(line["k8s"]["resolved"], true);
    }
}
