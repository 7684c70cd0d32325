//! Enforce-mode rules as the kernel judges them: plain data for the agent's rule tables.
//!
//! The kernel decides at syscall entry (`ebpf/include/enforce.h`) on everything a rule says:
//! - the call: `protAll`/`protAny` (the judged protection: an `mprotect` flip counts as W+X),
//!   `flagsAll`/`flagsAny` as bits and mapping types (`MAP_SHARED`, `MAP_PRIVATE`, ... are values
//!   of the low four flag bits: each rule carries the set of type values it allows), `mapping`,
//!   `minLength`, `syscalls`;
//! - the caller: `comm` (the task's command name, exact), `executableGlobs` (the task's
//!   executable path, tracked in the kernel), each through a class table: every distinct list of
//!   names or globs of a set is one class, and the kernel looks up which classes a name or path
//!   belongs to;
//! - the file: for `mmap` the descriptor's file, for `mprotect` the file of the mapping it
//!   changes: `memfd`, `shm`, `deleted`, `pathGlobs`, `notPathGlobs` (the same path classes);
//! - `except`: `comm` and `executableGlobs` in the kernel; `containers` and `images` by the agent
//!   per cgroup ([`crate::compile::CompiledRule::workload_except`]): a cgroup whose container is
//!   excepted gets the rule without them, or not at all, and one whose container is not (or not
//!   known) gets the rule with no `except`.
//!
//! Globs compile to prefix/suffix patterns ([`kernel_glob`]); a glob the kernel cannot judge is
//! refused with the glob named. What a set may hold is bounded ([`RULES_MAX`], [`COMM_CLASSES_MAX`],
//! [`COMM_NAMES_MAX`], [`PATH_CLASSES_MAX`], [`PATTERNS_MAX`]); a rule beyond a bound is refused,
//! in set order, with the bound named ([`kernel_set_plan`]). A refused rule is never enforced with
//! a condition dropped (that would kill calls the rule allows); the collector still alerts on it.
//! A `Deny` rule where the node has no BPF LSM follows the policy's `denyFallback`: `Refuse`
//! (default: refused, with the reason) or `Kill` (enforced as Kill, marked as a fallback).

pub mod kernel_glob;

use crate::{
    Syscall,
    compile::{CompiledRule, Globs, compile},
    crd::{Action, DenyFallback, MappingKind, Mode},
    policy::{Policy, PolicyId},
};
use kernel_glob::KernelPattern;

/// Kernel rules one policy set may hold (`MS_RULES_PER_SET`: each cgroup's table holds them).
pub const RULES_MAX: usize = 32;
/// Distinct `comm` lists (`match.comm`, `except.comm`) of a set: one bit each in the kernel.
pub const COMM_CLASSES_MAX: usize = 64;
/// Distinct command names of a set (the kernel's name table).
pub const COMM_NAMES_MAX: usize = 256;
/// Distinct glob lists (`executableGlobs`, `pathGlobs`, `notPathGlobs`, in `match` and
/// `except`) of a set: one bit each in the kernel.
pub const PATH_CLASSES_MAX: usize = 64;
/// Distinct kernel patterns the glob lists of a set compile to.
pub const PATTERNS_MAX: usize = 64;

/// What the kernel does to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelActionSpec {
    Kill,
    Deny,
}

/// A glob list as written and as the kernel checks it (any pattern matching is a match).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelGlobList {
    pub globs: Vec<String>,
    pub patterns: Vec<KernelPattern>,
}

/// File conditions of a rule; every one given must hold, and a call without a file never matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFileSpec {
    pub memfd: Option<bool>,
    pub shm: Option<bool>,
    pub deleted: Option<bool>,
    pub path: Option<KernelGlobList>,
    pub not_path: Option<KernelGlobList>,
}

/// The part of a rule's `except` the kernel judges. The exception holds when every field given
/// holds (and at least one is given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelExceptSpec {
    pub comm: Vec<String>,
    pub executable: Option<KernelGlobList>,
}

impl KernelExceptSpec {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.executable.is_none()
    }
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
    /// Mapping type values (bit `t` for `flags & 0xf == t`) `flagsAll` allows; `u16::MAX`: any.
    pub types_all: u16,
    /// Whether `flagsAny` is given: then a bit of `flags_any` or a type of `types_any` must hold.
    pub flags_any_given: bool,
    pub types_any: u16,
    pub min_length: u64,
    /// Empty: every syscall.
    pub syscalls: Vec<Syscall>,
    /// None: anonymous and file-backed alike.
    pub mapping: Option<MappingKind>,
    /// The caller's command name is one of these (empty: no condition).
    pub comm: Vec<String>,
    pub executable: Option<KernelGlobList>,
    pub file: Option<KernelFileSpec>,
    /// What the kernel judges of `except` (None: no `except`, or only container/image fields).
    pub except: Option<KernelExceptSpec>,
    /// `except` also names `containers` or `images`: the agent resolves them per cgroup.
    pub workload_except: bool,
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

