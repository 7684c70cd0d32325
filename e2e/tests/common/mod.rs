//! What the real-kernel tests share: helper processes and a capture around them.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use mapsentry_agent::{AttachMode, Capture, CaptureConfig};
use mapsentry_policy::MmapEvent;
use serde_json::Value;

/// A helper program started and waiting for the word to make its calls.
pub struct Helper {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Helper {
    pub fn spawn(program: impl AsRef<Path>, args: &[&str]) -> Self {
        let program = program.as_ref();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let hello = read_json(&mut stdout);
        let pid = hello["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in {hello}")) as u32;
        Self { child, stdout, pid }
    }

    /// Let it make its calls and wait for it to exit; returns its exit status and its report
    /// (`None` when it died before printing one).
    pub fn go_until_exit(mut self) -> (std::process::ExitStatus, Option<Value>) {
        self.child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("writing to helper");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading helper output");
        let status = self.child.wait().expect("waiting for helper");
        (status, serde_json::from_str(&line).ok())
    }

    /// Let it make its next round's call (a `rounds` spec); returns that round's report.
    pub fn next_round(&mut self) -> Value {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to helper");
        stdin.flush().expect("writing to helper");
        read_json(&mut self.stdout)
    }

    /// Let it make its calls; returns its report once it has exited.
    pub fn go(mut self) -> Value {
        self.child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("writing to helper");
        let report = read_json(&mut self.stdout);
        let status = self.child.wait().expect("waiting for helper");
        assert!(status.success(), "helper failed: {status}");
        report
    }
}

fn read_json(reader: &mut impl BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading helper output");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("helper printed {line:?}: {e}"))
}

/// The Rust helper (`src/bin/mmap_call.rs`).
pub fn mmap_call() -> &'static str {
    env!("CARGO_BIN_EXE_mmap_call")
}

/// The 64-bit helper that makes ia32 calls with `int $0x80` (`helpers/int80_call.c`).
pub fn int80_call() -> &'static str {
    env!("INT80_CALL")
}

/// The attach mode the capture tests request: `$MAPSENTRY_TEST_ATTACH` (`auto` when unset), so
/// one test binary runs in every mode a kernel has (`cargo xtask vm-test` runs each in turn).
pub fn requested_mode() -> AttachMode {
    match std::env::var("MAPSENTRY_TEST_ATTACH") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("MAPSENTRY_TEST_ATTACH: {e}")),
        Err(_) => AttachMode::Auto,
    }
}

/// The mode the capture must end up in: the requested one; for `auto`,
/// `$MAPSENTRY_TEST_AUTO_PICKS` (set by `cargo xtask vm-test`), else the cheapest mode the
/// running kernel allows, as bpftrace finds it (`mapsentry_e2e::kernel_modes`).
pub fn expected_mode() -> AttachMode {
    match requested_mode() {
        AttachMode::Auto => match std::env::var("MAPSENTRY_TEST_AUTO_PICKS") {
            Ok(name) => name
                .parse()
                .unwrap_or_else(|e| panic!("MAPSENTRY_TEST_AUTO_PICKS: {e}")),
            Err(_) => mapsentry_e2e::kernel_modes::kernel_modes().cheapest(),
        },
        mode => mode,
    }
}

/// Start capturing (real BPF) in the requested mode (`requested_mode`, not `config.attach`) and
/// check it runs in the expected one; panics with the reason when the kernel refuses.
pub fn capture(config: &CaptureConfig) -> Capture {
    let config = CaptureConfig {
        attach: requested_mode(),
        ..config.clone()
    };
    let capture = Capture::start(&config).unwrap_or_else(|e| {
        panic!(
            "starting the capture in mode {} (needs root and BTF): {e}",
            config.attach
        )
    });
    let attached = capture.attached();
    assert_eq!(
        attached.mode,
        expected_mode(),
        "requested {}, attached {attached:?}",
        config.attach
    );
    capture
}

/// Every event in the ring buffer now, from process `pid`. Call after the helper has exited:
/// its records were written before each of its calls returned.
pub fn drain_pid(capture: &mut Capture, pid: u32) -> Vec<MmapEvent> {
    let mut all = drain_all(capture);
    all.retain(|e| e.pid == pid);
    all
}

/// Every record waiting in the ring buffer, of any process.
pub fn drain_all(capture: &mut Capture) -> Vec<MmapEvent> {
    let mut all = Vec::new();
    while capture.drain(&mut all) > 0 {}
    all
}

/// The `mapsentry` binary, built beside the test binaries (`cargo build --bins`).
pub fn mapsentry_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("mapsentry");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// The record matching a reported call by thread, arguments and result, which must be unique.
pub fn the_record<'a>(events: &'a [MmapEvent], call: &Value, name: &str) -> &'a MmapEvent {
    let matches = records_for(events, call, name);
    assert_eq!(
        matches.len(),
        1,
        "{name}: expected exactly one record for {call}, got {matches:#?}"
    );
    matches[0]
}

/// Every record matching a reported call by thread, arguments and result.
pub fn records_for<'a>(events: &'a [MmapEvent], call: &Value, name: &str) -> Vec<&'a MmapEvent> {
    let n = |key: &str| {
        call[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no {key} in {call}"))
    };
    events
        .iter()
        .filter(|e| {
            u64::from(e.tid) == n("tid")
                && e.args.addr == n("addr")
                && e.args.length == n("length")
                && e.args.prot == n("prot")
                && e.args.flags == n("flags")
                && i64::from(e.args.fd) == call["fd"].as_i64().expect("fd")
                && e.ret == call["ret"].as_i64().expect("ret")
        })
        .collect()
}

/// Runs of mapsentry's capture programs (`ms_*`) the kernel skipped because the same program
/// was already running on that CPU (a run preempted mid-way, then re-entered), summed over every
/// loaded capture, as bpftool reports them. Such a skipped exit leaves a call seen but neither
/// delivered nor counted as dropped, so the accounting identity holds up to this many. Where
/// bpftool is absent (the VMs' busybox userland) this is 0: the identity is then checked exactly.
pub fn recursion_misses() -> u64 {
    let Ok(output) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return 0;
    };
    let programs: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ms_")))
        .filter_map(|p| p["recursion_misses"].as_u64())
        .sum()
}
pub mod apiserver;

/// The lines `from` produces (a child's stdout or stderr), arriving on a channel as a reader
/// thread reads them; the channel ends at EOF.
pub fn forward_lines(
    from: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1_000_000);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one satisfies `done`: all of them, that one last. Panics after
/// `timeout`, naming `what` and the last line seen.
pub fn lines_until(
    rx: &mpsc::Receiver<String>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    items_until(rx, what, timeout, |line| line, |line| done(line))
}

/// Lines from `rx`, each turned into an item by `parse`, until an item satisfies `done`: all
/// of them, that one last. Panics after `timeout`, naming `what` and the last item.
pub fn items_until<T: std::fmt::Debug>(
    rx: &mpsc::Receiver<String>,
    what: &str,
    timeout: Duration,
    parse: impl Fn(String) -> T,
    done: impl Fn(&T) -> bool,
) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let item = parse(line);
                let last = done(&item);
                seen.push(item);
                if last {
                    return seen;
                }
            }
            Err(e) => panic!(
                "waiting for {what}: {e}; got {} lines, last {:?}",
                seen.len(),
                seen.last()
            ),
        }
    }
}
