//! Real kernel, in the attach mode of `$MAPSENTRY_TEST_ATTACH` (tracepoint on the build
//! machines; every mode in the VMs): one Enforce policy with the rules people write, compiled by
//! the agent's `Enforcer` and judged in the kernel at syscall entry: command names, executables
//! (tracked at exec, and read from the task for processes older than the capture), memfd and
//! file path conditions, an exception by comm and one by executable directory, an mprotect flip.
//!
//! Every rule is scoped to one test cgroup (the policy covers host processes, and the cgroups
//! the `Enforcer` resolves are that cgroup alone): nothing else on the machine is judged.

mod common;

use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
};

use common::{Helper, capture, drain_pid, mmap_call};
use mapsentry_agent::{
    Capture, CaptureConfig,
    enforce::policies::{CgroupScope, Enforcer},
};
use mapsentry_e2e::{cgroup::TestCgroup, mount::ReadOnlyDir};
use mapsentry_policy::{EnforceAction, PolicyId, Syscall, enforce::rule_id, load_str};
use serde_json::{Value, json};

const PRIVATE_ANON: u64 = 0x22;
const PRIVATE: u64 = 0x02;
const PROT_RW: u64 = 3;
const PROT_RX: u64 = 5;
const PROT_RWX: u64 = 7;
const POLICY: &str = "e2e-judged";

/// Whether the run must show Deny working (the VM matrix boots with BPF LSM and says so).
fn deny_required() -> bool {
    std::env::var("MAPSENTRY_TEST_DENY").is_ok_and(|v| v == "required")
}

/// The policy: memfd exec killed for everyone; exec mappings of the helper's temporary files
/// (`mapsentry-file-*` in the temp dir; not all of /tmp, which may hold the checkout and so the
/// helper's own executable) denied (killed where the kernel cannot deny); anonymous exec mmaps killed except for comm `jitok`; W+X
/// mprotect flips killed except for executables under `trusted`.
fn policy_yaml(trusted: &Path) -> String {
    format!(
        "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata: {{name: {POLICY}}}
spec:
  hostProcesses: true
  mode: Enforce
  denyFallback: Kill
  rules:
    - name: memfd-exec
      match: {{protAny: [PROT_EXEC], file: {{memfd: true}}}}
      action: Kill
    - name: tmp-exec
      match: {{protAny: [PROT_EXEC], mapping: File, file: {{pathGlobs: ['{}/mapsentry-file-*']}}}}
      action: Deny
    - name: anon-exec
      match: {{syscalls: [mmap], protAny: [PROT_EXEC], mapping: Anonymous}}
      except: {{comm: [jitok]}}
      action: Kill
    - name: flip-to-exec
      match: {{syscalls: [mprotect], protAll: [PROT_WRITE, PROT_EXEC]}}
      except: {{executableGlobs: ['{}/**']}}
      action: Kill
",
        std::env::temp_dir().display(),
        trusted.display()
    )
}

fn id() -> PolicyId {
    PolicyId {
        namespace: None,
        name: POLICY.into(),
    }
}

/// Two copies of the helper program, same name (so the same comm), one under `trusted/`:
/// beside the test binaries, not among the temporary files the policy's file rule covers.
struct Executables {
    dir: PathBuf,
    trusted: PathBuf,
    other: PathBuf,
}

impl Executables {
    fn copy() -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .expect("test binary directory")
            .join(format!("mapsentry-e2e-exe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let trusted = dir.join("trusted").join("mmap_call");
        let other = dir.join("other").join("mmap_call");
        for to in [&trusted, &other] {
            std::fs::create_dir_all(to.parent().unwrap()).expect("creating the copy's directory");
            std::fs::copy(mmap_call(), to).expect("copying the helper");
        }
        Self {
            dir,
            trusted,
            other,
        }
    }
}

impl Drop for Executables {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The capture, and the policy applied to `cgroup` only.
fn enforcing(yaml: &str, cgroup: &TestCgroup, state_dir: Option<PathBuf>) -> (Capture, Enforcer) {
    let mut capture = capture(&CaptureConfig::default());
    let deny_unavailable = capture.attached().deny_unavailable.clone();
    assert!(
        !(deny_required() && deny_unavailable.is_some()),
        "this kernel runs BPF LSM, so Deny must work, but the capture says: {deny_unavailable:?}"
    );
    let mut enforcer = Enforcer::new(state_dir, deny_unavailable.as_deref());
    let outcome = load_str(yaml);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    let json = outcome
        .policies
        .iter()
        .map(|l| mapsentry_policy::enforce::policy_json(&l.policy).unwrap())
        .collect();
    enforcer.set_policies(1, json).expect("the policy is valid");
    assert!(
        enforcer.refused().is_empty(),
        "every rule is judged in the kernel: {:?}",
        enforcer.refused()
    );
    enforcer.apply(
        capture.rules(),
        &[(cgroup.id().unwrap(), CgroupScope::Host)],
    );
    let stats = enforcer.stats();
    assert_eq!((stats.cgroups, stats.write_errors), (1, 0), "{stats:?}");
    (capture, enforcer)
}

/// What became of a helper run: killed (SIGKILL), or its report.
#[derive(Debug)]
enum Outcome {
    Killed { pid: u32 },
    Reported { pid: u32, report: Value },
}

impl Outcome {
    fn killed(&self) -> bool {
        matches!(self, Self::Killed { .. })
    }

