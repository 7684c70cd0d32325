//! Which attach modes the running kernel allows, found by a peer tool (bpftrace attaching its own
//! programs to the same kernel functions), not by the agent's probe: the tests' expectations
//! come from the kernel they run on, not from the build machines or the code under test.
//!
//! `cargo xtask vm-test` sets `MAPSENTRY_TEST_*` from its kernel table instead (the VMs have no
//! bpftrace); the helpers here are what the tests use when those are unset.

use std::{
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use mapsentry_agent::{AttachMode, probe::kernel};

/// What bpftrace could attach on this kernel: `Ok` or the reason it could not.
#[derive(Debug, Clone)]
pub struct KernelModes {
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
}

impl KernelModes {
    /// Whether the kernel allows `mode` (tracepoints: every BPF kernel).
    #[must_use]
    pub fn allows(&self, mode: AttachMode) -> bool {
        match mode {
            AttachMode::Fentry => self.fentry.is_ok(),
            AttachMode::Kprobe => self.kprobe.is_ok(),
            AttachMode::Tracepoint => true,
            AttachMode::Auto => false,
        }
    }

    /// The mode `auto` must pick: the cheapest one the kernel allows.
    #[must_use]
    pub fn cheapest(&self) -> AttachMode {
        AttachMode::CONCRETE
            .into_iter()
            .find(|&mode| self.allows(mode))
            .unwrap_or(AttachMode::Tracepoint)
    }
}

/// The running kernel's modes: from `$MAPSENTRY_TEST_PROBE_OK` where `cargo xtask vm-test` set
/// it from its kernel table, else probed with bpftrace, once per test process.
///
/// # Panics
/// When bpftrace is missing (scripts/setup.sh installs it) or the kernel has no mmap function.
pub fn kernel_modes() -> &'static KernelModes {
    static MODES: OnceLock<KernelModes> = OnceLock::new();
    MODES.get_or_init(|| {
        if let Ok(ok) = std::env::var("MAPSENTRY_TEST_PROBE_OK") {
            let listed = |mode: &str| {
                if ok.split(',').any(|item| item == mode) {
                    Ok(())
                } else {
                    Err(format!("{mode} is not in MAPSENTRY_TEST_PROBE_OK={ok}"))
                }
            };
            return KernelModes {
                fentry: listed("fentry"),
                kprobe: listed("kprobe"),
            };
        }
        let mmap = kernel::mmap_function().expect("the kernel's mmap function in /proc/kallsyms");
        let mprotect = kernel::mprotect_function().expect("do_mprotect_pkey in /proc/kallsyms");
        // The agent hooks both functions in these modes; the mode exists if both attach.
        let both = |kind: &str| {
            attaches(&format!("{kind}:{mmap}"))
                .and_then(|()| attaches(&format!("{kind}:{mprotect}")))
        };
        let modes = KernelModes {
            fentry: both("kfunc"),
            kprobe: both("kprobe"),
        };
        eprintln!("kernel_modes (bpftrace): {modes:?}");
        modes
    })
}

/// Whether bpftrace attaches `probe` here (it exits right after attaching).
fn attaches(probe: &str) -> Result<(), String> {
    let script = format!("{probe} {{ exit(); }} interval:ms:50 {{ exit(); }}");
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("bpftrace is the tests' independent kernel probe (scripts/setup.sh installs it): {e}")
        });
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while child.try_wait().expect("waiting for bpftrace").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "bpftrace did not finish probing {probe} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("bpftrace's output");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    // bpftrace 0.17 exits 0 after some attach errors; its error lines say what happened.
    if output.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text
            .lines()
            .find(|l| l.contains("ERROR"))
            .unwrap_or(&text)
            .trim()
            .to_owned())
    }
}

/// Whether the running kernel runs ia32 calls: `$MAPSENTRY_TEST_IA32` (`runs` or `refused`; set
/// by `cargo xtask vm-test`, whose matrix has a boot with ia32 emulation off), else `runs`: the
/// build machines' kernels do, and a test that finds otherwise fails rather than skips.
///
/// # Panics
/// On any other value of the variable.
#[must_use]
pub fn ia32_runs() -> bool {
    match std::env::var("MAPSENTRY_TEST_IA32").as_deref() {
        Ok("runs") | Err(_) => true,
        Ok("refused") => false,
        Ok(other) => panic!("MAPSENTRY_TEST_IA32={other:?}: expected runs or refused"),
    }
}
