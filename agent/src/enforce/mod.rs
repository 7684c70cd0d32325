//! Enforcement rules in the kernel: per cgroup, matched at syscall entry by the capture
//! programs (ebpf/include/enforce.h), independent of the ring buffer and of any collector.

pub mod policies;
pub mod wire;

use std::collections::HashSet;

use aya::maps::{Array, HashMap, MapData};
use mapsentry_policy::Syscall;
use zerocopy::FromZeros;

use self::wire::{RULE_SET_LEN, RULES_PER_SET, RawRule, RawRuleSet};

/// The cgroup key whose rules apply to every process.
pub const EVERY_PROCESS: u64 = 0;

/// What a kernel rule does to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelAction {
    /// SIGKILL at syscall entry.
    Kill,
    /// EPERM from the BPF LSM hooks; only where the capture attached them
    /// (`Attached::deny_unavailable` is `None`).
    Deny,
}

/// Which mappings a kernel rule concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MappingKind {
    #[default]
    Any,
    Anonymous,
    File,
}

/// One rule as the kernel evaluates it: every condition must hold (empty ones always do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    /// Echoed in the records of the calls it acts on.
    pub rule_id: u32,
    pub action: KernelAction,
    pub prot_all: u64,
    pub prot_any: u64,
    pub flags_all: u64,
    pub flags_any: u64,
    pub min_length: u64,
    /// The syscalls concerned; empty: all.
    pub syscalls: Vec<Syscall>,
    pub mapping: MappingKind,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cgroup {cgroup_id}: {count} enforcement rules, the kernel holds at most {RULES_PER_SET} per cgroup"
    )]
    TooManyRules { cgroup_id: u64, count: usize },
    #[error(
        "cgroup {cgroup_id}: rule {rule_id} denies, but this kernel cannot deny ({reason}); use Kill"
    )]
    DenyUnavailable {
        cgroup_id: u64,
        rule_id: u32,
        reason: String,
    },
    #[error("writing the rules of cgroup {cgroup_id} to the kernel: {reason}")]
    Map { cgroup_id: u64, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel's `enforce` map: rule sets by cgroup id, and beside it the number of sets
/// (`enforce_sets`), which lets the programs skip enforcement altogether while it is 0.
pub struct RuleTable {
    map: HashMap<MapData, u64, [u8; RULE_SET_LEN]>,
    count: Array<MapData, u32>,
    /// The cgroups that have a set in `map`.
    keys: HashSet<u64>,
    /// Why Deny rules cannot be enforced here, if they cannot.
    deny_unavailable: Option<String>,
}

impl std::fmt::Debug for RuleTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleTable").finish_non_exhaustive()
    }
}

impl RuleTable {
    pub(crate) fn new(
        map: HashMap<MapData, u64, [u8; RULE_SET_LEN]>,
        count: Array<MapData, u32>,
        deny_unavailable: Option<String>,
    ) -> Self {
        Self {
            map,
            count,
            keys: HashSet::new(),
            deny_unavailable,
        }
    }

    /// How many cgroups (or `EVERY_PROCESS`) have rules in the kernel.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Tell the programs how many sets there are: written after a set is added (a call
    /// entering in between is judged as before the set arrived) and after one is removed.
    fn publish_count(&mut self, cgroup_id: u64) -> Result<()> {
        let count = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.count.set(0, count, 0).map_err(|e| Error::Map {
            cgroup_id,
            reason: crate::probe::chain(&e),
        })
    }

    /// Replace the rules of `cgroup_id` (`EVERY_PROCESS` for all processes); the kernel
    /// applies the new set from the next call on.
    pub fn set(&mut self, cgroup_id: u64, version: u32, rules: &[KernelRule]) -> Result<()> {
        if rules.len() > RULES_PER_SET {
            return Err(Error::TooManyRules {
                cgroup_id,
                count: rules.len(),
            });
        }
        if let (Some(reason), Some(rule)) = (
            &self.deny_unavailable,
            rules.iter().find(|r| r.action == KernelAction::Deny),
        ) {
            return Err(Error::DenyUnavailable {
                cgroup_id,
                rule_id: rule.rule_id,
                reason: reason.clone(),
            });
        }
        let mut set = RawRuleSet::new_zeroed();
        set.count = rules.len() as u32;
        set.version = version;
        for (raw, rule) in set.rules.iter_mut().zip(rules) {
            *raw = RawRule::from(rule);
        }
        let bytes: [u8; RULE_SET_LEN] = zerocopy::transmute!(set);
        self.map
            .insert(cgroup_id, bytes, 0)
            .map_err(|e| Error::Map {
                cgroup_id,
                reason: crate::probe::chain(&e),
            })?;
        if self.keys.insert(cgroup_id) {
            self.publish_count(cgroup_id)?;
        }
        Ok(())
    }

    /// Remove the rules of `cgroup_id`; absent rules are not an error.
    pub fn remove(&mut self, cgroup_id: u64) -> Result<()> {
        match self.map.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Map {
                    cgroup_id,
                    reason: crate::probe::chain(&e),
                });
            }
        }
        if self.keys.remove(&cgroup_id) {
            self.publish_count(cgroup_id)?;
        }
        Ok(())
    }
}

impl From<&KernelRule> for RawRule {
    fn from(rule: &KernelRule) -> Self {
        let syscalls = rule
            .syscalls
            .iter()
            .fold(0u16, |bits, s| bits | (1 << wire::syscall_value(*s)));
        Self {
            prot_all: rule.prot_all,
            prot_any: rule.prot_any,
            flags_all: rule.flags_all,
            flags_any: rule.flags_any,
            min_length: rule.min_length,
            rule_id: rule.rule_id,
            syscalls,
            mapping: match rule.mapping {
                MappingKind::Any => wire::MAPPING_ANY,
                MappingKind::Anonymous => wire::MAPPING_ANONYMOUS,
                MappingKind::File => wire::MAPPING_FILE,
            },
            action: match rule.action {
                KernelAction::Kill => wire::ACTION_KILL,
                KernelAction::Deny => wire::ACTION_DENY,
            },
        }
    }
}