/// The kernel rules of `policy` on a node where Deny is (`deny_available`) or is not possible,
/// before the bounds of a set ([`kernel_set_plan`]).
#[must_use]
pub fn kernel_plan(policy: &Policy, deny_available: bool) -> KernelPlan {
    let mut plan = KernelPlan::default();
    if policy.mode() != Mode::Enforce {
        return plan;
    }
    // A policy that does not compile never reaches here (loading validates it).
    let Ok(compiled) = compile(policy) else {
        return plan;
    };
    let id = policy.id();
    for rule in &compiled.rules {
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
        let source = policy.rules().iter().find(|r| r.name == rule.name);
        let syscalls = source
            .map(|r| {
                r.match_
                    .syscalls
                    .iter()
                    .map(|s| Syscall::from(*s))
                    .collect()
            })
            .unwrap_or_default();
        match kernel_rule(&id, rule, action, syscalls) {
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

fn glob_list(field: &str, globs: Option<&Globs>) -> Result<Option<KernelGlobList>, String> {
    let Some(globs) = globs else {
        return Ok(None);
    };
    let mut patterns = Vec::new();
    for (index, glob) in globs.patterns.iter().enumerate() {
        let compiled = kernel_glob::compile(glob).map_err(|why| {
            format!(
                "{field}[{index}]: glob {glob:?} cannot be judged by the kernel: {why}; the rule is alerted on, not enforced"
            )
        })?;
        for pattern in compiled {
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
    }
    Ok(Some(KernelGlobList {
        globs: globs.patterns.clone(),
        patterns,
    }))
}

fn kernel_rule(
    id: &PolicyId,
    rule: &CompiledRule,
    action: KernelActionSpec,
    syscalls: Vec<Syscall>,
) -> Result<KernelRuleSpec, String> {
    let c = &rule.conditions;
    let file = match &c.file {
        None => None,
        Some(f) => Some(KernelFileSpec {
            memfd: f.memfd,
            shm: f.shm,
            deleted: f.deleted,
            path: glob_list("match.file.pathGlobs", f.path.as_deref())?,
            not_path: glob_list("match.file.notPathGlobs", f.not_path.as_deref())?,
        }),
    };
    let (except, workload_except) = match &rule.except {
        None => (None, false),
        Some(e) => {
            let kernel = KernelExceptSpec {
                comm: e.comm.clone(),
                executable: glob_list("except.executableGlobs", e.executable.as_deref())?,
            };
            (
                (!kernel.is_empty()).then_some(kernel),
                !e.containers.is_empty() || e.images.is_some(),
            )
        }
    };
    Ok(KernelRuleSpec {
        rule_id: rule_id(id, &rule.name),
        policy: id.clone(),
        rule: rule.name.clone(),
        action,
        deny_fell_back: false,
        prot_all: c.prot_all,
        prot_any: c.prot_any,
        flags_all: c.flags_all,
        flags_any: c.flags_any,
        types_all: c.flags_all_types,
        flags_any_given: c.flags_any_given,
        types_any: c.flags_any_types,
        min_length: c.min_length,
        syscalls,
        mapping: c.mapping,
        comm: c.comm.clone(),
        executable: glob_list("match.executableGlobs", c.executable.as_deref())?,
        file,
        except,
        workload_except,
    })
}

/// What the kernel holds of a whole policy set: the rules within the bounds, in set order, and
/// the class tables they refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSetPlan {
    pub rules: Vec<KernelRuleSpec>,
    pub refused: Vec<Refusal>,
    /// Class `i + 1` is `comm_classes[i]` (0 means "no condition").
    pub comm_classes: Vec<Vec<String>>,
    /// Class `i + 1` is `path_classes[i]`.
    pub path_classes: Vec<KernelGlobList>,
}

impl KernelSetPlan {
    /// The class of the command name list `names` (0: none, or an empty list).
    #[must_use]
    pub fn comm_class(&self, names: &[String]) -> u8 {
        if names.is_empty() {
            return 0;
        }
        class_number(self.comm_classes.iter().position(|c| c.as_slice() == names))
    }

    /// The class of the glob list `list` (0: none).
    #[must_use]
    pub fn path_class(&self, list: Option<&KernelGlobList>) -> u8 {
        list.map_or(0, |l| {
            class_number(self.path_classes.iter().position(|c| c == l))
        })
    }

    /// Distinct command names over every class.
    #[must_use]
    pub fn comm_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .comm_classes
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Distinct patterns over every class.
    #[must_use]
    pub fn patterns(&self) -> Vec<&KernelPattern> {
        let mut patterns: Vec<&KernelPattern> =
            self.path_classes.iter().flat_map(|c| &c.patterns).collect();
        patterns.sort_unstable();
        patterns.dedup();
        patterns
    }
}

fn class_number(index: Option<usize>) -> u8 {
    index.map_or(0, |i| u8::try_from(i + 1).unwrap_or(0))
}

impl KernelRuleSpec {
    fn comm_lists(&self) -> impl Iterator<Item = &Vec<String>> {
        [Some(&self.comm), self.except.as_ref().map(|e| &e.comm)]
            .into_iter()
            .flatten()
            .filter(|l| !l.is_empty())
    }

    fn glob_lists(&self) -> impl Iterator<Item = &KernelGlobList> {
        let file = self.file.as_ref();
        [
            self.executable.as_ref(),
            file.and_then(|f| f.path.as_ref()),
            file.and_then(|f| f.not_path.as_ref()),
            self.except.as_ref().and_then(|e| e.executable.as_ref()),
        ]
        .into_iter()
        .flatten()
    }
}

/// The kernel rules of a whole set of policies (in set order), within the kernel's bounds: a rule
/// that would take the set past one is refused with the bound named, and later rules still get
/// their chance.
#[must_use]
pub fn kernel_set_plan<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    deny_available: bool,
) -> KernelSetPlan {
    let mut set = KernelSetPlan::default();
    for policy in policies {
        let plan = kernel_plan(policy, deny_available);
        set.refused.extend(plan.refused);
        for rule in plan.rules {
            match admit(&set, &rule) {
                Ok((comm, paths)) => {
                    set.comm_classes = comm;
                    set.path_classes = paths;
                    set.rules.push(rule);
                }
                Err(reason) => set.refused.push(Refusal {
                    policy: rule.policy.clone(),
                    rule: rule.rule.clone(),
                    reason,
                }),
            }
        }
    }
    set
}

/// The class tables with `rule` added, or which bound it would cross.
fn admit(
    set: &KernelSetPlan,
    rule: &KernelRuleSpec,
) -> Result<(Vec<Vec<String>>, Vec<KernelGlobList>), String> {
    let over = |what: String| {
        Err(format!(
            "{what}; the rule is alerted on, not enforced (see the kernel's bounds in the README)"
        ))
    };
    if set.rules.len() >= RULES_MAX {
        return over(format!(
            "the kernel holds at most {RULES_MAX} Enforce rules per policy set and the rules before this one fill them"
        ));
    }
    let mut comm = set.comm_classes.clone();
    for list in rule.comm_lists() {
        if !comm.contains(list) {
            comm.push(list.clone());
        }
    }
    let mut paths = set.path_classes.clone();
    for list in rule.glob_lists() {
        if !paths.contains(list) {
            paths.push(list.clone());
        }
    }
    let grown = KernelSetPlan {
        comm_classes: comm,
        path_classes: paths,
        ..KernelSetPlan::default()
    };
    if grown.comm_classes.len() > COMM_CLASSES_MAX {
        return over(format!(
            "match.comm/except.comm: the kernel holds at most {COMM_CLASSES_MAX} distinct command name lists per policy set"
        ));
    }
    if grown.comm_names().len() > COMM_NAMES_MAX {
        return over(format!(
            "match.comm/except.comm: the kernel holds at most {COMM_NAMES_MAX} distinct command names per policy set"
        ));
    }
    if grown.path_classes.len() > PATH_CLASSES_MAX {
        return over(format!(
            "executableGlobs/pathGlobs/notPathGlobs: the kernel holds at most {PATH_CLASSES_MAX} distinct glob lists per policy set"
        ));
    }
    if grown.patterns().len() > PATTERNS_MAX {
        return over(format!(
            "executableGlobs/pathGlobs/notPathGlobs: the globs of a policy set compile to at most {PATTERNS_MAX} distinct kernel patterns"
        ));
    }
    Ok((grown.comm_classes, grown.path_classes))
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
