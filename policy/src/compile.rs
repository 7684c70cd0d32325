//! Policies compiled for evaluation: names parsed into bitmasks, globs into automata, selectors
//! into requirement lists. Compiling is also validating: [`compile`] reports every problem of a
//! policy with its field path, so what validates is exactly what can be evaluated.
//!
//! Semantics of one rule (the reference for the evaluator and its tests):
//! - every `match` field given must hold; a field absent holds for every call;
//! - `protAll`/`flagsAll`: every listed bit is set; `protAny`/`flagsAny`: at least one is;
//! - mapping types (`MAP_SHARED`, `MAP_PRIVATE`, `MAP_SHARED_VALIDATE`, `MAP_DROPPABLE`) are the
//!   value of the low four flag bits, not bits: in `flagsAll` the call's type must be the one
//!   listed, in `flagsAny` one of those listed; `MAP_SHARED` also covers `MAP_SHARED_VALIDATE`;
//! - `mapping: Anonymous` means `MAP_ANONYMOUS` is set, `File` that it is not;
//! - `file` conditions need the call's file to be known (a file-backed call with an open fd);
//!   `pathGlobs` needs one glob to match the path, `notPathGlobs` that none does;
//! - `comm` compares the command name exactly; globs use `*` within one path component, `**`
//!   across components, `?`, `[a-z]` and `{a,b}`;
//! - `except` exempts a call when every field given holds (missing context never holds).

use std::collections::HashMap;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{
    MmapEvent, Syscall,
    context::EvalContext,
    crd::{Action, ByteSize, ExceptSpec, FileMatch, MappingKind, MatchSpec, Mode, Rule},
    field_path::{FieldPath, Problem, closest},
    names,
    policy::{Policy, PolicyId},
    selector::Selector,
};

/// The kernel's `TASK_COMM_LEN` less the terminating NUL: the longest `comm` a process can have.
pub const COMM_MAX: usize = 15;

/// Low four bits of `flags`: the mapping type.
const MAP_TYPE_MASK: u64 = 0x0f;
/// Every type value allowed.
const ANY_TYPE: u16 = u16::MAX;

/// A policy ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    pub mode: Mode,
    pub scope: Scope,
    pub rules: Vec<CompiledRule>,
}

/// Which callers a policy applies to.
#[derive(Debug, Clone)]
pub enum Scope {
    /// An `MmapPolicy`: pods of `namespace` selected by `pods`.
    Namespace { namespace: String, pods: Selector },
    /// A `ClusterMmapPolicy`: pods of namespaces selected by `namespaces`; processes outside any
    /// pod when `host_processes`.
    Cluster {
        namespaces: Selector,
        host_processes: bool,
    },
}

/// Kubernetes sets this label on every namespace; it is assumed when the caller's namespace
/// labels lack it, so `namespaceSelector` can always select by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Scope {
    /// Whether a caller with this context is in scope.
    #[must_use]
    pub fn applies(&self, ctx: &EvalContext) -> bool {
        match (self, &ctx.workload) {
            (Self::Namespace { namespace, pods }, Some(workload)) => {
                workload.namespace == *namespace && pods.matches(&workload.pod_labels)
            }
            (Self::Namespace { .. }, None) => false,
            (Self::Cluster { namespaces, .. }, Some(workload)) => {
                namespaces.matches_lookup(|key| {
                    workload
                        .namespace_labels
                        .get(key)
                        .map(String::as_str)
                        .or_else(|| {
                            (key == NAMESPACE_NAME_LABEL).then_some(workload.namespace.as_str())
                        })
                })
            }
            (Self::Cluster { host_processes, .. }, None) => *host_processes,
        }
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub action: Action,
    pub(crate) conditions: Conditions,
    pub(crate) except: Option<Except>,
    /// The rule's `match` and `except` as JSON: rules with the same text are the same test.
    source: String,
    /// Slot in [`Memo`] for the result of this test, shared by rules with the same `source`.
    slot: Option<u8>,
}

