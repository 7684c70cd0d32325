use std::sync::Arc;

use mapsentry_policy::{Action, AlertLine, Mode};
use serde_json::Value;

use super::{ExportFilter, OutputConfig, OutputTarget, WebhookConfig, file::Writer, webhook};
use crate::{fanout::PublishedAlert, testing};

fn alert(namespace: Option<&str>, policy: &str, action: Action, mode: Mode) -> AlertLine {
    AlertLine {
        policy: policy.into(),
        action,
        mode,
        ..testing::alert_line(namespace, namespace.map(|_| "web"), "sh", "wx", 1)
    }
}

fn published(cursor: u64) -> Arc<PublishedAlert> {
    Arc::new(PublishedAlert {
        cursor,
        node: "node-a".into(),
        alert: testing::alert_line(Some("shop"), Some("web"), "sh", "wx", cursor),
    })
}

#[test]
fn the_filter_passes_only_what_every_list_allows() {
    let all = ExportFilter::default();
    let shop = alert(Some("shop"), "shop/no-wx", Action::Kill, Mode::Enforce);
    let host = alert(None, "host-wx", Action::Alert, Mode::Audit);
    assert!(all.matches(&shop) && all.matches(&host));

    let by_namespace = ExportFilter {
        namespaces: vec!["shop".into()],
        ..ExportFilter::default()
    };
    assert!(by_namespace.matches(&shop));
    assert!(
        !by_namespace.matches(&host),
        "host processes have no namespace"
    );

    let by_policy = ExportFilter {
        policies: vec!["host-wx".into()],
        ..ExportFilter::default()
    };
    assert!(!by_policy.matches(&shop) && by_policy.matches(&host));

    let by_action = ExportFilter {
        actions: vec![Action::Kill, Action::Deny],
        ..ExportFilter::default()
    };
    assert!(by_action.matches(&shop) && !by_action.matches(&host));

    let by_mode = ExportFilter {
        modes: vec![Mode::Audit],
        ..ExportFilter::default()
    };
    assert!(!by_mode.matches(&shop) && by_mode.matches(&host));

    let both = ExportFilter {
        namespaces: vec!["shop".into()],
        modes: vec![Mode::Audit],
        ..ExportFilter::default()
    };
    assert!(
        !both.matches(&shop) && !both.matches(&host),
        "every list must hold"
    );
}

#[test]
fn a_webhook_body_is_a_json_array_of_alert_lines_with_cursor_and_node() {
    let body = webhook::body(&[published(7), published(8)]);
    let value: Value = serde_json::from_slice(&body).unwrap();
    let lines = value.as_array().expect("an array");
    assert_eq!(lines.len(), 2);
    for (line, cursor) in lines.iter().zip([7, 8]) {
        assert_eq!(line["kind"], "alert");
        assert_eq!(line["cursor"], cursor);
        assert_eq!(line["node"], "node-a");
        assert_eq!(line["policy"], "wx");
        assert_eq!(line["namespace"], "shop");
        assert_eq!(line["event"]["kind"], "event");
        // The contract's line, as `tail` reads it back.
        let back: AlertLine = serde_json::from_value(line.clone()).unwrap();
        assert_eq!(back.count, cursor);
    }
}

#[test]
fn bad_webhook_settings_are_refused_naming_the_flag() {
    let refused = |config: WebhookConfig| {
        webhook::Client::new(&config)
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    };
    for (url, says) in [
        ("not a url", "not a URL"),
        ("ftp://host/x", "scheme \"ftp\""),
        ("localhost:8080", "no scheme"),
        ("/alerts", "no scheme"),
        ("http://user:pw@host/x", "credentials"),
    ] {
        let message = refused(WebhookConfig::new(url));
        assert!(
            message.starts_with("--alert-webhook ") && message.contains(says),
            "{url}: {message}"
        );
    }
    let message = refused(WebhookConfig {
        batch: 0,
        ..WebhookConfig::new("http://127.0.0.1:1/x")
    });
    assert_eq!(message, "--alert-webhook-batch: must be at least 1");
    let message = refused(WebhookConfig {
        ca: Some("/nonexistent/ca.pem".into()),
        ..WebhookConfig::new("https://127.0.0.1:1/x")
    });
    assert!(message.starts_with("--alert-webhook-ca"), "{message}");
    let message = refused(WebhookConfig {
        ca: Some("/nonexistent/ca.pem".into()),
        ..WebhookConfig::new("http://127.0.0.1:1/x")
    });
    assert!(message.contains("not https"), "{message}");
    let client = webhook::Client::new(&WebhookConfig::new(
        "http://hooks.example.com/services/T000/B000/SECRET?token=x",
    ))
    .unwrap();
    assert_eq!(
        client.shown, "http://hooks.example.com/...",
        "no secret in logs"
    );
    let client = webhook::Client::new(&WebhookConfig::new("http://127.0.0.1:8080")).unwrap();
    assert_eq!(client.shown, "http://127.0.0.1:8080");
}

