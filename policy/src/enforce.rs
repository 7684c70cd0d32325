//! Enforce-mode rules as the kernel judges them: plain data for the agent's rule tables.
//!
//! The kernel decides at syscall entry, before the call has a file resolved or a pod looked up,
//! so it judges only: `protAll`/`protAny` (the judged protection: an `mprotect` flip counts as
//! W+X), `flagsAll`/`flagsAny` as bits, `mapping` (Anonymous/File), `minLength` and `syscalls`.
//!
//! The rule for everything else (documented contract):
//! - a rule of an `Audit` policy, or with action `Alert`, has nothing for the kernel to do;
//! - a rule that uses `file`, `comm`, `executableGlobs`, any `except` field, or a mapping type
//!   (`MAP_SHARED`, `MAP_PRIVATE`, ... are values of the low flag bits, not bits) is **refused**
//!   for kernel enforcement as a whole, never enforced with a condition dropped (that would kill
//!   calls the rule allows). The refusal names the field; the collector still alerts on the rule;
//! - a `Deny` rule where the node has no BPF LSM follows the policy's `denyFallback`: `Refuse`
//!   (default: refused, with the reason) or `Kill` (enforced as Kill, marked as a fallback).

use crate::{
    Syscall,
    crd::{Action, DenyFallback, MappingKind, Mode, Rule},
    names,
    policy::{Policy, PolicyId},
};

/// What the kernel does to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelActionSpec {
    Kill,
    Deny,
}

/// One rule as the kernel judges it; every condition must hold (a zero or empty one always does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRuleSpec {
    /// Stable id of (policy, rule), echoed by the kernel in enforced records ([`rule_id`]).
    pub rule_id: u32,
    pub policy: PolicyId,
    pub rule: String,
    pub action: KernelActionSpec,
    /// A `Deny` rule enforced as `Kill` by `denyFallback: Kill` on a node without BPF LSM.
    pub deny_fell_back: bool,
    pub prot_all: u64,
    pub prot_any: u64,
    pub flags_all: u64,
    pub flags_any: u64,
    pub min_length: u64,
    /// Empty: every syscall.
    pub syscalls: Vec<Syscall>,
    /// None: anonymous and file-backed alike.
    pub mapping: Option<MappingKind>,
}

/// A rule of an `Enforce` policy that the kernel will not enforce, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub policy: PolicyId,
    pub rule: String,
    pub reason: String,
}

/// What the kernel makes of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
    pub rules: Vec<KernelRuleSpec>,
    pub refused: Vec<Refusal>,
}

/// The kernel rules of `policy` on a node where Deny is (`deny_available`) or is not possible.
#[must_use]
pub fn kernel_plan(policy: &Policy, deny_available: bool) -> KernelPlan {
    let mut plan = KernelPlan::default();
    if policy.mode() != Mode::Enforce {
        return plan;
    }
    let id = policy.id();
    for rule in policy.rules() {
        let refuse = |reason: String| Refusal {
            policy: id.clone(),
            rule: rule.name.clone(),
            reason,
        };
        let action = match rule.action {
            Action::Alert => continue,
            Action::Kill => KernelActionSpec::Kill,
            Action::Deny if deny_available => KernelActionSpec::Deny,
            Action::Deny => match policy.deny_fallback() {
                DenyFallback::Kill => KernelActionSpec::Kill,
                DenyFallback::Refuse => {
                    plan.refused.push(refuse(
                        "action Deny needs BPF LSM, which this node lacks, and denyFallback is Refuse (set denyFallback: Kill to kill instead)".into(),
                    ));
                    continue;
                }
            },
        };
        match kernel_rule(&id, rule, action) {
            Ok(mut spec) => {
                spec.deny_fell_back =
                    rule.action == Action::Deny && action == KernelActionSpec::Kill;
                plan.rules.push(spec);
            }
            Err(reason) => plan.refused.push(refuse(reason)),
        }
    }
    plan
}

fn kernel_rule(
    id: &PolicyId,
    rule: &Rule,
    action: KernelActionSpec,
) -> Result<KernelRuleSpec, String> {
    let m = &rule.match_;
    let unjudgeable = [
        (m.file.is_some(), "match.file"),
        (!m.comm.is_empty(), "match.comm"),
        (!m.executable_globs.is_empty(), "match.executableGlobs"),
        (
            rule.except.as_ref().is_some_and(|e| !e.comm.is_empty()),
            "except.comm",
        ),
        (
            rule.except
                .as_ref()
                .is_some_and(|e| !e.executable_globs.is_empty()),
            "except.executableGlobs",
        ),
        (
            rule.except
                .as_ref()
                .is_some_and(|e| !e.containers.is_empty()),
            "except.containers",
        ),
        (
            rule.except.as_ref().is_some_and(|e| !e.images.is_empty()),
            "except.images",
        ),
    ];
    if let Some((_, field)) = unjudgeable.iter().find(|(used, _)| *used) {
        return Err(format!(
            "{field} cannot be judged by the kernel at syscall entry; the rule is alerted on, not enforced"
        ));
    }
    let prot = |field: &str, names_: &[String]| -> Result<u64, String> {
        names_.iter().try_fold(0, |bits, name| {
            names::parse_prot(name)
                .map(|bit| bits | bit)
                .ok_or_else(|| format!("match.{field}: unknown protection {name:?}"))
        })
    };
    let flags = |field: &str, names_: &[String]| -> Result<u64, String> {
        names_.iter().try_fold(0, |bits, name| match names::parse_flag(name) {
            Some(value) if value & 0x0f != 0 => Err(format!(
                "match.{field}: {name} is a mapping type (a value of the low flag bits), which the kernel rules cannot express; the rule is alerted on, not enforced"
            )),
            Some(bit) => Ok(bits | bit),
            None => Err(format!("match.{field}: unknown flag {name:?}")),
        })
    };
    let min_length = match &m.min_length {
        Some(size) => size
            .bytes()
            .map_err(|reason| format!("match.minLength: {reason}"))?,
        None => 0,
    };
    Ok(KernelRuleSpec {
        rule_id: rule_id(id, &rule.name),
        policy: id.clone(),
        rule: rule.name.clone(),
        action,
        deny_fell_back: false,
        prot_all: prot("protAll", &m.prot_all)?,
        prot_any: prot("protAny", &m.prot_any)?,
        flags_all: flags("flagsAll", &m.flags_all)?,
        flags_any: flags("flagsAny", &m.flags_any)?,
        min_length,
        syscalls: m.syscalls.iter().map(|s| Syscall::from(*s)).collect(),
        mapping: m.mapping,
    })
}

/// The kernel rule id of (policy, rule): FNV-1a of `POLICY_ID/RULE`, never 0. Stable across
/// restarts and nodes, so an enforced record names its rule wherever it is read.
#[must_use]
pub fn rule_id(policy: &PolicyId, rule: &str) -> u32 {
    let text = format!("{policy}/{rule}");
    let hash = text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash.max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("policy {policy}: cannot write it as JSON: {reason}")]
    Serialize { policy: PolicyId, reason: String },
}

/// `policy` as its Kubernetes object in JSON, the form policy sets carry to agents (read back
/// with [`crate::load::load_value`]).
pub fn policy_json(policy: &Policy) -> Result<String, EnforceError> {
    match policy {
        Policy::Namespaced(p) => serde_json::to_string(p),
        Policy::Cluster(p) => serde_json::to_string(p),
    }
    .map_err(|e| EnforceError::Serialize {
        policy: policy.id(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