/// The `match` of a rule as masks, sets and automata.
#[derive(Debug, Clone)]
pub(crate) struct Conditions {
    pub(crate) prot_all: u64,
    /// 0: no `protAny`.
    pub(crate) prot_any: u64,
    pub(crate) flags_all: u64,
    /// Bit `t` set: type value `t` allowed by `flagsAll`.
    pub(crate) flags_all_types: u16,
    pub(crate) flags_any_given: bool,
    pub(crate) flags_any: u64,
    pub(crate) flags_any_types: u16,
    pub(crate) mapping: Option<MappingKind>,
    pub(crate) file: Option<FileConditions>,
    pub(crate) min_length: u64,
    /// Bit per [`Syscall`]; 0: any.
    pub(crate) syscalls: u8,
    pub(crate) comm: Vec<String>,
    pub(crate) executable: Option<Box<Globs>>,
}

#[derive(Debug, Clone)]
pub(crate) struct FileConditions {
    pub(crate) memfd: Option<bool>,
    pub(crate) shm: Option<bool>,
    pub(crate) deleted: Option<bool>,
    pub(crate) path: Option<Box<Globs>>,
    pub(crate) not_path: Option<Box<Globs>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Except {
    pub(crate) comm: Vec<String>,
    pub(crate) executable: Option<Box<Globs>>,
    pub(crate) containers: Vec<String>,
    pub(crate) images: Option<Box<Globs>>,
}

/// What a glob list is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GlobInput {
    FilePath,
    Executable,
    Image,
}

/// A compiled glob list. Policies often repeat the same list (the system paths, the JIT
/// images); a [`crate::PolicySet`] numbers the distinct lists so that one call matches each
/// list once however many rules hold it ([`Memo`]).
#[derive(Debug, Clone)]
pub(crate) struct Globs {
    set: GlobSet,
    pub(crate) patterns: Vec<String>,
    input: GlobInput,
    /// Slot in [`Memo`], for the first [`Memo::GLOB_SLOTS`] distinct lists of a set.
    slot: Option<u8>,
}

/// Numbers the distinct rules and glob lists of a set, for [`Memo`].
#[derive(Debug, Default)]
pub(crate) struct MemoSlots {
    globs: HashMap<(GlobInput, Vec<String>), u8>,
    rules: HashMap<String, u8>,
}

/// Every distinct glob list of a set, per input, compiled into one automaton: one pass over a
/// call's path answers all the lists at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct CombinedGlobs {
    /// Per input (file path, executable, image): the automaton, and for each of its patterns the
    /// slots of the lists that hold it.
    sets: [Option<(GlobSet, Vec<u64>)>; 3],
    /// Per input, the slots of its lists.
    slots: [u64; 3],
}

impl CombinedGlobs {
    fn input_index(input: GlobInput) -> usize {
        match input {
            GlobInput::FilePath => 0,
            GlobInput::Executable => 1,
            GlobInput::Image => 2,
        }
    }
}

impl MemoSlots {
    /// The combined automata of the glob lists that got a slot.
    pub(crate) fn combined(&self) -> CombinedGlobs {
        let mut combined = CombinedGlobs::default();
        for input in [GlobInput::FilePath, GlobInput::Executable, GlobInput::Image] {
            let i = CombinedGlobs::input_index(input);
            let mut builder = GlobSetBuilder::new();
            let mut owners = Vec::new();
            for ((list_input, patterns), slot) in &self.globs {
                if *list_input != input {
                    continue;
                }
                combined.slots[i] |= 1 << slot;
                for pattern in patterns {
                    // The patterns compiled once already; a failure here only loses the shortcut.
                    if let Ok(glob) = GlobBuilder::new(pattern).literal_separator(true).build() {
                        builder.add(glob);
                        owners.push(1u64 << slot);
                    } else {
                        combined.slots[i] &= !(1 << slot);
                    }
                }
            }
            combined.sets[i] = builder.build().ok().map(|set| (set, owners));
            if combined.sets[i].is_none() {
                combined.slots[i] = 0;
            }
        }
        combined
    }

