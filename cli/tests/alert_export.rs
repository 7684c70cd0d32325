//! Alert export through the binaries: `run` with real BPF capture POSTs the alert of a real
//! W+X mapping to a webhook receiver started here and writes it to a file; a `collector` fed by
//! an agent shipper retries a webhook that is down until it is up (counting the failures in
//! /metrics), rotates its alert file at the size bound keeping the given count, exports only what
//! its filters pass, verifies an https:// webhook against the CA it is given, and refuses bad
//! export flags at start.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use mapsentry_agent::shipper::{Shipper, ShipperConfig, backoff::Backoff};
use mapsentry_policy::{Attribution, K8sMeta, MmapArgs, MmapEvent, Syscall};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    process::{Child, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_mapsentry");

/// Host processes' W+X mappings, audited.
const HOST_POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: host-write-execute
spec:
  hostProcesses: true
  mode: Audit
  rules:
    - name: write-and-execute
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Alert
";

/// Two policies on every pod's W+X mappings: one audited, one enforced with Kill.
const POD_POLICIES: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: wx-audit
spec:
  mode: Audit
  rules:
    - name: write-and-execute
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Alert
---
apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: wx-kill
spec:
  mode: Enforce
  rules:
    - name: write-and-execute
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Kill
";

const WX_CALL: &str =
    "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)";

/// What a webhook receiver got: each request's path and JSON body.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on `listener`: answers 200 to every POST and keeps its body.
fn receiver(listener: TcpListener) -> (Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let keep = Arc::clone(&keep);
        async move {
            let value: Value = serde_json::from_str(&body).expect("a JSON body");
            keep.lock().unwrap().push((uri.path().to_owned(), value));
            "ok"
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (received, task)
}

/// The alerts received so far, in order.
fn alerts(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, body)| body.as_array().expect("a JSON array").clone())
        .collect()
}

