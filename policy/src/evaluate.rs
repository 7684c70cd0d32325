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
//! only meets the rules its bits can satisfy. Which policies apply to a caller (namespace, pod
//! and namespace labels, host or not) is a [`CallerScope`]; it depends only on the caller, so a
//! collector computes it once per container ([`PolicySet::scope`]) and evaluates each call with
//! [`PolicySet::evaluate_scoped`]. [`PolicySet::evaluate`] does both for one call.

use std::collections::{HashMap, HashSet};

use crate::{
    MmapEvent,
    compile::{CombinedGlobs, CompiledPolicy, Memo, MemoSlots, Prefilter},
    context::EvalContext,
    crd::{Action, Mode},
    policy::PolicyId,
};

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

/// The policies of a [`PolicySet`] that apply to one caller, in the set's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerScope {
    policies: Vec<u32>,
}

impl CallerScope {
    /// Whether no policy applies.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// How many policies apply.
    #[must_use]
    pub fn len(&self) -> usize {
        self.policies.len()
    }
}

/// One policy's index: for each key, the list of its rules whose bit conditions hold. Most keys
/// share a few lists, so lists are stored once.
#[derive(Debug, Clone, Default)]
struct PolicyIndex {
    key_to_list: Vec<u16>,
    lists: Vec<Vec<Candidate>>,
}

/// A rule in the index, with its cheapest conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Candidate {
    rule: u32,
    prefilter: Prefilter,
    /// The rule's slot in the per-call memo: a rule already tested for this call (in another
    /// policy) is answered without reading the rule.
    slot: Option<u8>,
}

/// Compiled policies with an index over their rules.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    indexes: Vec<PolicyIndex>,
    /// Namespaced policies by namespace.
    by_namespace: HashMap<String, Vec<u32>>,
    /// Cluster policies.
    cluster: Vec<u32>,
    prot_bits: Vec<u8>,
    flag_bits: Vec<u8>,
    /// False when the rules read more than [`MAX_INDEX_BITS`] bits: one key, bits tested per rule.
    indexed: bool,
    globs: CombinedGlobs,
}

impl PolicySet {
    /// Index `policies`; each policy id may appear once.
    pub fn new(mut policies: Vec<CompiledPolicy>) -> Result<Self, EvaluateError> {
        let mut seen = HashSet::new();
        for policy in &policies {
            if !seen.insert(&policy.id) {
                return Err(EvaluateError::DuplicatePolicy {
                    id: policy.id.clone(),
                });
            }
        }
        let mut slots = MemoSlots::default();
        for rule in policies.iter_mut().flat_map(|p| p.rules.iter_mut()) {
            slots.assign(rule);
        }
        let (mut prot_read, mut flags_read) = (0u64, 0u64);
        for rule in policies.iter().flat_map(|p| &p.rules) {
            let (prot, flags) = rule.bits_read();
            prot_read |= prot;
            flags_read |= flags;
        }
        let mut prot_bits = bit_positions(prot_read);
        let mut flag_bits = bit_positions(flags_read);
        let indexed = prot_bits.len() + flag_bits.len() <= MAX_INDEX_BITS;
        if !indexed {
            prot_bits.clear();
            flag_bits.clear();
        }
        let mut by_namespace: HashMap<String, Vec<u32>> = HashMap::new();
        let mut cluster = Vec::new();
        for (index, policy) in policies.iter().enumerate() {
            match &policy.scope {
                crate::compile::Scope::Namespace { namespace, .. } => by_namespace
                    .entry(namespace.clone())
                    .or_default()
                    .push(index as u32),
                crate::compile::Scope::Cluster { .. } => cluster.push(index as u32),
            }
        }
        let globs = slots.combined();
        let mut set = Self {
            policies,
            indexes: Vec::new(),
            by_namespace,
            cluster,
            prot_bits,
            flag_bits,
            indexed,
            globs,
        };
        let keys = 1usize << (set.prot_bits.len() + set.flag_bits.len());
        let representatives: Vec<(u64, u64)> =
            (0..keys).map(|key| set.representative(key)).collect();
        set.indexes = set
            .policies
            .iter()
            .map(|policy| {
                let mut index = PolicyIndex::default();
                let mut known: HashMap<Vec<Candidate>, u16> = HashMap::new();
                for &(prot, flags) in &representatives {
                    let list: Vec<Candidate> = policy
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, rule)| !indexed || rule.bits_hold(prot, flags))
                        .map(|(r, rule)| Candidate {
                            rule: r as u32,
                            prefilter: rule.prefilter(),
                            slot: rule.slot(),
                        })
                        .collect();
                    let next = index.lists.len() as u16;
                    let id = *known.entry(list.clone()).or_insert_with(|| {
                        index.lists.push(list);
                        next
                    });
                    index.key_to_list.push(id);
                }
                index
            })
            .collect();
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
    pub fn evaluate_into<'a>(
        &'a self,
        event: &MmapEvent,
        ctx: &EvalContext,
        out: &mut Vec<Match<'a>>,
    ) {
        let scope = self.scope(ctx);
        self.evaluate_scoped(&scope, event, ctx, out);
    }

    /// The policies that apply to the caller `ctx`. It changes only with the caller's namespace,
    /// labels, container and image, or with the policy set: compute it once per container.
    #[must_use]
    pub fn scope(&self, ctx: &EvalContext) -> CallerScope {
        let namespaced = ctx
            .workload
            .as_ref()
            .and_then(|w| self.by_namespace.get(&w.namespace))
            .into_iter()
            .flatten();
        let mut policies: Vec<u32> = namespaced
            .chain(&self.cluster)
            .copied()
            .filter(|&p| self.policies[p as usize].scope.applies(ctx))
            .collect();
        policies.sort_unstable();
        CallerScope { policies }
    }

    /// Every match of `event` among the policies of `scope` (from [`Self::scope`] for the same
    /// caller `ctx` and this set), appended to `out`.
    pub fn evaluate_scoped<'a>(
        &'a self,
        scope: &CallerScope,
        event: &MmapEvent,
        ctx: &EvalContext,
        out: &mut Vec<Match<'a>>,
    ) {
        if scope.is_empty() {
            return;
        }
        let key = self.key(event.judged_prot(), event.args.flags);
        let mut memo = Memo::with_combined(event, ctx, &self.globs);
        for &p in &scope.policies {
            let (Some(policy), Some(index)) =
                (self.policies.get(p as usize), self.indexes.get(p as usize))
            else {
                continue;
            };
            let Some(list) = index
                .key_to_list
                .get(key)
                .and_then(|id| index.lists.get(usize::from(*id)))
            else {
                continue;
            };
            for candidate in list {
                if !candidate.prefilter.admits(event) {
                    continue;
                }
                let known = if self.indexed {
                    candidate.slot.and_then(|slot| memo.rule_result(slot))
                } else {
                    None
                };
                if known == Some(false) {
                    continue;
                }
                let rule = &policy.rules[candidate.rule as usize];
                let hit = known.unwrap_or_else(|| {
                    (self.indexed || rule.bits_hold(event.judged_prot(), event.args.flags))
                        && rule.matches_beyond_bits(event, ctx, &mut memo)
                });
                if hit {
                    out.push(Match {
                        policy: &policy.id,
                        rule: &rule.name,
                        action: rule.action,
                        mode: policy.mode,
                    });
                }
            }
        }
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