    pub(crate) fn assign(&mut self, rule: &mut CompiledRule) {
        let next = self.rules.len();
        rule.slot = match self.rules.get(&rule.source) {
            Some(slot) => Some(*slot),
            None if next < Memo::RULE_SLOTS && !rule.source.is_empty() => {
                self.rules.insert(rule.source.clone(), next as u8);
                Some(next as u8)
            }
            None => None,
        };
        let c = &mut rule.conditions;
        let except = rule.except.as_mut();
        let lists = [c.executable.as_deref_mut()]
            .into_iter()
            .chain(
                c.file
                    .as_mut()
                    .map(|f| [f.path.as_deref_mut(), f.not_path.as_deref_mut()])
                    .into_iter()
                    .flatten(),
            )
            .chain(
                except
                    .map(|e| [e.executable.as_deref_mut(), e.images.as_deref_mut()])
                    .into_iter()
                    .flatten(),
            )
            .flatten();
        for globs in lists {
            let next = self.globs.len();
            globs.slot = match self.globs.get(&(globs.input, globs.patterns.clone())) {
                Some(slot) => Some(*slot),
                None if next < Memo::GLOB_SLOTS => {
                    let slot = next as u8;
                    self.globs
                        .insert((globs.input, globs.patterns.clone()), slot);
                    Some(slot)
                }
                None => None,
            };
        }
    }
}

/// What one call's rule tests and glob matches came to, so that each distinct rule and glob list
/// is tested once per call however many policies repeat it; and the call's paths prepared for
/// matching once.
#[derive(Debug)]
pub(crate) struct Memo<'e> {
    known: u64,
    value: u64,
    rules_known: [u64; 4],
    rules_value: [u64; 4],
    file_path: Option<&'e str>,
    executable: Option<&'e str>,
    image: Option<&'e str>,
    file_candidate: Option<Candidate<'e>>,
    executable_candidate: Option<Candidate<'e>>,
    combined: Option<&'e CombinedGlobs>,
}

impl<'e> Memo<'e> {
    const GLOB_SLOTS: usize = 64;
    const RULE_SLOTS: usize = 256;

    pub(crate) fn new(event: &'e MmapEvent, ctx: &'e EvalContext) -> Self {
        Self {
            known: 0,
            value: 0,
            rules_known: [0; 4],
            rules_value: [0; 4],
            file_path: event.file.as_ref().map(|f| f.path.as_str()),
            executable: ctx.executable.as_deref(),
            image: ctx.workload.as_ref().and_then(|w| w.image.as_deref()),
            file_candidate: None,
            executable_candidate: None,
            combined: None,
        }
    }

    /// The result of the rule test in `slot`, when this call already made it.
    pub(crate) fn rule_result(&self, slot: u8) -> Option<bool> {
        let (word, bit) = (usize::from(slot / 64), 1u64 << (slot % 64));
        (self.rules_known[word] & bit != 0).then_some(self.rules_value[word] & bit != 0)
    }

    /// A memo that answers the glob lists of a set in one pass per input.
    pub(crate) fn with_combined(
        event: &'e MmapEvent,
        ctx: &'e EvalContext,
        combined: &'e CombinedGlobs,
    ) -> Self {
        Self {
            combined: Some(combined),
            ..Self::new(event, ctx)
        }
    }

    /// Whether the call's input for `globs` matches one of them (false when the input is unknown).
    fn matches(&mut self, globs: &Globs) -> bool {
        if let Some(slot) = globs.slot {
            let bit = 1u64 << slot;
            if self.known & bit != 0 {
                return self.value & bit != 0;
            }
            if let Some(combined) = self.combined {
                let i = CombinedGlobs::input_index(globs.input);
                if combined.slots[i] & bit != 0 {
                    self.match_all(combined, globs.input);
                    return self.value & bit != 0;
                }
            }
            let value = self.match_now(globs);
            self.known |= bit;
            if value {
                self.value |= bit;
            }
            return value;
        }
        self.match_now(globs)
    }

