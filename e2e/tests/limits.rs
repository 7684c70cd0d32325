//! Limits of a real `mapsentry collector`, through the binary: subscribers beyond
//! `--max-subscribers` are refused with RESOURCE_EXHAUSTED (a `tail` exits non-zero saying why),
//! counted in the metrics, and a freed slot is taken again.

mod common;
#[path = "faults/procs.rs"]
mod procs;

use std::{process::Command, time::Duration};

use common::mapsentry_bin;
use procs::{eventually, metrics, metrics_address, start_collector, stats, tail};

#[test]
fn subscribers_beyond_the_maximum_are_refused_with_resource_exhausted() {
    let (server, url) = start_collector(&["--max-subscribers", "2"]);
    let metrics_addr = metrics_address(&server);
    let subscribers = || stats(&url)["subscribers"].as_u64().unwrap();
    let first = tail(&url, &[]);
    let _second = tail(&url, &[]);
    eventually("two subscribers", Duration::from_secs(20), || {
        subscribers() == 2
    });

    let third = Command::new(mapsentry_bin())
        .args(["tail", "--server", &url])
        .output()
        .expect("a third tail");
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert_eq!(
        third.status.code(),
        Some(3),
        "a refused request exits 3 (docs/security.md): {stderr}"
    );
    assert!(
        stderr.contains("maximum of 2 subscribers (--max-subscribers)")
            && stderr.contains("resource"),
        "the refusal says why: {stderr}"
    );
    assert!(
        metrics(&metrics_addr).contains("mapsentry_collector_subscribers_refused_total 1\n"),
        "counted"
    );

    first.kill9();
    eventually("the slot freed", Duration::from_secs(20), || {
        subscribers() == 1
    });
    let again = tail(&url, &[]);
    eventually("the freed slot taken", Duration::from_secs(20), || {
        subscribers() == 2
    });
    println!(
        "FIGURES max-subscribers: limit 2, third refused with exit 1 ({}), slot reused after a \
         subscriber left",
        stderr.lines().last().unwrap_or_default()
    );
    drop(again);
}

#[test]
fn a_zero_subscriber_limit_is_a_clear_error() {
    let output = Command::new(mapsentry_bin())
        .args([
            "collector",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--max-subscribers",
            "0",
        ])
        .output()
        .expect("running the collector");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-subscribers") && stderr.contains("must be at least 1"),
        "{stderr}"
    );
}
