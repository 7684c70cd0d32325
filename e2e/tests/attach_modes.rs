//! The feature probe on the running kernel (real BPF, needs root): each attach mode, optionally
//! on a named kernel function, is reported available or unavailable as the kernel decides.
//!
//! `$MAPSENTRY_TEST_PROBE_OK` and `$MAPSENTRY_TEST_PROBE_REFUSED` list what this kernel must
//! accept and refuse, comma-separated, each `mode` or `mode@function`; `cargo xtask vm-test`
//! sets them per kernel (e.g. on 6.1, fentry on do_mmap is refused: more than six arguments).
//! Unset, they come from what bpftrace can attach on the running kernel
//! (`mapsentry_e2e::kernel_modes`).

use mapsentry_agent::{AttachMode, probe};
use mapsentry_e2e::kernel_modes::{ia32_runs, kernel_modes};

/// The concrete modes the running kernel allows (`true`) or refuses (`false`), as bpftrace
/// finds them, comma-separated.
fn by_kernel(allowed: bool) -> String {
    let modes = kernel_modes();
    let names: Vec<&str> = AttachMode::CONCRETE
        .into_iter()
        .filter(|&mode| modes.allows(mode) == allowed)
        .map(AttachMode::as_str)
        .collect();
    names.join(",")
}

fn list(var: &str, allowed: bool) -> Vec<(AttachMode, Option<String>)> {
    let text = std::env::var(var).unwrap_or_else(|_| by_kernel(allowed));
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (mode, function) = match item.split_once('@') {
                Some((mode, function)) => (mode, Some(function.to_owned())),
                None => (item, None),
            };
            let mode = mode.parse().unwrap_or_else(|e| panic!("{var}: {e}"));
            (mode, function)
        })
        .collect()
}

#[test]
fn the_agent_s_ia32_answer_is_what_the_kernel_was_booted_with() {
    let answer = probe::ia32::ia32_calls();
    println!("ia32 calls: {answer:?}");
    if ia32_runs() {
        assert!(
            matches!(answer, probe::ia32::Ia32Calls::Run(_)),
            "{answer:?}"
        );
    } else {
        assert_eq!(
            answer,
            probe::ia32::Ia32Calls::Refused("booted with ia32_emulation=false".into())
        );
    }
}

fn name(mode: AttachMode, function: Option<&str>) -> String {
    function.map_or_else(|| mode.to_string(), |f| format!("{mode}@{f}"))
}

#[test]
fn the_probe_accepts_what_this_kernel_can_attach() {
    let btf = probe::kernel::load_btf(None).expect("kernel BTF");
    for (mode, function) in list("MAPSENTRY_TEST_PROBE_OK", true) {
        let what = name(mode, function.as_deref());
        let hook = probe::probe_mode(mode, function.as_deref(), &btf)
            .unwrap_or_else(|e| panic!("{what} must be available here: {e}"));
        match (mode, function) {
            // Where the kernel runs no ia32 calls, the per-syscall tracepoints lose nothing.
            (AttachMode::Tracepoint, _) if ia32_runs() => {
                assert!(hook.ends_with(" sys_enter/sys_exit"), "{hook}");
            }
            (AttachMode::Tracepoint, _) => assert_eq!(
                hook,
                format!("tracepoint {}", probe::PER_SYSCALL_TARGET),
                "{what}"
            ),
            (_, Some(function)) => assert_eq!(hook, function, "{what}"),
            (_, None) => assert_eq!(
                hook,
                probe::kernel::mmap_function().unwrap(),
                "{what}: the kernel's mmap function"
            ),
        }
        println!("available: {what} (hook {hook})");
    }
}

#[test]
fn the_probe_reports_what_this_kernel_refuses_with_the_reason() {
    let btf = probe::kernel::load_btf(None).expect("kernel BTF");
    for (mode, function) in list("MAPSENTRY_TEST_PROBE_REFUSED", false) {
        let what = name(mode, function.as_deref());
        match probe::probe_mode(mode, function.as_deref(), &btf) {
            Ok(hook) => panic!("{what} must be refused here, but attached to {hook}"),
            Err(error) => {
                let text = error.to_string();
                assert!(
                    text.starts_with(&format!(
                        "attach mode {mode} is not available on this kernel: "
                    )),
                    "{what}: {text}"
                );
                println!("refused: {what}: {text}");
            }
        }
    }
}

#[test]
fn probing_auto_or_tracepoint_on_a_function_is_an_error_not_a_guess() {
    let btf = probe::kernel::load_btf(None).expect("kernel BTF");
    let auto = probe::probe_mode(AttachMode::Auto, None, &btf).unwrap_err();
    assert!(
        auto.to_string()
            .ends_with("probe a concrete mode, not auto"),
        "{auto}"
    );
    let tp = probe::probe_mode(AttachMode::Tracepoint, Some("do_mmap"), &btf).unwrap_err();
    assert!(
        tp.to_string()
            .ends_with("tracepoint mode hooks sys_enter/sys_exit, not do_mmap"),
        "{tp}"
    );
}
