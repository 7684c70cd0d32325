//! The agent's readiness means something: `mapsentry agent` started while the kube-apiserver is
//! down is live (`/healthz` 200) but not ready (`/readyz` 503, naming the pod cache), and its
//! `/metrics` show the cache unsynced with watch errors; once the API server is back, the agent
//! turns ready by itself. Real kube-apiserver (stopped and restarted), real BPF capture.

mod common;

use std::time::Duration;

use common::apiserver::{ApiServer, NODE, Running, eventually, http_get, metric};

#[test]
fn an_agent_without_its_api_server_is_live_but_not_ready_until_the_pods_are_listed() {
    let server = ApiServer::start("agent-health");
    server.stop_apiserver();
    let state_dir =
        std::env::temp_dir().join(format!("mapsentry-e2e-health-{}", std::process::id()));
    let kubeconfig = server.agent_kubeconfig();
    let mut agent = Running::start(&[
        "agent",
        // Nothing listens there: readiness does not depend on the collector.
        "--collector",
        "http://127.0.0.1:9",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        NODE,
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        state_dir.to_str().unwrap(),
    ]);
    let endpoint = agent.printed_addr("agent metrics on ");

    let body = eventually(
        "/readyz to name the pod cache",
        Duration::from_secs(30),
        || {
            let (status, body) = http_get(endpoint, "/readyz");
            (status == 503 && body.contains("pod cache")).then_some(body)
        },
    );
    assert_eq!(
        body,
        "not ready: the pod cache has not completed its first list from the API server\n"
    );
    // It stays so while the API server is away, and the agent is live all along.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_get(endpoint, "/readyz").0, 503);
    assert_eq!(http_get(endpoint, "/healthz"), (200, "ok\n".to_owned()));
    let metrics = eventually("watch errors counted", Duration::from_secs(30), || {
        let (_, body) = http_get(endpoint, "/metrics");
        (metric(&body, "mapsentry_agent_pod_watch_errors_total")? > 0).then_some(body)
    });
    assert_eq!(
        metric(&metrics, "mapsentry_agent_pod_cache_synced"),
        Some(0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mapsentry_agent_attached"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mapsentry_agent_ready"),
        Some(0),
        "{metrics}"
    );

    server.restart_apiserver();
    eventually(
        "ready once the pods are listed",
        Duration::from_secs(90),
        || (http_get(endpoint, "/readyz") == (200, "ready\n".to_owned())).then_some(()),
    );
    let (_, metrics) = http_get(endpoint, "/metrics");
    assert_eq!(
        metric(&metrics, "mapsentry_agent_pod_cache_synced"),
        Some(1),
        "{metrics}"
    );
    agent.stop();
    let _ = std::fs::remove_dir_all(&state_dir);
}
