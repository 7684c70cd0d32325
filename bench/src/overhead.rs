//! The overhead benchmark: the same workloads under every tracer, rounds interleaved.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::{Context, ensure};
use mapsentry_bench::{
    peer::Bpftrace,
    tracer::{MAPSENTRY_READY, Tracer, TracerOutput},
};

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
enum Variant {
    None,
    /// `mapsentry run` with these extra arguments, its JSON lines read by the benchmark.
    Mapsentry(&'static [&'static str]),
    /// `mapsentry run` of the `--baseline` binary, every event streamed.
    Baseline(PathBuf),
    /// bpftrace with this program, its output read by the benchmark.
    Bpftrace(Bpftrace),
}

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

const VARIANTS: [(&str, Variant); 8] = [
    ("bare", Variant::None),
    (
        "mapsentry, every event streamed (JSON lines)",
        Variant::Mapsentry(&[]),
    ),
    (
        "mapsentry, every event streamed, per-syscall tracepoints (a kernel without ia32)",
        Variant::Mapsentry(&[
            "--attach",
            "tracepoint",
            "--tracepoint-hooks",
            "per-syscall",
        ]),
    ),
    (
        "mapsentry, every event streamed + an Enforce policy (8 rules per cgroup)",
        Variant::Mapsentry(&["--policy", ENFORCE_POLICY_PATH]),
    ),
    (
        "mapsentry, in-kernel report filter (PROT_EXEC only)",
        Variant::Mapsentry(&["--prot-any", "PROT_EXEC"]),
    ),
    (
        "bpftrace, every call's arguments printed",
        Variant::Bpftrace(Bpftrace::Printed),
    ),
    (
        "bpftrace, in-kernel counter only (floor)",
        Variant::Bpftrace(Bpftrace::Floor),
    ),
    (
        "bpftrace, in-kernel counters at entry and exit",
        Variant::Bpftrace(Bpftrace::EntryExit),
    ),
];

/// One measurement of each workload under one tracer.
#[derive(Debug, Clone)]
struct Sample {
    mmap_ns: f64,
    getppid_ns: f64,
    /// What the tracer printed and the CPU it used (nothing for the bare variant).
    tracer: TracerOutput,
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
    let mut variants: Vec<(String, Variant)> = VARIANTS
        .iter()
        .map(|(name, variant)| ((*name).to_owned(), variant.clone()))
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
            Variant::Baseline(baseline.clone()),
        ));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let index = (round + k) % variants.len();
            let (name, variant) = &variants[index];
            let sample = measure(&bin_dir, variant, args)
                .with_context(|| format!("round {round}: {name}"))?;
            eprintln!(
                "round {round}: {name}: mmap {:.0} ns, getppid {:.0} ns, {} lines",
                sample.mmap_ns, sample.getppid_ns, sample.tracer.lines
            );
            samples[index].push(sample);
        }
    }
    report(args, &variants, &samples);
    Ok(())
}

fn measure(bin_dir: &Path, variant: &Variant, args: &Args) -> anyhow::Result<Sample> {
    let mapsentry = |binary: PathBuf, extra: &[&str]| {
        let mut command = Command::new(binary);
        command.args(["run", "--output", "json"]).args(extra);
        Tracer::start(command, MAPSENTRY_READY)
    };
    let tracer = match variant {
        Variant::None => None,
        Variant::Mapsentry(extra) => Some(mapsentry(bin_dir.join("mapsentry"), extra)),
        Variant::Baseline(binary) => Some(mapsentry(binary.clone(), &[])),
        Variant::Bpftrace(program) => Some(program.start()),
    }
    .transpose()
    .map_err(anyhow::Error::msg)?;
    let mmap_ns = workload(bin_dir, "mmap", args.mmap_iterations)?;
    let getppid_ns = workload(bin_dir, "getppid", args.getppid_iterations)?;
    let tracer = tracer
        .map(Tracer::stop)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    Ok(Sample {
        mmap_ns,
        getppid_ns,
        tracer,
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
fn report(args: &Args, variants: &[(String, Variant)], samples: &[Vec<Sample>]) {
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
        .map(|s| median(s.iter().map(|x| x.tracer.lines as f64).collect()))
        .collect();
    // Only where the tracer printed a line per call in every round.
    let per_line = |i: usize| {
        samples[i]
            .iter()
            .map(|x| x.tracer.cpu_us_per_line())
            .collect::<Option<Vec<_>>>()
            .map(median)
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
    // Found by what they run: the table's order has changed before (the enforced row was once
    // compared against the per-syscall one, at a fixed index).
    let streamed_with = |policy: bool| {
        variants.iter().position(|(_, variant)| match variant {
            Variant::Mapsentry(extra) if policy => extra.contains(&"--policy"),
            Variant::Mapsentry(extra) => extra.is_empty(),
            _ => false,
        })
    };
    if let (Some(enforced), Some(streamed)) = (streamed_with(true), streamed_with(false)) {
        println!(
            "\nAn Enforce policy (8 kernel rules per cgroup, and the embedded collector evaluating it for every event) versus capture alone on the mmap loop: {:+.1}%. The kernel lookups alone: `syscall_tax` (BENCHMARKS.md).",
            (mmap[enforced] / mmap[streamed] - 1.0) * 100.0
        );
    }
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
