//! From enforce-mode policies to the kernel's rule table: validate and compile a policy set
//! (pushed by the collector, or read from files by `mapsentry run`), persist the last good one
//! under the state directory, resolve each policy's scope to cgroup ids, and write the rules.
//!
//! Scope resolution (re-run by the caller whenever pods or cgroups change, e.g. on a timer):
//! - an `MmapPolicy` applies to the cgroups of the pods its namespace and `podSelector` select;
//! - a `ClusterMmapPolicy` to the pods of the namespaces its `namespaceSelector` selects, and with
//!   `hostProcesses: true` to every host cgroup (not key 0, which would also hit pods);
//! - a pod cgroup whose pod is not known (yet) fails closed: it gets the rules of every policy
//!   that could apply to a pod (counted as `unresolved`), until a rescan finds its pod.
//!
//! Per cgroup, a rule whose `except` names `containers` or `images` is resolved against the
//! cgroup's container: where they hold, the cgroup gets the rule with the rest of its exception
//! (`comm`, `executableGlobs`, judged in the kernel), or not at all when there is no rest; where
//! they do not hold, or the container is not known, it gets the rule without exception.
//!
//! Rules the kernel cannot judge, rules beyond its bounds, and Deny rules where the kernel cannot
//! deny and the policy's `denyFallback` is `Refuse`, are refused with the reason (log,
//! [`EnforceStats::refused`]); they are never silently enforced differently or dropped to audit.
//!
//! Persisting never blocks enforcing: a set that validates is applied even when it cannot be
//! written to the state directory; the failure is logged and kept ([`Enforcer::persist_error`]).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
};

use mapsentry_policy::{
    CompiledPolicy, EvalContext, PodContext, Policy, PolicyId,
    crd::MappingKind as PolicyMapping,
    enforce::{
        KernelActionSpec, KernelRuleSpec, KernelSetPlan, Refusal, kernel_set_plan, policy_json,
    },
    load::load_value,
};
use serde_json::{Value, json};

use super::{
    ClassTables, FileRule, KernelAction, KernelRule, MappingKind, RuleTable, wire::FK_DELETED,
    wire::FK_MEMFD, wire::FK_SHM,
};

/// File name of the persisted policy set under the state directory.
pub const STATE_FILE: &str = "policy-set.json";

#[derive(Debug, thiserror::Error)]
pub enum PoliciesError {
    #[error("policy set version {version}, policy {index}: not JSON: {reason}")]
    Json {
        version: u64,
        index: usize,
        reason: String,
    },
    #[error("policy set version {version}, policy {index}: invalid: {problems}")]
    Invalid {
        version: u64,
        index: usize,
        problems: String,
    },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
}

pub type Result<T, E = PoliciesError> = std::result::Result<T, E>;

/// Counters for health and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnforceStats {
    /// Version of the set in force (0: none).
    pub version: u64,
    /// Rules of the set the kernel enforces (on at least one cgroup or not).
    pub kernel_rules: u64,
    /// Rules of enforce-mode policies the kernel refused (see the log for why).
    pub refused: u64,
    /// Deny rules enforced as Kill by `denyFallback: Kill`.
    pub deny_fell_back: u64,
    /// Cgroups with rules in the kernel.
    pub cgroups: u64,
    /// Pod cgroups whose pod is not known: they get every rule that could apply to a pod.
    pub unresolved: u64,
    /// Cgroups whose rules could not be written (map errors; see the log).
    pub write_errors: u64,
    /// Sets taken that could not be persisted (each still enforced).
    pub persist_failures: u64,
    /// Whether the set in force is in the state directory (true without one).
    pub persisted: bool,
    /// Why the set in force could not be persisted, if it could not.
    pub persist_error: Option<String>,
    /// The cgroups were last resolved before the pod cache completed its first list, so every
    /// pod cgroup holds every rule that could apply to a pod (fail closed); not ready.
    pub awaiting_pods: bool,
}

