//! Evaluating calls against a set of compiled policies.
//!
//! [`PolicySet::evaluate`] returns every (policy, rule) that matches a call, with the rule's
//! action and the policy's mode. Every match raises an alert. What is carried out follows from
//! the matches by these rules of precedence:
//! - only matches of `Enforce`-mode policies act; `Audit` never blocks (its matches are alerts
//!   that say what enforce mode would have done);
//! - the strongest action wins: `Deny > Kill > Alert` ([`strongest`]);
//! - there is no allow rule: a rule's `except` only exempts calls from that rule, never from
//!   other rules or policies.
//!
//! Speed: rules are indexed by the `prot` and `flags` bits their bit conditions read, so a call
//! only meets the rules its bits can satisfy; a policy's scope is tested once per call and policy.

use std::collections::HashSet;

use crate::{
    MmapEvent,
    compile::{CompiledPolicy, CompiledRule},
    crd::{Action, Mode},
    policy::PolicyId,
    selector::Labels,
};

/// Who made a call, as far as policies care. `MmapEvent` carries the process; this carries its
/// place in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalContext {
    /// The caller's executable path, when known.
    pub executable: Option<String>,
    /// The pod and container of the caller; None for a process outside any pod (a host process).
    pub workload: Option<Workload>,
}

/// The pod side of a caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub pod: String,
    /// Container name as in the pod spec.
    pub container: Option<String>,
    pub image: Option<String>,
    pub pod_labels: Labels,
    /// Labels of the pod's namespace (`kubernetes.io/metadata.name` is assumed when absent).
    pub namespace_labels: Labels,
}

/// One rule of one policy that matched a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub policy: &'a PolicyId,
    pub rule: &'a str,
    pub action: Action,
    pub mode: Mode,
}

impl Match<'_> {
    /// The action carried out for this match alone: the rule's action in enforce mode; in audit
    /// mode only an alert.
    #[must_use]
    pub fn effective_action(&self) -> Action {
        match self.mode {
            Mode::Enforce => self.action,
            Mode::Audit => Action::Alert,
        }
    }
}

/// What is carried out for a call with these matches: None when nothing matched, else the
/// strongest [`Match::effective_action`].
#[must_use]
pub fn strongest(matches: &[Match<'_>]) -> Option<Action> {
    matches.iter().map(Match::effective_action).max()
}

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("policy {id} is defined more than once")]
    DuplicatePolicy { id: PolicyId },
}

/// At most this many distinct bits index the rules (a table of 2^N candidate lists); above it
/// every rule is a candidate and its bits are tested one by one.
const MAX_INDEX_BITS: usize = 12;

/// Compiled policies with an index over their rules.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    prot_bits: Vec<u8>,
    flag_bits: Vec<u8>,
    /// Candidate rules per key, in (policy, rule) order. One list when the set is not indexed.
    buckets: Vec<Vec<(u32, u32)>>,
    indexed: bool,
}

impl PolicySet {
    /// Index `policies`; each policy id may appear once.
    pub fn new(policies: Vec<CompiledPolicy>) -> Result<Self, EvaluateError> {
        let mut seen = HashSet::new();
        for policy in &policies {
            if !seen.insert(&policy.id) {
                return Err(EvaluateError::DuplicatePolicy { id: policy.id.clone() });
            }
        }
        let all_rules: Vec<(u32, u32)> = policies
            .iter()
            .enumerate()
            .flat_map(|(p, policy)| (0..policy.rules.len()).map(move |r| (p as u32, r as u32)))
            .collect();
        let (mut prot_read, mut flags_read) = (0u64, 0u64);
        for policy in &policies {
            for rule in &policy.rules {
                let (prot, flags) = rule.bits_read();
                prot_read |= prot;
                flags_read |= flags;
            }
        }
        let prot_bits = bit_positions(prot_read);
        let flag_bits = bit_positions(flags_read);
        let mut set = Self { policies, prot_bits, flag_bits, buckets: Vec::new(), indexed: false };
        if set.prot_bits.len() + set.flag_bits.len() > MAX_INDEX_BITS {
            set.prot_bits.clear();
            set.flag_bits.clear();
            set.buckets = vec![all_rules];
            return Ok(set);
        }
        let keys = 1usize << (set.prot_bits.len() + set.flag_bits.len());
        set.buckets = (0..keys)
            .map(|key| {
                let (prot, flags) = set.representative(key);
                all_rules.iter().copied().filter(|&(p, r)| set.rule(p, r).bits_hold(prot, flags)).collect()
            })
            .collect();
        set.indexed = true;
        Ok(set)
    }

    #[must_use]
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Every match of `event` made by the caller `ctx`.
    #[must_use]
    pub fn evaluate(&self, event: &MmapEvent, ctx: &EvalContext) -> Vec<Match<'_>> {
        let mut out = Vec::new();
        self.evaluate_into(event, ctx, &mut out);
        out
    }

    /// [`Self::evaluate`] appending to `out`, to reuse its allocation across calls.
    pub fn evaluate_into<'a>(&'a self, event: &MmapEvent, ctx: &EvalContext, out: &mut Vec<Match<'a>>) {
        let Some(candidates) = self.buckets.get(self.key(event.args.prot, event.args.flags)) else { return };
        let mut scoped: Option<(u32, bool)> = None;
        for &(p, r) in candidates {
            let policy = &self.policies[p as usize];
            let applies = match scoped {
                Some((last, applies)) if last == p => applies,
                _ => {
                    let applies = policy.scope.applies(ctx);
                    scoped = Some((p, applies));
                    applies
                }
            };
            if !applies {
                continue;
            }
            let rule = &policy.rules[r as usize];
            let hit = if self.indexed { rule.matches_beyond_bits(event, ctx) } else { rule.matches(event, ctx) };
            if hit {
                out.push(Match { policy: &policy.id, rule: &rule.name, action: rule.action, mode: policy.mode });
            }
        }
    }

    fn rule(&self, policy: u32, rule: u32) -> &CompiledRule {
        &self.policies[policy as usize].rules[rule as usize]
    }

    fn key(&self, prot: u64, flags: u64) -> usize {
        let mut key = 0usize;
        for (i, bit) in self.prot_bits.iter().enumerate() {
            key |= (((prot >> bit) & 1) as usize) << i;
        }
        let shift = self.prot_bits.len();
        for (i, bit) in self.flag_bits.iter().enumerate() {
            key |= (((flags >> bit) & 1) as usize) << (shift + i);
        }
        key
    }

    /// A (prot, flags) pair whose key is `key`.
    fn representative(&self, key: usize) -> (u64, u64) {
        let mut prot = 0;
        for (i, bit) in self.prot_bits.iter().enumerate() {
            prot |= (((key >> i) & 1) as u64) << bit;
        }
        let shift = self.prot_bits.len();
        let mut flags = 0;
        for (i, bit) in self.flag_bits.iter().enumerate() {
            flags |= (((key >> (shift + i)) & 1) as u64) << bit;
        }
        (prot, flags)
    }
}

fn bit_positions(mask: u64) -> Vec<u8> {
    (0..64u8).filter(|bit| mask & (1 << bit) != 0).collect()
}

#[cfg(test)]
mod tests;
