//! Real kernel, in the attach mode of `$MAPSENTRY_TEST_ATTACH` (tracepoint on the build
//! machines; every mode in the VMs): kernel rules kill a process at a forbidden mmap or
//! mprotect, in its cgroup only, before it can use the mapping; allowed calls before it
//! succeed. Deny rules fail the call with EPERM where BPF LSM is active (and must, where the
//! harness says BPF LSM runs: `MAPSENTRY_TEST_DENY=required`, set by the VM matrix).
//!
//! Other processes share the machine (other tests, other people's programs; JITs flip RW to RX,
//! which is judged W+X): every rule here is scoped to a test cgroup, or, for the rules for every
//! process (key 0), narrow enough that nothing but the helper can match it.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::{Helper, capture, drain_pid, mmap_call};
use mapsentry_agent::{
    CaptureConfig,
    enforce::{EVERY_PROCESS, KernelAction, KernelRule, MappingKind},
};
use mapsentry_e2e::cgroup::TestCgroup;
use mapsentry_policy::{EnforceAction, Enforcement};
use serde_json::json;

const PROT_WRITE: u64 = 0x2;
const PROT_EXEC: u64 = 0x4;
const PRIVATE_ANON: u64 = 0x22;
/// `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`.
const PRIVATE_ANON_NORESERVE: u64 = 0x02 | 0x20 | 0x4000;
/// A W+X mapping this long with `MAP_NORESERVE` is what the rules for every process judge:
/// nothing else on a machine maps that.
const HUGE: u64 = 3 << 30;

/// Whether the run must show Deny working (the VM matrix boots with BPF LSM and says so).
fn deny_required() -> bool {
    std::env::var("MAPSENTRY_TEST_DENY").is_ok_and(|v| v == "required")
}

fn write_exec_kill(rule_id: u32) -> KernelRule {
    KernelRule {
        rule_id,
        action: KernelAction::Kill,
        prot_all: PROT_WRITE | PROT_EXEC,
        prot_any: 0,
        ..KernelRule::default()
    }
}

fn calls() -> String {
    json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 8192, "prot": 7, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]})
    .to_string()
}

#[tokio::test]
async fn a_kill_rule_kills_at_the_write_exec_mmap_in_its_cgroup_only() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-enforce-{}", std::process::id()))
        .expect("creating a cgroup (needs root and cgroup v2)");
    let inside = Helper::spawn(mmap_call(), &[&calls()]);
    let outside = Helper::spawn(mmap_call(), &[&calls()]);
    cgroup
        .add(inside.pid)
        .expect("moving the helper into the cgroup");
    let (inside_pid, outside_pid) = (inside.pid, outside.pid);

    let mut capture = capture(&CaptureConfig::default());
    capture
        .rules()
        .set(cgroup.id().unwrap(), 1, &[write_exec_kill(7)])
        .expect("writing rules");

    let (status, report) = inside.go_until_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "the W+X mmap is answered with SIGKILL: {status:?}"
    );
    assert!(
        report.is_none(),
        "killed before it could report: {report:?}"
    );
    let (status, report) = outside.go_until_exit();
    assert!(status.success(), "another cgroup is untouched: {status:?}");
    assert_eq!(report.unwrap()["results"][1]["prot"], 7);

    let mut all = Vec::new();
    while capture.drain(&mut all) > 0 {}
    let of = |pid: u32| {
        all.iter()
            .filter(|e| e.pid == pid && e.args.length >= 4096)
            .collect::<Vec<_>>()
    };
    let inside_events = of(inside_pid);
    let rw = inside_events
        .iter()
        .find(|e| e.args.prot == 3)
        .expect("the allowed RW mapping was captured");
    assert!(
        rw.ret > 0 && rw.enforced.is_none(),
        "the earlier allowed mapping succeeded: {rw:?}"
    );
    let wx = inside_events
        .iter()
        .find(|e| e.args.prot == 7)
        .expect("the W+X call was captured");
    assert_eq!(
        wx.enforced,
        Some(Enforcement {
            action: EnforceAction::Kill,
            rule_id: 7
        })
    );
    assert!(
        !inside_events.iter().any(|e| e.args.prot == 1),
        "nothing after the kill: {inside_events:?}"
    );
    let outside_wx = of(outside_pid)
        .into_iter()
        .find(|e| e.args.prot == 7)
        .expect("outside W+X captured");
    assert_eq!(outside_wx.enforced, None);
    assert!(outside_wx.ret > 0);
}

