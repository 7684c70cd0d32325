//! `mapsentry run` as a user runs it: the JSON line contract, text output, clean shutdown on
//! SIGTERM and SIGINT with totals, and clear errors (exit 1, no panic) for what cannot work.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{Helper, forward_lines, mapsentry_bin, mmap_call};
use mapsentry_agent::AttachMode;
use mapsentry_e2e::kernel_modes::{ia32_runs, kernel_modes};
use serde_json::{Value, json};

/// `mapsentry run` with its stdout and stderr lines arriving on channels.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

/// Lines from `rx` until one satisfies `done` (returned last); panics after 20 s.
fn read_until(rx: &mpsc::Receiver<String>, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
    common::lines_until(rx, what, Duration::from_secs(20), done)
}

impl Run {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(mapsentry_bin())
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mapsentry");
        let lines = forward_lines(child.stdout.take().expect("stdout"));
        let errors = forward_lines(child.stderr.take().expect("stderr"));
        let run = Self {
            child,
            lines,
            errors,
        };
        read_until(&run.errors, "the capture to attach", |l| {
            l.contains("mapsentry: capturing")
        });
        run
    }

    fn read_until(&self, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        read_until(&self.lines, what, done)
    }

    /// Send `signal`, wait for the exit; returns (exit code, the remaining stdout lines, stderr).
    fn stop(mut self, signal: &str) -> (Option<i32>, Vec<String>, String) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.child.wait().expect("waiting for mapsentry");
        // The forwarding threads end at EOF; collect everything they still hold.
        let stdout = self.lines.iter().collect();
        let stderr = self.errors.iter().collect::<Vec<_>>().join("\n");
        (status.code(), stdout, stderr)
    }
}

#[test]
fn json_lines_follow_the_contract_and_sigterm_prints_totals() {
    let calls = json!({"calls": [
        {"length": 8192, "prot": 3, "flags": 0x22, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": 0x02, "fd": "bad"},
    ]});
    let helper = Helper::spawn(mmap_call(), &[&calls.to_string()]);
    let pid = helper.pid;
    let run = Run::start(&["--output", "json", "--pid", &pid.to_string()]);
    let first = run.read_until("the attached line", |_| true);
    let attached: Value = serde_json::from_str(&first[0]).expect("JSON");
    assert_eq!(attached["kind"], "attached");
    // `auto` takes the cheapest mode this kernel allows and says why it passed over cheaper ones.
    let mode = kernel_modes().cheapest();
    assert_eq!(attached["mode"], mode.as_str(), "{attached}");
    if mode == AttachMode::Tracepoint && ia32_runs() {
        assert_eq!(
            attached["target"], "tp_btf sys_enter/sys_exit",
            "BTF tracepoints where the kernel allows them"
        );
    }
    for cheaper in AttachMode::CONCRETE.into_iter().take_while(|&m| m != mode) {
        assert!(
            attached["rejected"][cheaper.as_str()].is_string(),
            "why {cheaper} was passed over: {attached}"
        );
    }

    let report = helper.go();
    let results = report["results"].as_array().expect("results").clone();
    let is_bad_fd_call = |line: &str| line.contains("\"ret\":-9");
    let lines = run.read_until("the bad-fd call's event", is_bad_fd_call);
    let (code, rest, stderr) = run.stop("-TERM");
    assert_eq!(
        code,
        Some(0),
        "SIGTERM ends the run cleanly; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("detached; seen"),
        "totals on stderr: {stderr}"
    );

    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    for event in &events {
        assert_eq!(event["kind"], "event", "{event}");
        assert_eq!(event["pid"], pid, "the --pid filter: {event}");
    }
    for (result, want_file_null) in results.iter().zip([true, true]) {
        let event = events
            .iter()
            .find(|e| e["ret"] == result["ret"] && e["args"]["length"] == result["length"])
            .unwrap_or_else(|| panic!("no event for {result} among {events:#?}"));
        assert_eq!(event["syscall"], "mmap");
        assert_eq!(event["tid"], result["tid"]);
        assert_eq!(event["comm"], "mmap_call");
        for key in [
            "addr", "length", "prot", "flags", "fd", "pgoffset", "offset",
        ] {
            assert!(
                event["args"][key].is_number(),
                "args.{key} is a number: {event}"
            );
        }
        assert_eq!(event["args"]["fd"], result["fd"], "fd is signed");
        assert!(event["ret"].is_i64(), "{event}");
        assert_eq!(event["file"].is_null(), want_file_null, "{event}");
    }
    assert_eq!(events.last().unwrap()["error"], "EBADF");
    assert_eq!(events[0]["prot_names"], "PROT_READ|PROT_WRITE");

    let totals: Value = serde_json::from_str(rest.last().expect("a totals line")).expect("JSON");
    assert_eq!(totals["kind"], "totals", "{totals}");
    assert_eq!(totals["dropped"], 0);
    let emitted = totals["emitted"].as_u64().unwrap();
    assert_eq!(
        emitted as usize,
        events.len() + rest.len() - 1,
        "emitted counts every event line"
    );
    assert!(
        totals["seen"].as_u64().unwrap() >= totals["filtered"].as_u64().unwrap() + emitted,
        "{totals}"
    );
}

#[test]
fn text_lines_name_prot_and_flags_and_sigint_detaches() {
    let calls = json!({"calls": [{"length": 4096, "prot": 6, "flags": 0x22, "fd": "anon"}]});
    let helper = Helper::spawn(mmap_call(), &[&calls.to_string()]);
    let run = Run::start(&["--comm", "mmap_call", "--prot-any", "PROT_EXEC"]);
    helper.go();
    let lines = run.read_until("the W+X call", |l| l.contains("prot=PROT_WRITE|PROT_EXEC"));
    let line = lines.last().unwrap();
    assert!(line.contains(" mmap  mmap_call["), "{line}");
    assert!(
        line.contains("flags=MAP_PRIVATE|MAP_ANONYMOUS fd=-1 off=0x0 = 0x"),
        "{line}"
    );
    assert_eq!(
        lines.len(),
        1,
        "--prot-any PROT_EXEC and --comm leave only that call: {lines:?}"
    );
    let (code, _, stderr) = run.stop("-INT");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("detached; seen"), "{stderr}");
}

