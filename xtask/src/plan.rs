//! What runs inside the VM: each capture suite in each attach mode the kernel supports, `auto`
//! once (it must pick the cheapest mode), and the suites left to the host, each with its reason.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{binaries::Built, kernel::Kernel};

/// The agent's attach modes, as the tests name them in `MAPSENTRY_TEST_ATTACH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Mode {
    /// Cheapest first, the order in which `auto` tries them.
    pub const CONCRETE: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Test suites run in every mode of the kernel. `enforce` and `enforce_policies` among them: Kill
/// (mmap and mprotect flips, the judged rules) and LSM Deny with EPERM, which they must show
/// (`MAPSENTRY_TEST_DENY=required`): the VMs boot with BPF LSM active, and a run whose kernel did
/// not activate it fails ([`Plan::requires_bpf_lsm`]).
const PER_MODE: [&str; 4] = ["capture", "concurrency", "enforce", "enforce_policies"];
/// The suites that test Deny, and must see it work in the VMs.
const DENY: [&str; 2] = ["enforce", "enforce_policies"];
/// The suite run once with `auto`.
const AUTO: &str = "capture";
/// The feature-probe suite, run once with the kernel's expectations.
const PROBE: &str = "attach_modes";
/// The `mapsentry run` suite, run once with the kernel's expectations of its modes.
const CLI: &str = "cli_run";
/// Tests of `CLI` left to the host, and why.
const CLI_HOST_ONLY: [(&str, &str); 1] = [(
    "an_unprivileged_user_is_told_what_is_missing",
    "needs util-linux setpriv --reuid; busybox's has no such option",
)];
/// Suites that stay on the host, and why.
const HOST_ONLY: [(&str, &str); 1] = [(
    "wire_layout",
    "compares the object's BTF (read with bpftool) with the Rust mirror: no kernel involved, \
     the host run covers it",
)];

/// One test executable run once, with the environment that tells it what to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub suite: String,
    /// What this run is about: the mode, `auto`, or `probe`.
    pub label: String,
    /// The environment the e2e tests read (`e2e/tests/common`, `e2e/tests/attach_modes.rs`).
    pub env: Vec<(&'static str, String)>,
    pub binary: PathBuf,
    /// Tests of the suite not run here, with the reason.
    pub skip: Vec<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub suite: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Plan {
    pub runs: Vec<Run>,
    pub skipped: Vec<Skip>,
    /// The VM must report `bpf` among its active LSMs (the kernel is booted with `lsm=...,bpf`):
    /// the Deny tests are told Deny must work, and a kernel that ignored the request fails the run.
    pub requires_bpf_lsm: bool,
    /// Dynamically linked programs of the host the VM runs too (the benchmark's peer, bpftrace),
    /// copied in with the shared libraries they load.
    pub host_programs: Vec<PathBuf>,
    /// Files of the checkout the VM reads at their host paths: the policies the benchmark's
    /// collector evaluates (`examples/policies`).
    pub host_files: Vec<PathBuf>,
}

/// The benchmark's peer: Debian's bpftrace (scripts/setup.sh installs it), in the VM with LLVM
/// and the rest of its libraries.
pub const BPFTRACE: &str = "/usr/bin/bpftrace";

/// The policies the benchmark's pipeline evaluates, in the checkout.
pub const POLICIES: &str = "examples/policies";

/// The files of `dir`, sorted; none is an error (the benchmark's collector would have nothing
/// to evaluate).
fn files_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_file() {
            files.push(path);
        }
    }
    anyhow::ensure!(!files.is_empty(), "{} holds no files", dir.display());
    files.sort();
    Ok(files)
}

/// The benchmark `cargo xtask vm-bench` boots with (a helper binary, not a test suite).
pub const BENCH: &str = "syscall_tax";

impl Plan {
    /// `vm-bench`: only the syscall-tax benchmark, which measures every mode the kernel attaches,
    /// with bpftrace and the example policies of the checkout at `root` (its pipeline's
    /// collector evaluates them).
    pub fn bench(built: &Built, root: &Path) -> anyhow::Result<Self> {
        let binary = built
            .helpers
            .iter()
            .find(|h| h.file_name() == Some(BENCH.as_ref()))
            .cloned()
            .with_context(|| format!("the benchmark {BENCH} was not built"))?;
        Ok(Self {
            runs: vec![Run {
                suite: BENCH.to_owned(),
                label: "bench".to_owned(),
                env: Vec::new(),
                binary,
                skip: Vec::new(),
            }],
            skipped: Vec::new(),
            requires_bpf_lsm: false,
            host_programs: vec![PathBuf::from(BPFTRACE)],
            host_files: files_in(&root.join(POLICIES))?,
        })
    }

    pub fn for_kernel(kernel: Kernel, built: &Built) -> anyhow::Result<Self> {
        let binary = |suite: &str| {
            built
                .tests
                .get(suite)
                .cloned()
                .with_context(|| format!("the e2e test suite {suite} was not built"))
        };
        let mut runs = Vec::new();
        for &mode in kernel.tested {
            for suite in PER_MODE {
                let mut env = vec![("MAPSENTRY_TEST_ATTACH", mode.to_string())];
                if DENY.contains(&suite) {
                    env.push(("MAPSENTRY_TEST_DENY", "required".to_owned()));
                }
                runs.push(Run {
                    suite: suite.to_owned(),
                    label: mode.to_string(),
                    env,
                    binary: binary(suite)?,
                    skip: Vec::new(),
                });
            }
        }
        runs.push(Run {
            suite: AUTO.to_owned(),
            label: Mode::Auto.to_string(),
            env: vec![
                ("MAPSENTRY_TEST_ATTACH", Mode::Auto.to_string()),
                ("MAPSENTRY_TEST_AUTO_PICKS", kernel.auto_picks().to_string()),
            ],
            binary: binary(AUTO)?,
            skip: Vec::new(),
        });
        runs.push(Run {
            suite: PROBE.to_owned(),
            label: "probe".to_owned(),
            env: vec![
                ("MAPSENTRY_TEST_PROBE_OK", kernel.probe_ok.to_owned()),
                (
                    "MAPSENTRY_TEST_PROBE_REFUSED",
                    kernel.probe_refused.to_owned(),
                ),
            ],
            binary: binary(PROBE)?,
            skip: Vec::new(),
        });
        runs.push(Run {
            suite: CLI.to_owned(),
            label: Mode::Auto.to_string(),
            env: vec![
                ("MAPSENTRY_TEST_PROBE_OK", kernel.probe_ok.to_owned()),
                ("MAPSENTRY_TEST_AUTO_PICKS", kernel.auto_picks().to_string()),
            ],
            binary: binary(CLI)?,
            skip: CLI_HOST_ONLY.to_vec(),
        });
        // What the kernel does with ia32 calls, for every suite that looks at them.
        let ia32 = if kernel.ia32 { "runs" } else { "refused" };
        for run in &mut runs {
            run.env.push(("MAPSENTRY_TEST_IA32", ia32.to_owned()));
        }
        let skipped = built
            .tests
            .keys()
            .filter(|suite| !runs.iter().any(|run| &run.suite == *suite))
            .map(|suite| Skip {
                suite: suite.clone(),
                reason: HOST_ONLY
                    .iter()
                    .find(|(name, _)| name == suite)
                    .map_or("not in the VM plan (xtask/src/plan.rs)", |(_, why)| why)
                    .to_owned(),
            })
            .collect();
        Ok(Self {
            runs,
            skipped,
            requires_bpf_lsm: true,
            host_programs: Vec::new(),
            host_files: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
