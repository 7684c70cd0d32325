use std::time::{Duration, Instant};

use crate::metadata::{MissingCounter, PodCache, PodCacheConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn info() -> Info {
    Info {
        node: "node-a".into(),
        attach_mode: "tracepoint".into(),
        hook: "sys_enter/sys_exit".into(),
        deny_unavailable: Some("no BPF LSM".into()),
    }
}

#[test]
fn not_ready_until_attached_then_ready_while_draining() {
    let status = AgentStatus::default();
    let now = Instant::now();
    let ready = status.readiness(now);
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("not attached"), "{}", ready.body);
    assert_eq!(status.liveness(now).status, 200, "live while starting");

    status.attached(info(), None, MissingCounter::default());
    let t0 = Instant::now();
    status.note_drain(t0, 100, 100);
    assert_eq!(status.readiness(t0), Reply::ok("ready\n"));

    // Records written and none read for longer than the bound: not draining.
    status.note_drain(t0 + Duration::from_secs(1), 150, 100);
    status.note_drain(t0 + Duration::from_secs(5), 180, 100);
    let later = t0 + Duration::from_secs(12);
    status.note_drain(later, 200, 100);
    let ready = status.readiness(later);
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("ring buffer has not been drained"),
        "{}",
        ready.body
    );

    // Reading again makes it ready at once.
    status.read(later);
    assert_eq!(status.readiness(later).status, 200);

    // An idle kernel (nothing new written, calls in flight left over) is drained.
    let idle = later + Duration::from_secs(30);
    status.note_drain(idle, 200, 150);
    assert_eq!(status.readiness(idle).status, 200);

    status.detached();
    assert_eq!(status.readiness(idle).status, 503);
}

#[test]
fn live_while_the_loop_turns() {
    let status = AgentStatus::default();
    let t0 = Instant::now();
    status.turned(t0);
    assert_eq!(status.liveness(t0 + Duration::from_secs(29)).status, 200);
    let stalled = status.liveness(t0 + Duration::from_secs(31));
    assert_eq!(stalled.status, 503);
    assert!(stalled.body.contains("has not turned"), "{}", stalled.body);
    status.turned(t0 + Duration::from_secs(31));
    assert_eq!(status.liveness(t0 + Duration::from_secs(31)).status, 200);
}

#[test]
fn with_kubernetes_not_ready_until_the_pod_cache_is_synced() {
    let status = AgentStatus::default();
    let pods = PodCache::new(PodCacheConfig::new("node-a").unwrap());
    status.attached(info(), Some(pods), MissingCounter::default());
    let ready = status.readiness(Instant::now());
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("pod cache"), "{}", ready.body);
    let metrics = status.render(Instant::now());
    assert!(
        metrics.contains("\nmapsentry_agent_pod_cache_synced 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nmapsentry_agent_ready 0\n"), "{metrics}");
}

#[test]
fn metrics_name_every_counter_and_the_attach_mode() {
    let status = AgentStatus::default();
    status.attached(info(), None, MissingCounter::default());
    let metrics = status.render(Instant::now());
    for line in [
        "mapsentry_enrichment_missing_total 0",
        "mapsentry_agent_kernel_seen_total 0",
        "mapsentry_agent_kernel_reported_total 0",
        "mapsentry_agent_kernel_filtered_total 0",
        "mapsentry_agent_kernel_dropped_total 0",
        "mapsentry_agent_events_received_total 0",
        "mapsentry_agent_events_shipped_total 0",
        "mapsentry_agent_events_acked_total 0",
        "mapsentry_agent_events_dropped_total{reason=\"buffer_full\"} 0",
        "mapsentry_agent_attached 1",
        "mapsentry_agent_ready 1",
        "mapsentry_agent_info{node=\"node-a\",attach_mode=\"tracepoint\",hook=\"sys_enter/sys_exit\",deny=\"unavailable\",version=\"",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "{line} missing in:\n{metrics}"
        );
    }
    // Enforcement metrics appear once the loop has seen an enforcer.
    assert!(!metrics.contains("mapsentry_enforce_deny_fallback"));
    let mut lines = metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            let sample = lines.peek().expect("a sample after each TYPE");
            assert!(sample.starts_with(name), "{line} then {sample}");
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn served_over_http_and_a_taken_default_port_is_skipped() {
    let status = Arc::new(AgentStatus::default());
    let endpoint = start(&status, "127.0.0.1:0".parse().unwrap(), true)
        .await
        .unwrap()
        .expect("bound");
    let (line, body) = get(endpoint.addr, "/readyz").await;
    assert_eq!(line, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("not attached"), "{body}");
    status.attached(info(), None, MissingCounter::default());
    assert_eq!(get(endpoint.addr, "/readyz").await.0, "HTTP/1.1 200 OK");
    assert_eq!(get(endpoint.addr, "/healthz").await.1, "ok\n");
    let (line, body) = get(endpoint.addr, "/metrics").await;
    assert_eq!(line, "HTTP/1.1 200 OK");
    assert!(
        body.contains("mapsentry_enrichment_missing_total 0\n"),
        "{body}"
    );
    assert_eq!(
        get(endpoint.addr, "/nope").await.0,
        "HTTP/1.1 404 Not Found"
    );

    // The port is taken now: not required, skipped; required, an error naming the flag.
    assert!(
        start(&status, endpoint.addr, false)
            .await
            .unwrap()
            .is_none()
    );
    let error = start(&status, endpoint.addr, true).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("--metrics-listen"),
        "{error:#}"
    );
    endpoint.stop().await;
}

#[test]
fn a_deny_that_fell_back_to_kill_is_said_by_readyz() {
    let status = AgentStatus::default();
    status.attached(info(), None, MissingCounter::default());
    status.snapshot.lock().unwrap().enforce = Some(EnforceStats {
        version: 3,
        kernel_rules: 2,
        deny_fell_back: 1,
        ..EnforceStats::default()
    });
    let ready = status.readiness(Instant::now());
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.body,
        "ready; 1 Deny rule(s) enforced as Kill (denyFallback) because this kernel cannot deny: no BPF LSM\n"
    );
    let metrics = status.render(Instant::now());
    assert!(
        metrics.contains("\nmapsentry_enforce_deny_fallback 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nmapsentry_enforce_kernel_rules 2\n"),
        "{metrics}"
    );
}

#[test]
fn not_ready_while_enforcement_was_resolved_before_the_pods_were_known() {
    let status = AgentStatus::default();
    status.attached(info(), None, MissingCounter::default());
    status.snapshot.lock().unwrap().enforce = Some(EnforceStats {
        version: 3,
        kernel_rules: 1,
        unresolved: 2,
        awaiting_pods: true,
        ..EnforceStats::default()
    });
    let waiting = status.readiness(Instant::now());
    assert_eq!(waiting.status, 503);
    assert!(
        waiting
            .body
            .contains("not yet resolved against the pod cache"),
        "{}",
        waiting.body
    );
    status
        .snapshot
        .lock()
        .unwrap()
        .enforce
        .as_mut()
        .unwrap()
        .awaiting_pods = false;
    assert_eq!(status.readiness(Instant::now()).status, 200);
}
