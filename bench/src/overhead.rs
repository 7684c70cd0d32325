//! The overhead benchmark: the same workloads under every tracer, rounds interleaved.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds; each runs every variant once, in a rotated order.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// mmap+munmap iterations per measurement.
    #[arg(long, default_value_t = 200_000)]
    mmap_iterations: u32,
    /// getppid iterations per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    getppid_iterations: u32,
    /// A `mapsentry` binary of another commit (a release build): adds the variant "every event
    /// streamed" under it, so that a change's cost or gain is measured side by side in one run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
}

/// What traces the workload during a measurement.
#[derive(Debug, Clone)]
enum Tracer {
    None,
    /// `mapsentry run` with these extra arguments, its JSON lines read by the benchmark.
    Mapsentry(&'static [&'static str]),
    /// `mapsentry run` of the `--baseline` binary, every event streamed.
    Baseline(PathBuf),
    /// bpftrace with this program, its output read by the benchmark.
    Bpftrace(&'static str),
}

const BPFTRACE_STREAM: &str = r#"tracepoint:syscalls:sys_enter_mmap { printf("%s %d %d %lx %lu %lu %lu %ld %lu\n", comm, pid, tid, args->addr, args->len, args->prot, args->flags, (int64)args->fd, args->off); }"#;
const BPFTRACE_COUNT: &str = "tracepoint:syscalls:sys_enter_mmap { @calls = count(); }";
/// The floor with the exit hooked too, as a tool that reports each call's result must.
const BPFTRACE_COUNT_BOTH: &str = "tracepoint:syscalls:sys_enter_mmap { @calls = count(); } \
                                   tracepoint:syscalls:sys_exit_mmap { @returns = count(); }";

/// Where `run` writes [`ENFORCE_POLICY`] for the enforcement variant.
const ENFORCE_POLICY_PATH: &str = "/tmp/mapsentry-bench-enforce.yaml";
/// Eight Kill rules on every host cgroup (the most the kernel holds per cgroup), judged at every
/// mmap of the workload, none of which can match a real call (`PROT_SEM` and at least 1 PiB): the
/// cost of the enforcement lookups, never a kill on the shared host.
const ENFORCE_POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata: {name: bench-lookups}
spec:
  mode: Enforce
  hostProcesses: true
  rules:
    - {name: r0, match: {protAll: [PROT_SEM], minLength: 1Pi}, action: Kill}
    - {name: r1, match: {protAll: [PROT_SEM], minLength: 1Pi, mapping: Anonymous}, action: Kill}
    - {name: r2, match: {protAll: [PROT_SEM], minLength: 1Pi, mapping: File}, action: Kill}
    - {name: r3, match: {protAny: [PROT_SEM], minLength: 1Pi}, action: Kill}
    - {name: r4, match: {protAll: [PROT_SEM], flagsAny: [MAP_HUGETLB], minLength: 1Pi}, action: Kill}
    - {name: r5, match: {protAll: [PROT_SEM], flagsAll: [MAP_ANONYMOUS], minLength: 1Pi}, action: Kill}
    - {name: r6, match: {protAll: [PROT_SEM], syscalls: [mmap], minLength: 1Pi}, action: Kill}
    - {name: r7, match: {protAll: [PROT_SEM], syscalls: [mprotect], minLength: 1Pi}, action: Kill}
";

const VARIANTS: [(&str, Tracer); 8] = [
    ("bare", Tracer::None),
    (
        "mapsentry, every event streamed (JSON lines)",
        Tracer::Mapsentry(&[]),
    ),
    (
        "mapsentry, every event streamed, per-syscall tracepoints (a kernel without ia32)",
        Tracer::Mapsentry(&[
            "--attach",
            "tracepoint",
            "--tracepoint-hooks",
            "per-syscall",
        ]),
    ),
    (
        "mapsentry, every event streamed + an Enforce policy (8 rules per cgroup)",
        Tracer::Mapsentry(&["--policy", ENFORCE_POLICY_PATH]),
    ),
    (
        "mapsentry, in-kernel report filter (PROT_EXEC only)",
        Tracer::Mapsentry(&["--prot-any", "PROT_EXEC"]),
    ),
    (
        "bpftrace, every call's arguments printed",
        Tracer::Bpftrace(BPFTRACE_STREAM),
    ),
    (
        "bpftrace, in-kernel counter only (floor)",
        Tracer::Bpftrace(BPFTRACE_COUNT),
    ),
    (
        "bpftrace, in-kernel counters at entry and exit",
        Tracer::Bpftrace(BPFTRACE_COUNT_BOTH),
    ),
];

