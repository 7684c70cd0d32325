//! The agent on a quiet node: its CPU and its wake-ups a second while the one process it watches
//! (`--pid`) maps nothing, 1, 10, 20 or 100 pages a second. What an operator pays on every node
//! for having it there. An agent of another build (`--compare PATH`, e.g. an earlier commit's
//! binary) is measured in the same rounds, interleaved, so before and after share the machine's
//! state.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    pipeline::{Process, Workload, free_port},
    tracer,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds; the table gives medians over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// mmap calls a second of the watched process (0: it makes none).
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,20,100")]
    rates: Vec<u64>,
    /// Another `mapsentry` binary, measured beside this build's in every round.
    #[arg(long, value_name = "PATH")]
    compare: Option<PathBuf>,
}

/// One measurement of the agent.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// CPU milliseconds (user + system) a second.
    cpu_ms_per_s: f64,
    /// Times a second its threads went to sleep and were woken (voluntary context switches).
    wakeups_per_s: f64,
}

/// `mapsentry-bench idle`: the measurements, then the table.
///
/// # Errors
/// When a process does not start or say it is ready, or /proc cannot be read.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let mut builds = vec![("this build".to_owned(), bin_dir.join("mapsentry"))];
    if let Some(other) = &args.compare {
        builds.push((format!("`{}`", other.display()), other.clone()));
    }
    let mmap_loop = bin_dir.join("mmap-loop");
    // samples[build][rate]
    let mut samples = vec![vec![Vec::new(); args.rates.len()]; builds.len()];
    for round in 1..=args.rounds {
        for (r, &rate) in args.rates.iter().enumerate() {
            for (b, (name, mapsentry)) in builds.iter().enumerate() {
                let sample = measure(mapsentry, &mmap_loop, rate, args.seconds)
                    .with_context(|| format!("round {round}, {name}, {rate} mmap/s"))?;
                eprintln!("round {round}: {name}, {rate} mmap/s: {sample:?}");
                samples[b][r].push(sample);
            }
        }
    }
    println!(
        "### The agent on a quiet node: {} s per measurement, {} rounds, medians (range)\n",
        args.seconds, args.rounds
    );
    println!(
        "| build | mmap calls/s of the watched process | agent CPU ms per second | agent wake-ups per second |"
    );
    println!("|---|---:|---:|---:|");
    for (b, (name, _)) in builds.iter().enumerate() {
        for (r, rate) in args.rates.iter().enumerate() {
            let of = |f: fn(&Sample) -> f64| summary(samples[b][r].iter().map(f).collect());
            println!(
                "| {name} | {rate} | {} | {} |",
                of(|s| s.cpu_ms_per_s),
                of(|s| s.wakeups_per_s)
            );
        }
    }
    Ok(())
}

/// The agent watching a `mmap-loop paced RATE` for `seconds` (after 2 s to settle: its start-up
/// is not measured), shipping to a collector of the same build.
fn measure(mapsentry: &Path, mmap_loop: &Path, rate: u64, seconds: u64) -> anyhow::Result<Sample> {
    let port = free_port()?;
    let (collector, _) = Process::start(
        "the collector",
        Command::new(mapsentry)
            .args(["collector", "--plaintext"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()?)]),
    )?;
    collector.wait_for("collector serving on")?;
    let workload = Workload::start(Command::new(mmap_loop).args([
        "paced",
        &rate.to_string(),
        &seconds.to_string(),
    ]))?;
    let state = std::env::temp_dir().join(format!("mapsentry-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let (agent, _) = Process::start(
        "the agent",
        Command::new(mapsentry)
            .arg("agent")
            .args(["--collector", &format!("http://127.0.0.1:{port}")])
            .args(["--node", "bench", "--pid", &workload.pid.to_string()])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()?)])
            .arg("--state-dir")
            .arg(&state),
    )?;
    agent.wait_for("agent on node")?;
    thread::sleep(Duration::from_secs(2));
    let pid = agent.pid();
    let (cpu_before, woken_before) = (
        tracer::cpu_ns(pid).map_err(anyhow::Error::msg)?,
        wakeups(pid)?,
    );
    let started = Instant::now();
    let calls = workload.go()?;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, woken_after) = (
        tracer::cpu_ns(pid).map_err(anyhow::Error::msg)?,
        wakeups(pid)?,
    );
    agent.stop()?;
    collector.stop()?;
    let _ = std::fs::remove_dir_all(&state);
    anyhow::ensure!(
        calls >= rate * seconds * 9 / 10,
        "the workload made {calls} calls in {seconds} s at {rate}/s"
    );
    #[expect(
        clippy::cast_precision_loss,
        reason = "switch counts stay far below 2^52"
    )]
    Ok(Sample {
        cpu_ms_per_s: (cpu_after - cpu_before) / 1e6 / elapsed,
        wakeups_per_s: (woken_after - woken_before) as f64 / elapsed,
    })
}

/// Voluntary context switches of every thread of `pid` (each a sleep it was woken from).
fn wakeups(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("voluntary_ctxt_switches of a thread of {pid}"))?;
    }
    Ok(total)
}

/// "median (min-max)".
fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    format!(
        "{median:.2} ({:.2}-{:.2})",
        values[0],
        values[values.len() - 1]
    )
}