    /// Answer every combined list of `input` in one pass.
    fn match_all(&mut self, combined: &CombinedGlobs, input: GlobInput) {
        let i = CombinedGlobs::input_index(input);
        let Some((set, owners)) = &combined.sets[i] else {
            return;
        };
        let mut hits = Vec::new();
        match input {
            GlobInput::FilePath => {
                if let Some(path) = self.file_path {
                    set.matches_candidate_into(
                        self.file_candidate
                            .get_or_insert_with(|| Candidate::new(path)),
                        &mut hits,
                    );
                }
            }
            GlobInput::Executable => {
                if let Some(path) = self.executable {
                    set.matches_candidate_into(
                        self.executable_candidate
                            .get_or_insert_with(|| Candidate::new(path)),
                        &mut hits,
                    );
                }
            }
            GlobInput::Image => {
                if let Some(image) = self.image {
                    set.matches_into(image, &mut hits);
                }
            }
        }
        self.known |= combined.slots[i];
        for hit in hits {
            self.value |= owners.get(hit).copied().unwrap_or(0) & combined.slots[i];
        }
    }

    fn match_now(&mut self, globs: &Globs) -> bool {
        match globs.input {
            GlobInput::FilePath => match self.file_path {
                Some(path) => globs.set.is_match_candidate(
                    self.file_candidate
                        .get_or_insert_with(|| Candidate::new(path)),
                ),
                None => false,
            },
            GlobInput::Executable => match self.executable {
                Some(path) => globs.set.is_match_candidate(
                    self.executable_candidate
                        .get_or_insert_with(|| Candidate::new(path)),
                ),
                None => false,
            },
            GlobInput::Image => self.image.is_some_and(|image| globs.set.is_match(image)),
        }
    }
}

impl CompiledRule {
    /// Whether the rule matches the call (its `match` holds and its `except` does not).
    #[must_use]
    pub fn matches(&self, event: &MmapEvent, ctx: &EvalContext) -> bool {
        self.conditions
            .bits_hold(event.judged_prot(), event.args.flags)
            && self.matches_beyond_bits(event, ctx, &mut Memo::new(event, ctx))
    }

    /// [`Self::matches`] for a call whose prot and flags are known to satisfy the bit conditions.
    pub(crate) fn matches_beyond_bits<'e>(
        &self,
        event: &'e MmapEvent,
        ctx: &'e EvalContext,
        memo: &mut Memo<'e>,
    ) -> bool {
        let Some(slot) = self.slot else {
            return self.test(event, ctx, memo);
        };
        let (word, bit) = (usize::from(slot / 64), 1u64 << (slot % 64));
        if memo.rules_known[word] & bit != 0 {
            return memo.rules_value[word] & bit != 0;
        }
        let value = self.test(event, ctx, memo);
        memo.rules_known[word] |= bit;
        if value {
            memo.rules_value[word] |= bit;
        }
        value
    }

    fn test<'e>(&self, event: &'e MmapEvent, ctx: &'e EvalContext, memo: &mut Memo<'e>) -> bool {
        self.conditions.rest_holds(event, memo)
            && !self
                .except
                .as_ref()
                .is_some_and(|e| e.holds(event, ctx, memo))
    }

    /// The part of the rule's `except` that depends only on the caller's container (`containers`,
    /// `images`): `None` when the rule's `except` has neither, else whether it holds for `ctx`
    /// (a caller whose container or image is not known never holds it).
    #[must_use]
    pub fn workload_except(&self, ctx: &EvalContext) -> Option<bool> {
        let except = self.except.as_ref()?;
        if except.containers.is_empty() && except.images.is_none() {
            return None;
        }
        let workload = ctx.workload.as_ref();
        let container = workload.and_then(|w| w.container.as_deref());
        let image = workload.and_then(|w| w.image.as_deref());
        Some(
            (except.containers.is_empty()
                || container.is_some_and(|name| except.containers.iter().any(|c| c == name)))
                && except
                    .images
                    .as_ref()
                    .is_none_or(|globs| image.is_some_and(|image| globs.set.is_match(image))),
        )
    }

    /// Bits of `prot` and of `flags` that the bit conditions read.
    pub(crate) fn bits_read(&self) -> (u64, u64) {
        let c = &self.conditions;
        let mut flags = c.flags_all | c.flags_any;
        if c.mapping.is_some() {
            flags |= names::MAP_ANONYMOUS;
        }
        if c.flags_all_types != ANY_TYPE || c.flags_any_types != 0 {
            flags |= MAP_TYPE_MASK;
        }
        (c.prot_all | c.prot_any, flags)
    }

    pub(crate) fn bits_hold(&self, prot: u64, flags: u64) -> bool {
        self.conditions.bits_hold(prot, flags)
    }

    /// Slot of this rule's result in [`Memo`], shared by identical rules.
    pub(crate) fn slot(&self) -> Option<u8> {
        self.slot
    }

    /// The cheapest conditions, to test before touching the rule itself.
    pub(crate) fn prefilter(&self) -> Prefilter {
        let c = &self.conditions;
        Prefilter {
            min_length: c.min_length,
            syscalls: c.syscalls,
            needs_file: c.file.is_some(),
        }
    }
}

