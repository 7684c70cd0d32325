//! Enforcement rules in the kernel: per cgroup, matched at syscall entry by the capture
//! programs (ebpf/include/enforce.h), independent of the ring buffer and of any collector.

pub mod policies;
pub mod wire;

use std::collections::{BTreeMap, HashSet};

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use mapsentry_policy::{
    Syscall,
    enforce::kernel_glob::{KernelPattern, Middle},
};
use zerocopy::FromZeros;

use self::wire::{
    COMM_LEN, ENFORCE_STATE_LEN, PATH_KEY_BYTES, PATTERN_LEN, PATTERNS_PER_TABLE, RULE_SET_LEN,
    RULES_PER_SET, RawEnforceState, RawPattern, RawRule, RawRuleSet,
};

/// The cgroup key whose rules apply to every process.
pub const EVERY_PROCESS: u64 = 0;

/// Comm and path classes a table holds (`u64` masks in the kernel).
pub const CLASSES_MAX: usize = 64;
/// Command names the kernel's name table holds per class table.
pub const COMM_NAMES_MAX: usize = 256;

/// What a kernel rule does to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelAction {
    /// SIGKILL at syscall entry.
    #[default]
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

/// The file conditions of a kernel rule: a call without a file never matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileRule {
    /// `wire::FK_*` bits with a condition, and their required values.
    pub kinds_care: u8,
    pub kinds_want: u8,
    /// Path class the file's path is in (0: no condition).
    pub path: u8,
    /// Path class it is not in (0: no condition).
    pub not_path: u8,
}

/// One rule as the kernel evaluates it: every condition must hold (empty ones always do).
/// Classes (`comm`, `executable`, file paths) are numbers in the class tables written with
/// [`RuleTable::set_classes`], 1..=64; 0 means no condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    /// Echoed in the records of the calls it acts on.
    pub rule_id: u32,
    pub action: KernelAction,
    pub prot_all: u64,
    pub prot_any: u64,
    pub flags_all: u64,
    pub flags_any: u64,
    /// Mapping types (bit `1 << (flags & 0xf)`) `flagsAll` allows; `u16::MAX`: any.
    pub types_all: u16,
    /// Mapping types `flagsAny` allows besides its bits (with `flags_any`, 0: no condition).
    pub types_any: u16,
    pub min_length: u64,
    /// The syscalls concerned; empty: all.
    pub syscalls: Vec<Syscall>,
    pub mapping: MappingKind,
    pub comm: u8,
    pub executable: u8,
    pub file: Option<FileRule>,
    /// The exception: the comm in this class and the executable in that one (0: that part
    /// absent; both 0: no exception).
    pub except_comm: u8,
    pub except_executable: u8,
}

impl Default for KernelRule {
    fn default() -> Self {
        Self {
            rule_id: 0,
            action: KernelAction::Kill,
            prot_all: 0,
            prot_any: 0,
            flags_all: 0,
            flags_any: 0,
            types_all: u16::MAX,
            types_any: 0,
            min_length: 0,
            syscalls: Vec::new(),
            mapping: MappingKind::Any,
            comm: 0,
            executable: 0,
            file: None,
            except_comm: 0,
            except_executable: 0,
        }
    }
}

impl KernelRule {
    /// Whether the rule reads the caller's executable.
    #[must_use]
    pub fn reads_executable(&self) -> bool {
        self.executable != 0 || self.except_executable != 0
    }
}

