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
//! Beside them, the peer: bpftrace (where it is installed; `cargo xtask vm-bench` puts it and its
//! libraries in the VM) counting mmap calls in a map, on the per-syscall tracepoint's entry (the
//! floor of issue 19's overhead table) and on its entry and exit (what a tool that reports each
//! call's result must hook). Its mmap figure is of calls it counts, where the modes' are of calls
//! they judge and leave out. Each bpftrace run prints its counts when stopped, and a run that
//! counted fewer calls than the loop made fails the benchmark: the probes were not attached.
//!
//! Rounds rotate the order of the variants (bare, then each mode this kernel attaches). Each
//! round's figure is divided by the same round's bare figure, so drift of the emulator's speed
//! between rounds cancels; reported: the median of those ratios and their range. Prints one
//! `SYSCALL-TAX` line per variant and a Markdown table.
#![expect(
    unsafe_code,
    reason = "raw getppid/mmap/munmap system calls are the workload; SIGINT stops bpftrace"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mapsentry_agent::{
    AttachMode, Capture, CaptureConfig, TracepointHooks,
    enforce::policies::{CgroupScope, Enforcer},
};
use mapsentry_e2e::cgroup::TestCgroup;
use serde_json::json;

/// Rounds and loop lengths for the VMs (software emulation); `--rounds N` and `--scale K`
/// (loops K times longer) for quicker machines, where one round is over too soon to be steady.
const ROUNDS: usize = 11;
const GETPPID_ITERATIONS: u32 = 300_000;
const MMAP_ITERATIONS: u32 = 20_000;

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

fn mmap_munmap() {
    // SAFETY: maps one fresh anonymous page and unmaps exactly that page.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED, "mmap failed");
        libc::munmap(page, 4096);
    }
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

/// `--worker KIND N PROCS`: join the cgroup of `PROCS`, run one loop and print its ns per call.
fn worker(args: &[String]) {
    let [kind, iterations, procs] = args else {
        panic!("usage: syscall_tax --worker getppid|mmap ITERATIONS CGROUP_PROCS");
    };
    std::fs::write(procs, std::process::id().to_string()).expect("joining the bench cgroup");
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let cgroup = TestCgroup::create(&format!("mapsentry-bench-tax-{}", std::process::id()))
        .expect("creating the bench cgroup (needs root and cgroup v2)");
    let mut variants = vec![Variant::Bare];
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
            }
            Err(error) => println!("SYSCALL-TAX mode={mode} unavailable: {error}"),
        }
    }
    match Bpftrace::version().and_then(|version| {
        // Once before the rounds, as each mode is: a peer that cannot attach here is named,
        // not a failure halfway through.
        Bpftrace::EntryExit.start()?.stop_any();
        Ok(version)
    }) {
        Ok(version) => {
            println!("SYSCALL-TAX peer={version}");
            variants.extend([Bpftrace::Floor, Bpftrace::EntryExit].map(Variant::Bpftrace));
        }
        Err(why) => println!("SYSCALL-TAX peer=bpftrace unavailable: {why}"),
    }
    let _stats = mapsentry_agent::capture::enable_run_time_stats()
        .inspect_err(|e| println!("SYSCALL-TAX no run-time statistics: {e}"))
        .ok();
    let mut getppid_ns = vec![Vec::new(); variants.len()];
    let mut mmap_ns = vec![Vec::new(); variants.len()];
    let mut entry_ns = vec![Vec::new(); variants.len()];
    let rounds = flag(&args, "--rounds", ROUNDS as u32) as usize;
    let scale = flag(&args, "--scale", 1);
    for round in 0..rounds {
        for k in 0..variants.len() {
            let index = (round + k) % variants.len();
            // The loop's mmap calls, its warm-up included.
            let mmap_calls = MMAP_ITERATIONS * scale + MMAP_ITERATIONS * scale / 10;
            let (capture, peer) = match variants[index] {
                Variant::Bare => (None, None),
                Variant::Mapsentry(mode, rules) => {
                    let mut capture = Capture::start(&config(mode)).expect("attached before");
                    rules.apply(&mut capture, &cgroup);
                    (Some(capture), None)
                }
                Variant::Bpftrace(program) => {
                    let peer = program.start().unwrap_or_else(|e| panic!("{program}: {e}"));
                    (None, Some(peer))
                }
            };
            getppid_ns[index].push(in_child("getppid", GETPPID_ITERATIONS * scale, &cgroup));
            let before = capture.as_ref().map(entry_time);
            mmap_ns[index].push(in_child("mmap", MMAP_ITERATIONS * scale, &cgroup));
            if let (Some(before), Some(capture)) = (before, &capture) {
                entry_ns[index].push((entry_time(capture) - before) / f64::from(mmap_calls));
            }
            drop(capture);
            if let Some(peer) = peer {
                let counted = peer.stop().unwrap_or_else(|e| panic!("bpftrace: {e}"));
                assert!(
                    counted >= u64::from(mmap_calls),
                    "bpftrace counted {counted} mmap calls where the loop made {mmap_calls}: \
                     its probes were not attached throughout"
                );
            }
        }
    }
    println!(
        "| variant | getppid ns (median) | getppid ratio (median, range) | mmap+munmap ns, filtered | mmap ratio (median, range) | entry programs ns per mmap |\n|---|---:|---:|---:|---:|---:|"
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
        println!(
            "| {name} | {g:.0} | {g_ratio:.3}x ({g_low:.2}-{g_high:.2}) | {m:.0} | {m_ratio:.3}x ({m_low:.2}-{m_high:.2}) | {e:.0} |"
        );
        println!(
            "SYSCALL-TAX variant={name} getppid_ns={g:.1} getppid_ratio={g_ratio:.4} mmap_ns={m:.1} mmap_ratio={m_ratio:.4} entry_ns={e:.1}"
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
    Mapsentry(Hook, Rules),
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
            Self::Bpftrace(program) => write!(f, "{program}"),
        }
    }
}

