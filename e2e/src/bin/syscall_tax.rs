//! Benchmark (not a test), run inside the kernel-matrix VMs by `cargo xtask vm-bench`: what each
//! attach mode costs calls it does not report, measured side by side in one boot.
//!
//! - `getppid`: an unrelated system call; the tax every process pays while mapsentry is attached.
//! - `mmap` filtered: mmap+munmap of a 4 KiB anonymous page while the capture reports only
//!   another process (the hook, the enforcement lookup and the in-kernel report filter run; no
//!   record is written).
//! - each mode again with 8 enforcement rules that never match (`PROT_SEM`, at least 1 PiB): the
//!   cost of the enforcement lookups alone, nothing else different;
//! - and with 8 rules that judge classes at every mmap of the loop: their conditions on the call
//!   hold (`PROT_READ`, anonymous), and four need the caller's command name, four its
//!   executable, neither of which is in their class: the cost of judging comm and executable
//!   classes (issue 15: at most +3% against the row before).
//!
//! The rules are those of a `ClusterMmapPolicy` compiled by the agent's `Enforcer`, written for
//! one cgroup that the workers join: nothing else on the machine is judged.
//!
//! The loops run in a child process (this program re-executed with `--worker`): the capture never
//! reports the process that loaded it (`self_tgid`), and loops inside it would return at that
//! first test, before the entry logic they are meant to measure. (They did until 2026-11-27.)
//!
//! With the kernel's run-time statistics on, each variant also reports the entry programs' own
//! time per mmap of the loop (`entry_ns`): exact in kprobe and fentry modes, where they run for
//! mmap-family calls only; in tracepoint mode they run for every system call of the machine, so
//! other processes' calls are in the figure too.
//!
//! Then each mode streamed: `mapsentry run --output json` in that mode, started as a user starts
//! it, reporting every call of the machine, each line of its output read by this program (as a
//! consumer reads every event), and a run whose lines are fewer than the loop's mmap calls fails
//! the benchmark. Its mmap figure is the overhead table's "every event streamed" row
//! (bench/src/overhead.rs) for modes the build machine cannot attach, and its CPU per line (its
//! utime and stime from attaching to being stopped, over the lines read) that table's "tracer
//! CPU" column: both benchmarks run the tracers with the same code (`mapsentry_bench::tracer`).
//!
//! Beside them, the peer: bpftrace (where it is installed; `cargo xtask vm-bench` puts it and its
//! libraries in the VM) counting mmap calls in a map, on the per-syscall tracepoint's entry (the
//! floor of issue 19's overhead table) and on its entry and exit (what a tool that reports each
//! call's result must hook), and printing each call's arguments on the entry. Its mmap figures are
//! of calls it counts or prints, where the capture's filtered rows are of calls it judges and
//! leaves out. Each bpftrace run's count (or its printed lines) is checked against the calls the
//! loop made, and fewer fails the benchmark: the probes were not attached. Printing every call,
//! bpftrace drops events when its output buffer is full (`Lost N events`): those count as seen
//! for that check (within 1%: its notices can fall short), and the table gives how many it said
//! it lost. `mapsentry run` must print them all.
//!
//! Last, the storm in each streamed mode (the host pipeline benchmark's, bench/src/pipeline.rs,
//! for modes the build machine cannot attach): two threads mapping as fast as they can under
//! `mapsentry run --pid WORKER --prot-any PROT_EXEC`, with its default ring buffer (a user's
//! figures) and with one page (which overflows, so the drops are counted in every mode); every
//! call must be either printed or counted by the kernel as dropped (its totals line), or the
//! benchmark fails. The table gives calls per second, what was printed and dropped, and run's CPU
//! per line.
//!
//! And the host pipeline benchmark's latency run (`mapsentry_bench::pipeline::latency`) in each
//! streamed mode: this program re-executed with `--paced RATE SECONDS` maps a page RATE times a
//! second, `mapsentry agent` attached in the mode ships to `mapsentry collector` (evaluating
//! `examples/policies`), and `mapsentry tail` is the subscriber; each event's latency is the time
//! its line is read minus its kernel timestamp; at issue 19's 10,000 calls a second and at a
//! tenth of it. Every call must reach the subscriber or be counted in a loss notice it gets (the
//! collector's queue for it full), or the benchmark fails once the tables are printed.
//!
//! Rounds rotate the order of the variants (bare, then each mode this kernel attaches). Each
//! round's figure is divided by the same round's bare figure, so drift of the emulator's speed
//! between rounds cancels; reported: the median of those ratios and their range. Prints one
//! `SYSCALL-TAX` line per variant and a Markdown table.
#![expect(
    unsafe_code,
    reason = "raw getppid/mmap/munmap system calls are the workload"
)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use mapsentry_agent::{
    AttachMode, Capture, CaptureConfig, TracepointHooks,
    enforce::policies::{CgroupScope, Enforcer},
};
use mapsentry_bench::{
    peer::Bpftrace,
    pipeline::{self, Latency},
    tracer::{MAPSENTRY_READY, Tracer, TracerOutput},
    workload,
};
use mapsentry_e2e::cgroup::TestCgroup;
use serde_json::{Value, json};

