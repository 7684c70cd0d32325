use std::collections::BTreeMap;

use super::*;
use crate::kernel::KERNELS;

fn built(suites: &[&str]) -> Built {
    Built {
        tests: suites
            .iter()
            .map(|s| ((*s).to_owned(), PathBuf::from(format!("/t/{s}"))))
            .collect::<BTreeMap<_, _>>(),
        helpers: Vec::new(),
    }
}

#[test]
fn every_mode_of_the_kernel_runs_each_capture_suite_and_auto_runs_once() {
    let plan = Plan::for_kernel(
        KERNELS[0],
        &built(&[
            "capture",
            "concurrency",
            "wire_layout",
            "cli_run",
            "new_one",
        ]),
    )
    .unwrap();
    let runs: Vec<(String, Mode, Option<Mode>)> = plan
        .runs
        .iter()
        .map(|r| (r.suite.clone(), r.mode, r.expect))
        .collect();
    let mut want = Vec::new();
    for &mode in KERNELS[0].modes {
        want.push(("capture".to_owned(), mode, None));
        want.push(("concurrency".to_owned(), mode, None));
    }
    want.push(("capture".to_owned(), Mode::Auto, Some(Mode::Fentry)));
    assert_eq!(runs, want);
    assert_eq!(
        plan.runs.last().unwrap().env(),
        [
            ("MAPSENTRY_TEST_ATTACH", "auto"),
            ("MAPSENTRY_TEST_AUTO_PICKS", "fentry")
        ]
    );

    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(skipped, ["cli_run", "new_one", "wire_layout"]);
    assert!(plan.skipped[0].reason.contains("setpriv"));
    assert!(plan.skipped[1].reason.contains("not in the VM plan"));
}

#[test]
fn a_missing_capture_suite_is_an_error() {
    let error = Plan::for_kernel(KERNELS[1], &built(&["capture"])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the e2e test suite concurrency was not built"
    );
}