/// A cgroup and who is in it, as far as scopes care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupScope {
    /// A host process's cgroup.
    Host,
    /// A pod's (container's) cgroup.
    Pod(PodContext),
    /// A pod's cgroup whose pod is not known.
    UnknownPod,
}

/// One kernel rule of the set in force, with what resolution per cgroup needs.
#[derive(Debug)]
struct SetRule {
    /// With its classes; its exception as the kernel judges it.
    kernel: KernelRule,
    /// Its exception names containers or images: resolved per cgroup by `rule` of `policy`.
    workload_except: bool,
    policy: usize,
    rule: usize,
}

/// The enforce-mode policies in force on this node and what the kernel holds of them.
pub struct Enforcer {
    state_dir: Option<PathBuf>,
    deny_available: bool,
    version: u64,
    policies_json: Vec<String>,
    compiled: Vec<CompiledPolicy>,
    rules: Vec<SetRule>,
    classes: ClassTables,
    executables: bool,
    refused: Vec<Refusal>,
    /// What the kernel holds, per cgroup id, and the class generation the sets refer to.
    applied: HashMap<u64, Vec<KernelRule>>,
    applied_generation: u32,
    stats: EnforceStats,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("version", &self.version)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Enforcer {
    /// `state_dir`: where the last good set is kept (`None`: nowhere, as in `mapsentry run`).
    /// `deny_unavailable`: why the kernel cannot deny here, if it cannot
    /// (`Attached::deny_unavailable`).
    #[must_use]
    pub fn new(state_dir: Option<PathBuf>, deny_unavailable: Option<&str>) -> Self {
        if let Some(reason) = deny_unavailable {
            tracing::info!(%reason, "Deny rules follow their policy's denyFallback on this node");
        }
        Self {
            state_dir,
            deny_available: deny_unavailable.is_none(),
            version: 0,
            policies_json: Vec::new(),
            compiled: Vec::new(),
            rules: Vec::new(),
            classes: ClassTables::default(),
            executables: false,
            refused: Vec::new(),
            applied: HashMap::new(),
            applied_generation: 0,
            stats: EnforceStats {
                persisted: true,
                ..EnforceStats::default()
            },
        }
    }

    fn state_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(STATE_FILE))
    }

    /// Take the persisted set, if there is one; returns its version.
    pub fn load_persisted(&mut self) -> Result<Option<u64>> {
        let Some(path) = self.state_file() else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(PoliciesError::State {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let state = |reason: String| PoliciesError::State {
            path: path.clone(),
            reason,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| state(e.to_string()))?;
        let version = value["version"]
            .as_u64()
            .ok_or_else(|| state("no numeric \"version\"".into()))?;
        let policies = value["policies"]
            .as_array()
            .ok_or_else(|| state("no \"policies\" array".into()))?
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>();
        self.take(version, policies, false)?;
        Ok(Some(version))
    }

    /// Take a pushed set (each policy as JSON). A set with an invalid policy is refused whole and
    /// the previous set stays in force. The set taken is persisted; a set that cannot be
    /// persisted is enforced all the same (see [`Self::persist_error`]).
    pub fn set_policies(&mut self, version: u64, policies_json: Vec<String>) -> Result<()> {
        self.take(version, policies_json, true)
    }

    /// Take policies loaded by the caller (`mapsentry run --policy`); not persisted.
    pub fn set_loaded(&mut self, version: u64, policies: &[Policy]) -> Result<()> {
        let json = policies
            .iter()
            .map(|p| {
                policy_json(p).map_err(|e| PoliciesError::Invalid {
                    version,
                    index: 0,
                    problems: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.take(version, json, false)
    }

    fn take(&mut self, version: u64, policies_json: Vec<String>, persist: bool) -> Result<()> {
        let mut policies = Vec::new();
        let mut compiled = Vec::new();
        for (index, text) in policies_json.iter().enumerate() {
            let value: Value = serde_json::from_str(text).map_err(|e| PoliciesError::Json {
                version,
                index,
                reason: e.to_string(),
            })?;
            let (policy, policy_compiled) =
                load_value(&value).map_err(|problems| PoliciesError::Invalid {
                    version,
                    index,
                    problems: problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
            policies.push(policy);
            compiled.push(policy_compiled);
        }
        let plan = kernel_set_plan(&policies, self.deny_available);
        if persist {
            match self.persist(version, &policies_json) {
                Ok(persisted) => {
                    self.stats.persisted = persisted;
                    self.stats.persist_error = None;
                }
                Err(error) => {
                    tracing::error!(%error, version,
                        "the policy set cannot be persisted; it is enforced all the same, but an agent restart before the collector is reachable would start without it");
                    self.stats.persist_error = Some(error.to_string());
                    self.stats.persisted = false;
                    self.stats.persist_failures += 1;
                }
            }
        }
        for refusal in &plan.refused {
            tracing::warn!(policy = %refusal.policy, rule = %refusal.rule, reason = %refusal.reason,
                "rule not enforced in the kernel (the collector still alerts on it)");
        }
        for rule in plan.rules.iter().filter(|r| r.deny_fell_back) {
            tracing::warn!(policy = %rule.policy, rule = %rule.rule,
                "Deny enforced as Kill on this node (no BPF LSM; denyFallback: Kill)");
        }
        self.stats.version = version;
        self.stats.refused = plan.refused.len() as u64;
        self.stats.kernel_rules = plan.rules.len() as u64;
        self.stats.deny_fell_back = plan.rules.iter().filter(|r| r.deny_fell_back).count() as u64;
        tracing::info!(
            version,
            policies = compiled.len(),
            kernel_rules = self.stats.kernel_rules,
            refused = self.stats.refused,
            "policy set taken"
        );
        self.rules = set_rules(&plan, &policies, &compiled);
        self.executables = self.rules.iter().any(|r| r.kernel.reads_executable());
        self.classes = ClassTables {
            comm: plan.comm_classes.clone(),
            paths: plan
                .path_classes
                .iter()
                .map(|c| c.patterns.clone())
                .collect(),
        };
        self.version = version;
        self.policies_json = policies_json;
        self.compiled = compiled;
        self.refused = plan.refused;
        Ok(())
    }

    /// Write the set to the state directory; false when there is none.
    fn persist(&self, version: u64, policies_json: &[String]) -> Result<bool> {
        let Some(path) = self.state_file() else {
            return Ok(true);
        };
        let state = |e: &dyn std::fmt::Display| PoliciesError::State {
            path: path.clone(),
            reason: e.to_string(),
        };
        let policies = policies_json
            .iter()
            .map(|t| serde_json::from_str::<Value>(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| state(&e))?;
        let text = json!({"version": version, "policies": policies}).to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| state(&e))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| state(&e))?;
        std::fs::rename(&tmp, &path).map_err(|e| state(&e))?;
        Ok(true)
    }

    /// The version in force (0: none).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The rules refused by the set in force.
    #[must_use]
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// Why the set in force could not be persisted, if it could not.
    #[must_use]
    pub fn persist_error(&self) -> Option<&str> {
        self.stats.persist_error.as_deref()
    }

    #[must_use]
    pub fn stats(&self) -> EnforceStats {
        self.stats.clone()
    }

    /// The kernel rules of each cgroup of `cgroups` under the set in force (cgroups without
    /// rules are left out), Deny rules first, and how many pod cgroups had no known pod.
    #[must_use]
    pub fn resolve(&self, cgroups: &[(u64, CgroupScope)]) -> (BTreeMap<u64, Vec<KernelRule>>, u64) {
        let mut out = BTreeMap::new();
        let mut unresolved = 0;
        for (id, scope) in cgroups {
            let ctx = match scope {
                CgroupScope::Host | CgroupScope::UnknownPod => EvalContext::default(),
                CgroupScope::Pod(pod) => EvalContext {
                    executable: None,
                    workload: Some(pod.clone()),
                },
            };
            if *scope == CgroupScope::UnknownPod {
                unresolved += 1;
            }
            let applies: Vec<bool> = self
                .compiled
                .iter()
                .map(|c| match scope {
                    // Fail closed: any policy could apply to a pod not known yet (every
                    // MmapPolicy and ClusterMmapPolicy selects pods by what we do not know).
                    CgroupScope::UnknownPod => true,
                    _ => c.scope.applies(&ctx),
                })
                .collect();
            let mut rules: Vec<KernelRule> = Vec::new();
            for rule in &self.rules {
                if !applies[rule.policy] {
                    continue;
                }
                let mut kernel = rule.kernel.clone();
                if rule.workload_except {
                    let holds = self.compiled[rule.policy].rules[rule.rule].workload_except(&ctx);
                    if holds == Some(true) {
                        if kernel.except_comm == 0 && kernel.except_executable == 0 {
                            continue; // the whole exception holds: the cgroup is excepted
                        }
                    } else {
                        kernel.except_comm = 0;
                        kernel.except_executable = 0;
                    }
                }
                rules.push(kernel);
            }
            if rules.is_empty() {
                continue;
            }
            rules.sort_by_key(|r| r.action != KernelAction::Deny);
            out.insert(*id, rules);
        }
        (out, unresolved)
    }

    /// Bring the kernel's table in line with the set in force for `cgroups` (every cgroup of the
    /// node, as the caller sees it now): the class tables, then new and changed sets written,
    /// vanished ones removed.
    pub fn apply(&mut self, table: &mut RuleTable, cgroups: &[(u64, CgroupScope)]) {
        let (wanted, unresolved) = self.resolve(cgroups);
        let version = u32::try_from(self.version % u64::from(u32::MAX)).unwrap_or(0);
        let mut errors = 0;
        match table.set_classes(&self.classes, self.executables) {
            Ok(generation) if generation != self.applied_generation => {
                // Every set must refer to the new tables.
                self.applied.clear();
                self.applied_generation = generation;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "writing the class tables failed; the sets in force stay");
                self.stats.write_errors = 1;
                return;
            }
        }
        for (id, rules) in &wanted {
            if self.applied.get(id) == Some(rules) {
                continue;
            }
            match table.set(*id, version, rules) {
                Ok(()) => {
                    self.applied.insert(*id, rules.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "writing kernel rules failed");
                    // Its old set (if any) refers to tables that may be rewritten: remove it.
                    if table.remove(*id).is_ok() {
                        self.applied.remove(id);
                    }
                    errors += 1;
                }
            }
        }
        let gone: Vec<u64> = self
            .applied
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            match table.remove(id) {
                Ok(()) => {
                    self.applied.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(%error, "removing kernel rules failed");
                    errors += 1;
                }
            }
        }
        self.stats.cgroups = self.applied.len() as u64;
        self.stats.unresolved = unresolved;
        self.stats.write_errors = errors;
    }
}

/// The set's kernel rules with their classes, each tied to its policy and rule.
fn set_rules(
    plan: &KernelSetPlan,
    policies: &[Policy],
    compiled: &[CompiledPolicy],
) -> Vec<SetRule> {
    let ids: Vec<PolicyId> = policies.iter().map(Policy::id).collect();
    plan.rules
        .iter()
        .filter_map(|spec| {
            let policy = ids.iter().position(|id| *id == spec.policy)?;
            let rule = compiled[policy]
                .rules
                .iter()
                .position(|r| r.name == spec.rule)?;
            Some(SetRule {
                kernel: kernel_rule(spec, plan),
                workload_except: spec.workload_except,
                policy,
                rule,
            })
        })
        .collect()
}

fn kernel_rule(spec: &KernelRuleSpec, plan: &KernelSetPlan) -> KernelRule {
    let kinds = |file: &mapsentry_policy::enforce::KernelFileSpec| {
        let mut care = 0;
        let mut want = 0;
        for (condition, bit) in [
            (file.memfd, FK_MEMFD),
            (file.shm, FK_SHM),
            (file.deleted, FK_DELETED),
        ] {
            if let Some(value) = condition {
                care |= bit;
                if value {
                    want |= bit;
                }
            }
        }
        (care, want)
    };
    let except = spec.except.as_ref();
    KernelRule {
        rule_id: spec.rule_id,
        action: match spec.action {
            KernelActionSpec::Kill => KernelAction::Kill,
            KernelActionSpec::Deny => KernelAction::Deny,
        },
        prot_all: spec.prot_all,
        prot_any: spec.prot_any,
        flags_all: spec.flags_all,
        flags_any: spec.flags_any,
        types_all: spec.types_all,
        types_any: spec.types_any,
        min_length: spec.min_length,
        syscalls: spec.syscalls.clone(),
        mapping: match spec.mapping {
            None => MappingKind::Any,
            Some(PolicyMapping::Anonymous) => MappingKind::Anonymous,
            Some(PolicyMapping::File) => MappingKind::File,
        },
        comm: plan.comm_class(&spec.comm),
        executable: plan.path_class(spec.executable.as_ref()),
        file: spec.file.as_ref().map(|f| {
            let (kinds_care, kinds_want) = kinds(f);
            FileRule {
                kinds_care,
                kinds_want,
                path: plan.path_class(f.path.as_ref()),
                not_path: plan.path_class(f.not_path.as_ref()),
            }
        }),
        except_comm: except.map_or(0, |e| plan.comm_class(&e.comm)),
        except_executable: except.map_or(0, |e| plan.path_class(e.executable.as_ref())),
    }
}

/// Every cgroup under `under` (a directory of the cgroup v2 hierarchy at `root`, or `root`
/// itself), by id, with its owner as its path in the hierarchy says (pods resolved through `pod`:
/// `None` when the pod is not known).
pub fn scan_cgroups(
    root: &Path,
    under: &Path,
    pod: &dyn Fn(&crate::metadata::cgroup_path::CgroupOwner) -> Option<PodContext>,
) -> Vec<(u64, CgroupScope)> {
    use std::os::unix::fs::MetadataExt as _;

    use crate::metadata::cgroup_path::{CgroupOwner, parse};
    let mut out = Vec::new();
    let mut stack = vec![under.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let relative = dir
            .strip_prefix(root)
            .map_or_else(|_| "/".to_owned(), |p| format!("/{}", p.to_string_lossy()));
        let owner = parse(&relative);
        let scope = match &owner {
            CgroupOwner::Host { .. } => CgroupScope::Host,
            CgroupOwner::Pod { .. } => {
                pod(&owner).map_or(CgroupScope::UnknownPod, CgroupScope::Pod)
            }
        };
        out.push((meta.ino(), scope));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// The scope of a pod cgroup from the pod cache: `None` when the pod (or the owner) is not a
/// known pod's.
#[must_use]
pub fn pod_context(
    pods: &crate::metadata::pods::PodCache,
    owner: &crate::metadata::cgroup_path::CgroupOwner,
) -> Option<PodContext> {
    let crate::metadata::cgroup_path::CgroupOwner::Pod {
        pod_uid, container, ..
    } = owner
    else {
        return None;
    };
    let found = pods.lookup(pod_uid, container.as_ref().map(|c| c.id.as_str()))?;
    let container = found.container();
    Some(PodContext {
        namespace: found.pod.namespace.clone(),
        pod: found.pod.name.clone(),
        container: container.map(|c| c.name.clone()),
        image: container.and_then(|c| c.image.clone()),
        pod_labels: found.pod.labels.clone(),
        namespace_labels: found
            .namespace_labels
            .as_deref()
            .cloned()
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