/// The report filter here keeps only calls with PROT_READ: the W+X call without it (prot
/// `PROT_WRITE|PROT_EXEC`, 6) is outside the filter, yet must be enforced, and reported.
#[tokio::test]
async fn enforcement_ignores_report_filters_and_file_rules_skip_anonymous_calls() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-filters-{}", std::process::id()))
        .expect("creating a cgroup");
    let unreadable_wx = json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 8192, "prot": 6, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]})
    .to_string();
    let helper = Helper::spawn(mmap_call(), &[&unreadable_wx]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let mut capture = capture_for(helper.pid);
    let mut rule = write_exec_kill(9);
    rule.mapping = MappingKind::File;
    capture
        .rules()
        .set(cgroup.id().unwrap(), 1, &[rule])
        .unwrap();
    let report = helper.go();
    assert!(
        report["results"][1]["ret"].as_i64().unwrap() > 0,
        "an anonymous W+X call does not match a File rule: {report}"
    );

    let helper = Helper::spawn(mmap_call(), &[&unreadable_wx]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let pid = helper.pid;
    let mut capture = capture_for(pid);
    capture
        .rules()
        .set(cgroup.id().unwrap(), 1, &[write_exec_kill(9)])
        .unwrap();
    let (status, _) = helper.go_until_exit();
    assert_eq!(status.signal(), Some(9), "the W+X call is killed");
    let events = drain_pid(&mut capture, pid);
    let wx = events
        .iter()
        .find(|e| e.args.prot == 6)
        .expect("the enforced call is reported although the report filter leaves it out");
    assert_eq!(wx.enforced.map(|e| e.rule_id), Some(9));
    assert!(
        events
            .iter()
            .all(|e| e.args.prot & 0x1 != 0 || e.enforced.is_some()),
        "the filter still applies to the rest: {events:?}"
    );
}

/// Rules for every process (key 0) judge processes in any cgroup. The rule is narrow (a W+X
/// mapping of 3 GiB with MAP_NORESERVE) so that it can only ever match the helper.
#[tokio::test]
async fn rules_for_every_process_apply_in_any_cgroup() {
    let huge = json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": HUGE, "prot": 7, "flags": PRIVATE_ANON_NORESERVE, "fd": "anon"},
    ]})
    .to_string();
    let helper = Helper::spawn(mmap_call(), &[&huge]);
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let mut rule = write_exec_kill(21);
    rule.min_length = HUGE;
    rule.flags_all = PRIVATE_ANON_NORESERVE;
    capture.rules().set(EVERY_PROCESS, 1, &[rule]).unwrap();
    let (status, report) = helper.go_until_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "key 0 rules apply to every process: {report:?}"
    );
    let events = drain_pid(&mut capture, pid);
    let wx = events
        .iter()
        .find(|e| e.args.length == HUGE)
        .expect("the huge W+X call is reported");
    assert_eq!(wx.enforced.map(|e| e.rule_id), Some(21));
    capture.rules().remove(EVERY_PROCESS).unwrap();
}