impl Conditions {
    fn bits_hold(&self, prot: u64, flags: u64) -> bool {
        let map_type = 1u16 << (flags & MAP_TYPE_MASK);
        prot & self.prot_all == self.prot_all
            && (self.prot_any == 0 || prot & self.prot_any != 0)
            && flags & self.flags_all == self.flags_all
            && self.flags_all_types & map_type != 0
            && (!self.flags_any_given
                || flags & self.flags_any != 0
                || self.flags_any_types & map_type != 0)
            && match self.mapping {
                None => true,
                Some(MappingKind::Anonymous) => flags & names::MAP_ANONYMOUS != 0,
                Some(MappingKind::File) => flags & names::MAP_ANONYMOUS == 0,
            }
    }

    fn rest_holds(&self, event: &MmapEvent, memo: &mut Memo<'_>) -> bool {
        event.args.length >= self.min_length
            && (self.syscalls == 0 || self.syscalls & syscall_bit(event.syscall) != 0)
            && (self.comm.is_empty() || self.comm.contains(&event.comm))
            && self
                .file
                .as_ref()
                .is_none_or(|file| file.holds(event, memo))
            && self
                .executable
                .as_ref()
                .is_none_or(|globs| memo.matches(globs))
    }
}

impl FileConditions {
    fn holds(&self, event: &MmapEvent, memo: &mut Memo<'_>) -> bool {
        let Some(file) = &event.file else {
            return false;
        };
        self.memfd.is_none_or(|want| file.memfd == want)
            && self.shm.is_none_or(|want| file.shm == want)
            && self.deleted.is_none_or(|want| file.deleted == want)
            && self.path.as_ref().is_none_or(|globs| memo.matches(globs))
            && self
                .not_path
                .as_ref()
                .is_none_or(|globs| !memo.matches(globs))
    }
}

impl Except {
    fn holds(&self, event: &MmapEvent, ctx: &EvalContext, memo: &mut Memo<'_>) -> bool {
        let container = ctx.workload.as_ref().and_then(|w| w.container.as_deref());
        (self.comm.is_empty() || self.comm.contains(&event.comm))
            && (self.containers.is_empty()
                || container.is_some_and(|name| self.containers.iter().any(|c| c == name)))
            && self
                .executable
                .as_ref()
                .is_none_or(|globs| memo.matches(globs))
            && self.images.as_ref().is_none_or(|globs| memo.matches(globs))
    }
}

/// Conditions of a rule kept next to its place in the index: most calls are rejected by them
/// without reading the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Prefilter {
    min_length: u64,
    syscalls: u8,
    needs_file: bool,
}

impl Prefilter {
    pub(crate) fn admits(&self, event: &MmapEvent) -> bool {
        event.args.length >= self.min_length
            && (self.syscalls == 0 || self.syscalls & syscall_bit(event.syscall) != 0)
            && (!self.needs_file || event.file.is_some())
    }
}

