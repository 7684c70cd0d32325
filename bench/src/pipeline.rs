//! The pipeline benchmark, through the real binaries as a user runs them:
//!
//! - **latency**: `mmap-loop paced RATE` -> kernel -> `mapsentry agent` (decode, attribution,
//!   batching) -> gRPC -> `mapsentry collector` (ingest, policy evaluation of the example library)
//!   -> `mapsentry tail --output json` (the subscriber). Each event's latency is the time its line
//!   is read minus the event's `time_ns` (taken in the kernel at the call). Also: each process's
//!   CPU time and peak RSS, so events per CPU-second of the agent and of the collector.
//! - **storm**: `mmap-loop storm THREADS` under `mapsentry run --pid`: the calls made must equal
//!   the events received plus the drops the kernel counted.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// mmap calls per second of the paced workload.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds the paced workload runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Threads of the storm.
    #[arg(long, default_value_t = 2)]
    storm_threads: u64,
    /// Seconds of the storm.
    #[arg(long, default_value_t = 10)]
    storm_seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let latency = latency(&bin_dir, args).context("the latency run")?;
    let storm = storm(&bin_dir, args).context("the storm run")?;
    println!("{}", report(args, &latency, &storm));
    Ok(())
}

/// A process with its stderr lines on a channel.
struct Process {
    child: Child,
    stderr: mpsc::Receiver<String>,
    name: &'static str,
}

impl Process {
    fn start(name: &'static str, command: &mut Command) -> anyhow::Result<(Self, ChildStdout)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = lines(child.stderr.take().context("stderr")?);
        Ok((
            Self {
                child,
                stderr,
                name,
            },
            stdout,
        ))
    }