/// With a rule set loaded, the entry program judges every mmap and leaves the ones no rule
/// matched to the exit program; with none (never loaded, or removed again) the exit program
/// alone reads the call. Each way, every call is exactly one record with its arguments, and
/// the kernel's `reported` count equals the records delivered.
#[tokio::test]
async fn every_call_is_one_record_with_rules_loaded_removed_or_absent() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-records-{}", std::process::id()))
        .expect("creating a cgroup");
    let key = cgroup.id().unwrap();
    for rules in ["loaded", "removed", "absent"] {
        let helper = Helper::spawn(mmap_call(), &[&calls()]);
        cgroup
            .add(helper.pid)
            .expect("moving the helper into the cgroup");
        let pid = helper.pid;
        let mut capture = capture(&CaptureConfig {
            pid: Some(pid),
            ..CaptureConfig::default()
        });
        if rules != "absent" {
            let mut never = write_exec_kill(3);
            never.min_length = 1 << 40;
            capture.rules().set(key, 1, &[never]).unwrap();
            assert_eq!(capture.rules().len(), 1);
        }
        if rules == "removed" {
            capture.rules().remove(key).unwrap();
            assert!(capture.rules().is_empty());
        }
        let report = helper.go();
        let events = drain_pid(&mut capture, pid);
        for (i, (length, prot)) in [(4096, 3), (8192, 7), (4096, 1)].into_iter().enumerate() {
            let matching: Vec<_> = events
                .iter()
                .filter(|e| e.args.length == length && e.args.prot == prot)
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "rules {rules}: call {i} is one record: {events:?}"
            );
            let event = matching[0];
            assert_eq!(event.enforced, None, "rules {rules}: {event:?}");
            assert_eq!(
                event.ret,
                report["results"][i]["ret"].as_i64().unwrap(),
                "rules {rules}: the record carries the call's return"
            );
            assert_eq!(event.args.flags, PRIVATE_ANON, "rules {rules}");
            assert_eq!(event.args.fd, -1, "rules {rules}");
        }
        let counters = capture.kernel_counters().unwrap();
        assert_eq!(
            counters.reported,
            events.len() as u64 + counters.dropped,
            "rules {rules}: {counters:?}"
        );
    }
}

/// A capture that reports only `pid`'s calls with PROT_READ: the W+X call is outside the
/// report filter, yet must still be enforced, and reported.
fn capture_for(pid: u32) -> mapsentry_agent::Capture {
    capture(&CaptureConfig {
        pid: Some(pid),
        prot_any: 0x1,
        ..CaptureConfig::default()
    })
}

#[tokio::test]
async fn more_rules_than_the_kernel_holds_is_an_error() {
    let mut capture = capture(&CaptureConfig {
        pid: Some(1),
        ..CaptureConfig::default()
    });
    let rules: Vec<KernelRule> = (0..33).map(write_exec_kill).collect();
    let err = capture.rules().set(42, 1, &rules).unwrap_err().to_string();
    assert_eq!(
        err,
        "cgroup 42: 33 enforcement rules, the kernel holds at most 32 per cgroup"
    );
    capture
        .rules()
        .remove(42)
        .expect("removing absent rules is fine");
}

#[tokio::test]
async fn mprotect_rw_to_rx_is_write_exec_and_is_killed_but_a_downgrade_is_not() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-mprotect-{}", std::process::id()))
        .expect("creating a cgroup");
    let flip = json!({"calls": [
        {"length": 8192, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 1},
        {"length": 8192, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 5},
    ]});
    let helper = Helper::spawn(mmap_call(), &[&flip.to_string()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    capture
        .rules()
        .set(cgroup.id().unwrap(), 1, &[write_exec_kill(11)])
        .unwrap();

    let (status, _) = helper.go_until_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "RW -> RX through mprotect is killed: {status:?}"
    );
    let events = drain_pid(&mut capture, pid);
    let mprotects: Vec<_> = events
        .iter()
        .filter(|e| e.syscall == mapsentry_policy::Syscall::Mprotect)
        .collect();
    let downgrade = mprotects
        .iter()
        .find(|e| e.args.prot == 1)
        .expect("the RW -> R mprotect was captured");
    assert_eq!(downgrade.enforced, None, "RW -> R is allowed");
    assert_eq!(downgrade.ret, 0);
    assert_eq!(
        downgrade
            .target_mapping
            .map(|t| (t.prev_prot, t.file_backed)),
        Some((3, false))
    );
    let flip = mprotects
        .iter()
        .find(|e| e.args.prot == 5)
        .expect("the RW -> RX mprotect was captured");
    assert_eq!(
        flip.enforced,
        Some(Enforcement {
            action: EnforceAction::Kill,
            rule_id: 11
        })
    );
}

