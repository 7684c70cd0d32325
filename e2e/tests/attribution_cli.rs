//! Pod attribution end to end through the binaries, as a cluster runs them: a real
//! kube-apiserver holding the pods (written as a kubelet would), `mapsentry collector` on
//! loopback, `mapsentry agent` watching this node's pods with the agent's least-rights
//! kubeconfig, and `mapsentry tail --output json` as the subscriber. Real processes are moved
//! into cgroups shaped like the kubelet's (systemd and cgroupfs drivers); their mmap calls,
//! captured by BPF, reach `tail` carrying namespace, pod, container, image, labels and workload.
//! A process in a pod cgroup whose pod never appears is emitted unresolved after the hold bound
//! and counted in the agent's `mapsentry_enrichment_missing_total` (its `/metrics`); the agent's
//! and the collector's `/healthz` and `/readyz` answer as the pipeline runs.

mod common;

use std::time::Duration;

use common::{
    Helper,
    apiserver::{
        ApiServer, CgroupTree, Layout, NODE, Running, container_id, create_namespace,
        create_running_pod, eventually, http_get, metric,
    },
    mmap_call,
};
use serde_json::{Value, json};

/// The helper's one call: an anonymous private RW mapping of a length no loader uses.
const LENGTH: u64 = 7 * 4096;

fn spec() -> String {
    json!({"calls": [{"length": LENGTH, "prot": 3, "flags": 0x22, "fd": "anon"}]}).to_string()
}

/// Run the helper inside `cgroup`; returns its pid once it has exited.
fn call_in(cgroup: &std::path::Path) -> u32 {
    let helper = Helper::spawn(mmap_call(), &[&spec()]);
    let pid = helper.pid;
    CgroupTree::move_into(cgroup, pid);
    helper.go();
    pid
}

/// The `tail` event line of the helper's call made by `pid`.
fn line_of(tail: &Running, pid: u32) -> Value {
    let lines = tail.json_until(
        &format!("the event of pid {pid} on tail"),
        Duration::from_secs(30),
        |l| {
            l["pid"] == pid
                && l["syscall"] == "mmap"
                && l["args"]["length"] == LENGTH
                && l["args"]["prot"] == 3
        },
    );
    lines.into_iter().last().expect("a line")
}

