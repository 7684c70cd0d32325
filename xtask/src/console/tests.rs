use std::{path::PathBuf, time::Duration};

use super::*;
use crate::plan::Run;

fn plan() -> Plan {
    let run = |suite: &str| Run {
        suite: suite.to_owned(),
        label: "kprobe".to_owned(),
        env: Vec::new(),
        binary: PathBuf::from("/t"),
        skip: Vec::new(),
    };
    Plan {
        runs: vec![run("capture"), run("concurrency")],
        skipped: Vec::new(),
        requires_bpf_lsm: true,
        host_programs: Vec::new(),
        host_files: Vec::new(),
    }
}

const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-56-cloud-amd64\n\
MAPSENTRY-VM-BOOTED nonce=abc kernel=6.1.0-56-cloud-amd64 uptime=3.25 lsm=lockdown,capability,bpf\n\
test result: ok. 2 passed\n\
MAPSENTRY-VM-RESULT nonce=abc suite=capture mode=kprobe rc=0 start=3.50 end=24.00\n\
[   30.1] random: crng init doneMAPSENTRY-VM-RESULT nonce=abc suite=concurrency mode=kprobe rc=0 start=24.00 end=50.50\n\
MAPSENTRY-VM-DONE nonce=abc\n";

#[test]
fn markers_are_read_even_behind_kernel_messages() {
    let report = Report::parse(CONSOLE, "abc");
    assert_eq!(
        report.booted,
        Some(("6.1.0-56-cloud-amd64".to_owned(), 3.25))
    );
    assert_eq!(
        report.results,
        [
            SuiteResult {
                suite: "capture".into(),
                mode: "kprobe".into(),
                rc: 0,
                secs: 20.5
            },
            SuiteResult {
                suite: "concurrency".into(),
                mode: "kprobe".into(),
                rc: 0,
                secs: 26.5
            },
        ]
    );
    assert_eq!(report.lsm, "lockdown,capability,bpf");
    assert!(report.done);
    assert!(report.passed(&plan()));
}

#[test]
fn markers_of_another_run_do_not_count() {
    let report = Report::parse(CONSOLE, "xyz");
    assert_eq!(report, Report::default());
    assert!(!report.passed(&plan()));
}

#[test]
fn a_failed_or_missing_suite_or_an_unfinished_script_fails_the_run() {
    let failed = CONSOLE.replace(
        "mode=kprobe rc=0 start=3.50",
        "mode=kprobe rc=101 start=3.50",
    );
    assert!(!Report::parse(&failed, "abc").passed(&plan()));

    let missing: String = CONSOLE
        .lines()
        .filter(|l| !l.contains("suite=concurrency"))
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(!Report::parse(&missing, "abc").passed(&plan()));

    let unfinished = CONSOLE.replace("MAPSENTRY-VM-DONE nonce=abc", "Kernel panic");
    let report = Report::parse(&unfinished, "abc");
    assert!(!report.passed(&plan()));
    let boot = Boot {
        console: unfinished.clone(),
        elapsed: Duration::from_mins(1),
        timed_out: false,
    };
    let summary = report.summary(&plan(), "6.1", &boot, Duration::from_secs(5));
    assert!(summary.contains("did not reach its end"), "{summary}");
    assert!(summary.ends_with("kernel 6.1: FAILED"), "{summary}");
}

#[test]
fn the_summary_lists_each_run_with_its_time() {
    let boot = Boot {
        console: CONSOLE.to_owned(),
        elapsed: Duration::from_secs_f64(52.3),
        timed_out: false,
    };
    let summary =
        Report::parse(CONSOLE, "abc").summary(&plan(), "6.1", &boot, Duration::from_secs(7));
    assert!(
        summary.contains("capture      kprobe       ok        20.5s"),
        "{summary}"
    );
    assert!(summary.contains("VM 52.3s from qemu start"), "{summary}");
    assert!(summary.ends_with("kernel 6.1: PASSED"), "{summary}");
}

#[test]
fn a_kernel_without_bpf_lsm_fails_a_run_that_needs_it() {
    let without = CONSOLE.replace("lsm=lockdown,capability,bpf", "lsm=lockdown,capability");
    let report = Report::parse(&without, "abc");
    assert!(!report.bpf_lsm());
    assert!(
        !report.passed(&plan()),
        "every suite passed, but Deny was not tested"
    );
    let boot = Boot {
        console: without.clone(),
        elapsed: Duration::from_secs(1),
        timed_out: false,
    };
    let summary = report.summary(&plan(), "6.1", &boot, Duration::from_secs(1));
    assert!(summary.contains("Deny cannot be tested"), "{summary}");
    let bench = Plan {
        requires_bpf_lsm: false,
        ..plan()
    };
    assert!(report.passed(&bench), "the benchmark does not need it");
}
