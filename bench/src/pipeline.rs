//! The pipeline benchmark, through the real binaries as a user runs them:
//!
//! - **latency**: `mmap-loop paced RATE` -> kernel -> `mapsentry agent` (decode, attribution,
//!   batching) -> gRPC -> `mapsentry collector` (ingest, policy evaluation of the example library)
//!   -> `mapsentry tail --output json` (the subscriber). Each event's latency is the time its line
//!   is read minus the event's `time_ns` (taken in the kernel at the call). Also: each process's
//!   CPU time from the workload's start (start-up excluded) and peak RSS, so events per
//!   CPU-second of the agent and of the collector.
//! - **storm**: `mmap-loop storm THREADS` under `mapsentry run --pid`: the calls made must equal
//!   the events received plus the drops the kernel counted.
//!
//! `mapsentry-bench pipeline` runs both on the host ([`run`]); `syscall_tax` runs the latency
//! part ([`latency`]) in the kernel-matrix VMs, once per attach mode, with its own paced worker.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::tracer;

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

/// `mapsentry-bench pipeline`: the latency run, then the storm, on the host; prints the report.
///
/// # Errors
/// When either run fails.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let setup = Setup {
        mapsentry: bin_dir.join("mapsentry"),
        capture: Vec::new(),
        workload: {
            let mut command = Command::new(bin_dir.join("mmap-loop"));
            command.args(["paced", &args.rate.to_string(), &args.seconds.to_string()]);
            command
        },
        comm: "mmap-loop".to_owned(),
        policies: example_policies(),
    };
    let latency = latency(setup).context("the latency run")?;
    let storm = storm(&bin_dir, args).context("the storm run")?;
    println!("{}", report(args, &latency, &storm));
    Ok(())
}

/// A process with its stderr lines on a channel.
pub(crate) struct Process {
    child: Child,
    stderr: mpsc::Receiver<String>,
    name: &'static str,
}

impl Process {
    pub(crate) fn start(
        name: &'static str,
        command: &mut Command,
    ) -> anyhow::Result<(Self, ChildStdout)> {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stderr line containing `marker`.
    pub(crate) fn wait_for(&self, marker: &str) -> anyhow::Result<String> {
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
        let cpu_ns = tracer::cpu_ns(pid).map_err(anyhow::Error::msg)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmHWM")?;
        Ok((cpu_ns / 1e9, hwm))
    }

    /// SIGTERM and wait; returns the stderr lines left.
    pub(crate) fn stop(mut self) -> anyhow::Result<Vec<String>> {
        tracer::signal(&self.child, libc::SIGTERM)
            .with_context(|| format!("stopping {}", self.name))?;
        self.child.wait()?;
        Ok(self.stderr.iter().collect())
    }
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

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started workload ([`crate::workload`]'s protocol), waiting for the word.
pub(crate) struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub(crate) pid: u32,
}

impl Workload {
    pub(crate) fn start(command: &mut Command) -> anyhow::Result<Self> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the workload {program}"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("the workload {program}'s pid, got {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    /// Start the calls; wait for the end; the number of mmap calls made.
    pub(crate) fn go(mut self) -> anyhow::Result<u64> {
        self.stdin.write_all(b"go\n")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        self.child.wait()?;
        line.trim()
            .parse()
            .with_context(|| format!("the workload's call count, got {line:?}"))
    }
}

/// What one latency run measured.
#[derive(Debug)]
pub struct Latency {
    /// mmap calls the workload made.
    pub calls: u64,
    /// Of them, events the subscriber read.
    pub received: u64,
    /// Records the collector told the subscriber it missed (`tail`'s `loss` lines: its queue was
    /// full, the subscriber behind): the workload's calls among them, and any other record the
    /// subscriber asked for (its `--comm`).
    pub told_lost: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds (user and system) from the workload's start until its last call was read or
    /// given up on (start-up excluded); peak RSS over the whole life.
    pub agent_cpu_s: f64,
    pub agent_hwm_kib: u64,
    /// Events the agent shipped (its totals line): every process of the node, not only the
    /// workload's.
    pub agent_shipped: u64,
    pub collector_cpu_s: f64,
    pub collector_hwm_kib: u64,
}

impl Latency {
    /// The workload's calls neither read by the subscriber nor within a loss notice it got.
    #[must_use]
    pub fn unaccounted(&self) -> u64 {
        self.calls.saturating_sub(self.received + self.told_lost)
    }
}

/// `events` over `cpu_s` CPU seconds, as a report's cell; a process that used less than a clock
/// tick has no figure.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
pub fn per_cpu_second(events: u64, cpu_s: f64) -> String {
    if cpu_s > 0.0 {
        format!("{:.0}", events as f64 / cpu_s)
    } else {
        "n/a (under 1 tick)".to_owned()
    }
}

/// A line of the subscriber's that the latency run counts.
enum Seen {
    /// One of the workload's calls, and how long after the call it was read, in ms.
    Call(f64),
    /// A loss notice: records the subscriber was told it missed.
    Lost(u64),
}

/// What a latency run starts.
#[derive(Debug)]
pub struct Setup {
    /// The `mapsentry` binary: its `collector`, `agent` and `tail`.
    pub mapsentry: PathBuf,
    /// The agent's capture arguments (`--attach fentry`); none for its defaults.
    pub capture: Vec<String>,
    /// A paced workload speaking [`crate::workload`]'s protocol, mapping 4 KiB anonymous
    /// read-write pages ([`is_loop_call`]).
    pub workload: Command,
    /// The workload's command name, which the subscriber asks for (`tail --comm`).
    pub comm: String,
    /// The policies the collector evaluates.
    pub policies: PathBuf,
}

/// `examples/policies`, where this crate was built (the VMs get it at the same path).
#[must_use]
pub fn example_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("/"))
        .join("examples/policies")
}