fn syscall_bit(syscall: Syscall) -> u8 {
    match syscall {
        Syscall::Mmap => 1,
        Syscall::Mmap2 => 2,
        Syscall::OldMmap => 4,
        Syscall::Mprotect => 8,
    }
}

/// Compile `policy`, or report every problem with its field path.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, Vec<Problem>> {
    let mut problems = Vec::new();
    let spec = FieldPath::root().field("spec");
    let scope = match policy {
        Policy::Namespaced(p) => {
            let pods = compile_selector(
                p.spec.pod_selector.as_ref(),
                &spec.field("podSelector"),
                &mut problems,
            );
            Scope::Namespace {
                namespace: policy.id().namespace.unwrap_or_default(),
                pods,
            }
        }
        Policy::Cluster(p) => {
            let namespaces = compile_selector(
                p.spec.namespace_selector.as_ref(),
                &spec.field("namespaceSelector"),
                &mut problems,
            );
            Scope::Cluster {
                namespaces,
                host_processes: p.spec.host_processes,
            }
        }
    };
    let rules_path = spec.field("rules");
    if policy.rules().is_empty() {
        problems.push(Problem::new(&rules_path, "at least one rule is required"));
    }
    let mut rules = Vec::new();
    for (index, rule) in policy.rules().iter().enumerate() {
        let path = rules_path.index(index);
        if let Some(first) = policy.rules()[..index]
            .iter()
            .position(|r| r.name == rule.name)
        {
            problems.push(Problem::new(
                &path.field("name"),
                format!("duplicate rule name {:?} (also spec.rules[{first}]); alerts name rules, so names must be unique", rule.name),
            ));
        }
        if let Some(rule) = compile_rule(rule, &path, &mut problems) {
            rules.push(rule);
        }
    }
    if problems.is_empty() {
        Ok(CompiledPolicy {
            id: policy.id(),
            mode: policy.mode(),
            scope,
            rules,
        })
    } else {
        Err(problems)
    }
}