    /// Wait for a stderr line containing `marker`.
    fn wait_for(&self, marker: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("{} never printed {marker:?}", self.name),
            }
        }
    }

    /// CPU seconds (user + system) and peak RSS in KiB, from /proc.
    fn usage(&self) -> anyhow::Result<(f64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14.
        let rest = stat.rsplit_once(") ").context("stat format")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmHWM")?;
        #[expect(clippy::cast_precision_loss, reason = "CPU ticks stay small")]
        let seconds = ticks as f64 / clock_ticks();
        Ok((seconds, hwm))
    }

    /// SIGTERM and wait; returns the stderr lines left.
    fn stop(mut self) -> anyhow::Result<Vec<String>> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(self.stderr.iter().collect())
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; this crate has no unsafe `sysconf`), else 100.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn lines(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started `mmap-loop paced|storm`, waiting for the word.
struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Workload {
    fn start(bin_dir: &Path, mode: &str, a: u64, seconds: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(bin_dir.join("mmap-loop"))
            .args([mode, &a.to_string(), &seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting mmap-loop")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line.trim().parse().context("mmap-loop's pid")?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    /// Start the calls; wait for the end; the number of mmap calls made.
    fn go(mut self) -> anyhow::Result<u64> {
        self.stdin.write_all(b"go\n")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        self.child.wait()?;
        line.trim().parse().context("mmap-loop's call count")
    }
}

#[derive(Debug)]
struct Latency {
    calls: u64,
    received: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    agent_cpu_s: f64,
    agent_hwm_kib: u64,
    agent_shipped: u64,
    collector_cpu_s: f64,
    collector_hwm_kib: u64,
}

fn latency(bin_dir: &Path, args: &Args) -> anyhow::Result<Latency> {
    let mapsentry = bin_dir.join("mapsentry");
    let port = free_port()?;
    let metrics = free_port()?;
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let (collector, _) = Process::start(
        "the collector",
        Command::new(&mapsentry)
            .args(["collector", "--plaintext"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--policy")
            .arg(&policies),
    )?;
    collector.wait_for("collector serving on")?;
    let state = std::env::temp_dir().join(format!("mapsentry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let (agent, _) = Process::start(
        "the agent",
        Command::new(&mapsentry)
            .arg("agent")
            .args(["--collector", &format!("http://127.0.0.1:{port}")])
            .args(["--node", "bench"])
            .arg("--state-dir")
            .arg(&state),
    )?;
    agent.wait_for("agent on node")?;
    let (tail, tail_out) = Process::start(
        "tail",
        Command::new(&mapsentry)
            .arg("tail")
            .args(["--server", &format!("http://127.0.0.1:{port}")])
            .args(["--output", "json", "--comm", "mmap-loop"]),
    )?;
    // The subscriber is live once the collector has it: give it a moment, then start.
    thread::sleep(Duration::from_secs(2));
    let workload = Workload::start(bin_dir, "paced", args.rate, args.seconds)?;
    let pid = workload.pid;
    let (latency_tx, latency_rx) = mpsc::channel::<f64>();
    thread::spawn(move || {
        for line in BufReader::new(tail_out).lines().map_while(Result::ok) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["pid"].as_u64() != Some(u64::from(pid)) || !is_loop_call(&value) {
                continue;
            }
            let Some(time_ns) = value["time_ns"].as_u64() else {
                continue;
            };
            #[expect(clippy::cast_precision_loss, reason = "latencies are small")]
            let ms = now.saturating_sub(u128::from(time_ns)) as f64 / 1e6;
            if latency_tx.send(ms).is_err() {
                break;
            }
        }
    });
    let calls = workload.go()?;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (latencies.len() as u64) < calls {
        let left = deadline.saturating_duration_since(Instant::now());
        match latency_rx.recv_timeout(left) {
            Ok(ms) => latencies.push(ms),
            Err(_) => break,
        }
    }
    let (agent_cpu_s, agent_hwm_kib) = agent.usage()?;
    let (collector_cpu_s, collector_hwm_kib) = collector.usage()?;
    tail.stop()?;
    let agent_end = agent.stop()?;
    collector.stop()?;
    let _ = std::fs::remove_dir_all(&state);
    let agent_shipped = agent_end
        .iter()
        .find_map(|l| number_after(l, "shipped "))
        .context("the agent's totals line")?;
    if latencies.is_empty() {
        bail!("no event of the workload reached the subscriber");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into the sorted latencies"
        )]
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i]
    };
    Ok(Latency {
        calls,
        received: latencies.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        agent_cpu_s,
        agent_hwm_kib,
        agent_shipped,
        collector_cpu_s,
        collector_hwm_kib,
    })
}

/// The number right after `word` in `line`.
fn number_after(line: &str, word: &str) -> Option<u64> {
    let rest = &line[line.find(word)? + word.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[derive(Debug)]
struct Storm {
    calls: u64,
    received: u64,
    dropped: u64,
}

fn storm(bin_dir: &Path, args: &Args) -> anyhow::Result<Storm> {
    let workload = Workload::start(bin_dir, "storm", args.storm_threads, args.storm_seconds)?;
    let (run, out) = Process::start(
        "mapsentry run",
        Command::new(bin_dir.join("mapsentry"))
            .args(["run", "--output", "json", "--listen", "127.0.0.1:0"])
            .args(["--pid", &workload.pid.to_string()]),
    )?;
    run.wait_for("mapsentry: capturing")?;
    let (count_tx, count_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut events = 0u64;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && is_loop_call(&event)
            {
                events += 1;
            }
        }
        let _ = count_tx.send(events);
    });
    let calls = workload.go()?;
    // Let the reader drain what the ring buffer still holds.
    thread::sleep(Duration::from_secs(2));
    let end = run.stop()?;
    let received = count_rx.recv_timeout(Duration::from_mins(1))?;
    let dropped = end
        .iter()
        .find_map(|l| number_after(l, "dropped "))
        .context("run's totals line")?;
    Ok(Storm {
        calls,
        received,
        dropped,
    })
}

/// One of the workload's calls: a 4 KiB anonymous RW mmap (the loader's mappings, thread stacks
/// and malloc arenas, which the process maps too, are file-backed or larger).
fn is_loop_call(line: &Value) -> bool {
    line["kind"] == "event"
        && line["syscall"] == "mmap"
        && line["args"]["length"] == 4096
        && line["args"]["prot"] == 3
        && line["args"]["fd"] == -1
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
fn report(args: &Args, latency: &Latency, storm: &Storm) -> String {
    let per_cpu = |events: u64, cpu: f64| {
        if cpu > 0.0 {
            format!("{:.0}", events as f64 / cpu)
        } else {
            "n/a (under 1 tick)".to_owned()
        }
    };
    let balance = i128::from(storm.calls) - i128::from(storm.received) - i128::from(storm.dropped);
    let pipeline = format!(
        "### Pipeline at {} mmap/s for {} s (agent -> collector -> tail)\n\n\
         | measurement | value |\n|---|---:|\n\
         | calls made / events at the subscriber | {} / {} |\n\
         | latency syscall -> subscriber p50 | {:.1} ms |\n\
         | latency p99 | {:.1} ms |\n\
         | latency max | {:.1} ms |\n\
         | agent: CPU, events shipped (whole host), events per CPU-second | {:.2} s, {}, {} |\n\
         | collector: CPU, events per CPU-second | {:.2} s, {} |\n\
         | agent peak RSS | {:.1} MiB |\n\
         | collector peak RSS | {:.1} MiB |\n\n",
        args.rate,
        args.seconds,
        latency.calls,
        latency.received,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        latency.agent_cpu_s,
        latency.agent_shipped,
        per_cpu(latency.agent_shipped, latency.agent_cpu_s),
        latency.collector_cpu_s,
        per_cpu(latency.agent_shipped, latency.collector_cpu_s),
        latency.agent_hwm_kib as f64 / 1024.0,
        latency.collector_hwm_kib as f64 / 1024.0,
    );
    let storm_table = format!(
        "### Storm: {} threads mapping as fast as they can for {} s (`mapsentry run --pid`)\n\n\
         | calls made | events received | dropped (counted) | calls - received - dropped |\n\
         |---:|---:|---:|---:|\n| {} | {} | {} | {} |\n",
        args.storm_threads, args.storm_seconds, storm.calls, storm.received, storm.dropped, balance
    );
    format!("{pipeline}{storm_table}")
}