/// Run to completion; returns (exit code, stderr).
fn run_to_end(command: &mut Command) -> (Option<i32>, String) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("running mapsentry");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn what_cannot_work_is_a_clear_error() {
    // A mode forced on a kernel that refuses it (as bpftrace finds it) is an error naming it.
    let refused: Vec<(String, [String; 2], String)> = [AttachMode::Kprobe, AttachMode::Fentry]
        .into_iter()
        .filter(|&mode| !kernel_modes().allows(mode))
        .map(|mode| {
            (
                format!("{mode} forced"),
                ["--attach".to_owned(), mode.to_string()],
                format!("attach mode {mode} is not available on this kernel: "),
            )
        })
        .collect();
    for (name, args, want_message) in &refused {
        let (code, stderr) = run_to_end(Command::new(mapsentry_bin()).arg("run").args(args));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(want_message.as_str()),
            "{name}: expected {want_message:?} in {stderr:?}"
        );
    }
    let cases: [(&str, &[&str], i32, &str); 5] = [
        (
            "no BTF",
            &["--btf", "/nonexistent/vmlinux"],
            1,
            "no kernel BTF at /nonexistent/vmlinux",
        ),
        (
            "ring size",
            &["--ring-buffer-bytes", "1000"],
            1,
            "ring buffer size 1000 is not a power of two",
        ),
        (
            "bad prot name",
            &["--prot-any", "PROT_WRIT"],
            1,
            "--prot-any \"PROT_WRIT\": unknown protection",
        ),
        (
            "bad syscall",
            &["--syscall", "mmap3"],
            1,
            "--syscall \"mmap3\": expected mmap, mmap2, old_mmap or mprotect",
        ),
        (
            "bad mode",
            &["--attach", "uprobe"],
            2,
            "unknown attach mode \"uprobe\"",
        ),
    ];
    for (name, args, want_code, want_message) in cases {
        let (code, stderr) = run_to_end(Command::new(mapsentry_bin()).arg("run").args(args));
        assert_eq!(code, Some(want_code), "{name}: {stderr}");
        assert!(
            stderr.contains(want_message),
            "{name}: expected {want_message:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn an_unprivileged_user_is_told_what_is_missing() {
    // A copy outside the build tree, which the unprivileged user may not be able to reach.
    let dir = std::env::temp_dir().join(format!("mapsentry-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("mapsentry");
    std::fs::copy(mapsentry_bin(), &bin).unwrap();
    let (code, stderr) = run_to_end(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .arg("run"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("mapsentry needs root, or CAP_BPF and CAP_PERFMON")
            && stderr.contains("uid 65534"),
        "{stderr}"
    );
}
