//! Faults of the Kubernetes side, through the real binaries: `mapsentry agent --kubeconfig`
//! against a real kube-apiserver + etcd on loopback (e2e/kube/start-apiserver.sh),
//! processes in real cgroups laid out as the kubelet's systemd driver makes them, real BPF.
//!
//! - The API server down for 30 s: events of an existing pod are attributed from the cache all
//!   along; a pod created during the outage (written to etcd, as another API server replica
//!   would have) is attributed once the API server is back.
//! - A pod published 5 s after its container's first calls: all of them are attributed to it.
//! - 10,000 pods created and deleted while the agent's pod cache follows: the agent's memory
//!   stays within its 64 MiB bound.

mod common;
#[path = "faults/procs.rs"]
mod procs;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Helper,
    apiserver::{ApiServer, container_id, create_namespace, run},
    mmap_call,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mapsentry_e2e::cgroup::TestCgroup;
use procs::{Proc, TempDir, agent, json_lines, start_collector, tail};
use serde_json::{Value, json};

/// Write `pod` straight into `server`'s etcd (the API server need not run), as the API server
/// stores it: what another API server replica accepting the create would leave behind.
fn put_in_etcd(server: &ApiServer, pod: &Value) {
    let ports = std::fs::read_to_string(server.state.join("ports.env")).expect("ports.env");
    let port = ports
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_PORT="))
        .expect("ETCD_PORT");
    let key = format!(
        "/registry/pods/{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap()
    );
    let body = json!({"key": base64(key.as_bytes()), "value": base64(pod.to_string().as_bytes())});
    run(Command::new("curl").args([
        "-sf",
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/v3/kv/put"),
        "--data",
        &body.to_string(),
    ]));
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kubelet's systemd-driver cgroup of a BestEffort pod's container.
fn pod_cgroup(uid: &str, id: &str) -> String {
    format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )
}

/// A pod of `node` whose container `app` runs as `id` (spec and status), as JSON.
fn pod_json(name: &str, node: &str, id: &str) -> Value {
    pod_json_in("default", name, node, id)
}

/// [`pod_json`] in `namespace`.
fn pod_json_in(namespace: &str, name: &str, node: &str, id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": format!("registry.example/{name}:1")}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "registry.example/x:1",
            "imageID": "", "ready": true, "restartCount": 0, "containerID": format!("containerd://{id}")}]},
    })
}

/// Create a running pod through the API; returns its UID.
async fn create_running(api: &Api<Pod>, name: &str, node: &str, id: &str) -> String {
    let namespace = api.namespace().unwrap_or("default").to_owned();
    let spec = pod_json_in(&namespace, name, node, id);
    let pod: Pod = serde_json::from_value(spec.clone()).expect("pod JSON");
    let created = api
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": spec["status"]})),
    )
    .await
    .unwrap_or_else(|e| panic!("the status of {name}: {e}"));
    created.metadata.uid.expect("uid")
}

/// Run one anonymous mapping in `cgroup`; returns the helper's pid and the cgroup's id (the
/// helper's start-up mappings happen before it moves in, in the test's cgroup).
fn map_in(cgroup: &TestCgroup) -> (u32, u64) {
    map_prot_in(cgroup, 3)
}

/// Run one anonymous mapping with `prot` in `cgroup`; as [`map_in`].
fn map_prot_in(cgroup: &TestCgroup, prot: u64) -> (u32, u64) {
    let calls = json!({"calls": [{"length": 4096, "prot": prot, "flags": 0x22, "fd": "anon"}]});
    let helper = Helper::spawn(mmap_call(), &[&calls.to_string()]);
    let pid = helper.pid;
    cgroup
        .add(pid)
        .expect("moving the helper into the pod's cgroup");
    helper.go();
    (pid, cgroup.id().expect("the cgroup's id"))
}

/// The event lines of `pid` in cgroup `id` the tail printed within `wait`.
fn events_of(
    tail: &procs::Proc,
    (pid, id): (u32, u64),
    seen: &mut Vec<Value>,
    wait: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    loop {
        seen.extend(json_lines(&tail.out.until_quiet(
            Duration::from_millis(200),
            Duration::from_millis(500),
        )));
        let mine: Vec<Value> = seen
            .iter()
            .filter(|e| e["pid"] == pid && e["cgroup_id"] == id)
            .cloned()
            .collect();
        if !mine.is_empty() || Instant::now() >= deadline {
            return mine;
        }
    }
}