/// Rounds and loop lengths for the VMs (software emulation); `--rounds N` and `--scale K`
/// (loops K times longer) for quicker machines, where one round is over too soon to be steady.
const ROUNDS: usize = 11;
const GETPPID_ITERATIONS: u32 = 300_000;
const MMAP_ITERATIONS: u32 = 20_000;
/// The storm: as many threads mapping as the VMs have CPUs (the host pipeline benchmark's storm
/// runs 2 too), so `mapsentry run` competes with them for a CPU; its rounds and length
/// (`--storm-rounds N`, `--storm-ms MS`).
const STORM_THREADS: usize = 2;
const STORM_ROUNDS: u32 = 3;
const STORM_MS: u32 = 2000;
/// The storm's second ring buffer: one page, which it overflows.
const ONE_PAGE: u32 = 4096;
/// The pipeline's paced workload: issue 19's latency goal is set at 10,000 events a second, more
/// than the emulated VMs' user space keeps up with (the first runs there: the subscriber 1-3 s
/// behind, 12-20% of the calls missed and told so), so also a tenth of it (`--pipeline-rate N`
/// for one rate, `--pipeline-seconds S`).
const PIPELINE_RATES: [u32; 2] = [10_000, 1_000];
const PIPELINE_SECONDS: u32 = 10;

/// `--NAME N` among `args`, or `default`.
fn flag(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}"))
        })
}

fn getppid() {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// mmap+munmap of one fresh anonymous page mapped `prot`.
fn map_page(prot: libc::c_int) {
    // SAFETY: maps one fresh anonymous page and unmaps exactly that page.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED, "mmap failed");
        libc::munmap(page, 4096);
    }
}

/// The loop's call: a read-write page.
fn mmap_munmap() {
    map_page(libc::PROT_READ | libc::PROT_WRITE);
}

/// The storm's call: a `PROT_READ|PROT_EXEC` page, the only call of its process an in-kernel
/// `--prot-any PROT_EXEC` filter leaves (thread stacks and heap are read-write).
fn exec_page() {
    map_page(libc::PROT_READ | libc::PROT_EXEC);
}

