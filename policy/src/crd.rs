//! The custom resources: `MmapPolicy` (namespaced) and `ClusterMmapPolicy`, group `mapsentry.dev`,
//! version `v1alpha1`. The same YAML is a file for `mapsentry run` and an object in a cluster.
//!
//! These types say what a policy may contain; [`crate::validate`] says what makes it valid and
//! [`crate::compile`] what it means.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the policy resources.
pub const GROUP: &str = "mapsentry.dev";
/// API version of the policy resources.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in YAML.
pub const API_VERSION: &str = "mapsentry.dev/v1alpha1";

/// Mapping rules for the pods of one namespace (the namespace the policy lives in).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mapsentry.dev",
    version = "v1alpha1",
    kind = "MmapPolicy",
    doc = "An MmapPolicy: mapping rules for the pods of its namespace.",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mmp",
    category = "mapsentry",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Accepted", type_ = "boolean", json_path = ".status.accepted"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MmapPolicySpec {
    /// Which pods of the namespace the policy applies to; absent or empty: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// `Audit` reports what the rules match; `Enforce` also kills or denies. Default `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// What an `Enforce` rule with action `Deny` becomes on a node without BPF LSM: `Refuse`
    /// (default: the rule is not enforced there, and the agent says so in its log and metrics)
    /// or `Kill`. Never a silent downgrade to audit.
    #[serde(default, skip_serializing_if = "DenyFallback::is_default")]
    pub deny_fallback: DenyFallback,
    /// The rules; each call is checked against every rule. Rule names are unique (a list map
    /// keyed by `name`: the API server refuses a second rule of the same name).
    #[schemars(transform = rules_by_name)]
    pub rules: Vec<Rule>,
}

/// Mapping rules for pods of every namespace (optionally selected by label), and for processes
/// outside any pod when `hostProcesses` is true.
#[expect(
    clippy::duplicated_attributes,
    reason = "two printer columns are booleans"
)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mapsentry.dev",
    version = "v1alpha1",
    kind = "ClusterMmapPolicy",
    doc = "A ClusterMmapPolicy: mapping rules for pods of selected namespaces and, optionally, host processes.",
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "cmmp",
    category = "mapsentry",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Host", type_ = "boolean", json_path = ".spec.hostProcesses"),
    printcolumn(name = "Accepted", type_ = "boolean", json_path = ".status.accepted"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMmapPolicySpec {
    /// Which namespaces' pods the policy applies to; absent or empty: all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Also apply to processes outside any pod (the node's own processes). Default false.
    #[serde(default)]
    pub host_processes: bool,
    /// `Audit` reports what the rules match; `Enforce` also kills or denies. Default `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// What an `Enforce` rule with action `Deny` becomes on a node without BPF LSM: `Refuse`
    /// (default: the rule is not enforced there, and the agent says so in its log and metrics)
    /// or `Kill`. Never a silent downgrade to audit.
    #[serde(default, skip_serializing_if = "DenyFallback::is_default")]
    pub deny_fallback: DenyFallback,
    /// The rules; each call is checked against every rule. Rule names are unique (a list map
    /// keyed by `name`: the API server refuses a second rule of the same name).
    #[schemars(transform = rules_by_name)]
    pub rules: Vec<Rule>,
}

/// What a `Deny` rule of an `Enforce` policy becomes where the kernel cannot deny (no BPF LSM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DenyFallback {
    /// The rule is not enforced on that node (the collector still alerts on it); the agent
    /// reports the refusal in its log and its `refused` counter.
    #[default]
    Refuse,
    /// The rule kills the caller instead (SIGKILL at syscall entry).
    Kill,
}

impl DenyFallback {
    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's skip_serializing_if passes a reference"
    )]
    fn is_default(&self) -> bool {
        *self == Self::Refuse
    }
}

/// Whether a policy only reports or also acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Report matches as alerts; never kill or deny.
    #[default]
    Audit,
    /// Report matches and carry out each rule's action.
    Enforce,
}

impl Mode {
    /// `audit` or `enforce`, as in alert lines.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a rule matches (in `Enforce` mode; `Audit` only alerts).
///
/// Ordered by strength: `Alert < Kill < Deny`. When several rules match one call, the strongest
/// action of the enforce-mode matches is carried out.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Action {
    /// Raise an alert.
    #[default]
    Alert,
    /// Raise an alert and kill the calling process (SIGKILL before the mapping is used).
    Kill,
    /// Raise an alert and fail the call with EPERM (where the kernel has BPF LSM).
    Deny,
}