async fn wait_for<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of the sample `series` (name and labels as exposed), or 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mapsentry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mapsentry collector` on `addr` with `--policy policy` and `extra` flags, once it listens.
async fn collector(addr: SocketAddr, metrics: SocketAddr, policy: &Path, extra: &[&str]) -> Child {
    let child = Command::new(BIN)
        .args(["collector", "--plaintext", "--listen", &addr.to_string()])
        .args(["--metrics-listen", &metrics.to_string(), "--policy"])
        .arg(policy)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("the collector listens", 20, async || {
        tokio::net::TcpStream::connect(addr).await.ok()
    })
    .await;
    child
}

fn shipper(addr: SocketAddr) -> Shipper {
    let mut config = ShipperConfig::new(format!("http://{addr}"), "node-a");
    config.batch_max_delay = Duration::from_millis(20);
    config.backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    Shipper::start(config).unwrap()
}

/// A W+X anonymous `mmap` by pid `n`, in `namespace/pod` when given (else a host process).
fn wx_event(n: u32, pod: Option<(&str, &str)>) -> MmapEvent {
    MmapEvent {
        time_ns: 1_764_000_000_000_000_000 + u64::from(n),
        syscall: Syscall::Mmap,
        pid: n,
        tid: n,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: format!("w{n}"),
        cgroup_id: 4242,
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
        attribution: pod.map(|(namespace, pod)| {
            Arc::new(Attribution::Pod(K8sMeta {
                namespace: Some(namespace.into()),
                pod: Some(pod.into()),
                pod_uid: Some(format!("uid-{namespace}-{pod}")),
                resolved: true,
                ..K8sMeta::default()
            }))
        }),
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_posts_a_real_wx_mapping_to_a_webhook_and_writes_it_to_a_file() {
    let dir = temp_dir("export-run");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, HOST_POLICY).unwrap();
    let file = dir.join("alerts.jsonl");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hooks/mapsentry", listener.local_addr().unwrap());
    let (received, _server) = receiver(listener);

    let mut target = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("read _ && exec /usr/bin/python3 -c '{WX_CALL}'"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id().unwrap();
    let mut run = Command::new(BIN)
        .args(["run", "--output", "json", "--listen", "127.0.0.1:0"])
        .args(["--pid", &pid.to_string(), "--policy"])
        .arg(&policy)
        .args(["--alert-webhook", &hook, "--alert-webhook-flush", "100ms"])
        .arg("--alert-output")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let attached: Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("run attaches within 20 s")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(attached["kind"], "attached");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    target
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    assert!(target.wait().await.unwrap().success());

    let posted = wait_for("the webhook gets the alert", 20, async || {
        let alerts = alerts(&received);
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    let alert = &posted[0];
    assert_eq!(alert["kind"], "alert");
    assert_eq!(alert["policy"], "host-write-execute");
    assert_eq!(alert["rule"], "write-and-execute");
    assert_eq!(alert["action"], "alert");
    assert_eq!(alert["mode"], "audit");
    assert_eq!(alert["count"], 1);
    assert!(
        alert["cursor"].is_u64() && alert["node"].is_string(),
        "{alert}"
    );
    assert_eq!(alert["event"]["pid"], pid);
    assert_eq!(alert["event"]["args"]["prot"], 7);
    assert_eq!(alert["event"]["args"]["length"], 4096);
    assert_eq!(
        received.lock().unwrap()[0].0,
        "/hooks/mapsentry",
        "posted to the URL's path"
    );

    let written = wait_for("the file gets the alert", 10, async || {
        let lines = lines_of(&file);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(
        written, posted,
        "the file line and the posted alert are one"
    );

    nix_interrupt(run.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(20), run.wait())
        .await
        .expect("run stops")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(alerts(&received).len(), 1, "nothing more at shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn nix_interrupt(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_at_first_gets_the_alerts_once_it_is_up_and_failures_are_counted() {
    let dir = temp_dir("export-retry");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, HOST_POLICY).unwrap();
    let (addr, metrics, hook) = (free_addr(), free_addr(), free_addr());
    let url = format!("http://{hook}/alerts");
    let mut collector = collector(
        addr,
        metrics,
        &policy,
        &["--alert-webhook", &url, "--alert-webhook-flush", "50ms"],
    )
    .await;
    let shipper = shipper(addr);
    shipper.send(vec![wx_event(1, None)]).await.unwrap();

    // Nothing listens on the webhook's port: the attempts fail and are counted.
    let failures = r#"mapsentry_alert_export_failures_total{sink="webhook"}"#;
    wait_for("failed webhook attempts are counted", 20, async || {
        (sample(&scrape(metrics).await, failures) >= 2).then_some(())
    })
    .await;
    let before = scrape(metrics).await;
    assert_eq!(
        sample(
            &before,
            r#"mapsentry_alert_export_delivered_total{sink="webhook"}"#
        ),
        0
    );

    // The receiver comes up: the retried batch arrives.
    let (received, _server) = receiver(TcpListener::bind(hook).await.unwrap());
    let posted = wait_for(
        "the alert arrives after the receiver is up",
        30,
        async || {
            let alerts = alerts(&received);
            (!alerts.is_empty()).then_some(alerts)
        },
    )
    .await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["policy"], "host-write-execute");
    assert_eq!(posted[0]["event"]["pid"], 1);
    assert!(posted[0]["namespace"].is_null());

    let after = scrape(metrics).await;
    assert_eq!(
        sample(
            &after,
            r#"mapsentry_alert_export_delivered_total{sink="webhook"}"#
        ),
        1,
        "{after}"
    );
    assert!(sample(&after, failures) >= 2, "{after}");
    assert!(
        !after.contains("mapsentry_alert_export_dropped_total{"),
        "nothing dropped: {after}"
    );

    shipper.finish().await;
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_webhook_queue_drops_its_oldest_alerts_and_counts_them() {
    const PODS: u32 = 8;
    let dir = temp_dir("export-queue");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, POD_POLICIES).unwrap();
    let (addr, metrics, hook) = (free_addr(), free_addr(), free_addr());
    let url = format!("http://{hook}/alerts");
    let mut collector = collector(
        addr,
        metrics,
        &policy,
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-batch",
            "1",
            "--alert-webhook-queue",
            "2",
            "--alert-export-policy",
            "wx-audit",
        ],
    )
    .await;
    let shipper = shipper(addr);
    let pods: Vec<String> = (0..PODS).map(|n| format!("web-{n}")).collect();
    shipper
        .send(
            (0..PODS)
                .map(|n| wx_event(200 + n, Some(("shop", &pods[n as usize]))))
                .collect(),
        )
        .await
        .unwrap();
    let dropped = r#"mapsentry_alert_export_dropped_total{sink="webhook",reason="queue_full"}"#;
    // One batch of 1 is being retried and 2 wait: at least the 5 oldest of the rest are dropped.
    wait_for("the queue overflows", 20, async || {
        (sample(&scrape(metrics).await, dropped) >= u64::from(PODS) - 3).then_some(())
    })
    .await;
    let (received, _server) = receiver(TcpListener::bind(hook).await.unwrap());
    let delivered = r#"mapsentry_alert_export_delivered_total{sink="webhook"}"#;
    let text = wait_for("every alert is delivered or dropped", 30, async || {
        let text = scrape(metrics).await;
        (sample(&text, delivered) + sample(&text, dropped) == u64::from(PODS)).then_some(text)
    })
    .await;
    let got = alerts(&received);
    assert_eq!(got.len() as u64, sample(&text, delivered), "{got:?}");
    assert!(
        got.len() <= 3,
        "at most the batch in flight and the queue: {got:?}"
    );
    let pods_got: Vec<&str> = got.iter().map(|a| a["pod"].as_str().unwrap()).collect();
    // The newest two are kept: the ones published last.
    assert_eq!(
        pods_got[pods_got.len() - 2..],
        ["web-6", "web-7"],
        "the newest alerts are kept: {pods_got:?}"
    );

    shipper.finish().await;
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_file_rotates_at_its_bound_and_keeps_the_given_count() {
    const PODS: u32 = 30;
    let dir = temp_dir("export-rotate");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, POD_POLICIES).unwrap();
    let file = dir.join("alerts.jsonl");
    let (addr, metrics) = (free_addr(), free_addr());
    let mut collector = collector(
        addr,
        metrics,
        &policy,
        &[
            "--alert-output",
            file.to_str().unwrap(),
            "--alert-output-max-bytes",
            "4000",
            "--alert-output-files",
            "2",
            "--alert-export-policy",
            "wx-audit",
        ],
    )
    .await;
    let shipper = shipper(addr);
    // One alert per pod (each is its own alert key).
    let pods: Vec<String> = (0..PODS).map(|n| format!("web-{n:02}")).collect();
    shipper
        .send(
            (0..PODS)
                .map(|n| wx_event(100 + n, Some(("shop", &pods[n as usize]))))
                .collect(),
        )
        .await
        .unwrap();
    let delivered = r#"mapsentry_alert_export_delivered_total{sink="file"}"#;
    wait_for("every alert is written", 20, async || {
        (sample(&scrape(metrics).await, delivered) >= u64::from(PODS)).then_some(())
    })
    .await;

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("alerts.jsonl"))
        .collect();
    names.sort();
    assert_eq!(names, ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]);
    let mut kept = Vec::new();
    for name in names.iter().rev() {
        let path = dir.join(name);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 4000, "{name}: {size} bytes");
        assert!(size > 0, "{name} is empty");
        kept.extend(lines_of(&path));
    }
    // Oldest first across PATH.2, PATH.1, PATH: the newest alerts, in publication order, with
    // the older ones rotated away.
    assert!(
        kept.len() < PODS as usize,
        "some were rotated away: {}",
        kept.len()
    );
    let cursors: Vec<u64> = kept.iter().map(|a| a["cursor"].as_u64().unwrap()).collect();
    assert!(
        cursors.windows(2).all(|w| w[1] > w[0]),
        "publication order: {cursors:?}"
    );
    assert_eq!(kept.last().unwrap()["pod"], "web-29", "the newest is kept");
    assert!(kept.iter().all(|a| a["policy"] == "wx-audit"));

    shipper.finish().await;
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_filters_leave_out_other_namespaces_policies_and_actions() {
    let dir = temp_dir("export-filter");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, POD_POLICIES).unwrap();
    let file = dir.join("alerts.jsonl");
    let (addr, metrics) = (free_addr(), free_addr());
    let mut collector = collector(
        addr,
        metrics,
        &policy,
        &[
            "--alert-output",
            file.to_str().unwrap(),
            "--alert-export-namespace",
            "shop",
            "--alert-export-namespace",
            "bank",
            "--alert-export-action",
            "kill",
        ],
    )
    .await;
    let shipper = shipper(addr);
    // Every call raises two alerts (wx-audit: alert, wx-kill: kill). Left out: dev's (not a
    // listed namespace) and the host process's (no namespace), and every wx-audit alert.
    shipper
        .send(vec![
            wx_event(1, Some(("dev", "api"))),
            wx_event(2, None),
            wx_event(3, Some(("shop", "web"))),
        ])
        .await
        .unwrap();
    shipper
        .send(vec![wx_event(4, Some(("bank", "ledger")))])
        .await
        .unwrap();

    let written = wait_for("bank's alert is written", 20, async || {
        let lines = lines_of(&file);
        lines
            .iter()
            .any(|a| a["namespace"] == "bank")
            .then_some(lines)
    })
    .await;
    // Alerts are written in publication order, so anything that should have been left out was
    // published before bank's and would be in the file by now.
    let seen: Vec<(String, String, String)> = written
        .iter()
        .map(|a| {
            (
                a["namespace"].as_str().unwrap_or("(host)").to_owned(),
                a["policy"].as_str().unwrap_or_default().to_owned(),
                a["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = |ns: &str| (ns.to_owned(), "wx-kill".to_owned(), "kill".to_owned());
    assert_eq!(seen, [want("shop"), want("bank")]);
    let text = scrape(metrics).await;
    assert_eq!(
        sample(
            &text,
            r#"mapsentry_alert_export_delivered_total{sink="file"}"#
        ),
        2,
        "{text}"
    );

    shipper.finish().await;
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_output_dash_writes_json_lines_to_the_collectors_stdout() {
    let dir = temp_dir("export-stdout");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, HOST_POLICY).unwrap();
    let (addr, metrics) = (free_addr(), free_addr());
    let mut collector = Command::new(BIN)
        .args(["collector", "--plaintext", "--listen", &addr.to_string()])
        .args(["--metrics-listen", &metrics.to_string(), "--policy"])
        .arg(&policy)
        .args(["--alert-output", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(collector.stdout.take().unwrap()).lines();
    wait_for("the collector listens", 20, async || {
        tokio::net::TcpStream::connect(addr).await.ok()
    })
    .await;
    let shipper = shipper(addr);
    shipper.send(vec![wx_event(9, None)]).await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("an alert line on stdout")
        .unwrap()
        .unwrap();
    let alert: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(alert["kind"], "alert");
    assert_eq!(alert["policy"], "host-write-execute");
    assert_eq!(alert["event"]["pid"], 9);
    assert_eq!(alert["node"], "node-a");
    let delivered = r#"mapsentry_alert_export_delivered_total{sink="stdout"}"#;
    wait_for("the line is counted", 10, async || {
        (sample(&scrape(metrics).await, delivered) == 1).then_some(())
    })
    .await;
    shipper.finish().await;
    collector.start_kill().unwrap();
    collector.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_flags_are_refused_at_start_naming_the_flag() {
    let dir = temp_dir("export-refused");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--alert-webhook", "ftp://example.com/x"],
            "--alert-webhook \"ftp://example.com/x\": scheme",
        ),
        (
            &["--alert-webhook", "not a url"],
            "--alert-webhook \"not a url\": not a URL",
        ),
        (
            &["--alert-output", "/nonexistent/dir/alerts.jsonl"],
            "--alert-output /nonexistent/dir/alerts.jsonl: cannot open",
        ),
        (
            &["--alert-output", "-", "--alert-output-max-bytes", "0"],
            "--alert-output-max-bytes",
        ),
        (
            &["--alert-output", "-", "--alert-output-files", "0"],
            "--alert-output-files",
        ),
        (
            &[
                "--alert-webhook",
                "http://127.0.0.1:9/",
                "--alert-webhook-batch",
                "0",
            ],
            "--alert-webhook-batch",
        ),
        (
            &[
                "--alert-webhook",
                "http://127.0.0.1:9/",
                "--alert-webhook-timeout",
                "0s",
            ],
            "--alert-webhook-timeout",
        ),
        (
            &["--alert-export-namespace", "shop"],
            "give --alert-output or --alert-webhook",
        ),
    ];
    for (flags, says) in cases {
        let child = Command::new(BIN)
            .args(["collector", "--plaintext", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(*flags)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{flags:?} was accepted: the collector runs"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} was accepted: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An https webhook receiver on `listener` with `cert`/`key` (PEM): reads each request (one per
/// connection), keeps its JSON body, answers 200 and closes.
fn tls_receiver(listener: TcpListener, cert: &str, key: &str) -> Received {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, keep) = (acceptor.clone(), Arc::clone(&keep));
            tokio::spawn(async move {
                // A client that does not trust us gives up in the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0_u8; 4096];
                let (head_end, length) = loop {
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    request.extend_from_slice(&chunk[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .expect("a content-length")
                            .trim()
                            .parse()
                            .unwrap();
                        break (end + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the body ended early");
                    request.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
                let path = head.split(' ').nth(1).unwrap().to_owned();
                let body: Value = serde_json::from_slice(&request[head_end..]).unwrap();
                keep.lock().unwrap().push((path, body));
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tls.shutdown().await;
            });
        }
    });
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_verified_against_the_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = temp_dir("export-https");
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, HOST_POLICY).unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/alerts", listener.local_addr().unwrap());
    let received = tls_receiver(listener, &leaf.pem(), &leaf_key.serialize_pem());

    // Trusting another CA only: the handshake fails, nothing is delivered, failures counted.
    let stranger = dir.join("stranger.pem");
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let stranger_pem = params
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    std::fs::write(&stranger, stranger_pem).unwrap();
    let (addr, metrics) = (free_addr(), free_addr());
    let mut untrusting = collector(
        addr,
        metrics,
        &policy,
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-ca",
            stranger.to_str().unwrap(),
        ],
    )
    .await;
    let shipper_a = shipper(addr);
    shipper_a.send(vec![wx_event(1, None)]).await.unwrap();
    let failures = r#"mapsentry_alert_export_failures_total{sink="webhook"}"#;
    wait_for(
        "the untrusted certificate is a counted failure",
        20,
        async || (sample(&scrape(metrics).await, failures) >= 1).then_some(()),
    )
    .await;
    assert!(
        alerts(&received).is_empty(),
        "nothing delivered without trust"
    );
    shipper_a.finish().await;
    untrusting.start_kill().unwrap();
    untrusting.wait().await.unwrap();

    // With it, the alert arrives over TLS.
    let (addr, metrics) = (free_addr(), free_addr());
    let mut trusting = collector(
        addr,
        metrics,
        &policy,
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-ca",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    let shipper_b = shipper(addr);
    shipper_b.send(vec![wx_event(2, None)]).await.unwrap();
    let posted = wait_for("the alert arrives over TLS", 20, async || {
        let alerts = alerts(&received);
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["event"]["pid"], 2);
    assert_eq!(received.lock().unwrap()[0].0, "/alerts");
    shipper_b.finish().await;
    trusting.start_kill().unwrap();
    trusting.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
