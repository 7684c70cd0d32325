//! `mapsentry run --policy FILE` enforces as the agent does, and follows the file: an Enforce
//! `ClusterMmapPolicy` with `hostProcesses: true` kills a host process at the forbidden mmap
//! (with a `kill` alert), and once the file is switched to Audit the same call only alerts.
//!
//! The rule is narrow so that nothing else on the machine can match it: write+execute mappings
//! of at least 1 GiB (the test maps 1 GiB + 4 KiB with `MAP_NORESERVE`).

mod common;

use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{Helper, forward_lines, mapsentry_bin, mmap_call};
use serde_json::{Value, json};

const POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: huge-wx
spec:
  hostProcesses: true
  mode: MODE
  rules:
    - name: huge-write-exec
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
        minLength: 1Gi
      action: Kill
";

/// `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`.
const PRIVATE_ANON_NORESERVE: u64 = 0x02 | 0x20 | 0x4000;

/// The first line of `rx` that satisfies `wanted`, within 20 s.
fn wait_for(rx: &mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => last = Some(line),
            Err(e) => panic!("waiting for {what}: {e}; last line {last:?}"),
        }
    }
}

/// A small RW mapping (allowed), then the huge W+X one. True when SIGKILL ended the helper.
fn huge_write_exec() -> (bool, u32) {
    let calls = json!({"calls": [
        {"length": 4096, "prot": 3, "flags": 0x22, "fd": "anon"},
        {"length": (1u64 << 30) + 4096, "prot": 7, "flags": PRIVATE_ANON_NORESERVE, "fd": "anon"},
    ]});
    let helper = Helper::spawn(mmap_call(), &[&calls.to_string()]);
    let pid = helper.pid;
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(report.is_none(), "killed, yet it reported: {report:?}");
        (true, pid)
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        (false, pid)
    }
}

/// The alert line of `pid`'s call with `action`.
fn alert_of(lines: &mpsc::Receiver<String>, pid: u32, action: &str) -> Value {
    let line = wait_for(lines, &format!("the {action} alert of pid {pid}"), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["kind"] == "alert" && v["action"] == action && v["event"]["pid"] == pid
        })
    });
    serde_json::from_str(&line).expect("JSON")
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = child.wait().expect("waiting for mapsentry");
    assert!(status.success(), "run ended with {status:?}");
}

#[test]
fn run_enforces_a_host_kill_policy_from_its_file_and_follows_a_switch_to_audit() {
    let dir = std::env::temp_dir().join(format!("mapsentry-run-enforce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("huge-wx.yaml");
    std::fs::write(&file, POLICY.replace("MODE", "Enforce")).expect("policy file");

    let mut child = Command::new(mapsentry_bin())
        .args(["run", "--output", "json", "--alert-window", "0", "--policy"])
        .arg(&file)
        .args(["--prot-any", "PROT_EXEC"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mapsentry run");
    let lines = forward_lines(child.stdout.take().expect("stdout"));
    let errors = forward_lines(child.stderr.take().expect("stderr"));
    let enforcing = wait_for(&errors, "the enforcement line", |l| {
        l.contains("mapsentry: enforcing")
    });
    assert!(
        enforcing.contains("enforcing 1 kernel rule(s)"),
        "{enforcing}"
    );
    wait_for(&errors, "the capture to attach", |l| {
        l.contains("mapsentry: capturing")
    });

    let (killed, pid) = huge_write_exec();
    assert!(killed, "the Enforce Kill rule kills the host process");
    let alert = alert_of(&lines, pid, "kill");
    assert_eq!(alert["policy"], "huge-wx", "{alert}");
    assert_eq!(alert["rule"], "huge-write-exec", "{alert}");
    assert_eq!(alert["mode"], "enforce", "{alert}");
    assert_eq!(alert["event"]["enforced"]["action"], "kill", "{alert}");

    // Switch to Audit: the file is reloaded and the kernel rule withdrawn, without a restart.
    std::fs::write(&file, POLICY.replace("MODE", "Audit")).expect("policy file");
    let deadline = Instant::now() + Duration::from_secs(15);
    let survivor = loop {
        let (killed, pid) = huge_write_exec();
        if !killed {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "still killed 15 s after the switch to Audit"
        );
        thread::sleep(Duration::from_millis(300));
    };
    let alert = alert_of(&lines, survivor, "kill");
    assert_eq!(
        alert["mode"], "audit",
        "Audit alerts with the rule's action: {alert}"
    );
    assert!(alert["event"]["enforced"].is_null(), "{alert}");
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
