//! End to end: `run --policy` with real BPF capture; a real process's `PROT_WRITE|PROT_EXEC`
//! mapping becomes exactly one alert at a `tail --kind alerts` subscriber and on `run`'s output,
//! and `/metrics` counts it.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_mapsentry");

const POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
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

/// One `mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_SHARED|MAP_ANONYMOUS)`.
const WX_CALL: &str =
    "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)";

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

fn interrupt(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_wx_mapping_is_exactly_one_alert_and_counted() {
    let dir = std::env::temp_dir().join(format!("mapsentry-run-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("wx.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();

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
        .args(["--metrics-listen", &metrics, "--pid", &pid.to_string()])
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut run_lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let attached: Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(20), run_lines.next_line())
            .await
            .expect("run attaches within 20 s")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(attached["kind"], "attached");
    let observer = attached["observer"].as_str().unwrap().to_owned();

    let mut tail = Command::new(BIN)
        .args([
            "tail", "--server", &observer, "--output", "json", "--kind", "alerts",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // Let the subscription start before the call is made.
    tokio::time::sleep(Duration::from_secs(1)).await;

    target
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    assert!(target.wait().await.unwrap().success());

    let mut tailed = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(4), tail_lines.next_line()).await
    {
        tailed.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(tailed.len(), 1, "exactly one alert: {tailed:?}");
    let alert = &tailed[0];
    assert_eq!(alert["kind"], "alert");
    assert_eq!(alert["policy"], "host-write-execute");
    assert_eq!(alert["rule"], "write-and-execute");
    assert_eq!(alert["action"], "alert");
    assert_eq!(alert["mode"], "audit");
    assert_eq!(alert["count"], 1);
    assert!(alert["namespace"].is_null() && alert["pod"].is_null());
    assert_eq!(alert["event"]["kind"], "event");
    assert_eq!(alert["event"]["pid"], pid);
    assert_eq!(alert["event"]["args"]["prot"], 7);
    assert_eq!(alert["event"]["args"]["length"], 4096);

    let mut ran = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(1), run_lines.next_line()).await
    {
        ran.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let run_alerts: Vec<&Value> = ran.iter().filter(|l| l["kind"] == "alert").collect();
    assert_eq!(
        run_alerts.len(),
        1,
        "run prints the alert once: {run_alerts:?}"
    );
    assert_eq!(run_alerts[0]["event"], alert["event"]);

    let body = scrape(&metrics).await;
    assert!(
        body.contains("mapsentry_policy_violations_total{namespace=\"\",pod=\"\",policy=\"host-write-execute\",rule=\"write-and-execute\",action=\"alert\"} 1\n"),
        "{body}"
    );

    interrupt(tail.id().unwrap());
    assert!(tail.wait().await.unwrap().success());
    interrupt(run.id().unwrap());
    assert!(run.wait().await.unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
