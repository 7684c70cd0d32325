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

/// The suites the VM plan runs, and `more`.
fn vm_suites(more: &[&'static str]) -> Built {
    let mut suites = vec![
        "attach_modes",
        "capture",
        "concurrency",
        "enforce",
        "enforce_policies",
        "cli_run",
    ];
    suites.extend(more);
    built(&suites)
}

/// (suite, label) of each run, in order.
fn labels(plan: &Plan) -> Vec<(&str, &str)> {
    plan.runs
        .iter()
        .map(|r| (r.suite.as_str(), r.label.as_str()))
        .collect()
}

#[test]
fn every_mode_of_the_kernel_runs_each_capture_and_enforce_suite_then_auto_and_the_probe_once() {
    let plan = Plan::for_kernel(KERNELS[0], &vm_suites(&["wire_layout", "new_one"])).unwrap();
    assert_eq!(
        labels(&plan),
        [
            ("capture", "kprobe"),
            ("concurrency", "kprobe"),
            ("enforce", "kprobe"),
            ("enforce_policies", "kprobe"),
            ("capture", "fentry"),
            ("concurrency", "fentry"),
            ("enforce", "fentry"),
            ("enforce_policies", "fentry"),
            ("capture", "tracepoint"),
            ("concurrency", "tracepoint"),
            ("enforce", "tracepoint"),
            ("enforce_policies", "tracepoint"),
            ("capture", "auto"),
            ("attach_modes", "probe"),
            ("cli_run", "auto"),
        ]
    );
    assert!(plan.requires_bpf_lsm);
    assert!(
        plan.host_programs.is_empty(),
        "the tests need no peer in the VM"
    );
    for run in plan.runs.iter().filter(|r| r.suite.starts_with("enforce")) {
        assert!(
            run.env
                .contains(&("MAPSENTRY_TEST_DENY", "required".to_owned())),
            "{run:?}"
        );
    }
    let runs_ia32 = ("MAPSENTRY_TEST_IA32", "runs".to_owned());
    assert_eq!(
        plan.runs[1].env,
        [
            ("MAPSENTRY_TEST_ATTACH", "kprobe".to_owned()),
            runs_ia32.clone()
        ]
    );
    assert_eq!(
        plan.runs[12].env,
        [
            ("MAPSENTRY_TEST_ATTACH", "auto".to_owned()),
            ("MAPSENTRY_TEST_AUTO_PICKS", "fentry".to_owned()),
            runs_ia32.clone()
        ]
    );
    assert_eq!(
        plan.runs[9].env,
        [
            ("MAPSENTRY_TEST_ATTACH", "tracepoint".to_owned()),
            runs_ia32.clone()
        ]
    );
    assert_eq!(
        plan.runs[13].env,
        [
            ("MAPSENTRY_TEST_PROBE_OK", KERNELS[0].probe_ok.to_owned()),
            ("MAPSENTRY_TEST_PROBE_REFUSED", "fentry@do_mmap".to_owned()),
            runs_ia32.clone()
        ]
    );
    assert_eq!(plan.runs[13].binary, PathBuf::from("/t/attach_modes"));

    assert_eq!(
        plan.runs[14].env,
        [
            ("MAPSENTRY_TEST_PROBE_OK", KERNELS[0].probe_ok.to_owned()),
            ("MAPSENTRY_TEST_AUTO_PICKS", "fentry".to_owned()),
            runs_ia32
        ]
    );
    assert!(
        plan.runs[14].skip[0].1.contains("setpriv"),
        "{:?}",
        plan.runs[14]
    );

    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(skipped, ["new_one", "wire_layout"]);
    assert!(plan.skipped[0].reason.contains("not in the VM plan"));
    assert!(plan.skipped[1].reason.contains("BTF"));
}

#[test]
fn a_missing_suite_is_an_error() {
    let error = Plan::for_kernel(KERNELS[1], &built(&["capture", "attach_modes"])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the e2e test suite concurrency was not built"
    );
}

#[test]
fn the_bench_plan_runs_only_the_syscall_tax_helper_with_bpftrace_and_the_policies_and_needs_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut with = built(&["capture"]);
    with.helpers = vec![
        PathBuf::from("/t/mmap_call"),
        PathBuf::from("/t/syscall_tax"),
    ];
    let plan = Plan::bench(&with, root).unwrap();
    assert_eq!(plan.runs.len(), 1);
    assert_eq!(plan.runs[0].binary, PathBuf::from("/t/syscall_tax"));
    assert!(plan.skipped.is_empty());
    assert_eq!(plan.host_programs, [PathBuf::from("/usr/bin/bpftrace")]);
    let policies = root.join("examples/policies");
    assert!(
        plan.host_files
            .contains(&policies.join("write-execute.yaml")),
        "{:?}",
        plan.host_files
    );
    assert!(
        plan.host_files
            .iter()
            .all(|f| f.parent() == Some(&*policies))
    );
    let error = Plan::bench(&built(&["capture"]), root).unwrap_err();
    assert_eq!(error.to_string(), "the benchmark syscall_tax was not built");
    let error = Plan::bench(&with, Path::new("/nonexistent")).unwrap_err();
    assert_eq!(error.to_string(), "reading /nonexistent/examples/policies");
}

#[test]
fn the_boot_without_ia32_runs_the_per_mode_suites_in_tracepoint_mode_and_says_ia32_is_refused() {
    let kernel = crate::kernel::Kernel::named("6.12-no-ia32").unwrap();
    assert_eq!(kernel.boot_args, "ia32_emulation=false");
    let plan = Plan::for_kernel(kernel, &vm_suites(&[])).unwrap();
    assert_eq!(
        labels(&plan),
        [
            ("capture", "tracepoint"),
            ("concurrency", "tracepoint"),
            ("enforce", "tracepoint"),
            ("enforce_policies", "tracepoint"),
            ("capture", "auto"),
            ("attach_modes", "probe"),
            ("cli_run", "auto"),
        ]
    );
    for run in &plan.runs {
        assert!(
            run.env
                .contains(&("MAPSENTRY_TEST_IA32", "refused".to_owned())),
            "{run:?}"
        );
    }
    // auto still picks fentry: the kernel has it, with or without ia32.
    assert!(
        plan.runs[4]
            .env
            .contains(&("MAPSENTRY_TEST_AUTO_PICKS", "fentry".to_owned()))
    );
}