impl Action {
    /// `alert`, `kill` or `deny`, as in alert lines.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Kill => "kill",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: a call that satisfies `match` and not `except` triggers `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Unique within the policy; appears in alerts.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Conditions on the call; every condition given must hold (an absent one always holds).
    #[serde(rename = "match")]
    pub match_: MatchSpec,
    /// Calls that would match but are allowed: every condition given must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<ExceptSpec>,
    /// What to do on a match. Default `Alert`.
    #[serde(default)]
    pub action: Action,
}

/// Conditions on one call. Every field given must hold; lists inside a field are alternatives
/// except for the `...All` fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// `prot` has every one of these bits (`PROT_READ`, `PROT_WRITE`, `PROT_EXEC`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = prot_names)]
    pub prot_all: Vec<String>,
    /// `prot` has at least one of these bits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = prot_names)]
    pub prot_any: Vec<String>,
    /// `flags` has every one of these (`MAP_ANONYMOUS`, `MAP_HUGETLB`, ...; a mapping type such
    /// as `MAP_SHARED` or `MAP_PRIVATE` must be the call's type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = flag_names)]
    pub flags_all: Vec<String>,
    /// `flags` has at least one of these bits, or the call's type is one of the types listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = flag_names)]
    pub flags_any: Vec<String>,
    /// Anonymous (`MAP_ANONYMOUS`) or file-backed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingKind>,
    /// Conditions on the file of a file-backed mapping; a call without a known file never matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileMatch>,
    /// `length` is at least this many bytes: a number, or a quantity such as `8Gi`, `512Mi`, `1G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_size_schema")]
    pub min_length: Option<ByteSize>,
    /// The call is one of these system calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallName>,
    /// The caller's command name (`comm`, at most 15 bytes) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comm: Vec<String>,
    /// The caller's executable path matches one of these globs (`/usr/bin/*`, `**/java`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executable_globs: Vec<String>,
}

/// A size in bytes: a number, or a quantity with a binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`) or
/// decimal (`k`, `M`, `G`, `T`, `P`) suffix, as in Kubernetes resource quantities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Quantity(String),
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        Self::Bytes(bytes)
    }
}

impl ByteSize {
    /// The number of bytes, or why the quantity is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Self::Bytes(bytes) => return Ok(*bytes),
            Self::Quantity(text) => text.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(split);
        let unit: u64 = match suffix {
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "P" => 1_000_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            _ => {
                return Err(format!(
                    "invalid size {text:?}: write bytes (4096) or a whole number with a suffix: Ki, Mi, Gi, Ti, Pi (powers of 1024) or k, M, G, T, P (powers of 1000)"
                ));
            }
        };
        let number: u64 = digits.parse().map_err(|_| {
            format!("invalid size {text:?}: it must start with a whole number (4096, 8Gi)")
        })?;
        number
            .checked_mul(unit)
            .ok_or_else(|| format!("size {text:?} is more than 2^64 bytes"))
    }
}

/// The names a `prot` list may hold, as an enum of its items: the API server refuses any other
/// (`PROT_EXCE`) at admission. (`PROT_NONE` is no bit, so it cannot be matched.)
fn prot_names(schema: &mut schemars::Schema) {
    let names = crate::names::PROT_NAMES.iter().map(|(name, _)| *name);
    enum_items(schema, names);
}

/// The names a `flags` list may hold: the mapping types and the flag bits of mmap(2).
fn flag_names(schema: &mut schemars::Schema) {
    let names = crate::names::MAP_TYPES
        .iter()
        .chain(crate::names::MAP_FLAG_NAMES)
        .map(|(name, _)| *name);
    enum_items(schema, names);
}

/// The fields whose item enums [`crate::load`] leaves to [`crate::compile`], which names the bits
/// with better help (`PROT_NONE is not a bit`, `write MAP_ANONYMOUS`).
pub(crate) const NAMED_BIT_FIELDS: &[&str] = &["protAll", "protAny", "flagsAll", "flagsAny"];

fn enum_items<'a>(schema: &mut schemars::Schema, names: impl Iterator<Item = &'a str>) {
    let names: Vec<serde_json::Value> = names.map(Into::into).collect();
    if let Some(items) = schema
        .get_mut("items")
        .and_then(serde_json::Value::as_object_mut)
    {
        items.insert("enum".into(), names.into());
    }
}

/// A list of rules is a map keyed by the rule's name, so the API server refuses two rules of one
/// name at admission (and server-side apply merges rules by name).
fn rules_by_name(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), vec!["name"].into());
}

/// Conditions are a map keyed by their `type`, as Kubernetes conditions are.
fn conditions_by_type(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), vec!["type"].into());
}