/// The class tables of a set of kernel rules: command name lists and path pattern lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassTables {
    /// Comm class `i + 1`.
    pub comm: Vec<Vec<String>>,
    /// Path class `i + 1`: any of its patterns matching.
    pub paths: Vec<Vec<KernelPattern>>,
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
    #[error("class tables: {what}")]
    Classes { what: String },
    #[error("writing the class tables to the kernel ({map}): {reason}")]
    ClassMap { map: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel maps of enforcement, as the capture took them from its object.
pub(crate) struct RuleMaps {
    pub enforce: HashMap<MapData, u64, [u8; RULE_SET_LEN]>,
    pub state: Array<MapData, [u8; ENFORCE_STATE_LEN]>,
    pub comm: HashMap<MapData, [u8; COMM_LEN], [u64; 2]>,
    pub prefixes: LpmTrie<MapData, [u8; PATH_KEY_BYTES], u64>,
    pub suffixes: LpmTrie<MapData, [u8; PATH_KEY_BYTES], u64>,
    pub patterns: Array<MapData, [u8; PATTERN_LEN]>,
}

/// The kernel's enforcement tables: rule sets by cgroup id (`enforce`), the class tables their
/// rules refer to (comm names, path patterns), and the state beside them (`enforce_state`: the
/// number of sets, which lets the programs skip enforcement altogether while it is 0, and the
/// newest class generation).
///
/// Class tables come in two, by the parity of their generation: a new generation is written into
/// the table the current sets do not use, then each cgroup's set switches to it in one map
/// update, so no call is ever judged by rules of one generation against classes of another.
pub struct RuleTable {
    maps: RuleMaps,
    /// The cgroups that have a set in `enforce`.
    keys: HashSet<u64>,
    /// Why Deny rules cannot be enforced here, if they cannot.
    deny_unavailable: Option<String>,
    state: RawEnforceState,
    /// What each table (by parity) holds, as written.
    tables: [Option<ClassTables>; 2],
    /// Each table's trie keys, to remove when the table is rewritten.
    trie_keys: [Vec<(bool, Key<[u8; PATH_KEY_BYTES]>)>; 2],
    /// The comm name table as written: classes per table.
    comm: BTreeMap<[u8; COMM_LEN], [u64; 2]>,
}

impl std::fmt::Debug for RuleTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleTable")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RuleTable {
    pub(crate) fn new(maps: RuleMaps, deny_unavailable: Option<String>) -> Self {
        Self {
            maps,
            keys: HashSet::new(),
            deny_unavailable,
            state: RawEnforceState::default(),
            tables: [None, None],
            trie_keys: [Vec::new(), Vec::new()],
            comm: BTreeMap::new(),
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

    /// The class generation sets written now refer to (0: no tables written yet).
    #[must_use]
    pub fn class_generation(&self) -> u32 {
        self.state.generation
    }

    fn write_state(&mut self, cgroup_id: u64) -> Result<()> {
        self.state.sets = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        let bytes: [u8; ENFORCE_STATE_LEN] = zerocopy::transmute!(self.state);
        self.maps.state.set(0, bytes, 0).map_err(|e| Error::Map {
            cgroup_id,
            reason: crate::probe::chain(&e),
        })
    }

    /// Make `tables` the classes of the sets written from now on, and say whether some rule
    /// reads executables (`executables`: exec tracking then computes classes at every exec).
    /// Tables equal to the current ones change nothing but that flag. A new generation goes
    /// into the table the current sets do not use; the caller then rewrites every set.
    pub fn set_classes(&mut self, tables: &ClassTables, executables: bool) -> Result<u32> {
        let flags = if executables { wire::STATE_EXE } else { 0 };
        let current = (self.state.generation != 0)
            .then(|| self.tables[(self.state.generation & 1) as usize].as_ref())
            .flatten();
        if current == Some(tables) && self.state.flags == flags {
            return Ok(self.state.generation);
        }
        if current != Some(tables) {
            let generation = match self.state.generation.wrapping_add(1) {
                0 => 2, // 0 means "not computed" to the kernel; keep the parity alternating
                g => g,
            };
            self.write_tables((generation & 1) as usize, tables)?;
            self.state.generation = generation;
        }
        self.state.flags = flags;
        self.write_state(EVERY_PROCESS)?;
        Ok(self.state.generation)
    }

    fn write_tables(&mut self, table: usize, tables: &ClassTables) -> Result<()> {
        let entries = TableEntries::of(tables)?;
        let map_error = |map: &'static str| {
            move |e: aya::maps::MapError| Error::ClassMap {
                map,
                reason: crate::probe::chain(&e),
            }
        };

        // The table's old trie keys go first (no set refers to this table now).
        for (suffix, key) in std::mem::take(&mut self.trie_keys[table]) {
            let trie = if suffix {
                &mut self.maps.suffixes
            } else {
                &mut self.maps.prefixes
            };
            match trie.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(map_error("path tries")(e)),
            }
        }
        for (index, raw) in entries.patterns.iter().enumerate() {
            let bytes: [u8; PATTERN_LEN] = zerocopy::transmute!(*raw);
            let at = (table * PATTERNS_PER_TABLE + index) as u32;
            self.maps
                .patterns
                .set(at, bytes, 0)
                .map_err(map_error("path_patterns"))?;
        }
        for (suffix, entry, mask) in entries.tries {
            let mut data = [0u8; PATH_KEY_BYTES];
            data[0] = table as u8;
            data[1..=entry.len()].copy_from_slice(&entry);
            let key = Key::new(((entry.len() + 1) * 8) as u32, data);
            let trie = if suffix {
                &mut self.maps.suffixes
            } else {
                &mut self.maps.prefixes
            };
            trie.insert(&key, mask, 0)
                .map_err(map_error("path tries"))?;
            self.trie_keys[table].push((suffix, key));
        }
        // Comm names: this table's classes in each name's value, the other table's kept.
        let names = entries.names;
        let mut keys: Vec<[u8; COMM_LEN]> = self.comm.keys().copied().collect();
        keys.extend(names.keys().copied());
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let mut value = self.comm.get(&key).copied().unwrap_or_default();
            value[table] = names.get(&key).copied().unwrap_or(0);
            if value == [0, 0] {
                match self.maps.comm.remove(&key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(map_error("comm_classes")(e)),
                }
                self.comm.remove(&key);
            } else if self.comm.get(&key) != Some(&value) {
                self.maps
                    .comm
                    .insert(key, value, 0)
                    .map_err(map_error("comm_classes"))?;
                self.comm.insert(key, value);
            }
        }
        self.tables[table] = Some(tables.clone());
        Ok(())
    }

    /// Replace the rules of `cgroup_id` (`EVERY_PROCESS` for all processes); the kernel
    /// applies the new set from the next call on. Their classes refer to the tables of
    /// [`Self::set_classes`].
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
        set.generation = self.state.generation;
        for (raw, rule) in set.rules.iter_mut().zip(rules) {
            *raw = RawRule::from(rule);
        }
        let bytes: [u8; RULE_SET_LEN] = zerocopy::transmute!(set);
        self.maps
            .enforce
            .insert(cgroup_id, bytes, 0)
            .map_err(|e| Error::Map {
                cgroup_id,
                reason: crate::probe::chain(&e),
            })?;
        if self.keys.insert(cgroup_id) {
            self.write_state(cgroup_id)?;
        }
        Ok(())
    }

    /// Remove the rules of `cgroup_id`; absent rules are not an error.
    pub fn remove(&mut self, cgroup_id: u64) -> Result<()> {
        match self.maps.enforce.remove(&cgroup_id) {
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
            self.write_state(cgroup_id)?;
        }
        Ok(())
    }
}