/// Mean nanoseconds per call of `work`, after a warm-up of a tenth as many.
fn per_call(work: fn(), iterations: u32) -> f64 {
    for _ in 0..iterations / 10 {
        work();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        work();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `per_call` of the loop `kind` (`getppid` or `mmap`) in a child process in `cgroup`, which the
/// capture treats like any other process.
fn in_child(kind: &str, iterations: u32, cgroup: &TestCgroup) -> f64 {
    let exe = std::env::current_exe().expect("this program's path");
    let output = Command::new(exe)
        .args(["--worker", kind, &iterations.to_string()])
        .arg(cgroup.path().join("cgroup.procs"))
        .output()
        .expect("running the worker");
    assert!(
        output.status.success(),
        "worker {kind}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("worker {kind} printed {text:?}: {e}"))
}

/// Once a line arrives on stdin (the tracer is attached), [`STORM_THREADS`] threads call
/// [`exec_page`] as fast as they can for `millis`; prints how many calls they made.
fn storm_worker(millis: u64) {
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .expect("reading the word to start");
    let until = Instant::now() + Duration::from_millis(millis);
    let calls: u64 = thread::scope(|scope| {
        let threads: Vec<_> = (0..STORM_THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut calls = 0u64;
                    while Instant::now() < until {
                        for _ in 0..64 {
                            exec_page();
                        }
                        calls += 64;
                    }
                    calls
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a storm thread"))
            .sum()
    });
    println!("{calls}");
}

/// `--worker KIND N PROCS`: join the cgroup of `PROCS`, run one loop and print its ns per call;
/// with `storm`, N is milliseconds of [`storm_worker`].
fn worker(args: &[String]) {
    let [kind, iterations, procs] = args else {
        panic!("usage: syscall_tax --worker getppid|mmap|storm ITERATIONS|MILLIS CGROUP_PROCS");
    };
    std::fs::write(procs, std::process::id().to_string()).expect("joining the bench cgroup");
    if kind == "storm" {
        storm_worker(iterations.parse().expect("MILLIS is a number"));
        return;
    }
    let iterations: u32 = iterations.parse().expect("ITERATIONS is a number");
    let work: fn() = match kind.as_str() {
        "getppid" => getppid,
        "mmap" => mmap_munmap,
        other => panic!("unknown worker loop {other:?}: getppid or mmap"),
    };
    println!("{}", per_call(work, iterations));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--worker") {
        worker(&args[1..]);
        return;
    }
    if let [first, rate, seconds] = &args[..]
        && first == "--paced"
    {
        let number = |n: &String| -> u64 {
            n.parse()
                .unwrap_or_else(|e| panic!("usage: syscall_tax --paced RATE SECONDS ({n}: {e})"))
        };
        let (rate, seconds) = (number(rate), number(seconds));
        workload::serve(|| workload::paced(rate, seconds, mmap_munmap));
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let cgroup = TestCgroup::create(&format!("mapsentry-bench-tax-{}", std::process::id()))
        .expect("creating the bench cgroup (needs root and cgroup v2)");
    let mut variants = vec![Variant::Bare];
    let mut streamed = Vec::new();
    for mode in [
        Hook(AttachMode::Fentry, TracepointHooks::Auto),
        Hook(AttachMode::Kprobe, TracepointHooks::Auto),
        Hook(AttachMode::Tracepoint, TracepointHooks::Generic),
        Hook(AttachMode::Tracepoint, TracepointHooks::PerSyscall),
    ] {
        match Capture::start(&config(mode)) {
            Ok(capture) => {
                for program in capture.program_stats() {
                    println!(
                        "SYSCALL-TAX mode={mode} program={} verified_instructions={}",
                        program.name,
                        program
                            .verified_instructions
                            .map_or_else(|| "?".to_owned(), |n| n.to_string())
                    );
                }
                drop(capture);
                for rules in [Rules::None, Rules::Plain, Rules::Calls, Rules::Classes] {
                    variants.push(Variant::Mapsentry(mode, rules));
                }
                streamed.push(Variant::Streamed(mode));
            }
            Err(error) => println!("SYSCALL-TAX mode={mode} unavailable: {error}"),
        }
    }
    // `mapsentry run` in each mode this kernel attaches, once before the rounds as the peer is.
    let mapsentry = match mapsentry_binary().and_then(|binary| {
        let Some(&Variant::Streamed(mode)) = streamed.first() else {
            return Err("no attach mode works here".to_owned());
        };
        let _said = Tracer::start(mapsentry_run(&binary, mode), MAPSENTRY_READY)?.kill();
        Ok(binary)
    }) {
        Ok(binary) => {
            println!("SYSCALL-TAX streamed-by={}", binary.display());
            variants.extend(streamed);
            Some(binary)
        }
        Err(why) => {
            println!("SYSCALL-TAX streamed unavailable: {why}");
            None
        }
    };
    match Bpftrace::version().and_then(|version| {
        // Once before the rounds, as each mode is: a peer that cannot attach here is named,
        // not a failure halfway through.
        let _said = Bpftrace::EntryExit.start()?.kill();
        Ok(version)
    }) {
        Ok(version) => {
            println!("SYSCALL-TAX peer={version}");
            variants.extend(
                [Bpftrace::Floor, Bpftrace::EntryExit, Bpftrace::Printed].map(Variant::Bpftrace),
            );
        }
        Err(why) => println!("SYSCALL-TAX peer=bpftrace unavailable: {why}"),
    }
    let _stats = mapsentry_agent::capture::enable_run_time_stats()
        .inspect_err(|e| println!("SYSCALL-TAX no run-time statistics: {e}"))
        .ok();
    let mut getppid_ns = vec![Vec::new(); variants.len()];
    let mut mmap_ns = vec![Vec::new(); variants.len()];
    let mut entry_ns = vec![Vec::new(); variants.len()];
    let mut lines = vec![Vec::new(); variants.len()];
    let mut lost = vec![Vec::new(); variants.len()];
    // The tracer's CPU microseconds per line, where it printed a line per call.
    let mut cpu_per_line = vec![Vec::new(); variants.len()];
    let rounds = flag(&args, "--rounds", ROUNDS as u32) as usize;
    let scale = flag(&args, "--scale", 1);
    for round in 0..rounds {
        for k in 0..variants.len() {
            let index = (round + k) % variants.len();
            let mmap_calls = mmap_calls(scale);
            let variant = variants[index];
            let measure = || measure(variant, mapsentry.as_deref(), scale, &cgroup);
            // A tracer that fails to start or stop (bpftrace under emulation once did not exit
            // within 300 s of SIGINT) has its round measured again, once, and said so.
            let measured = measure()
                .or_else(|e| {
                    println!("SYSCALL-TAX variant={variant} round={round} measured again: {e}");
                    measure()
                })
                .unwrap_or_else(|e| panic!("{variant}: {e}"));
            getppid_ns[index].push(measured.getppid_ns);
            mmap_ns[index].push(measured.mmap_ns);
            entry_ns[index].extend(measured.entry_ns);
            if let Some(output) = measured.tracer {
                let seen = variant
                    .seen(&output)
                    .unwrap_or_else(|e| panic!("{variant}: {e}"));
                #[expect(clippy::cast_precision_loss, reason = "event counts stay below 2^52")]
                {
                    lines[index].push(output.lines as f64);
                    lost[index].push(output.lost as f64);
                }
                cpu_per_line[index].extend(output.cpu_us_per_line());
                let needed = variant.least_seen(mmap_calls);
                assert!(
                    seen >= u64::from(needed),
                    "{variant} saw {seen} mmap calls where the loop made {mmap_calls} \
                     ({output:?}): it was not attached, or not read, throughout"
                );
            }
        }
    }
    println!(
        "| variant | getppid ns (median) | getppid ratio (median, range) | mmap+munmap ns (filtered, or streamed) | mmap ratio (median, range) | entry programs ns per mmap | lines read (median) | events it said it lost (median) | tracer CPU us per line (median) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, variant) in variants.iter().enumerate() {
        let name = variant.to_string();
        let (g_ratio, g_low, g_high) = ratios(&getppid_ns[i], &getppid_ns[0]);
        let (m_ratio, m_low, m_high) = ratios(&mmap_ns[i], &mmap_ns[0]);
        let g = median(getppid_ns[i].clone());
        let m = median(mmap_ns[i].clone());
        let e = if entry_ns[i].is_empty() {
            0.0
        } else {
            median(entry_ns[i].clone())
        };
        let of_tracer = |counts: &[f64]| {
            if counts.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(counts.to_vec()))
            }
        };
        let (read, said_lost) = (of_tracer(&lines[i]), of_tracer(&lost[i]));
        let cpu = if cpu_per_line[i].is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", median(cpu_per_line[i].clone()))
        };
        println!(
            "| {name} | {g:.0} | {g_ratio:.3}x ({g_low:.2}-{g_high:.2}) | {m:.0} | {m_ratio:.3}x ({m_low:.2}-{m_high:.2}) | {e:.0} | {read} | {said_lost} | {cpu} |"
        );
        println!(
            "SYSCALL-TAX variant={name} getppid_ns={g:.1} getppid_ratio={g_ratio:.4} mmap_ns={m:.1} mmap_ratio={m_ratio:.4} entry_ns={e:.1} lines={read} lost={said_lost} cpu_us_per_line={cpu}"
        );
    }
    // Issue 15's figure: judging comm and executable classes against rules without them, per
    // round (the two variants run next to each other in every round).
    for (i, variant) in variants.iter().enumerate() {
        let Variant::Mapsentry(mode, Rules::Classes) = variant else {
            continue;
        };
        let Some(plain) = variants
            .iter()
            .position(|v| *v == Variant::Mapsentry(*mode, Rules::Plain))
        else {
            continue;
        };
        let (ratio, low, high) = ratios(&mmap_ns[i], &mmap_ns[plain]);
        println!(
            "SYSCALL-TAX classes-vs-plain mode={mode} mmap_ratio={ratio:.4} low={low:.4} high={high:.4}"
        );
        if let Some(calls) = variants
            .iter()
            .position(|v| *v == Variant::Mapsentry(*mode, Rules::Calls))
        {
            let (ratio, low, high) = ratios(&mmap_ns[i], &mmap_ns[calls]);
            println!(
                "SYSCALL-TAX classes-vs-calls mode={mode} mmap_ratio={ratio:.4} low={low:.4} high={high:.4}"
            );
        }
    }
    if let Some(binary) = &mapsentry {
        let modes: Vec<Hook> = variants
            .iter()
            .filter_map(|variant| match variant {
                Variant::Streamed(hook) => Some(*hook),
                _ => None,
            })
            .collect();
        storms(
            binary,
            &modes,
            flag(&args, "--storm-rounds", STORM_ROUNDS),
            flag(&args, "--storm-ms", STORM_MS),
            &cgroup,
        );
        let rates = match flag(&args, "--pipeline-rate", 0) {
            0 => PIPELINE_RATES.to_vec(),
            rate => vec![rate],
        };
        pipelines(
            binary,
            &modes,
            &rates,
            flag(&args, "--pipeline-seconds", PIPELINE_SECONDS),
        );
    }
}

/// The latency run of the host pipeline benchmark with the agent attached in each of `modes`, at
/// each of `rates`; fails, once the tables are printed, where a run failed or a call neither
/// reached the subscriber nor was in a loss notice it got.
fn pipelines(binary: &Path, modes: &[Hook], rates: &[u32], seconds: u32) {
    let exe = std::env::current_exe().expect("this program's path");
    let mut failures = Vec::new();
    for &rate in rates {
        println!(
            "| mode, at {rate} mmap/s for {seconds} s | calls made | events at the subscriber | records it was told it missed | latency p50 ms | p99 ms | max ms | agent CPU s | agent: events shipped, per CPU-second | collector CPU s | agent peak RSS MiB | collector peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &mode in modes {
            let mut paced = Command::new(&exe);
            paced.args(["--paced", &rate.to_string(), &seconds.to_string()]);
            let setup = pipeline::Setup {
                mapsentry: binary.to_owned(),
                capture: capture_args(mode),
                workload: paced,
                comm: "syscall_tax".to_owned(),
                policies: pipeline::example_policies(),
            };
            match pipeline::latency(setup) {
                Ok(latency) => {
                    print_pipeline(mode, rate, &latency);
                    if latency.unaccounted() > 0 {
                        failures.push(format!(
                            "{mode} at {rate}/s: {} of {} calls reached the subscriber and it \
                             was told of {} missed",
                            latency.received, latency.calls, latency.told_lost
                        ));
                    }
                }
                Err(error) => {
                    println!("SYSCALL-TAX pipeline mode={mode} rate={rate} failed: {error:#}");
                    failures.push(format!("{mode} at {rate}/s: {error:#}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the pipeline's latency runs: {}",
        failures.join("; ")
    );
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
fn print_pipeline(mode: Hook, rate: u32, l: &Latency) {
    let per_cpu = pipeline::per_cpu_second(l.agent_shipped, l.agent_cpu_s);
    let (agent_mib, collector_mib) = (
        l.agent_hwm_kib as f64 / 1024.0,
        l.collector_hwm_kib as f64 / 1024.0,
    );
    println!(
        "| {mode} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {}, {per_cpu} | {:.2} | {agent_mib:.1} | {collector_mib:.1} |",
        l.calls,
        l.received,
        l.told_lost,
        l.p50_ms,
        l.p99_ms,
        l.max_ms,
        l.agent_cpu_s,
        l.agent_shipped,
        l.collector_cpu_s,
    );
    println!(
        "SYSCALL-TAX pipeline mode={mode} rate={rate} calls={} received={} told_lost={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} agent_cpu_s={:.2} agent_shipped={} collector_cpu_s={:.2} agent_hwm_kib={} collector_hwm_kib={}",
        l.calls,
        l.received,
        l.told_lost,
        l.p50_ms,
        l.p99_ms,
        l.max_ms,
        l.agent_cpu_s,
        l.agent_shipped,
        l.collector_cpu_s,
        l.agent_hwm_kib,
        l.collector_hwm_kib,
    );
}

/// One storm under `mapsentry run`: what the worker made, what run printed and what the kernel
/// counted as dropped (its ring buffer full while run was behind).
#[derive(Debug, Clone, Copy)]
struct Storm {
    calls: u64,
    emitted: u64,
    dropped: u64,
    /// run's CPU microseconds per line it printed, from attaching to being stopped.
    cpu_us_per_line: Option<f64>,
}

impl Storm {
    /// Calls neither printed nor counted as dropped: 0 when every call is accounted for.
    fn unaccounted(self) -> i128 {
        i128::from(self.calls) - i128::from(self.emitted) - i128::from(self.dropped)
    }
}

/// `mapsentry run --pid WORKER --prot-any PROT_EXEC` attached as `hook` says (with a ring buffer
/// of `ring_bytes`, or its default) while the worker storms for `millis`, every line of its
/// output read; its totals line (the last) says what it printed and what the kernel dropped.
fn storm(
    binary: &Path,
    (hook, ring_bytes): (Hook, Option<u32>),
    millis: u32,
    cgroup: &TestCgroup,
) -> Result<Storm, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let mut worker = Command::new(exe)
        .args(["--worker", "storm", &millis.to_string()])
        .arg(cgroup.path().join("cgroup.procs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the storm's worker: {e}"))?;
    let mut command = mapsentry_run(binary, hook);
    command.args(["--pid", &worker.id().to_string(), "--prot-any", "PROT_EXEC"]);
    if let Some(bytes) = ring_bytes {
        command.args(["--ring-buffer-bytes", &bytes.to_string()]);
    }
    let tracer = match Tracer::start(command, MAPSENTRY_READY) {
        Ok(tracer) => tracer,
        Err(error) => {
            let _ = worker.kill();
            let _ = worker.wait();
            return Err(error);
        }
    };
    let started = worker
        .stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .map_err(|e| format!("starting the storm: {e}"));
    let made = worker
        .wait_with_output()
        .map_err(|e| format!("waiting for the storm: {e}"));
    let output = tracer.stop()?;
    started?;
    let made = made?;
    let text = String::from_utf8_lossy(&made.stdout);
    if !made.status.success() {
        return Err(format!("the storm's worker exited with {}", made.status));
    }
    let calls = text
        .trim()
        .parse()
        .map_err(|e| format!("the storm's worker printed {text:?}: {e}"))?;
    let last = output.last.as_deref().unwrap_or_default();
    let totals: Value =
        serde_json::from_str(last).map_err(|e| format!("its last line {last:?}: {e}"))?;
    let count = |name: &str| {
        totals[name]
            .as_u64()
            .ok_or_else(|| format!("its totals {totals} have no {name:?}"))
    };
    if totals["kind"] != "totals" || totals["mode"] != hook.0.as_str() {
        return Err(format!(
            "it ended with {totals}, not totals of mode {}",
            hook.0
        ));
    }
    let (emitted, dropped) = (count("emitted")?, count("dropped")?);
    if output.lines < emitted + 1 {
        return Err(format!(
            "{} lines read where it printed {emitted} events and its totals",
            output.lines
        ));
    }
    Ok(Storm {
        calls,
        emitted,
        dropped,
        cpu_us_per_line: output.cpu_us_per_line(),
    })
}

/// The storm under each streamed mode, `rounds` times with the default ring buffer (a user's
/// figures) and `rounds` times with one page (it overflows: the drops are counted in every mode),
/// then the table. A storm whose calls are not each printed or counted as dropped, or a one-page
/// ring that never overflowed, fails the benchmark once every figure is printed.
#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
fn storms(binary: &Path, modes: &[Hook], rounds: u32, millis: u32, cgroup: &TestCgroup) {
    let mut unbalanced = Vec::new();
    println!(
        "\nStorm: {STORM_THREADS} threads mapping PROT_READ|PROT_EXEC pages as fast as they can for {millis} ms under `mapsentry run --pid --prot-any PROT_EXEC`, {rounds} rounds; medians.\n\n\
         | mode | calls made | calls per s | events printed | dropped (counted) | calls - printed - dropped (every round) | run's CPU us per line |\n\
         |---|---:|---:|---:|---:|---|---:|"
    );
    for (hook, ring_bytes) in modes
        .iter()
        .flat_map(|&hook| [(hook, None), (hook, Some(ONE_PAGE))])
    {
        let name = match ring_bytes {
            None => hook.to_string(),
            Some(bytes) => format!("{hook}, a ring buffer of {bytes} bytes"),
        };
        let mut runs = Vec::new();
        for round in 0..rounds {
            let run = storm(binary, (hook, ring_bytes), millis, cgroup)
                .unwrap_or_else(|e| panic!("storm in {name} mode, round {round}: {e}"));
            println!(
                "SYSCALL-TAX storm mode={hook} ring_bytes={} round={round} calls={} emitted={} dropped={} unaccounted={} cpu_us_per_line={}",
                ring_bytes.map_or_else(|| "default".to_owned(), |b| b.to_string()),
                run.calls,
                run.emitted,
                run.dropped,
                run.unaccounted(),
                run.cpu_us_per_line
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.2}"))
            );
            if run.unaccounted() != 0 || (ring_bytes.is_some() && run.dropped == 0) {
                unbalanced.push(format!("{name}, round {round}: {run:?}"));
            }
            runs.push(run);
        }
        let of = |figure: fn(&Storm) -> f64| median(runs.iter().map(figure).collect());
        let calls = of(|run| run.calls as f64);
        let per_line: Vec<f64> = runs.iter().filter_map(|run| run.cpu_us_per_line).collect();
        let balance: Vec<String> = runs
            .iter()
            .map(|run| run.unaccounted().to_string())
            .collect();
        println!(
            "| {name} | {calls:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            calls * 1000.0 / f64::from(millis),
            of(|run| run.emitted as f64),
            of(|run| run.dropped as f64),
            balance.join(", "),
            if per_line.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median(per_line))
            }
        );
    }
    assert!(
        unbalanced.is_empty(),
        "calls neither printed nor counted as dropped, or a one-page ring that never \
         overflowed: {unbalanced:?}"
    );
}

/// The mmap loop's calls at `--scale scale`, its warm-up included.
fn mmap_calls(scale: u32) -> u32 {
    MMAP_ITERATIONS * scale + MMAP_ITERATIONS * scale / 10
}

/// One round's figures for one variant.
#[derive(Debug)]
struct Measured {
    getppid_ns: f64,
    mmap_ns: f64,
    /// The entry programs' ns per mmap of the loop (the capture's variants).
    entry_ns: Option<f64>,
    /// What the tracer printed (the streamed and bpftrace variants).
    tracer: Option<TracerOutput>,
}

/// The loops under `variant`: the capture attached in this process, or a tracer started before
/// and stopped after them. A tracer that does not start or stop is an error.
fn measure(
    variant: Variant,
    mapsentry: Option<&Path>,
    scale: u32,
    cgroup: &TestCgroup,
) -> Result<Measured, String> {
    let mmap_calls = mmap_calls(scale);
    let (capture, tracer) = match variant {
        Variant::Bare => (None, None),
        Variant::Mapsentry(mode, rules) => {
            let mut capture = Capture::start(&config(mode)).expect("attached before");
            rules.apply(&mut capture, cgroup);
            (Some(capture), None)
        }
        Variant::Streamed(mode) => {
            let binary = mapsentry.expect("found before");
            (
                None,
                Some(Tracer::start(mapsentry_run(binary, mode), MAPSENTRY_READY)?),
            )
        }
        Variant::Bpftrace(program) => (None, Some(program.start()?)),
    };
    let getppid_ns = in_child("getppid", GETPPID_ITERATIONS * scale, cgroup);
    let before = capture.as_ref().map(entry_time);
    let mmap_ns = in_child("mmap", MMAP_ITERATIONS * scale, cgroup);
    let entry_ns = before
        .zip(capture.as_ref())
        .map(|(before, capture)| (entry_time(capture) - before) / f64::from(mmap_calls));
    drop(capture);
    Ok(Measured {
        getppid_ns,
        mmap_ns,
        entry_ns,
        tracer: tracer.map(Tracer::stop).transpose()?,
    })
}

/// Nanoseconds the capture's entry programs ran so far (run-time statistics).
fn entry_time(capture: &Capture) -> f64 {
    capture
        .program_stats()
        .iter()
        .filter(|p| p.name.ends_with("_enter"))
        .map(|p| p.run_time.as_secs_f64() * 1e9)
        .sum()
}

/// Per-round ratios of `variant` to `base`: (median, lowest, highest).
fn ratios(variant: &[f64], base: &[f64]) -> (f64, f64, f64) {
    let per_round: Vec<f64> = variant.iter().zip(base).map(|(v, b)| v / b).collect();
    let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let high = per_round.iter().copied().fold(0.0, f64::max);
    (median(per_round), low, high)
}

/// What enforcement a variant loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    None,
    /// Eight Kill rules no call can match: `PROT_SEM` required, at least 1 PiB long.
    Plain,
    /// Eight Kill rules that pass the protection test for the loop's mmaps (`PROT_READ`,
    /// anonymous) and fail on the call's length (at least 1 PiB): what [`Rules::Classes`] costs
    /// short of the caller's comm and executable.
    Calls,
    /// Eight Kill rules whose conditions on the call hold for the loop's mmaps (`PROT_READ`,
    /// anonymous), four with a command name and four with an executable glob nothing has.
    Classes,
}

impl Rules {
    fn policy(self) -> Option<serde_json::Value> {
        let rules: Vec<serde_json::Value> = match self {
            Self::None => return None,
            Self::Plain => (0..8)
                .map(|i| {
                    json!({"name": format!("r{i}"), "action": "Kill",
                           "match": {"protAll": ["PROT_SEM"], "minLength": "1Pi"}})
                })
                .collect(),
            Self::Calls => (0..8)
                .map(|i| {
                    json!({"name": format!("r{i}"), "action": "Kill",
                           "match": {"protAny": ["PROT_READ"], "mapping": "Anonymous", "minLength": "1Pi"}})
                })
                .collect(),
            Self::Classes => (0..8)
                .map(|i| {
                    let condition = if i < 4 {
                        json!({"comm": [format!("ms-none-{i}")]})
                    } else {
                        json!({"executableGlobs": [format!("/ms-none-{i}/**")]})
                    };
                    let mut m = json!({"protAny": ["PROT_READ"], "mapping": "Anonymous"});
                    m.as_object_mut()
                        .unwrap()
                        .extend(condition.as_object().unwrap().clone());
                    json!({"name": format!("r{i}"), "action": "Kill", "match": m})
                })
                .collect(),
        };
        Some(json!({
            "apiVersion": "mapsentry.dev/v1alpha1", "kind": "ClusterMmapPolicy",
            "metadata": {"name": "bench"},
            "spec": {"hostProcesses": true, "mode": "Enforce", "rules": rules},
        }))
    }

    /// Load the rules for `cgroup` alone.
    fn apply(self, capture: &mut Capture, cgroup: &TestCgroup) {
        let Some(policy) = self.policy() else {
            return;
        };
        let mut enforcer = Enforcer::new(None, None);
        enforcer
            .set_policies(1, vec![policy.to_string()])
            .expect("the bench policy is valid");
        assert!(enforcer.refused().is_empty(), "{:?}", enforcer.refused());
        enforcer.apply(
            capture.rules(),
            &[(cgroup.id().unwrap(), CgroupScope::Host)],
        );
        assert_eq!(enforcer.stats().cgroups, 1, "{:?}", enforcer.stats());
    }
}

/// An attach mode and, for tracepoint mode, which tracepoints: both kinds are measured whatever
/// the kernel (the per-syscall ones, which never see ia32 calls, are what tracepoint mode uses
/// where the kernel runs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hook(AttachMode, TracepointHooks);

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self(AttachMode::Tracepoint, TracepointHooks::PerSyscall) => {
                f.write_str("tracepoint-per-syscall")
            }
            Self(mode, _) => write!(f, "{mode}"),
        }
    }
}