fn byte_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "`length` is at least this many bytes: a number, or a quantity such as `8Gi`, `512Mi`, `1G`.",
        "x-kubernetes-int-or-string": true,
        "nullable": true,
    })
}

/// Whether the mapping is anonymous or backed by a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MappingKind {
    /// `MAP_ANONYMOUS`.
    Anonymous,
    /// Not `MAP_ANONYMOUS`: backed by the file behind `fd`.
    File,
}

/// Conditions on the file behind a mapping. Every field given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileMatch {
    /// The file is (true) or is not (false) a memfd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memfd: Option<bool>,
    /// The file is (true) or is not (false) a POSIX shared memory object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<bool>,
    /// The file is (true) or is not (false) unlinked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// The path matches one of these globs (a memfd's path is `/memfd:NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_globs: Vec<String>,
    /// The path matches none of these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_path_globs: Vec<String>,
}

/// A mapping system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyscallName {
    /// Native 64-bit `mmap`.
    Mmap,
    /// ia32 compat `mmap2`.
    Mmap2,
    /// ia32 compat `old_mmap`.
    OldMmap,
    /// `mprotect` and `pkey_mprotect`, judged by the protection they grant (see
    /// `MmapEvent::judged_prot`).
    Mprotect,
}

impl From<SyscallName> for crate::Syscall {
    fn from(name: SyscallName) -> Self {
        match name {
            SyscallName::Mmap => Self::Mmap,
            SyscallName::Mmap2 => Self::Mmap2,
            SyscallName::OldMmap => Self::OldMmap,
            SyscallName::Mprotect => Self::Mprotect,
        }
    }
}

/// Calls that are allowed although they match. Every field given must hold; each list holds
/// alternatives. For "this OR that" exceptions, write two rules or widen a list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExceptSpec {
    /// The caller's command name is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comm: Vec<String>,
    /// The caller's executable path matches one of these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executable_globs: Vec<String>,
    /// The caller runs in one of these containers (by container name in the pod spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// The caller's container image matches one of these globs (`docker.io/library/openjdk:*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

/// What the collector last made of the object (written through the status subresource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether that generation validated and is in force. When false, the previous accepted
    /// generation (if any) stays in force.
    #[serde(default)]
    pub accepted: bool,
    /// The generation in force: the observed one when accepted, else the last accepted one
    /// (absent when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_generation: Option<i64>,
    /// `Accepted` (True: the observed generation is in force; False: rejected, see `errors`),
    /// and for `Enforce` policies `KernelEnforced` (False when some rules are only alerted on,
    /// see `refusedRules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions_by_type)]
    pub conditions: Vec<StatusCondition>,
    /// Why the observed generation was rejected: one entry per problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<StatusError>,
    /// Rules of an `Enforce` policy that the kernel does not enforce (they are still alerted on),
    /// and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_rules: Vec<RuleNote>,
    /// `Deny` rules enforced as `Kill` where the node has no BPF LSM (`denyFallback: Kill`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_rules: Vec<RuleNote>,
}

/// One condition of a policy's status, in the shape of Kubernetes conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// `Accepted` or `KernelEnforced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// One word: `Valid`, `Invalid`, `Duplicate`, `AllRulesEnforced`, `RulesRefused`.
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// The generation the condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A rule the kernel treats differently from what it says, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleNote {
    /// The rule's name.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// Where: `All` nodes, or nodes `WithoutBpfLsm`.
    pub nodes: NodeScope,
}

/// Which nodes a [`RuleNote`] holds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeScope {
    /// Every node.
    All,
    /// Nodes where BPF LSM programs cannot run.
    WithoutBpfLsm,
}

/// One validation problem, as written to an object's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusError {
    /// Field path (`spec.rules[1].match.protAll[0]`).
    pub path: String,
    /// Why the value is wrong.
    pub reason: String,
}

/// Both CRDs as one YAML stream (`---` between), as committed under `manifests/crds/`.
#[must_use]
pub fn crds_yaml() -> String {
    let header = "# Generated from policy/src/crd.rs by `mapsentry policy crds`; do not edit.\n";
    let crds = [MmapPolicy::crd(), ClusterMmapPolicy::crd()]
        .iter()
        .map(|crd| {
            serde_yaml_ng::to_string(crd).unwrap_or_else(|error| {
                format!(
                    "# cannot render {}: {error}\n",
                    crd.metadata.name.as_deref().unwrap_or("?")
                )
            })
        })
        .collect::<Vec<_>>()
        .join("---\n");
    format!("{header}{crds}")
}

#[cfg(test)]
mod tests;