/// One measurement of each workload under one tracer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mmap_ns: f64,
    getppid_ns: f64,
    lines: u64,
    /// The tracer's CPU time (all its threads, user and system) from attaching to being
    /// stopped, in ns.
    tracer_cpu_ns: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for needed in ["mapsentry", "mmap-loop"] {
        ensure!(
            bin_dir.join(needed).exists(),
            "{needed} not built next to mapsentry-bench: use scripts/bench.sh"
        );
    }
    std::fs::write(ENFORCE_POLICY_PATH, ENFORCE_POLICY)
        .with_context(|| format!("writing {ENFORCE_POLICY_PATH}"))?;
    let mut variants: Vec<(String, Tracer)> = VARIANTS
        .iter()
        .map(|(name, tracer)| ((*name).to_owned(), tracer.clone()))
        .collect();
    if let Some(baseline) = &args.baseline {
        ensure!(
            baseline.is_file(),
            "--baseline {}: no such file",
            baseline.display()
        );
        variants.push((
            format!(
                "mapsentry of the baseline ({}), every event streamed",
                baseline.display()
            ),
            Tracer::Baseline(baseline.clone()),
        ));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let index = (round + k) % variants.len();
            let (name, tracer) = &variants[index];
            let sample = measure(&bin_dir, tracer, args)
                .with_context(|| format!("round {round}: {name}"))?;
            eprintln!(
                "round {round}: {name}: mmap {:.0} ns, getppid {:.0} ns, {} lines",
                sample.mmap_ns, sample.getppid_ns, sample.lines
            );
            samples[index].push(sample);
        }
    }
    report(args, &variants, &samples);
    Ok(())
}

fn measure(bin_dir: &Path, tracer: &Tracer, args: &Args) -> anyhow::Result<Sample> {
    let mapsentry = |binary: PathBuf, extra: &[&str]| {
        let mut command = Command::new(binary);
        command.args(["run", "--output", "json"]).args(extra);
        Running::start(command, ReadyOn::Stderr("mapsentry: capturing"))
    };
    let running = match tracer {
        Tracer::None => None,
        Tracer::Mapsentry(extra) => Some(mapsentry(bin_dir.join("mapsentry"), extra)?),
        Tracer::Baseline(binary) => Some(mapsentry(binary.clone(), &[])?),
        Tracer::Bpftrace(program) => {
            let mut command = Command::new("bpftrace");
            command.args(["-e", program]);
            Some(Running::start(command, ReadyOn::Stdout("Attaching"))?)
        }
    };
    thread::sleep(Duration::from_millis(200));
    let mmap_ns = workload(bin_dir, "mmap", args.mmap_iterations)?;
    let getppid_ns = workload(bin_dir, "getppid", args.getppid_iterations)?;
    let (lines, tracer_cpu_ns) = running.map(Running::stop).transpose()?.unwrap_or((0, 0.0));
    Ok(Sample {
        mmap_ns,
        getppid_ns,
        lines,
        tracer_cpu_ns,
    })
}

fn workload(bin_dir: &Path, kind: &str, iterations: u32) -> anyhow::Result<f64> {
    let output = Command::new(bin_dir.join("mmap-loop"))
        .args([kind, &iterations.to_string()])
        .output()?;
    ensure!(
        output.status.success(),
        "mmap-loop {kind}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

#[derive(Debug, Clone, Copy)]
enum ReadyOn {
    Stdout(&'static str),
    Stderr(&'static str),
}

/// A tracer whose output is read (and counted) by a thread, as a consumer would.
struct Running {
    child: Child,
    lines: mpsc::Receiver<u64>,
    /// Its CPU time when it had attached, in ns.
    cpu_at_ready: f64,
}

impl Running {
    fn start(mut command: Command, ready: ReadyOn) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (lines_tx, lines) = mpsc::channel();
        let (out_marker, err_marker) = match ready {
            ReadyOn::Stdout(m) => (Some(m), None),
            ReadyOn::Stderr(m) => (None, Some(m)),
        };
        let ready_err = ready_tx.clone();
        thread::spawn(move || {
            let mut count = 0;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out_marker.is_some_and(|m| line.contains(m)) {
                    let _ = ready_tx.send(());
                }
                count += 1;
            }
            let _ = lines_tx.send(count);
        });
        // The tracer's last words, for when it never attaches.
        let said = Arc::new(Mutex::new(VecDeque::new()));
        let said_by_tracer = Arc::clone(&said);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_marker.is_some_and(|m| line.contains(m)) {
                    let _ = ready_err.send(());
                }
                let mut said = said_by_tracer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if said.len() == 20 {
                    said.pop_front();
                }
                said.push_back(line);
            }
        });
        let last_words = |said: &Mutex<VecDeque<String>>| {
            let said = said.lock().unwrap_or_else(PoisonError::into_inner);
            said.iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let program = command.get_program().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_mins(1);
        while ready_rx.recv_timeout(Duration::from_millis(100)).is_err() {
            if let Some(status) = child.try_wait().context("waiting for the tracer")? {
                // Let the reader thread take its last lines.
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "{program} exited ({status}) before attaching; it said:\n{}",
                    last_words(&said)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!(
                    "{program} did not attach within 60 s; it said:\n{}",
                    last_words(&said)
                );
            }
        }
        let cpu_at_ready = cpu_ns(child.id())?;
        Ok(Self {
            child,
            lines,
            cpu_at_ready,
        })
    }

    /// SIGINT, wait, and return how many lines it printed and the CPU time it used since it
    /// attached (its shutdown not included).
    fn stop(mut self) -> anyhow::Result<(u64, f64)> {
        let cpu = cpu_ns(self.child.id())? - self.cpu_at_ready;
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok((self.lines.recv_timeout(Duration::from_mins(1))?, cpu))
    }
}

