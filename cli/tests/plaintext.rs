//! Plaintext only when asked for: `mapsentry collector` without TLS files refuses to start unless
//! it is given `--plaintext` (and then warns), and `run`'s plaintext observer API stays on
//! loopback.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_mapsentry");

/// Runs `mapsentry args` to its end (at most 30 s); (exit code, stderr).
fn refused(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("mapsentry {args:?} still running after 30 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_collector_without_tls_files_or_plaintext_refuses_to_start() {
    let (code, stderr) = refused(&["collector", "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0, "stderr: {stderr}");
    assert!(
        stderr.contains("no --tls-cert/--tls-key") && stderr.contains("--plaintext"),
        "the error names the missing flags and the way out: {stderr}"
    );
    assert!(!stderr.contains("serving on"), "it never served: {stderr}");
}

#[test]
fn plaintext_and_tls_files_together_are_a_usage_error() {
    let (code, stderr) = refused(&[
        "collector",
        "--plaintext",
        "--tls-cert",
        "server.crt",
        "--tls-key",
        "server.key",
    ]);
    assert_eq!(code, 2, "clap's usage error: {stderr}");
    assert!(
        stderr.contains("--plaintext") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}

#[test]
fn an_explicit_plaintext_collector_serves_and_warns() {
    let mut child = Command::new(BIN)
        .args(["collector", "--plaintext", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let served = loop {
        match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let serving = line.contains("collector serving on");
                seen.push(line);
                if serving {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        served,
        "no `collector serving on` line within 30 s: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|line| line.contains("WARN") && line.contains("serving PLAINTEXT")),
        "the start is logged with a plaintext warning: {seen:#?}"
    );
}

#[test]
fn run_refuses_a_non_loopback_listen_address() {
    // The check comes before anything is loaded, so this needs no BPF and no root.
    let (code, stderr) = refused(&["run", "--listen", "0.0.0.0:0"]);
    assert_ne!(code, 0, "stderr: {stderr}");
    assert!(
        stderr.contains("--listen 0.0.0.0:0") && stderr.contains("loopback"),
        "the error names the address and the reason: {stderr}"
    );
}