/// What one class table holds, as map entries.
#[derive(Debug, Clone)]
struct TableEntries {
    /// `path_patterns` of the table, by bit.
    patterns: Vec<RawPattern>,
    /// (suffix trie?, the prefix or reversed suffix, the patterns it names).
    tries: Vec<(bool, Vec<u8>, u64)>,
    /// Command name -> its comm classes.
    names: BTreeMap<[u8; COMM_LEN], u64>,
}

impl TableEntries {
    fn of(tables: &ClassTables) -> Result<Self> {
        let classes_error = |what: String| Error::Classes { what };
        if tables.comm.len() > CLASSES_MAX || tables.paths.len() > CLASSES_MAX {
            return Err(classes_error(format!(
                "{} comm and {} path classes, the kernel holds at most {CLASSES_MAX} of each",
                tables.comm.len(),
                tables.paths.len()
            )));
        }
        // Patterns, each with the classes it belongs to.
        let mut patterns: Vec<(&KernelPattern, u64)> = Vec::new();
        for (class, list) in tables.paths.iter().enumerate() {
            for pattern in list {
                if pattern.prefix.len() >= PATH_KEY_BYTES || pattern.suffix.len() >= PATH_KEY_BYTES
                {
                    return Err(classes_error(format!(
                        "pattern {pattern} is longer than the kernel's keys"
                    )));
                }
                match patterns.iter_mut().find(|(p, _)| *p == pattern) {
                    Some((_, classes)) => *classes |= 1 << class,
                    None => patterns.push((pattern, 1 << class)),
                }
            }
        }
        if patterns.len() > PATTERNS_PER_TABLE {
            return Err(classes_error(format!(
                "{} path patterns, the kernel holds at most {PATTERNS_PER_TABLE}",
                patterns.len()
            )));
        }
        // Trie entries: per distinct prefix (reversed suffix), every pattern whose prefix
        // (reversed suffix) it starts with; a longest-prefix lookup then names them all.
        let mut tries = Vec::new();
        for suffix in [false, true] {
            let text = |p: &KernelPattern| -> Vec<u8> {
                if suffix {
                    p.suffix.bytes().rev().collect()
                } else {
                    p.prefix.bytes().collect()
                }
            };
            let mut entries: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (p, _) in &patterns {
                entries.insert(text(p), 0);
            }
            for (entry, mask) in &mut entries {
                for (bit, (p, _)) in patterns.iter().enumerate() {
                    if entry.starts_with(&text(p)) {
                        *mask |= 1 << bit;
                    }
                }
            }
            tries.extend(entries.into_iter().map(|(e, m)| (suffix, e, m)));
        }
        let mut names: BTreeMap<[u8; COMM_LEN], u64> = BTreeMap::new();
        for (class, list) in tables.comm.iter().enumerate() {
            for name in list {
                let key = comm_key(name).ok_or_else(|| {
                    classes_error(format!(
                        "command name {name:?} is longer than {} bytes",
                        COMM_LEN - 1
                    ))
                })?;
                *names.entry(key).or_default() |= 1 << class;
            }
        }
        if names.len() > COMM_NAMES_MAX {
            return Err(classes_error(format!(
                "{} command names, the kernel holds at most {COMM_NAMES_MAX}",
                names.len()
            )));
        }
        let patterns = (0..PATTERNS_PER_TABLE)
            .map(|index| {
                patterns
                    .get(index)
                    .map_or_else(RawPattern::default, |(p, classes)| RawPattern {
                        prefix_len: p.prefix.len() as u16,
                        suffix_len: p.suffix.len() as u16,
                        middle: match p.middle {
                            Middle::Exact => wire::MIDDLE_EXACT,
                            Middle::Component => wire::MIDDLE_COMPONENT,
                            Middle::Any => wire::MIDDLE_ANY,
                        },
                        slashes: u8::try_from(p.slashes()).unwrap_or(u8::MAX),
                        pad: 0,
                        classes: *classes,
                    })
            })
            .collect();
        Ok(Self {
            patterns,
            tries,
            names,
        })
    }
}

