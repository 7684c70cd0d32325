//! From enforce-mode policies to the kernel's rule table: validate and compile a policy set
//! (pushed by the collector, or read from files by `mapsentry run`), persist the last good one
//! under the state directory, resolve each policy's scope to cgroup ids, and write the rules.
//!
//! Scope resolution (re-run by the caller whenever pods or cgroups change, e.g. on a timer):
//! - an `MmapPolicy` applies to the cgroups of the pods its namespace and `podSelector` select;
//! - a `ClusterMmapPolicy` to the pods of the namespaces its `namespaceSelector` selects, and with
//!   `hostProcesses: true` to every host cgroup (not key 0, which would also hit pods);
//! - a pod cgroup whose pod is not known (yet) gets no rules, counted as `unresolved`.
//!
//! Rules the kernel cannot judge, and Deny rules where the kernel cannot deny and the policy's
//! `denyFallback` is `Refuse`, are refused with the reason (log, [`EnforceStats::refused`]);
//! they are never silently enforced differently or dropped to audit.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
};

use mapsentry_policy::{
    CompiledPolicy, EvalContext, PodContext, Policy,
    crd::MappingKind as PolicyMapping,
    enforce::{KernelActionSpec, KernelRuleSpec, Refusal, kernel_plan, policy_json},
    load::load_value,
};
use serde_json::{Value, json};

use super::{KernelAction, KernelRule, MappingKind, RuleTable};

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    /// Pod cgroups whose pod is not known, so no policy could be resolved for them.
    pub unresolved: u64,
    /// Cgroups whose rules could not be written (too many rules, map errors; see the log).
    pub write_errors: u64,
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

struct Compiled {
    compiled: CompiledPolicy,
    rules: Vec<KernelRuleSpec>,
}

/// The enforce-mode policies in force on this node and what the kernel holds of them.
pub struct Enforcer {
    state_dir: Option<PathBuf>,
    deny_available: bool,
    version: u64,
    policies_json: Vec<String>,
    compiled: Vec<Compiled>,
    refused: Vec<Refusal>,
    /// What the kernel holds, per cgroup id.
    applied: HashMap<u64, Vec<KernelRule>>,
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
            refused: Vec::new(),
            applied: HashMap::new(),
            stats: EnforceStats::default(),
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
    /// the previous set stays in force. The set taken is persisted before it is applied.
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
        let mut compiled = Vec::new();
        let mut refused = Vec::new();
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
            let plan = kernel_plan(&policy, self.deny_available);
            refused.extend(plan.refused);
            compiled.push(Compiled {
                compiled: policy_compiled,
                rules: plan.rules,
            });
        }
        if persist {
            self.persist(version, &policies_json)?;
        }
        for refusal in &refused {
            tracing::warn!(policy = %refusal.policy, rule = %refusal.rule, reason = %refusal.reason,
                "rule not enforced in the kernel (the collector still alerts on it)");
        }
        self.stats.version = version;
        self.stats.refused = refused.len() as u64;
        self.stats.kernel_rules = compiled.iter().map(|c| c.rules.len() as u64).sum();
        self.stats.deny_fell_back = compiled
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.deny_fell_back)
            .count() as u64;
        for rule in compiled
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.deny_fell_back)
        {
            tracing::warn!(policy = %rule.policy, rule = %rule.rule,
                "Deny enforced as Kill on this node (no BPF LSM; denyFallback: Kill)");
        }
        tracing::info!(
            version,
            policies = compiled.len(),
            kernel_rules = self.stats.kernel_rules,
            refused = self.stats.refused,
            "policy set taken"
        );
        self.version = version;
        self.policies_json = policies_json;
        self.compiled = compiled;
        self.refused = refused;
        Ok(())
    }

    fn persist(&self, version: u64, policies_json: &[String]) -> Result<()> {
        let Some(path) = self.state_file() else {
            return Ok(());
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
        std::fs::rename(&tmp, &path).map_err(|e| state(&e))
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

    #[must_use]
    pub fn stats(&self) -> EnforceStats {
        self.stats
    }

    /// The kernel rules of each cgroup of `cgroups` under the set in force (cgroups without
    /// rules are left out). At most [`super::wire::RULES_PER_SET`] are written per cgroup; Deny
    /// rules come first.
    #[must_use]
    pub fn resolve(&self, cgroups: &[(u64, CgroupScope)]) -> (BTreeMap<u64, Vec<KernelRule>>, u64) {
        let mut out = BTreeMap::new();
        let mut unresolved = 0;
        for (id, scope) in cgroups {
            let ctx = match scope {
                CgroupScope::Host => EvalContext::default(),
                CgroupScope::Pod(pod) => EvalContext {
                    executable: None,
                    workload: Some(pod.clone()),
                },
                CgroupScope::UnknownPod => {
                    unresolved += 1;
                    continue;
                }
            };
            let mut rules: Vec<KernelRule> = self
                .compiled
                .iter()
                .filter(|c| c.compiled.scope.applies(&ctx))
                .flat_map(|c| c.rules.iter().map(kernel_rule))
                .collect();
            if rules.is_empty() {
                continue;
            }
            rules.sort_by_key(|r| r.action != KernelAction::Deny);
            out.insert(*id, rules);
        }
        (out, unresolved)
    }

    /// Bring the kernel's table in line with the set in force for `cgroups` (every cgroup of the
    /// node, as the caller sees it now): new and changed sets written, vanished ones removed.
    pub fn apply(&mut self, table: &mut RuleTable, cgroups: &[(u64, CgroupScope)]) {
        let (wanted, unresolved) = self.resolve(cgroups);
        let version = u32::try_from(self.version % u64::from(u32::MAX)).unwrap_or(0);
        let mut errors = 0;
        for (id, rules) in &wanted {
            if self.applied.get(id) == Some(rules) {
                continue;
            }
            let mut written = rules.as_slice();
            if written.len() > super::wire::RULES_PER_SET {
                tracing::warn!(
                    cgroup = id,
                    rules = rules.len(),
                    "more kernel rules than a cgroup holds; the first {} (Deny first) are enforced",
                    super::wire::RULES_PER_SET
                );
                errors += 1;
                written = &written[..super::wire::RULES_PER_SET];
            }
            match table.set(*id, version, written) {
                Ok(()) => {
                    self.applied.insert(*id, rules.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "writing kernel rules failed");
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

fn kernel_rule(spec: &KernelRuleSpec) -> KernelRule {
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
        min_length: spec.min_length,
        syscalls: spec.syscalls.clone(),
        mapping: match spec.mapping {
            None => MappingKind::Any,
            Some(PolicyMapping::Anonymous) => MappingKind::Anonymous,
            Some(PolicyMapping::File) => MappingKind::File,
        },
    }
}

/// Every cgroup under the cgroup v2 hierarchy at `root`, by id, with its owner as its path says
/// (pods resolved through `pod`: `None` when the pod is not known).
pub fn scan_cgroups(
    root: &Path,
    pod: &dyn Fn(&crate::metadata::cgroup_path::CgroupOwner) -> Option<PodContext>,
) -> Vec<(u64, CgroupScope)> {
    use std::os::unix::fs::MetadataExt as _;

    use crate::metadata::cgroup_path::{CgroupOwner, parse};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
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