#[test]
fn bad_output_settings_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let message = |config: OutputConfig| Writer::open(&config).expect_err("refused").to_string();
    assert_eq!(
        message(OutputConfig {
            max_bytes: 0,
            ..OutputConfig::new(OutputTarget::Stdout)
        }),
        "--alert-output-max-bytes: must be at least 1"
    );
    assert!(
        message(OutputConfig {
            files: 0,
            ..OutputConfig::new(OutputTarget::Stdout)
        })
        .starts_with("--alert-output-files")
    );
    assert!(
        message(OutputConfig::new(OutputTarget::File(dir.path().into())))
            .contains("is a directory")
    );
    let missing = dir.path().join("no/such/dir/alerts.jsonl");
    let text = message(OutputConfig::new(OutputTarget::File(missing.clone())));
    assert!(
        text.starts_with(&format!("--alert-output {}", missing.display())),
        "{text}"
    );
}

#[test]
fn the_file_rotates_before_the_bound_and_keeps_the_given_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    let line_len = {
        let mut line = serde_json::to_vec(&super::Line::of(&published(10))).unwrap();
        line.push(b'\n');
        line.len() as u64
    };
    let config = OutputConfig {
        // Three lines a file.
        max_bytes: line_len * 3 + 1,
        files: 2,
        ..OutputConfig::new(OutputTarget::File(path.clone()))
    };
    let mut writer = Writer::open(&config).unwrap();
    // Cursors 10..=19 encode to lines of one length.
    let alerts: Vec<_> = (10..20).map(published).collect();
    writer.write_for_tests(&alerts[..4]).unwrap();
    writer.write_for_tests(&alerts[4..]).unwrap();
    let cursors = |p: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["cursor"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(cursors(&path), [19]);
    assert_eq!(cursors(&dir.path().join("alerts.jsonl.1")), [16, 17, 18]);
    assert_eq!(cursors(&dir.path().join("alerts.jsonl.2")), [13, 14, 15]);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]);
    for name in &names {
        let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size <= config.max_bytes, "{name}: {size} bytes");
    }

    // A restarted writer appends to the current file and goes on rotating.
    let mut writer = Writer::open(&config).unwrap();
    writer
        .write_for_tests(&(20..23).map(published).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(cursors(&path), [22]);
    assert_eq!(cursors(&dir.path().join("alerts.jsonl.1")), [19, 20, 21]);
    assert_eq!(cursors(&dir.path().join("alerts.jsonl.2")), [16, 17, 18]);
}

#[tokio::test]
async fn the_exporter_writes_what_the_hub_publishes_until_it_closes_and_counts_it() {
    use crate::{
        Hub, HubConfig,
        export::{ExportConfig, ExportMetrics, Exporter},
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    let hub = Hub::new(HubConfig::default());
    let metrics = ExportMetrics::default();
    let config = ExportConfig {
        output: Some(OutputConfig::new(OutputTarget::File(path.clone()))),
        webhook: None,
        filter: ExportFilter {
            namespaces: vec!["shop".into()],
            ..ExportFilter::default()
        },
    };
    let exporter = Exporter::start(&hub, &config, &metrics)
        .unwrap()
        .expect("a sink");
    assert_eq!(exporter.sinks().len(), 1);
    let node: Arc<str> = "node-a".into();
    let hold = hub.hold_subscribers();
    hub.publish_alert(
        &node,
        testing::alert_line(Some("shop"), Some("web"), "sh", "wx", 1),
    );
    hub.publish_alert(
        &node,
        testing::alert_line(Some("dev"), Some("api"), "sh", "wx", 1),
    );
    hub.close();
    // Published after close while the evaluation holds the subscribers (its shutdown flush).
    hub.publish_alert(
        &node,
        testing::alert_line(Some("shop"), Some("web"), "sh", "wx", 5),
    );
    drop(hold);
    tokio::time::timeout(std::time::Duration::from_secs(5), exporter.stop())
        .await
        .expect("the exporter stops once the hub is closed");
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counts: Vec<u64> = lines.iter().map(|l| l["count"].as_u64().unwrap()).collect();
    assert_eq!(
        counts,
        [1, 5],
        "shop's alerts, the flushed one included: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["namespace"] == "shop" && l["node"] == "node-a")
    );
    assert_eq!(metrics.delivered_total("file"), 2);
    assert_eq!(metrics.failures_total("file"), 0);
    assert_eq!(
        metrics.dropped_total("file", super::DropReason::QueueFull),
        0
    );
}