/// `name` NUL-padded as the kernel's comm, or None when it does not fit.
fn comm_key(name: &str) -> Option<[u8; COMM_LEN]> {
    let bytes = name.as_bytes();
    (bytes.len() < COMM_LEN).then(|| {
        let mut key = [0; COMM_LEN];
        key[..bytes.len()].copy_from_slice(bytes);
        key
    })
}

impl From<&KernelRule> for RawRule {
    fn from(rule: &KernelRule) -> Self {
        let syscalls = rule
            .syscalls
            .iter()
            .fold(0u16, |bits, s| bits | (1 << wire::syscall_value(*s)));
        let file = rule.file.unwrap_or_default();
        let mut needs = 0;
        if rule.comm != 0 || rule.except_comm != 0 {
            needs |= wire::NEED_COMM;
        }
        if rule.reads_executable() {
            needs |= wire::NEED_EXE;
        }
        if rule.file.is_some() {
            needs |= wire::NEED_FILE;
            if file.kinds_care != 0 {
                needs |= wire::NEED_KINDS;
            }
            if file.path != 0 || file.not_path != 0 {
                needs |= wire::NEED_PATH;
            }
        }
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
            types_all: rule.types_all,
            types_any: rule.types_any,
            flags_any_given: u8::from(rule.flags_any != 0 || rule.types_any != 0),
            needs,
            comm: rule.comm,
            exe: rule.executable,
            path: file.path,
            not_path: file.not_path,
            except_comm: rule.except_comm,
            except_exe: rule.except_executable,
            file_care: file.kinds_care,
            file_want: file.kinds_want & file.kinds_care,
            pad: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests;