/// Attached as `hook` says, reporting only pid 1 (never the worker), so nothing is written.
fn config(Hook(mode, hooks): Hook) -> CaptureConfig {
    CaptureConfig {
        attach: mode,
        tracepoint_hooks: hooks,
        pid: Some(1),
        ..CaptureConfig::default()
    }
}

/// What runs while a round's loops do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    /// The capture in this process, reporting only pid 1: the kernel side alone.
    Mapsentry(Hook, Rules),
    /// `mapsentry run --output json` in this mode, every line of its output read: what a user
    /// pays with every event streamed to a consumer.
    Streamed(Hook),
    Bpftrace(Bpftrace),
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bare => f.write_str("bare"),
            Self::Mapsentry(mode, Rules::None) => write!(f, "{mode}"),
            Self::Mapsentry(mode, Rules::Plain) => write!(f, "{mode}+8rules"),
            Self::Mapsentry(mode, Rules::Calls) => write!(f, "{mode}+8rules-past-prot"),
            Self::Mapsentry(mode, Rules::Classes) => write!(f, "{mode}+8rules-comm-exe"),
            Self::Streamed(mode) => write!(f, "{mode}-streamed"),
            Self::Bpftrace(program) => write!(f, "{program}"),
        }
    }
}

impl Variant {
    /// The mmap calls a tracer's run saw: a line per event for `mapsentry run` (the worker's
    /// mmaps among them), bpftrace's as [`Bpftrace::seen`] says.
    fn seen(self, output: &TracerOutput) -> Result<u64, String> {
        match self {
            Self::Bpftrace(program) => program.seen(output),
            Self::Bare | Self::Mapsentry(..) | Self::Streamed(_) => Ok(output.lines),
        }
    }