/// The CPU time process `pid` has used (all threads, user and system), in ns: `utime` and
/// `stime` of /proc/PID/stat, in clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
fn cpu_ns(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ns(&stat).with_context(|| format!("{path}: no utime and stime in {stat:?}"))
}

/// utime + stime of a /proc/PID/stat line, in ns. The fields are counted after the command
/// name's closing parenthesis, which the name itself may contain.
#[expect(
    clippy::cast_precision_loss,
    reason = "clock ticks of a benchmark's tracer stay far below 2^52"
)]
fn parse_cpu_ns(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 * 10_000_000.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "line counts stay far below 2^52"
)]
fn report(args: &Args, variants: &[(String, Tracer)], samples: &[Vec<Sample>]) {
    let mmap: Vec<f64> = samples
        .iter()
        .map(|s| median(s.iter().map(|x| x.mmap_ns).collect()))
        .collect();
    let getppid: Vec<f64> = samples
        .iter()
        .map(|s| median(s.iter().map(|x| x.getppid_ns).collect()))
        .collect();
    println!("{}", machine());
    println!(
        "{} rounds, interleaved; mmap+munmap of 4 KiB anonymous pages x {}, getppid x {}; medians.\n",
        args.rounds, args.mmap_iterations, args.getppid_iterations
    );
    println!(
        "| variant | mmap+munmap ns/iter | ratio to bare | getppid ns | ratio to bare | lines read (median) | tracer CPU us per line (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let lines: Vec<f64> = samples
        .iter()
        .map(|s| median(s.iter().map(|x| x.lines as f64).collect()))
        .collect();
    // Only where the tracer printed a line per call: the per-line cost of a tracer that prints
    // a handful is its idle cost.
    let per_line = |i: usize| {
        (lines[i] >= 1000.0).then(|| {
            median(
                samples[i]
                    .iter()
                    .map(|x| x.tracer_cpu_ns / x.lines.max(1) as f64 / 1000.0)
                    .collect(),
            )
        })
    };
    for (i, (name, _)) in variants.iter().enumerate() {
        let per_line = per_line(i).map_or_else(|| "-".to_owned(), |us| format!("{us:.2}"));
        println!(
            "| {name} | {:.0} | {:.2}x | {:.0} | {:.2}x | {:.0} | {per_line} |",
            mmap[i],
            mmap[i] / mmap[0],
            getppid[i],
            getppid[i] / getppid[0],
            lines[i]
        );
    }
    println!(
        "\nAn Enforce policy (8 kernel rules per cgroup, and the embedded collector evaluating it for every event) versus capture alone on the mmap loop: {:+.1}%. The kernel lookups alone: `syscall_tax` (BENCHMARKS.md).",
        (mmap[2] / mmap[1] - 1.0) * 100.0
    );
    if args.baseline.is_some()
        && let (Some(now), Some(before)) = (per_line(1), per_line(variants.len() - 1))
    {
        println!(
            "`mapsentry run`'s CPU per streamed line: {now:.2} us with this build, {before:.2} us with the baseline ({:.2}x).",
            now / before
        );
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, usize::from);
    format!("Machine: {cpu}, {cores} cores, kernel {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// utime and stime are read after the command name, whatever the name holds.
    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (a) b (c) 7) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ns(stat), Some(281.0 * 10_000_000.0));
        assert_eq!(parse_cpu_ns("4242 (x) S 1"), None);
    }

    /// A tracer that dies before attaching (bpftrace without tracefs, say) is reported at once,
    /// with what it said, not after the 60 s wait.
    #[test]
    fn a_tracer_that_exits_before_attaching_is_reported_with_its_words() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'ERROR: tracefs not mounted' >&2; exit 3"]);
        let started = Instant::now();
        let Err(error) = Running::start(command, ReadyOn::Stdout("Attaching")) else {
            panic!("a tracer that exits is an error");
        };
        let message = format!("{error:#}");
        assert!(
            message.contains("exited") && message.contains("tracefs not mounted"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{message}");
    }
}