/// Deny needs BPF LSM. Where the capture could attach it, the W+X call fails with EPERM and the
/// process lives; where it could not (the build machines refuse BPF LSM programs), a Deny rule
/// is refused with the reason, never silently downgraded. Where the run requires Deny (the VMs
/// boot with BPF LSM), a refusal fails the test.
#[tokio::test]
async fn deny_rules_fail_the_call_with_eperm_or_are_refused_with_the_reason() {
    let cgroup = TestCgroup::create(&format!("mapsentry-test-deny-{}", std::process::id()))
        .expect("creating a cgroup");
    let helper = Helper::spawn(mmap_call(), &[&calls()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let mut rule = write_exec_kill(13);
    rule.action = KernelAction::Deny;
    let result = capture.rules().set(cgroup.id().unwrap(), 1, &[rule]);

    let unavailable = capture.attached().deny_unavailable.clone();
    assert!(
        !(deny_required() && unavailable.is_some()),
        "this kernel runs BPF LSM, so Deny must work, but the capture says: {unavailable:?}"
    );
    if let Some(reason) = unavailable {
        let err = result
            .expect_err("a Deny rule without BPF LSM is refused")
            .to_string();
        assert!(
            err.contains("rule 13 denies, but this kernel cannot deny") && err.contains(&reason),
            "{err}"
        );
        let report = helper.go();
        assert!(
            report["results"][1]["ret"].as_i64().unwrap() > 0,
            "no rule was installed"
        );
    } else {
        result.expect("BPF LSM is active: Deny rules install");
        let report = helper.go();
        assert_eq!(
            report["results"][1]["ret"], -1,
            "the W+X mmap fails with EPERM"
        );
        assert!(
            report["results"][2]["ret"].as_i64().unwrap() > 0,
            "the process lives on"
        );
        let events = drain_pid(&mut capture, pid);
        let wx = events
            .iter()
            .find(|e| e.args.prot == 7)
            .expect("the denied call is reported");
        assert_eq!(
            wx.enforced,
            Some(Enforcement {
                action: EnforceAction::Deny,
                rule_id: 13
            })
        );
        assert_eq!(wx.ret, -1);
    }
}

/// mprotect RW -> RX under a Deny rule: EPERM where BPF LSM is active (the mapping stays RW and
/// the process lives on), refused with the reason where it is not.
#[tokio::test]
async fn a_deny_rule_fails_an_mprotect_to_write_exec_with_eperm_or_is_refused() {
    let cgroup = TestCgroup::create(&format!(
        "mapsentry-test-deny-mprotect-{}",
        std::process::id()
    ))
    .expect("creating a cgroup");
    let flip = json!({"calls": [
        {"length": 8192, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 5},
        {"length": 8192, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 1},
    ]});
    let helper = Helper::spawn(mmap_call(), &[&flip.to_string()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let mut rule = write_exec_kill(17);
    rule.action = KernelAction::Deny;
    let result = capture.rules().set(cgroup.id().unwrap(), 1, &[rule]);

    let unavailable = capture.attached().deny_unavailable.clone();
    assert!(
        !(deny_required() && unavailable.is_some()),
        "this kernel runs BPF LSM, so Deny must work, but the capture says: {unavailable:?}"
    );
    let Some(reason) = unavailable else {
        result.expect("BPF LSM is active: Deny rules install");
        let report = helper.go();
        assert_eq!(
            report["results"][0]["ret"], -1,
            "the RW -> RX mprotect fails with EPERM (-1 is -EPERM): {report}"
        );
        assert_eq!(
            report["results"][1]["ret"], 0,
            "the process lives on and RW -> R is allowed: {report}"
        );
        let events = drain_pid(&mut capture, pid);
        let denied = events
            .iter()
            .find(|e| e.syscall == mapsentry_policy::Syscall::Mprotect && e.args.prot == 5)
            .expect("the denied mprotect is reported");
        assert_eq!(
            denied.enforced,
            Some(Enforcement {
                action: EnforceAction::Deny,
                rule_id: 17
            })
        );
        assert_eq!(
            denied.ret, -1,
            "the record carries the kernel's answer, -EPERM"
        );
        return;
    };
    let err = result
        .expect_err("a Deny rule without BPF LSM is refused")
        .to_string();
    assert!(
        err.contains("rule 17 denies, but this kernel cannot deny") && err.contains(&reason),
        "{err}"
    );
    let report = helper.go();
    assert_eq!(report["results"][0]["ret"], 0, "no rule was installed");
}