/// A collector, a `tail --comm mmap_call` subscriber of it, and an agent of `node` watching
/// `server`'s pods with the agent's kubeconfig (state under `dir`): (collector, subscriber,
/// agent).
fn pipeline(server: &ApiServer, node: &str, dir: &TempDir) -> (Proc, Proc, Proc) {
    let (collector, url) = start_collector(&[]);
    let subscriber = tail(&url, &["--comm", "mmap_call"]);
    let kubeconfig = server.agent_kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
    let (shipping, _) = agent(
        &url,
        node,
        &dir.join("state"),
        &["--kubeconfig", kubeconfig],
    );
    (collector, subscriber, shipping)
}

/// Remove the kubepods parents the test cgroups left (best effort: only empty ones go).
fn remove_kubepods_parents() {
    if let Ok(root) = mapsentry_e2e::cgroup::cgroup2_root() {
        for dir in ["kubepods.slice/kubepods-besteffort.slice", "kubepods.slice"] {
            let _ = std::fs::read_dir(root.join(dir)).map(|entries| {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().contains("-pod") {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            });
            let _ = std::fs::remove_dir(root.join(dir));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_down_for_30_s_attribution_goes_on_from_the_cache_and_catches_up() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let tag = std::process::id();
    let node = format!("fault-node-{tag}");
    let server = ApiServer::start("outage");
    let pods: Api<Pod> = Api::namespaced(server.admin().await, "default");
    let (id_a, id_b) = (container_id(0xa1), container_id(0xb2));
    let uid_a = create_running(&pods, "existing", &node, &id_a).await;
    let cgroup_a = TestCgroup::create(&pod_cgroup(&uid_a, &id_a)).expect("a pod cgroup");

    let dir = TempDir::new("apiserver-outage");
    let (_collector, subscriber, shipping) = pipeline(&server, &node, &dir);
    let mut seen = Vec::new();
    // The cache has the pod once the first list is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = map_in(&cgroup_a);
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(5));
        if mine.iter().any(|e| e["pod"] == "existing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod never attributed: {mine:?}"
        );
    }

    server.stop_apiserver();
    let down = Instant::now();
    // A pod whose container starts during the outage: in etcd (another API server replica took
    // the create), its cgroup and process on this node.
    let uid_b = "5f1e9c2a-7b3d-4e8f-9a1c-2d3e4f5a6b7c";
    let mut pod_b = pod_json("during-outage", &node, &id_b);
    pod_b["metadata"]["uid"] = uid_b.into();
    pod_b["metadata"]["creationTimestamp"] = "2026-11-27T00:00:00Z".into();
    put_in_etcd(&server, &pod_b);
    let cgroup_b = TestCgroup::create(&pod_cgroup(uid_b, &id_b)).expect("a pod cgroup");
    let call = map_in(&cgroup_b);
    // Held for the pod (--attribution-hold, 10 s by default), then emitted by its UID.
    let during_b = events_of(&subscriber, call, &mut seen, Duration::from_secs(20));
    assert!(
        !during_b.is_empty()
            && during_b
                .iter()
                .all(|e| e["k8s"]["resolved"] == false && e["k8s"]["pod_uid"] == uid_b),
        "while the API server is down the new pod is known by its UID only: {during_b:?}"
    );
    let (mut from_cache, mut rounds) = (0, 0);
    while down.elapsed() < OUTAGE {
        let call = map_in(&cgroup_a);
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(5));
        rounds += 1;
        from_cache += usize::from(
            !mine.is_empty()
                && mine
                    .iter()
                    .all(|e| e["pod"] == "existing" && e["namespace"] == "default"),
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let outage = down.elapsed();
    server.restart_apiserver();
    let up = Instant::now();
    let caught_up = loop {
        let call = map_in(&cgroup_b);
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(3));
        if mine.iter().any(|e| e["pod"] == "during-outage") {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "the pod made during the outage is not attributed 30 s after the API server came \
             back: {mine:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (code, _, err) = shipping.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    println!(
        "FIGURES apiserver-outage: outage {:.1} s, existing pod attributed from the cache in \
         {from_cache} of {rounds} checks during it, new pod unresolved during it ({} events, \
         resolved:false with its UID), attributed {:.1} s after the API server returned",
        outage.as_secs_f64(),
        during_b.len(),
        caught_up.as_secs_f64()
    );
    assert_eq!(
        from_cache, rounds,
        "every check during the outage attributed"
    );
    assert!(rounds >= 5, "{rounds}");
    drop((cgroup_a, cgroup_b));
    remove_kubepods_parents();
}

/// A pod the API server shows this node's watch 5 s after its container's first calls (a busy
/// API server, a watch catching up): every one of those calls is attributed to it, none goes out
/// unresolved (the agent holds events up to 10 s for their pod; it held them 2 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_published_5_s_after_its_first_calls_is_attributed_for_all_of_them() {
    const LATE: Duration = Duration::from_secs(5);
    let tag = std::process::id();
    let node = format!("late-node-{tag}");
    let server = ApiServer::start("late-pod");
    let pods: Api<Pod> = Api::namespaced(server.admin().await, "default");
    let (id_warm, id_late) = (container_id(0xc3), container_id(0xd4));
    let uid_warm = create_running(&pods, "warm", &node, &id_warm).await;
    let cgroup_warm = TestCgroup::create(&pod_cgroup(&uid_warm, &id_warm)).expect("a pod cgroup");
    let dir = TempDir::new("late-pod");
    let (_collector, subscriber, shipping) = pipeline(&server, &node, &dir);
    let mut seen = Vec::new();
    // The pipeline is up and the agent's pod cache synced once a known pod is attributed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = map_in(&cgroup_warm);
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(5));
        if mine.iter().any(|e| e["pod"] == "warm") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pod never attributed: {mine:?}"
        );
    }

    // The late pod's container runs and maps memory; its pod object is not in the API yet.
    let uid_late = "0c7d2b1e-5a4f-4c3b-8e9d-1a2b3c4d5e6f";
    let cgroup_late = TestCgroup::create(&pod_cgroup(uid_late, &id_late)).expect("a pod cgroup");
    let first = Instant::now();
    let mut calls = Vec::new();
    while first.elapsed() < LATE.saturating_sub(Duration::from_millis(500)) {
        calls.push(map_in(&cgroup_late));
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(LATE.saturating_sub(first.elapsed()));
    // Published now, 5 s after the first call: written to etcd with the UID of its cgroup, as the
    // API server stores a pod (the watch delivers it like any create).
    let mut pod = pod_json("late", &node, &id_late);
    pod["metadata"]["uid"] = uid_late.into();
    pod["metadata"]["creationTimestamp"] = "2026-12-05T00:00:00Z".into();
    put_in_etcd(&server, &pod);
    let published = first.elapsed();
    for &call in &calls {
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(20));
        assert!(
            !mine.is_empty()
                && mine.iter().all(|e| e["pod"] == "late"
                    && e["namespace"] == "default"
                    && e["container"] == "app"),
            "a call made before the pod was published ({published:?} after the first) is attributed to it: {mine:?}"
        );
    }
    let (code, _, err) = shipping.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    println!(
        "FIGURES late-pod: {} calls over {:.1} s before the pod was published, all attributed",
        calls.len(),
        published.as_secs_f64()
    );
    assert!(calls.len() >= 4, "{} calls", calls.len());
    drop((cgroup_warm, cgroup_late));
    remove_kubepods_parents();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_come_and_go_and_the_agent_stays_within_its_memory_bound() {
    const PODS: usize = 10_000;
    const CONCURRENCY: usize = 48;
    const BOUND_KIB: u64 = 64 * 1024;
    let tag = std::process::id();
    let node = format!("churn-node-{tag}");
    let server = ApiServer::start("churn");
    let admin = server.admin().await;
    let dir = TempDir::new("pod-churn");
    let (_collector, subscriber, shipping) = pipeline(&server, &node, &dir);
    let agent_pid = shipping.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = procs::rss_kib(agent_pid);
    let baseline_anon = procs::rss_anon_kib(agent_pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        std::thread::spawn(move || {
            let (mut peak, mut peak_anon) = (0, 0);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(procs::rss_kib(agent_pid));
                peak_anon = peak_anon.max(procs::rss_anon_kib(agent_pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, peak_anon)
        })
    };
    let started = Instant::now();
    // Each worker creates its pods and deletes each one right away (grace 0, as without a
    // kubelet): the watch sees an add and a delete per pod, the cache a tombstone.
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
            let node = node.clone();
            tokio::spawn(async move {
                for i in (w..PODS).step_by(CONCURRENCY) {
                    let name = format!("churn-{i}");
                    let pod: Pod = serde_json::from_value(pod_json(
                        &name,
                        &node,
                        &container_id((i % 251) as u8),
                    ))
                    .expect("pod JSON");
                    pods.create(&PostParams::default(), &pod)
                        .await
                        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
                    pods.delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                        .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a churn worker");
    }
    let churn = started.elapsed();
    // The cache followed all of it: a pod made after the churn is attributed.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let id = container_id(0xcc);
    let uid = create_running(&pods, "after-churn", &node, &id).await;
    let cgroup = TestCgroup::create(&pod_cgroup(&uid, &id)).expect("a pod cgroup");
    let mut seen = Vec::new();
    let after = Instant::now();
    let followed = loop {
        let call = map_in(&cgroup);
        let mine = events_of(&subscriber, call, &mut seen, Duration::from_secs(3));
        if mine.iter().any(|e| e["pod"] == "after-churn") {
            break after.elapsed();
        }
        assert!(
            after.elapsed() < Duration::from_mins(1),
            "the pod made after the churn is not attributed: {mine:?}"
        );
    };
    drop(cgroup);
    remove_kubepods_parents();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (peak, peak_anon) = sampler.join().expect("the sampler");
    let end = procs::rss_kib(agent_pid);
    let end_anon = procs::rss_anon_kib(agent_pid);
    let (code, _, err) = shipping.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    println!(
        "FIGURES pod-churn: {PODS} pods created and deleted in {:.1} s ({:.0}/s); agent memory \
         (RssAnon: heap, stacks) baseline {baseline_anon} KiB, peak {peak_anon} KiB, end \
         {end_anon} KiB, bound {BOUND_KIB} KiB; VmRSS (with the mapped debug binary) baseline \
         {baseline} KiB, peak {peak} KiB, end {end} KiB; a pod made after it attributed within \
         {:.1} s",
        churn.as_secs_f64(),
        f64::from(u32::try_from(PODS).unwrap()) / churn.as_secs_f64(),
        followed.as_secs_f64()
    );
    // The bound is on what the agent allocates (anonymous memory: the pod cache, tombstones,
    // buffers); file-backed pages of the binary (a 270 MB debug build here) are shared and
    // reclaimable, and depend on the build, not on the churn.
    assert!(
        peak_anon < BOUND_KIB,
        "agent anonymous memory peaked at {peak_anon} KiB, over its {BOUND_KIB} KiB bound"
    );
    assert!(
        peak_anon < baseline_anon + 16 * 1024,
        "10,000 pods come and gone grew the agent from {baseline_anon} KiB to {peak_anon} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_one_namespace_never_sees_anothers_events_or_alerts() {
    let tag = std::process::id();
    let node = format!("scope-node-{tag}");
    let server = ApiServer::start("scope");
    let admin = server.admin().await;
    let mut cgroups = Vec::new();
    for (n, team) in ["team-a", "team-b"].into_iter().enumerate() {
        create_namespace(&admin, team, &json!({})).await;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), team);
        let id = container_id(0xd0 + u8::try_from(n).unwrap());
        let uid = create_running(&pods, &format!("{team}-pod"), &node, &id).await;
        cgroups.push(TestCgroup::create(&pod_cgroup(&uid, &id)).expect("a pod cgroup"));
    }

    let dir = TempDir::new("token-scope");
    let secret = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a test secret");
        path.to_string_lossy().into_owned()
    };
    let tokens = secret(
        "tokens.jsonl",
        "{\"token\": \"agent-secret\", \"namespaces\": [\"*\"], \"agent\": true}\n\
         {\"token\": \"team-a-secret\", \"namespaces\": [\"team-a\"]}\n\
         {\"token\": \"admin-secret\", \"namespaces\": [\"*\"]}\n",
    );
    let agent_token = secret("agent.token", "agent-secret\n");
    let team_a_token = secret("team-a.token", "team-a-secret\n");
    let admin_token = secret("admin.token", "admin-secret\n");
    let policy = secret(
        "wx.yaml",
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: scope-wx}\n\
         spec:\n  namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, \
         operator: NotIn, values: [kube-system]}]}\n  mode: Audit\n  rules:\n\
         \x20   - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Alert}\n",
    );
    let (_collector, url) = start_collector(&["--tokens", &tokens, "--policy", &policy]);
    let both = [
        "--kind",
        "events",
        "--kind",
        "alerts",
        "--comm",
        "mmap_call",
    ];
    let team_a = tail(
        &url,
        &[&["--token-file", team_a_token.as_str()][..], &both].concat(),
    );
    let everyone = tail(
        &url,
        &[&["--token-file", admin_token.as_str()][..], &both].concat(),
    );
    let kubeconfig = server.agent_kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
    let (shipping, _) = agent(
        &url,
        &node,
        &dir.join("state"),
        &["--kubeconfig", kubeconfig, "--token-file", &agent_token],
    );

    // W+X calls in both pods until the unscoped subscriber has events and alerts of both.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_mins(1);
    let has = |seen: &[Value], kind: &str, ns: &str| {
        seen.iter()
            .any(|l| l["kind"] == kind && l["namespace"] == ns)
    };
    while !["team-a", "team-b"]
        .iter()
        .all(|ns| has(&seen, "event", ns) && has(&seen, "alert", ns))
    {
        assert!(
            Instant::now() < deadline,
            "the unscoped subscriber never saw both namespaces: {seen:?}"
        );
        for cgroup in &cgroups {
            map_prot_in(cgroup, 7);
        }
        seen.extend(json_lines(
            &everyone
                .out
                .until_quiet(Duration::from_millis(500), Duration::from_secs(3)),
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, err) = shipping.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    let scoped = json_lines(
        &team_a
            .out
            .until_quiet(Duration::from_secs(1), Duration::from_secs(10)),
    );
    let count = |lines: &[Value], kind: &str, ns: &str| {
        lines
            .iter()
            .filter(|l| l["kind"] == kind && l["namespace"] == ns)
            .count()
    };
    let outside: Vec<&Value> = scoped
        .iter()
        .filter(|l| l["namespace"] != "team-a")
        .collect();
    println!(
        "FIGURES token-scope: unscoped subscriber: team-a {} events {} alerts, team-b {} events \
         {} alerts; team-a token: team-a {} events {} alerts, anything else {}",
        count(&seen, "event", "team-a"),
        count(&seen, "alert", "team-a"),
        count(&seen, "event", "team-b"),
        count(&seen, "alert", "team-b"),
        count(&scoped, "event", "team-a"),
        count(&scoped, "alert", "team-a"),
        outside.len()
    );
    assert!(
        outside.is_empty(),
        "the team-a token saw lines outside team-a: {outside:?}"
    );
    assert!(
        count(&scoped, "event", "team-a") > 0 && count(&scoped, "alert", "team-a") > 0,
        "the team-a token sees its own namespace's events and alerts: {scoped:?}"
    );
    let refused = Command::new(common::mapsentry_bin())
        .args([
            "tail",
            "--server",
            &url,
            "--token-file",
            &team_a_token,
            "--namespace",
            "team-b",
        ])
        .output()
        .expect("tail --namespace team-b");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(5),
        "a client refused for what it asked exits 5 (docs/security.md): {stderr}"
    );
    assert!(
        stderr.contains("team-b") && stderr.contains("outside the namespaces"),
        "asking for another namespace is refused with the reason: {stderr}"
    );
    drop(cgroups);
    remove_kubepods_parents();
}