    fn pid(&self) -> u32 {
        match self {
            Self::Killed { pid } | Self::Reported { pid, .. } => *pid,
        }
    }

    /// The return value of call `i`; panics, saying `what` was expected, when the helper was
    /// killed.
    #[track_caller]
    fn ret(&self, i: usize, what: &str) -> i64 {
        match self {
            Self::Reported { report, .. } => report["results"][i]["ret"]
                .as_i64()
                .unwrap_or_else(|| panic!("no ret in {report}")),
            Self::Killed { pid } => panic!("{what}: helper {pid} was killed"),
        }
    }
}

/// Let `helper` (already in its cgroup) make its calls.
fn finish(helper: Helper) -> Outcome {
    let pid = helper.pid;
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(
            report.is_none(),
            "killed before it could report: {report:?}"
        );
        Outcome::Killed { pid }
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        Outcome::Reported {
            pid,
            report: report.expect("a report"),
        }
    }
}

fn start_in(cgroup: &TestCgroup, program: &Path, spec: &Value) -> Helper {
    let helper = Helper::spawn(program, &[&spec.to_string()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    helper
}

fn run_in(cgroup: &TestCgroup, program: &Path, spec: &Value) -> Outcome {
    finish(start_in(cgroup, program, spec))
}

fn flip() -> Value {
    json!({"calls": [{"length": 8192, "prot": PROT_RW, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": PROT_RX}]})
}

/// The decision on `pid`'s enforced call with `prot`.
fn enforced(capture: &mut Capture, pid: u32, prot: u64) -> Option<(EnforceAction, u32)> {
    drain_pid(capture, pid)
        .iter()
        .find(|e| e.args.prot == prot && e.enforced.is_some())
        .and_then(|e| e.enforced.map(|d| (d.action, d.rule_id)))
}

#[tokio::test]
async fn one_policy_judges_comm_executables_memfds_paths_and_flips_in_the_kernel() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-judged-{}", std::process::id()))
        .expect("creating a cgroup (needs root and cgroup v2)");
    let exes = Executables::copy();
    let yaml = policy_yaml(exes.trusted.parent().unwrap());
    // Started before the capture: judged by the executable the kernel reads from the task.
    let early_trusted = start_in(&cgroup, &exes.trusted, &flip());
    let early_other = start_in(&cgroup, &exes.other, &flip());
    let (mut capture, _enforcer) = enforcing(&yaml, &cgroup, None);
    let deny = capture.attached().deny_unavailable.is_none();

    // Anonymous exec: killed, except for the comm `jitok`, which completes its W+X mapping.
    let jit = run_in(
        &cgroup,
        Path::new(mmap_call()),
        &json!({"comm": "jitok", "calls": [{"length": 4096, "prot": PROT_RWX, "flags": PRIVATE_ANON, "fd": "anon"}]}),
    );
    assert!(jit.ret(0, "comm jitok is excepted") > 0, "{jit:?}");
    let anon = run_in(
        &cgroup,
        Path::new(mmap_call()),
        &json!({"calls": [{"length": 4096, "prot": PROT_RX, "flags": PRIVATE_ANON, "fd": "anon"}]}),
    );
    assert!(
        anon.killed(),
        "anonymous exec by another comm is killed: {anon:?}"
    );
    assert_eq!(
        enforced(&mut capture, anon.pid(), PROT_RX),
        Some((EnforceAction::Kill, rule_id(&id(), "anon-exec")))
    );

    // RW then mprotect RX: the executable under the excepted directory survives, a copy with
    // the same comm elsewhere is killed; started after the capture (exec tracking) and before.
    for (when, trusted, other) in [
        (
            "after",
            start_in(&cgroup, &exes.trusted, &flip()),
            start_in(&cgroup, &exes.other, &flip()),
        ),
        ("before", early_trusted, early_other),
    ] {
        let trusted = finish(trusted);
        let what = format!("started {when}: the trusted executable flips");
        assert_eq!(trusted.ret(0, &what), 0, "{what}: {trusted:?}");
        let other = finish(other);
        assert!(
            other.killed(),
            "started {when}: the copy elsewhere is killed: {other:?}"
        );
        assert_eq!(
            enforced(&mut capture, other.pid(), PROT_RX),
            Some((EnforceAction::Kill, rule_id(&id(), "flip-to-exec"))),
            "started {when}"
        );
    }

    // A process that execs is judged by its new executable: the trusted one, whose classes the
    // kernel knows from its first flip, execs the other copy, whose flip is killed.
    let mut spec = flip();
    spec["exec"] = json!(exes.other.to_str().unwrap());
    spec["then"] = flip();
    let after_exec = run_in(&cgroup, &exes.trusted, &spec);
    assert!(
        after_exec.killed(),
        "the flip after exec is judged by the new executable: {after_exec:?}"
    );
    let events = drain_pid(&mut capture, after_exec.pid());
    let flips: Vec<_> = events
        .iter()
        .filter(|e| e.syscall == Syscall::Mprotect && e.args.prot == PROT_RX)
        .collect();
    assert_eq!(flips.len(), 2, "{events:?}");
    assert!(
        flips[0].enforced.is_none() && flips[0].ret == 0,
        "before exec: {:?}",
        flips[0]
    );
    assert_eq!(
        flips[1].enforced.map(|d| d.rule_id),
        Some(rule_id(&id(), "flip-to-exec")),
        "after exec"
    );

    // A memfd exec mapping is killed for everyone, the excepted comm and executable included.
    let memfd = run_in(
        &cgroup,
        &exes.trusted,
        &json!({"comm": "jitok", "calls": [{"length": 4096, "prot": PROT_RX, "flags": PRIVATE, "fd": "memfd:jit"}]}),
    );
    assert!(memfd.killed(), "memfd exec: {memfd:?}");
    assert_eq!(
        enforced(&mut capture, memfd.pid(), PROT_RX),
        Some((EnforceAction::Kill, rule_id(&id(), "memfd-exec")))
    );

    // An exec mapping of a temporary file: denied where BPF LSM runs, else killed; the same
    // mapping of a file elsewhere (the helper's own executable) is allowed.
    let tmp = run_in(
        &cgroup,
        Path::new(mmap_call()),
        &json!({"calls": [
            {"length": 4096, "prot": PROT_RX, "flags": PRIVATE, "fd": "exe"},
            {"length": 4096, "prot": PROT_RX, "flags": PRIVATE, "fd": "file"},
        ]}),
    );
    let decision = if deny {
        let what = "an exec mapping of the executable is allowed, one of a temporary file denied";
        assert!(tmp.ret(0, what) > 0, "{what}: {tmp:?}");
        assert_eq!(tmp.ret(1, what), -1, "{what} with EPERM: {tmp:?}");
        EnforceAction::Deny
    } else {
        assert!(tmp.killed(), "no BPF LSM: denyFallback Kill: {tmp:?}");
        EnforceAction::Kill
    };
    let events = drain_pid(&mut capture, tmp.pid());
    let exe_call = events
        .iter()
        .find(|e| {
            e.args.prot == PROT_RX
                && e.file
                    .as_ref()
                    .is_some_and(|f| !f.path.contains("mapsentry-file-"))
        })
        .expect("the exec mapping of the executable is reported");
    assert!(
        exe_call.ret > 0 && exe_call.enforced.is_none(),
        "{exe_call:?}"
    );
    let tmp_call = events
        .iter()
        .find(|e| e.enforced.is_some())
        .expect("the temporary file's exec mapping is reported");
    assert_eq!(
        tmp_call.enforced.map(|d| (d.action, d.rule_id)),
        Some((decision, rule_id(&id(), "tmp-exec")))
    );
}

#[tokio::test]
async fn a_set_that_cannot_be_persisted_is_enforced_and_says_why() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-ro-state-{}", std::process::id()))
        .expect("creating a cgroup");
    let state = ReadOnlyDir::mount(&format!("mapsentry-e2e-ro-state-{}", std::process::id()));
    let yaml = format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: {POLICY}}}\nspec:\n  hostProcesses: true\n  mode: Enforce\n  rules:\n    - {{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, action: Kill}}\n"
    );
    let (_capture, enforcer) = enforcing(&yaml, &cgroup, Some(state.path().to_owned()));
    let counts = enforcer.stats();
    assert!(
        !counts.persisted && counts.persist_failures == 1,
        "{counts:?}"
    );
    let why = enforcer.persist_error().expect("the persist error is kept");
    assert!(
        why.contains(&state.path().display().to_string()) && why.contains("Read-only file system"),
        "{why}"
    );
    let wx = run_in(
        &cgroup,
        Path::new(mmap_call()),
        &json!({"calls": [{"length": 4096, "prot": PROT_RWX, "flags": PRIVATE_ANON, "fd": "anon"}]}),
    );
    assert!(
        wx.killed(),
        "the set is enforced although it was not persisted: {wx:?}"
    );
}