/// The workload's calls through agent, collector and subscriber: when each reached the
/// subscriber, and what the agent and the collector used.
///
/// # Errors
/// When a process does not start or say it is ready, or no event reaches the subscriber.
pub fn latency(mut setup: Setup) -> anyhow::Result<Latency> {
    let mapsentry = &setup.mapsentry;
    let port = free_port()?;
    let metrics = free_port()?;
    let policies = &setup.policies;
    let (collector, _) = Process::start(
        "the collector",
        Command::new(mapsentry)
            .args(["collector", "--plaintext"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--policy")
            .arg(policies),
    )?;
    collector.wait_for("collector serving on")?;
    let state = std::env::temp_dir().join(format!("mapsentry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let (agent, _) = Process::start(
        "the agent",
        Command::new(mapsentry)
            .arg("agent")
            .args(&setup.capture)
            .args(["--collector", &format!("http://127.0.0.1:{port}")])
            .args(["--node", "bench"])
            .arg("--state-dir")
            .arg(&state),
    )?;
    agent.wait_for("agent on node")?;
    let (tail, tail_out) = Process::start(
        "tail",
        Command::new(mapsentry)
            .arg("tail")
            .args(["--server", &format!("http://127.0.0.1:{port}")])
            .args(["--output", "json", "--comm", &setup.comm]),
    )?;
    // The subscriber is live once the collector has it: give it a moment, then start.
    thread::sleep(Duration::from_secs(2));
    let workload = Workload::start(&mut setup.workload)?;
    let pid = workload.pid;
    let (line_tx, line_rx) = mpsc::channel::<Seen>();
    thread::spawn(move || {
        for line in BufReader::new(tail_out).lines().map_while(Result::ok) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let seen = if value["kind"] == "loss" {
                Seen::Lost(value["count"].as_u64().unwrap_or(0))
            } else if value["pid"].as_u64() == Some(u64::from(pid)) && is_loop_call(&value) {
                let Some(time_ns) = value["time_ns"].as_u64() else {
                    continue;
                };
                #[expect(clippy::cast_precision_loss, reason = "latencies are small")]
                let ms = now.saturating_sub(u128::from(time_ns)) as f64 / 1e6;
                Seen::Call(ms)
            } else {
                continue;
            };
            if line_tx.send(seen).is_err() {
                break;
            }
        }
    });
    // CPU from here on: the workload's events, not the programs' loading and verification.
    let (agent_cpu_at_start, _) = agent.usage()?;
    let (collector_cpu_at_start, _) = collector.usage()?;
    let calls = workload.go()?;
    let mut latencies = Vec::new();
    let mut told_lost = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.len() as u64 + told_lost < calls {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(Seen::Call(ms)) => latencies.push(ms),
            Ok(Seen::Lost(count)) => told_lost += count,
            Err(_) => break,
        }
    }
    let (agent_cpu_s, agent_hwm_kib) = agent.usage()?;
    let (collector_cpu_s, collector_hwm_kib) = collector.usage()?;
    let (agent_cpu_s, collector_cpu_s) = (
        agent_cpu_s - agent_cpu_at_start,
        collector_cpu_s - collector_cpu_at_start,
    );
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
        told_lost,
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
    let workload = Workload::start(Command::new(bin_dir.join("mmap-loop")).args([
        "storm",
        &args.storm_threads.to_string(),
        &args.storm_seconds.to_string(),
    ]))?;
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

/// One of the paced workload's calls: a 4 KiB anonymous RW mmap (the loader's mappings, thread
/// stacks and malloc arenas, which the process maps too, are file-backed or larger).
#[must_use]
pub fn is_loop_call(line: &Value) -> bool {
    line["kind"] == "event"
        && line["syscall"] == "mmap"
        && line["args"]["length"] == 4096
        && line["args"]["prot"] == 3
        && line["args"]["fd"] == -1
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
fn report(args: &Args, latency: &Latency, storm: &Storm) -> String {
    let balance = i128::from(storm.calls) - i128::from(storm.received) - i128::from(storm.dropped);
    let pipeline = format!(
        "### Pipeline at {} mmap/s for {} s (agent -> collector -> tail)\n\n\
         | measurement | value |\n|---|---:|\n\
         | calls made / events at the subscriber / records it was told it missed | {} / {} / {} |\n\
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
        latency.told_lost,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        latency.agent_cpu_s,
        latency.agent_shipped,
        per_cpu_second(latency.agent_shipped, latency.agent_cpu_s),
        latency.collector_cpu_s,
        per_cpu_second(latency.agent_shipped, latency.collector_cpu_s),
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
