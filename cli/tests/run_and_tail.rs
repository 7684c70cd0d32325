//! The `mapsentry` binary: `run` captures (real BPF) and serves its observer API; `tail` against
//! it prints the same event lines as `run`, plus `cursor` and `node`.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_mapsentry");

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what}: no line within 20 s"))
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: output ended"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
}

fn interrupt(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_runs_event_lines_with_cursor_and_node() {
    let mut target = Command::new("/bin/sh")
        .args(["-c", "read _ && exec cat /etc/hostname"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = target.id().unwrap();
    let mut run = Command::new(BIN)
        .args([
            "run",
            "--output",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--pid",
            &pid.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut run_lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let attached = next_line(&mut run_lines, "run").await;
    assert_eq!(attached["kind"], "attached");
    let observer = attached["observer"]
        .as_str()
        .expect("the observer URL")
        .to_owned();

    let mut tail = Command::new(BIN)
        .args([
            "tail", "--server", &observer, "--output", "json", "--since", "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();

    target
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    assert!(target.wait().await.unwrap().success());
    // cat's last call is its exit; give run a moment to print what the ring buffer holds.
    let mut ran = Vec::new();
    while let Ok(line) =
        tokio::time::timeout(Duration::from_secs(2), next_line(&mut run_lines, "run")).await
    {
        ran.push(line);
    }
    assert!(ran.len() > 5, "cat makes several mappings: {ran:?}");
    assert!(ran.iter().all(|l| l["kind"] == "event" && l["pid"] == pid));

    let mut tailed = Vec::new();
    for _ in 0..ran.len() {
        tailed.push(next_line(&mut tail_lines, "tail").await);
    }
    let mut cursors = Vec::new();
    for line in &mut tailed {
        let object = line.as_object_mut().unwrap();
        cursors.push(
            object
                .remove("cursor")
                .and_then(|c| c.as_u64())
                .expect("a numeric cursor"),
        );
        assert!(
            object.remove("node").is_some_and(|n| n.is_string()),
            "a node name"
        );
    }
    assert_eq!(tailed, ran, "tail's lines are run's lines");
    assert!(
        cursors.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive cursors: {cursors:?}"
    );

    interrupt(&tail);
    assert!(tail.wait().await.unwrap().success());
    interrupt(&run);
    let totals = next_line(&mut run_lines, "run totals").await;
    assert_eq!(totals["kind"], "totals");
    assert_eq!(totals["emitted"].as_u64(), Some(ran.len() as u64));
    assert_eq!(
        totals["acked"].as_u64(),
        Some(ran.len() as u64),
        "the embedded collector stored every event"
    );
    assert!(run.wait().await.unwrap().success());
}

#[tokio::test]
async fn tail_refuses_a_cursor_outside_retention_with_a_clear_error() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = collector.local_addr().unwrap();
    drop(collector);
    let mut server = Command::new(BIN)
        .args(["collector", "--plaintext", "--listen", &addr.to_string()])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A cursor far ahead of anything stored: refused, not waited on.
    let output = Command::new(BIN)
        .args([
            "tail",
            "--server",
            &format!("http://{addr}"),
            "--since",
            &u64::MAX.to_string(),
        ])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("tail returns")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refused the subscription") && stderr.contains("ahead of the newest"),
        "{stderr}"
    );
    interrupt(&server);
    assert!(server.wait().await.unwrap().success());
}

async fn stats(server: &str) -> Value {
    let output = Command::new(BIN)
        .args(["tail", "--server", server, "--stats", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ships_to_a_collector_process_and_tail_stats_show_the_node() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = format!("http://{addr}");
    let mut collector = Command::new(BIN)
        .args(["collector", "--plaintext", "--listen", &addr.to_string()])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut target = Command::new("/bin/sh")
        .args(["-c", "read _ && exec cat /etc/hostname"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = target.id().unwrap();
    // The mode `auto` takes on this kernel, as the capture library decides it.
    let mode = mapsentry_agent::Capture::start(&mapsentry_agent::CaptureConfig {
        pid: Some(pid),
        ..mapsentry_agent::CaptureConfig::default()
    })
    .expect("capture starts (needs root and BPF)")
    .attached()
    .mode
    .as_str();
    let mut agent = Command::new(BIN)
        .args(["agent", "--collector", &server, "--pid", &pid.to_string()])
        .env("NODE_NAME", "node-from-env")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Connected: the collector knows the node (by $NODE_NAME) and its attach mode.
    let mut node = Value::Null;
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            node = stats(&server).await["nodes"][0].clone();
            if node["connected"] == true {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (node["node"].as_str(), node["attach_mode"].as_str()),
        (Some("node-from-env"), Some(mode)),
        "{node}"
    );

    let mut tail = Command::new(BIN)
        .args([
            "tail", "--server", &server, "--output", "json", "--since", "0", "--comm", "cat",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    target
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    assert!(target.wait().await.unwrap().success());
    let first = next_line(&mut tail_lines, "tail").await;
    assert_eq!(
        (
            first["kind"].as_str(),
            first["comm"].as_str(),
            first["pid"].as_u64()
        ),
        (Some("event"), Some("cat"), Some(u64::from(pid)))
    );
    assert_eq!(first["node"], "node-from-env");

    interrupt(&agent);
    assert!(agent.wait().await.unwrap().success());
    let node = stats(&server).await["nodes"][0].clone();
    assert_eq!(node["connected"], false, "{node}");
    assert!(node["captured"].as_u64().unwrap() > 0, "{node}");
    assert_eq!(
        node["acked"], node["captured"],
        "every captured event stored: {node}"
    );
    assert_eq!(node["dropped"], serde_json::json!({}), "{node}");
    interrupt(&tail);
    assert!(tail.wait().await.unwrap().success());
    interrupt(&collector);
    assert!(collector.wait().await.unwrap().success());
}