    /// The fewest of the loop's `calls` a tracer attached throughout sees. bpftrace's notices of
    /// lost events fall short at times when it prints every call (21,993 of 22,000 calls seen
    /// once, with 16,751 said lost, in the 6.12 VM: a notice still pending in a full buffer when
    /// it is stopped, likely): within 1% it was attached. mapsentry must print every event.
    fn least_seen(self, calls: u32) -> u32 {
        match self {
            Self::Bpftrace(Bpftrace::Printed) => calls - calls / 100,
            _ => calls,
        }
    }
}

/// `mapsentry`, built beside this program (`cargo xtask vm-bench` and `cargo build --release
/// -p mapsentry-cli -p mapsentry-e2e` put them in one directory).
fn mapsentry_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let binary = exe.with_file_name("mapsentry");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "{} is missing (build mapsentry-cli with the same profile)",
            binary.display()
        ))
    }
}

/// `mapsentry run` attached as `hook` says, every event written as a JSON line.
fn mapsentry_run(binary: &Path, hook: Hook) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["run", "--output", "json"])
        .args(capture_args(hook));
    command
}

/// The capture arguments (`run`'s and `agent`'s) that attach as `hook` says.
fn capture_args(Hook(mode, hooks): Hook) -> Vec<String> {
    let mut args = vec!["--attach".to_owned(), mode.as_str().to_owned()];
    if mode == AttachMode::Tracepoint {
        args.extend(["--tracepoint-hooks".to_owned(), hooks.as_str().to_owned()]);
    }
    args
}
