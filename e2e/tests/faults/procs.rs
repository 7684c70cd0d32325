//! The real `mapsentry` binaries as child processes of a fault test: start, read their output
//! lines as they come, kill them (-9 or -TERM), measure their memory.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::mapsentry_bin;

/// Lines of one output stream, forwarded by a thread; every line is also kept for messages.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn forward(from: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::sync_channel(1 << 20);
        let all = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&all);
        thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx, all }
    }

    fn empty() -> Self {
        let (_tx, rx) = mpsc::sync_channel(1);
        Self {
            rx,
            all: Arc::default(),
        }
    }

    /// Lines until one satisfies `done` (returned last); panics after `timeout`.
    pub fn until(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        crate::common::lines_until(&self.rx, what, timeout, done)
    }

    /// Lines arriving until none came for `quiet` (or `max` passed).
    pub fn until_quiet(&self, quiet: Duration, max: Duration) -> Vec<String> {
        let deadline = Instant::now() + max;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.rx.recv_timeout(quiet) {
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        seen
    }

    /// Every line so far (including those already taken).
    pub fn everything(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

/// One running `mapsentry SUBCOMMAND`.
pub struct Proc {
    pub name: String,
    child: Child,
    pub out: Lines,
    pub err: Lines,
}

impl Proc {
    /// Start `mapsentry ARGS` with stdout and stderr piped (no `$KUBECONFIG`/`$NODE_NAME`).
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(mapsentry_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("MAPSENTRY_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let out = Lines::forward(child.stdout.take().expect("stdout"));
        let err = Lines::forward(child.stderr.take().expect("stderr"));
        Self {
            name: name.to_owned(),
            child,
            out,
            err,
        }
    }

    /// Start `mapsentry ARGS` whose stdout nobody ever reads (a stuck reader).
    pub fn start_unread(name: &str, args: &[&str]) -> (Self, std::process::ChildStdout) {
        let mut child = Command::new(mapsentry_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let err = Lines::forward(child.stderr.take().expect("stderr"));
        let out = Lines::empty();
        (
            Self {
                name: name.to_owned(),
                child,
                out,
                err,
            },
            stdout,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stderr line containing `needle`; returns it.
    pub fn wait_err(&self, needle: &str) -> String {
        self.wait_err_any(&[needle])
    }

    /// The first stderr line containing any of `needles` (waits at most 30 s).
    pub fn wait_err_any(&self, needles: &[&str]) -> String {
        let lines = self.err.until(
            &format!("{}: {needles:?}", self.name),
            Duration::from_secs(30),
            |l| needles.iter().any(|n| l.contains(n)),
        );
        lines.last().cloned().unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping");
    }

    /// SIGTERM and wait (at most 20 s); returns the exit code.
    pub fn terminate(mut self) -> (Option<i32>, Lines, Lines) {
        signal(self.pid(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                let out = std::mem::replace(&mut self.out, Lines::empty());
                let err = std::mem::replace(&mut self.err, Lines::empty());
                return (status.code(), out, err);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 20 s of SIGTERM; stderr: {}",
                self.name,
                self.err.everything()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now, in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// `RssAnon` of process `pid` (its heap and stacks, not the mapped binary), in KiB.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The collector's metrics address (`host:port`), from the line saying where it serves them.
pub fn metrics_address(collector: &Proc) -> String {
    let line = collector.wait_err("metrics on http://");
    line.split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_owned()
}

/// A fresh directory for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("mapsentry-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a test directory");
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mapsentry collector` on 127.0.0.1:`port` (plaintext loopback), ready to serve.
pub fn collector(port: u16, extra: &[&str]) -> Proc {
    collector_started(port, extra).0
}

/// `collector`, and the line saying where it serves.
fn collector_started(port: u16, extra: &[&str]) -> (Proc, String) {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["collector", "--plaintext", "--listen", &listen];
    if !extra.contains(&"--metrics-listen") {
        args.extend(["--metrics-listen", "127.0.0.1:0"]);
    }
    args.extend_from_slice(extra);
    // A restart on a port the kernel gave the previous run: another process may have taken it
    // meanwhile; try again for a while rather than fail on a race.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let proc = Proc::start("collector", &args);
        let line = proc.wait_err_any(&["collector serving on", "cannot bind"]);
        if !line.contains("cannot bind") {
            return (proc, line);
        }
        assert!(
            port != 0 && Instant::now() < deadline,
            "the collector cannot bind {listen}: {line}"
        );
        let _ = proc.terminate();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A collector on a port the kernel picks; returns it and its gRPC URL.
pub fn start_collector(extra: &[&str]) -> (Proc, String) {
    let (proc, line) = collector_started(0, extra);
    let address = line
        .split("collector serving on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (proc, format!("http://{address}"))
}

/// The port of a `http://127.0.0.1:PORT` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// `mapsentry agent` shipping to `url` as `node`; returns it and its boot id once it captures.
pub fn agent(url: &str, node: &str, state_dir: &Path, extra: &[&str]) -> (Proc, String) {
    let state = state_dir.to_string_lossy().into_owned();
    let mut args = vec![
        "agent",
        "--collector",
        url,
        "--node",
        node,
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::start("agent", &args);
    let line = proc.wait_err("mapsentry: agent on node");
    let boot_id = line
        .split("(boot id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no boot id in {line:?}"))
        .to_owned();
    (proc, boot_id)
}

/// `mapsentry tail --output json` on `url`.
pub fn tail(url: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["tail", "--server", url, "--output", "json"];
    args.extend_from_slice(extra);
    Proc::start("tail", &args)
}

/// The collector's stats as `mapsentry tail --stats --output json` prints them.
pub fn stats(url: &str) -> Value {
    let output = Command::new(mapsentry_bin())
        .args(["tail", "--server", url, "--stats", "--output", "json"])
        .output()
        .expect("mapsentry tail --stats");
    assert!(
        output.status.success(),
        "tail --stats: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stats JSON")
}

/// `GET http://ADDR/metrics`: the Prometheus text.
pub fn metrics(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to /metrics");
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("GET /metrics");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("reading /metrics");
    body
}

/// Poll `probe` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sum of a node's agent-reported drops (`dropped` of the stats), by reason.
pub fn dropped(stats: &Value, node: &str) -> HashMap<String, u64> {
    stats["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node"] == node)
        .flat_map(|n| n["dropped"].as_object().cloned().unwrap_or_default())
        .map(|(reason, count)| (reason, count.as_u64().unwrap_or(0)))
        .collect()
}

/// Parse JSON lines, panicking with the line on bad JSON.
pub fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}
