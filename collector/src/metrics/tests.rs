use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::HubConfig;

fn labels(pod: &str) -> ViolationLabels {
    ViolationLabels {
        namespace: "web".into(),
        pod: pod.into(),
        policy: "wx".into(),
        rule: "write-and-execute".into(),
        action: "alert".into(),
        mode: "audit".into(),
    }
}

/// `GET path` over a real TCP connection; the status line and the body.
pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
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
async fn scraped_over_http_with_bounded_series() {
    let metrics = Arc::new(Metrics::new(2));
    metrics.violation(labels("a"));
    metrics.violation(labels("a"));
    metrics.violation(labels("b"));
    // Beyond two label sets: the `other` series, and the overflow counter.
    metrics.violation(labels("c"));
    metrics.violation(labels("d"));
    metrics.violation(labels("a"));
    let hub = Hub::new(HubConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(Arc::clone(&metrics), hub, listener, async {
        drop(stopped.await);
    }));

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let series = |pod: &str| {
        format!(
            "mapsentry_policy_violations_total{{namespace=\"web\",pod=\"{pod}\",policy=\"wx\",rule=\"write-and-execute\",action=\"alert\",mode=\"audit\"}}"
        )
    };
    assert!(body.contains(&format!("{} 3\n", series("a"))), "{body}");
    assert!(body.contains(&format!("{} 1\n", series("b"))), "{body}");
    assert!(!body.contains(&series("c")), "{body}");
    assert!(body.contains(
        "mapsentry_policy_violations_total{namespace=\"other\",pod=\"other\",policy=\"other\",rule=\"other\",action=\"other\",mode=\"other\"} 2\n"
    ), "{body}");
    assert!(
        body.contains("mapsentry_policy_violation_series_overflow_total 2\n"),
        "{body}"
    );
    assert!(
        body.contains("mapsentry_collector_events_stored_total 0\n"),
        "{body}"
    );

    let (status, _) = get(addr, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(stop);
    server.await.expect("join").expect("served");
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new(10);
    metrics.violation(ViolationLabels {
        pod: "a\"b\\c\nd".into(),
        ..labels("x")
    });
    let body = metrics.render(&Hub::new(HubConfig::default()));
    assert!(body.contains("pod=\"a\\\"b\\\\c\\nd\""), "{body}");
}

#[test]
fn workload_labels_can_be_kept_to_the_namespace_or_to_none() {
    let hub = Hub::new(HubConfig::default());
    let namespace = Metrics::new(10).with_workload_labels(WorkloadLabels::Namespace);
    namespace.violation(labels("a"));
    namespace.violation(labels("b"));
    let body = namespace.render(&hub);
    assert!(
        body.contains(r#"mapsentry_policy_violations_total{namespace="web",pod="",policy="wx",rule="write-and-execute",action="alert",mode="audit"} 2"#),
        "{body}"
    );
    let none = Metrics::new(10).with_workload_labels(WorkloadLabels::None);
    none.violation(labels("a"));
    let body = none.render(&hub);
    assert!(!body.contains("web"), "{body}");
    assert_eq!("namespace".parse(), Ok(WorkloadLabels::Namespace));
    assert!("pods".parse::<WorkloadLabels>().is_err());
}

#[tokio::test]
async fn readyz_follows_the_health_and_healthz_answers_while_serving() {
    let health = Health::not_ready("policies not loaded yet");
    let hub = Hub::new(HubConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_health(
        Arc::new(Metrics::default()),
        hub,
        health.clone(),
        listener,
        async {
            drop(stopped.await);
        },
    ));

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, "not ready: policies not loaded yet\n");
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    health.set_ready();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ready\n")
    );
    health.set_not_ready("policy reload failed");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("policy reload failed"), "{body}");
    drop(stop);
    server.await.expect("join").expect("served");
}
