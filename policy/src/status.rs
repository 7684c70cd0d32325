//! What the collector writes to a policy object's status: whether the observed generation is in
//! force or why it was rejected (every problem with its field path), and for an `Enforce` policy
//! which rules the kernel will not enforce and why ([`crate::enforce::kernel_set_plan`] of the policy alone, on nodes
//! with and without BPF LSM).
//!
//! Conditions carry no time here (this crate has no clock); the writer stamps
//! `lastTransitionTime` ([`PolicyStatus::stamp`]).

use std::fmt::Write as _;

use crate::{
    crd::{Mode, NodeScope, PolicyStatus, RuleNote, StatusCondition, StatusError},
    enforce::{Refusal, kernel_set_plan},
    field_path::Problem,
    policy::Policy,
};

/// What one node's agent reports about the policy set it enforces (the agent stream's
/// `EnforcementReport`, latest wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub node: String,
    /// The set version in force there (0: none).
    pub version: u64,
    /// Why the agent could not persist that set (it enforces it all the same).
    pub persist_error: Option<String>,
    /// Rules of the set its kernel does not enforce, and why.
    pub refused: Vec<Refusal>,
}

/// The condition type saying whether the observed generation is in force.
pub const ACCEPTED: &str = "Accepted";
/// The condition type saying whether every action rule of an `Enforce` policy is enforced by
/// the kernel.
pub const KERNEL_ENFORCED: &str = "KernelEnforced";

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> StatusCondition {
    StatusCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: None,
    }
}

impl PolicyStatus {
    /// The status of `policy`, validated and now in force.
    #[must_use]
    pub fn accepted_policy(policy: &Policy) -> Self {
        Self::accepted_policy_on(policy, &[])
    }

    /// The status of `policy`, validated and now in force, with what the nodes' agents report
    /// of the set that holds it: rules their kernels refuse beyond the policy's own (the set's
    /// bounds), and sets they enforce but could not persist (`KernelEnforced` says so, reason
    /// `NotPersisted` when nothing is refused).
    #[must_use]
    pub fn accepted_policy_on(policy: &Policy, nodes: &[NodeReport]) -> Self {
        let generation = policy.generation();
        let everywhere = kernel_set_plan([policy], true);
        let without_lsm = kernel_set_plan([policy], false);
        let mut refused_rules: Vec<RuleNote> = everywhere
            .refused
            .iter()
            .map(|r| RuleNote {
                rule: r.rule.clone(),
                reason: r.reason.clone(),
                nodes: NodeScope::All,
            })
            .collect();
        for r in &without_lsm.refused {
            if !refused_rules.iter().any(|n| n.rule == r.rule) {
                refused_rules.push(RuleNote {
                    rule: r.rule.clone(),
                    reason: r.reason.clone(),
                    nodes: NodeScope::WithoutBpfLsm,
                });
            }
        }
        let id = policy.id();
        for report in nodes {
            for r in report.refused.iter().filter(|r| r.policy == id) {
                if !refused_rules.iter().any(|n| n.rule == r.rule) {
                    refused_rules.push(RuleNote {
                        rule: r.rule.clone(),
                        reason: format!("{} (reported by node {})", r.reason, report.node),
                        nodes: NodeScope::All,
                    });
                }
            }
        }
        let not_persisted: Vec<String> = nodes
            .iter()
            .filter_map(|n| {
                n.persist_error
                    .as_ref()
                    .map(|e| format!("node {} (set version {}): {e}", n.node, n.version))
            })
            .collect();
        let fallback_rules: Vec<RuleNote> = without_lsm
            .rules
            .iter()
            .filter(|r| r.deny_fell_back)
            .map(|r| RuleNote {
                rule: r.rule.clone(),
                reason: "action Deny needs BPF LSM; on nodes without it the rule kills the caller instead (denyFallback: Kill)".into(),
                nodes: NodeScope::WithoutBpfLsm,
            })
            .collect();
        let mut conditions = vec![condition(
            ACCEPTED,
            true,
            "Valid",
            format!(
                "generation {} is in force",
                generation.map_or_else(|| "?".to_owned(), |g| g.to_string())
            ),
            generation,
        )];
        if policy.mode() == Mode::Enforce {
            let mut message = if refused_rules.is_empty() {
                "every Kill/Deny rule is enforced in the kernel".to_owned()
            } else {
                let names: Vec<&str> = refused_rules.iter().map(|r| r.rule.as_str()).collect();
                format!(
                    "rules only alerted on, not enforced in the kernel (see refusedRules): {}",
                    names.join(", ")
                )
            };
            if !not_persisted.is_empty() {
                let _ = write!(
                    message,
                    "; enforced but not persisted on {}: an agent restart there before the collector is reachable starts without the set",
                    not_persisted.join("; ")
                );
            }
            let reason = match (refused_rules.is_empty(), not_persisted.is_empty()) {
                (false, _) => "RulesRefused",
                (true, false) => "NotPersisted",
                (true, true) => "AllRulesEnforced",
            };
            conditions.push(condition(
                KERNEL_ENFORCED,
                refused_rules.is_empty(),
                reason,
                message,
                generation,
            ));
        }
        Self {
            observed_generation: generation,
            accepted: true,
            accepted_generation: generation,
            conditions,
            errors: Vec::new(),
            refused_rules,
            fallback_rules,
        }
    }

    /// The status of generation `generation`, rejected for `problems`; `in_force` is the
    /// generation that stays in force, if any.
    #[must_use]
    pub fn rejected_generation(
        generation: Option<i64>,
        problems: &[Problem],
        in_force: Option<i64>,
        reason: &str,
    ) -> Self {
        let errors = problems
            .iter()
            .map(|p| StatusError {
                path: p.path.to_string(),
                reason: p.reason.clone(),
            })
            .collect::<Vec<_>>();
        let kept = match in_force {
            Some(g) => format!("generation {g} stays in force"),
            None => "no generation of this policy is in force".to_owned(),
        };
        let first = errors
            .first()
            .map(|e| format!(": {}: {}", e.path, e.reason))
            .unwrap_or_default();
        let message = format!("rejected, {} problem(s){first}; {kept}", errors.len());
        Self {
            observed_generation: generation,
            accepted: false,
            accepted_generation: in_force,
            conditions: vec![condition(ACCEPTED, false, reason, message, generation)],
            errors,
            refused_rules: Vec::new(),
            fallback_rules: Vec::new(),
        }
    }

    /// The condition of `type_`, if present.
    #[must_use]
    pub fn condition(&self, type_: &str) -> Option<&StatusCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Give every condition its `lastTransitionTime`: the one in `previous` when the condition's
    /// status did not change, else `now`.
    pub fn stamp(&mut self, previous: Option<&Self>, now: &str) {
        for c in &mut self.conditions {
            let before = previous
                .and_then(|p| p.condition(&c.type_))
                .filter(|p| p.status == c.status)
                .and_then(|p| p.last_transition_time.clone());
            c.last_transition_time = Some(before.unwrap_or_else(|| now.to_owned()));
        }
    }

    /// Equal apart from the conditions' `lastTransitionTime`.
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        let strip = |s: &Self| {
            let mut s = s.clone();
            for c in &mut s.conditions {
                c.last_transition_time = None;
            }
            s
        };
        strip(self) == strip(other)
    }
}

#[cfg(test)]
mod tests;