/// The peer's programs: counters in a map, nothing printed until it is stopped (the overhead
/// benchmark's floor rows, bench/src/overhead.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bpftrace {
    /// A counter on the per-syscall tracepoint's entry: issue 19's floor.
    Floor,
    /// Counters on its entry and exit: a tool that reports each call's result hooks both.
    EntryExit,
}

/// How long bpftrace may take to compile and load its program: LLVM under software emulation is
/// slow.
const BPFTRACE_ATTACH_TIMEOUT: Duration = Duration::from_mins(5);
/// After it says it is attaching, before the loops start (the count checks it afterwards).
const BPFTRACE_SETTLE: Duration = Duration::from_secs(1);

impl std::fmt::Display for Bpftrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Floor => "bpftrace-floor",
            Self::EntryExit => "bpftrace-entry-exit",
        })
    }
}

impl Bpftrace {
    fn program(self) -> &'static str {
        match self {
            Self::Floor => "tracepoint:syscalls:sys_enter_mmap { @calls = count(); }",
            Self::EntryExit => {
                "tracepoint:syscalls:sys_enter_mmap { @calls = count(); } \
                 tracepoint:syscalls:sys_exit_mmap { @returns = count(); }"
            }
        }
    }

    /// `bpftrace --version`, or why it cannot run.
    fn version() -> Result<String, String> {
        let output = Command::new("bpftrace")
            .arg("--version")
            .output()
            .map_err(|e| format!("running bpftrace: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "bpftrace --version: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// bpftrace running this program, once it has said it is attaching its probes.
    fn start(self) -> Result<RunningBpftrace, String> {
        let mut child = Command::new("bpftrace")
            .args(["-e", self.program()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting bpftrace: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (lines_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut running = RunningBpftrace {
            child,
            lines,
            errors: Some(errors),
        };
        let deadline = Instant::now() + BPFTRACE_ATTACH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match running.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("Attaching") => break,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let _ = running.child.kill();
                    return Err(format!(
                        "bpftrace did not attach within {BPFTRACE_ATTACH_TIMEOUT:?}"
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = running.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!(
                        "bpftrace exited ({status}) before attaching: {}",
                        running.stderr_text()
                    ));
                }
            }
        }
        thread::sleep(BPFTRACE_SETTLE);
        Ok(running)
    }
}

/// A bpftrace process the benchmark started.
struct RunningBpftrace {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: Option<JoinHandle<String>>,
}

impl RunningBpftrace {
    /// Interrupt it, as a user stops it, and read the mmap calls it counted (`@calls: N`).
    fn stop(mut self) -> Result<u64, String> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: signals our own child, which has not been waited for (its pid is still ours).
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(format!(
                "interrupting bpftrace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut counted = None;
        let deadline = Instant::now() + BPFTRACE_ATTACH_TIMEOUT;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(count) = line.strip_prefix("@calls: ") {
                counted = Some(
                    count
                        .trim()
                        .parse::<u64>()
                        .map_err(|e| format!("bpftrace printed {line:?}: {e}"))?,
                );
            }
        }
        if self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            let _ = self.child.kill();
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        counted.ok_or_else(|| {
            format!(
                "bpftrace ({status}) printed no @calls count: {}",
                self.stderr_text()
            )
        })
    }

    /// Stop it, whatever it counted.
    fn stop_any(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it wrote to stderr, once it has exited.
    fn stderr_text(&mut self) -> String {
        self.errors
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}