fn compile_selector(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Selector {
    match selector.map(|s| Selector::compile(s, path)) {
        None => Selector::default(),
        Some(Ok(selector)) => selector,
        Some(Err(found)) => {
            problems.extend(found);
            Selector::default()
        }
    }
}

fn compile_rule(
    rule: &Rule,
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) -> Option<CompiledRule> {
    let before = problems.len();
    if rule.name.trim().is_empty() {
        problems.push(Problem::new(
            &path.field("name"),
            "a rule needs a name (alerts show it)",
        ));
    }
    let conditions = compile_match(&rule.match_, &path.field("match"), problems);
    let except = rule
        .except
        .as_ref()
        .map(|e| compile_except(e, &path.field("except"), problems));
    let source = serde_json::to_string(&(&rule.match_, &rule.except)).unwrap_or_default();
    (problems.len() == before).then(|| CompiledRule {
        name: rule.name.clone(),
        action: rule.action,
        conditions,
        except,
        source,
        slot: None,
    })
}

fn compile_match(spec: &MatchSpec, path: &FieldPath, problems: &mut Vec<Problem>) -> Conditions {
    if *spec == MatchSpec::default() {
        problems.push(Problem::new(
            path,
            "empty match: the rule would match every call; give at least one condition",
        ));
    }
    let prot_all = prot_mask(&spec.prot_all, &path.field("protAll"), problems);
    let prot_any = prot_mask(&spec.prot_any, &path.field("protAny"), problems);
    let (flags_all, all_types) = flag_mask(&spec.flags_all, &path.field("flagsAll"), problems);
    let (flags_any, any_types) = flag_mask(&spec.flags_any, &path.field("flagsAny"), problems);
    let mut flags_all_types = ANY_TYPE;
    let mut first_type: Option<&str> = None;
    for (name, types) in &all_types {
        if flags_all_types & types == 0 {
            let first = first_type.unwrap_or_default();
            problems.push(Problem::new(
                &path.field("flagsAll"),
                format!("{first} and {name} are both mapping types; a call has exactly one, so the rule could never match"),
            ));
        }
        flags_all_types &= types;
        first_type.get_or_insert(name);
    }
    let flags_any_types = any_types.iter().fold(0, |acc, (_, types)| acc | types);
    if spec.mapping == Some(MappingKind::Anonymous) && spec.file.is_some() {
        problems.push(Problem::new(
            &path.field("file"),
            "file conditions never hold with mapping: Anonymous (an anonymous mapping has no file)",
        ));
    }
    if spec.mapping == Some(MappingKind::File) && flags_all & names::MAP_ANONYMOUS != 0 {
        problems.push(Problem::new(
            &path.field("mapping"),
            "mapping: File contradicts flagsAll MAP_ANONYMOUS; the rule could never match",
        ));
    }
    let file = spec
        .file
        .as_ref()
        .map(|f| compile_file(f, &path.field("file"), problems));
    check_comms(&spec.comm, &path.field("comm"), problems);
    let executable = compile_globs(
        &spec.executable_globs,
        &path.field("executableGlobs"),
        GlobInput::Executable,
        problems,
    );
    Conditions {
        prot_all,
        prot_any,
        flags_all,
        flags_all_types,
        flags_any_given: !spec.flags_any.is_empty(),
        flags_any,
        flags_any_types,
        mapping: spec.mapping,
        file,
        min_length: match spec.min_length.as_ref().map(ByteSize::bytes) {
            None => 0,
            Some(Ok(bytes)) => bytes,
            Some(Err(reason)) => {
                problems.push(Problem::new(&path.field("minLength"), reason));
                0
            }
        },
        syscalls: spec
            .syscalls
            .iter()
            .fold(0, |acc, s| acc | syscall_bit((*s).into())),
        comm: spec.comm.clone(),
        executable,
    }
}

fn compile_file(spec: &FileMatch, path: &FieldPath, problems: &mut Vec<Problem>) -> FileConditions {
    FileConditions {
        memfd: spec.memfd,
        shm: spec.shm,
        deleted: spec.deleted,
        path: compile_globs(
            &spec.path_globs,
            &path.field("pathGlobs"),
            GlobInput::FilePath,
            problems,
        ),
        not_path: compile_globs(
            &spec.not_path_globs,
            &path.field("notPathGlobs"),
            GlobInput::FilePath,
            problems,
        ),
    }
}

fn compile_except(spec: &ExceptSpec, path: &FieldPath, problems: &mut Vec<Problem>) -> Except {
    if *spec == ExceptSpec::default() {
        problems.push(Problem::new(
            path,
            "empty except: it would exempt every call; give a condition or remove it",
        ));
    }
    check_comms(&spec.comm, &path.field("comm"), problems);
    for (index, container) in spec.containers.iter().enumerate() {
        if container.is_empty() {
            problems.push(Problem::new(
                &path.field("containers").index(index),
                "empty container name",
            ));
        }
    }
    Except {
        comm: spec.comm.clone(),
        executable: compile_globs(
            &spec.executable_globs,
            &path.field("executableGlobs"),
            GlobInput::Executable,
            problems,
        ),
        containers: spec.containers.clone(),
        images: compile_globs(
            &spec.images,
            &path.field("images"),
            GlobInput::Image,
            problems,
        ),
    }
}

fn prot_mask(list: &[String], path: &FieldPath, problems: &mut Vec<Problem>) -> u64 {
    let mut mask = 0;
    for (index, name) in list.iter().enumerate() {
        match names::parse_prot(name) {
            Some(0) => problems.push(Problem::new(
                &path.index(index),
                "PROT_NONE is not a bit (it means prot is 0) and cannot be matched; list PROT_READ, PROT_WRITE or PROT_EXEC",
            )),
            Some(bit) => mask |= bit,
            None => {
                let hint = closest(name, names::PROT_NAMES.iter().map(|(n, _)| *n)).map_or_else(
                    || " (expected PROT_READ, PROT_WRITE, PROT_EXEC, PROT_SEM, PROT_GROWSDOWN or PROT_GROWSUP)".to_owned(),
                    |c| format!("; did you mean {c:?}?"),
                );
                problems.push(Problem::new(&path.index(index), format!("unknown protection {name:?}{hint}")));
            }
        }
    }
    mask
}

/// The bits of the flag names in `list`, and for each mapping type named, the set of type values
/// it allows.
fn flag_mask<'a>(
    list: &'a [String],
    path: &FieldPath,
    problems: &mut Vec<Problem>,
) -> (u64, Vec<(&'a str, u16)>) {
    let mut mask = 0;
    let mut types = Vec::new();
    for (index, name) in list.iter().enumerate() {
        match names::parse_flag(name) {
            Some(value) if value & !MAP_TYPE_MASK == 0 => {
                // MAP_SHARED (1) also covers MAP_SHARED_VALIDATE (3): both are shared mappings.
                let set = if value == 1 {
                    (1 << 1) | (1 << 3)
                } else {
                    1u16 << value
                };
                types.push((name.as_str(), set));
            }
            Some(bits) => mask |= bits,
            None => {
                let known = names::MAP_FLAG_NAMES.iter().map(|(n, _)| *n).chain([
                    "MAP_SHARED",
                    "MAP_PRIVATE",
                    "MAP_SHARED_VALIDATE",
                ]);
                let hint = match (name.as_str(), closest(name, known)) {
                    ("MAP_ANON", _) => "; write MAP_ANONYMOUS".to_owned(),
                    (_, Some(c)) => format!("; did you mean {c:?}?"),
                    (_, None) => " (names as in mmap(2): MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED, MAP_HUGETLB, ...)".to_owned(),
                };
                problems.push(Problem::new(
                    &path.index(index),
                    format!("unknown flag {name:?}{hint}"),
                ));
            }
        }
    }
    (mask, types)
}

fn check_comms(list: &[String], path: &FieldPath, problems: &mut Vec<Problem>) {
    for (index, comm) in list.iter().enumerate() {
        if comm.is_empty() {
            problems.push(Problem::new(&path.index(index), "empty command name"));
        } else if comm.len() > COMM_MAX {
            let cut = comm
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .take_while(|end| *end <= COMM_MAX)
                .last()
                .unwrap_or(0);
            problems.push(Problem::new(
                &path.index(index),
                format!(
                    "{comm:?} is {} bytes but the kernel keeps at most {COMM_MAX} of a command name, so it never matches; write {:?} or use executableGlobs",
                    comm.len(),
                    &comm[..cut]
                ),
            ));
        }
    }
}

/// Compile `globs` into one set (None when the list is empty). For paths, a glob that can only
/// match a relative path is an error, since executables and files have absolute paths.
fn compile_globs(
    globs: &[String],
    path: &FieldPath,
    input: GlobInput,
    problems: &mut Vec<Problem>,
) -> Option<Box<Globs>> {
    let absolute = input != GlobInput::Image;
    if globs.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    let mut ok = true;
    for (index, glob) in globs.iter().enumerate() {
        if absolute && !(glob.starts_with('/') || glob.starts_with('*') || glob.starts_with('{')) {
            problems.push(Problem::new(
                &path.index(index),
                format!("glob {glob:?} can never match an absolute path; write \"/{glob}\", \"**/{glob}\" or a full path"),
            ));
            ok = false;
            continue;
        }
        match GlobBuilder::new(glob).literal_separator(true).build() {
            Ok(compiled) => {
                builder.add(compiled);
            }
            Err(error) => {
                problems.push(Problem::new(
                    &path.index(index),
                    format!("invalid glob {glob:?}: {}", error.kind()),
                ));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    match builder.build() {
        Ok(set) => Some(Box::new(Globs {
            set,
            patterns: globs.to_vec(),
            input,
            slot: None,
        })),
        Err(error) => {
            problems.push(Problem::new(
                path,
                format!("cannot compile the globs: {error}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests;