#[test]
fn pod_processes_are_attributed_through_agent_collector_and_tail() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = ApiServer::start("attribution-cli");
    let tag = std::process::id();

    // Pods that exist before the agent starts, as a kubelet reports them.
    let (web_uid, db_uid) = runtime.block_on(async {
        let admin = server.admin().await;
        create_namespace(&admin, "shop", &json!({"team": "payments"})).await;
        let web = create_running_pod(
            &admin,
            "shop",
            "web-5d8f7c9b6-x2x4q",
            &json!({"app": "web", "pod-template-hash": "5d8f7c9b6"}),
            Some("web-5d8f7c9b6"),
            "registry.example/web:1.4",
            &container_id(1),
        )
        .await;
        let db = create_running_pod(
            &admin,
            "shop",
            "db-0",
            &json!({"app": "db"}),
            None,
            "registry.example/db:16",
            &container_id(2),
        )
        .await;
        (web, db)
    });
    let tree = CgroupTree::new("attribution");
    let web_cgroup = tree.mkdir(&Layout::Systemd.path(&web_uid, &container_id(1)));

    let mut collector = Running::start(&[
        "collector",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let grpc = collector.printed_addr("collector serving on ");
    let collector_http = collector.printed_addr("metrics on ");
    assert_eq!(
        http_get(collector_http, "/readyz"),
        (200, "ready\n".to_owned()),
        "the collector is ready once its policies are loaded"
    );
    assert_eq!(http_get(collector_http, "/healthz").0, 200);

    let state_dir = std::env::temp_dir().join(format!("mapsentry-e2e-attribution-{tag}"));
    let kubeconfig = server.agent_kubeconfig();
    let mut agent = Running::start(&[
        "agent",
        "--collector",
        &format!("http://{grpc}"),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        NODE,
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        state_dir.to_str().unwrap(),
    ]);
    let agent_http = agent.printed_addr("agent metrics on ");
    eventually(
        "the agent ready (attached, draining, pods synced)",
        Duration::from_secs(30),
        || (http_get(agent_http, "/readyz") == (200, "ready\n".to_owned())).then_some(()),
    );
    assert_eq!(http_get(agent_http, "/healthz"), (200, "ok\n".to_owned()));

    let tail = Running::start(&[
        "tail",
        "--server",
        &format!("http://{grpc}"),
        "--output",
        "json",
        "--comm",
        "mmap_call",
        "--since",
        "0",
    ]);

    // systemd driver, containerd: a Deployment's pod.
    let pid = call_in(&web_cgroup);
    let line = line_of(&tail, pid);
    assert_eq!(line["kind"], "event", "{line}");
    assert_eq!(line["namespace"], "shop", "{line}");
    assert_eq!(line["pod"], "web-5d8f7c9b6-x2x4q", "{line}");
    assert_eq!(line["container"], "app", "{line}");
    let k8s = &line["k8s"];
    assert_eq!(k8s["pod_uid"], web_uid.as_str(), "{line}");
    assert_eq!(k8s["container_id"], container_id(1), "{line}");
    assert_eq!(k8s["image"], "registry.example/web:1.4", "{line}");
    assert_eq!(
        k8s["labels"],
        json!({"app": "web", "pod-template-hash": "5d8f7c9b6"}),
        "{line}"
    );
    assert_eq!(
        k8s["workload"],
        json!({"kind": "Deployment", "name": "web"}),
        "{line}"
    );
    assert_eq!(k8s["resolved"], true, "{line}");

    // cgroupfs driver, a cgroup made after the agent started: a bare pod.
    let db_cgroup = tree.mkdir(&Layout::Cgroupfs.path(&db_uid, &container_id(2)));
    let pid = call_in(&db_cgroup);
    let line = line_of(&tail, pid);
    assert_eq!(
        (&line["namespace"], &line["pod"], &line["container"]),
        (&json!("shop"), &json!("db-0"), &json!("app")),
        "{line}"
    );
    assert_eq!(line["k8s"]["pod_uid"], db_uid.as_str(), "{line}");
    assert_eq!(line["k8s"]["container_id"], container_id(2), "{line}");
    assert_eq!(line["k8s"]["image"], "registry.example/db:16", "{line}");
    assert_eq!(line["k8s"]["labels"], json!({"app": "db"}), "{line}");
    assert_eq!(line["k8s"]["workload"], Value::Null, "{line}");
    assert_eq!(line["k8s"]["resolved"], true, "{line}");

    // A pod cgroup whose pod never appears: emitted unresolved at the hold bound, and counted.
    let before = metric(
        &http_get(agent_http, "/metrics").1,
        "mapsentry_enrichment_missing_total",
    )
    .expect("mapsentry_enrichment_missing_total on the agent's /metrics");
    let ghost_uid = format!("{tag:08x}-0000-4000-8000-00000000dead");
    let ghost_cgroup = tree.mkdir(&Layout::Systemd.path(&ghost_uid, &container_id(3)));
    let pid = call_in(&ghost_cgroup);
    let line = line_of(&tail, pid);
    assert_eq!(line["namespace"], Value::Null, "{line}");
    assert_eq!(line["pod"], Value::Null, "{line}");
    assert_eq!(line["k8s"]["pod_uid"], ghost_uid.as_str(), "{line}");
    assert_eq!(line["k8s"]["container_id"], container_id(3), "{line}");
    assert_eq!(line["k8s"]["resolved"], false, "{line}");
    let body = eventually(
        "the missing counter to grow",
        Duration::from_secs(10),
        || {
            let (_, body) = http_get(agent_http, "/metrics");
            let now = metric(&body, "mapsentry_enrichment_missing_total")?;
            (now > before).then_some(body)
        },
    );

    // The rest of the agent's metrics, as the running pipeline left them.
    assert!(
        metric(&body, "mapsentry_agent_kernel_seen_total").unwrap() > 0,
        "{body}"
    );
    assert!(
        metric(&body, "mapsentry_agent_events_received_total").unwrap() > 0,
        "{body}"
    );
    assert!(
        metric(&body, "mapsentry_agent_events_acked_total").is_some(),
        "{body}"
    );
    assert_eq!(
        metric(&body, "mapsentry_agent_pod_cache_synced"),
        Some(1),
        "{body}"
    );
    assert_eq!(metric(&body, "mapsentry_agent_pods"), Some(2), "{body}");
    assert_eq!(
        metric(&body, "mapsentry_enforce_deny_fallback"),
        Some(0),
        "{body}"
    );
    assert!(
        body.contains("mapsentry_agent_info{node=\"e2e-node\",attach_mode=\""),
        "{body}"
    );
    assert_eq!(metric(&body, "mapsentry_agent_ready"), Some(1), "{body}");

    tail.stop();
    agent.stop();
    collector.stop();
    let _ = std::fs::remove_dir_all(&state_dir);
}
