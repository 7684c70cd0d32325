//! Loading policies from YAML text: one or many documents per string (`---` between them).
//! Reading files and directories is the caller's business; this module only sees text.
//!
//! Each document is checked in three passes, and every problem of every pass is reported with its
//! field path: the envelope (`apiVersion`, `kind`, `metadata`), the structure against the CRD
//! schema generated from [`crate::crd`] (unknown fields, types, enums, required fields), then the
//! meaning ([`crate::compile`]: names of bits, globs, selectors, contradictions). A document with
//! problems is rejected alone; the other documents of the text still load.

use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    compile::{CompiledPolicy, compile},
    crd::{API_VERSION, ClusterMmapPolicy, MmapPolicy},
    field_path::{FieldPath, Problem, closest},
    policy::Policy,
    schema_check::{self, describe},
};

/// A document that loaded: where it was, what it says, and its compiled form.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Position of the document in its text, from 1.
    pub document: usize,
    pub policy: Policy,
    pub compiled: CompiledPolicy,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML from this document on (later documents cannot be read either).
    #[error("document {document}: not valid YAML: {message}")]
    Syntax { document: usize, message: String },
    /// The document is YAML but not a valid policy.
    #[error("document {document} ({}): {} problem(s): {}", describe_object(kind.as_deref(), name.as_deref()), problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        document: usize,
        kind: Option<String>,
        name: Option<String>,
        problems: Vec<Problem>,
    },
}

impl LoadError {
    /// Position of the document in its text, from 1.
    #[must_use]
    pub fn document(&self) -> usize {
        match self {
            Self::Syntax { document, .. } | Self::Invalid { document, .. } => *document,
        }
    }
}

fn describe_object(kind: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{} {}",
        kind.unwrap_or("object"),
        name.map_or_else(|| "without a name".to_owned(), |n| format!("{n:?}"))
    )
}

/// What one text held: the documents that loaded and the errors of those that did not.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    pub policies: Vec<Loaded>,
    pub errors: Vec<LoadError>,
}

/// Load every document of `text`. Empty documents (a stray `---`) are skipped.
#[must_use]
pub fn load_str(text: &str) -> LoadOutcome {
    let mut outcome = LoadOutcome::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                let message = error.to_string();
                // A syntax error ends the stream; a value JSON cannot hold (a non-string key)
                // spoils only its document.
                let fatal = error.location().is_some() && !message.contains("invalid type");
                outcome.errors.push(LoadError::Syntax {
                    document: number,
                    message,
                });
                if fatal {
                    break;
                }
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match load_value(&value) {
            Ok((policy, compiled)) => outcome.policies.push(Loaded {
                document: number,
                policy,
                compiled,
            }),
            Err(problems) => {
                let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
                let name = value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                outcome.errors.push(LoadError::Invalid {
                    document: number,
                    kind,
                    name,
                    problems,
                });
            }
        }
    }
    outcome
}

static MMAP_POLICY_SCHEMA: LazyLock<JSONSchemaProps> =
    LazyLock::new(|| schema_of(&MmapPolicy::crd()));
static CLUSTER_MMAP_POLICY_SCHEMA: LazyLock<JSONSchemaProps> =
    LazyLock::new(|| schema_of(&ClusterMmapPolicy::crd()));

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> JSONSchemaProps {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.clone())
        .unwrap_or_default()
}

const KINDS: [&str; 2] = ["MmapPolicy", "ClusterMmapPolicy"];

/// Fields of `metadata` that a policy file or object may carry.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generation",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "generateName",
    "selfLink",
];

/// Check and compile one document (a YAML document, or an object from the API server as JSON).
pub fn load_value(value: &Value) -> Result<(Policy, CompiledPolicy), Vec<Problem>> {
    let root = FieldPath::root();
    let Some(object) = value.as_object() else {
        return Err(vec![Problem::new(
            &root,
            format!(
                "expected a policy object (apiVersion, kind, metadata, spec), found {}",
                describe(value)
            ),
        )]);
    };
    let mut problems = Vec::new();
    match object.get("apiVersion") {
        None => problems.push(Problem::new(
            &root.field("apiVersion"),
            format!("required field is missing (expected {API_VERSION:?})"),
        )),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => problems.push(Problem::new(
            &root.field("apiVersion"),
            format!("unsupported apiVersion {other} (expected {API_VERSION:?})"),
        )),
    }
    let kind = match object.get("kind") {
        Some(Value::String(kind)) if KINDS.contains(&kind.as_str()) => Some(kind.as_str()),
        None => {
            problems.push(Problem::new(
                &root.field("kind"),
                "required field is missing (expected MmapPolicy or ClusterMmapPolicy)",
            ));
            None
        }
        Some(other) => {
            let hint = other
                .as_str()
                .and_then(|k| closest(k, KINDS))
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            problems.push(Problem::new(
                &root.field("kind"),
                format!("unknown kind {other} (expected MmapPolicy or ClusterMmapPolicy){hint}"),
            ));
            None
        }
    };
    let cluster = kind == Some("ClusterMmapPolicy");
    match object.get("metadata") {
        None => problems.push(Problem::new(
            &root.field("metadata"),
            "required field is missing (at least metadata.name)",
        )),
        Some(metadata) => check_metadata(metadata, cluster, &root.field("metadata"), &mut problems),
    }
    let schema = match kind {
        Some("MmapPolicy") => Some(&*MMAP_POLICY_SCHEMA),
        Some(_) => Some(&*CLUSTER_MMAP_POLICY_SCHEMA),
        None => None,
    };
    let (Some(kind), Some(schema)) = (kind, schema) else {
        return Err(problems);
    };
    // The structure: problems are reported and the offending values removed, so that the meaning
    // of the rest can be checked in the same pass.
    let mut body = value.clone();
    let mut found = schema_check::Findings::default();
    check_body(&mut body, schema, &mut found);
    problems.append(&mut found.problems);
    let policy = if kind == "MmapPolicy" {
        serde_json::from_value(body).map(Policy::Namespaced)
    } else {
        serde_json::from_value(body).map(Policy::Cluster)
    };
    let policy = match policy {
        Ok(policy) => policy,
        // The structural problems already say why.
        Err(_) if !problems.is_empty() => return Err(problems),
        Err(error) => {
            return Err(vec![Problem::new(
                &root,
                format!("cannot read the object: {error}"),
            )]);
        }
    };
    match compile(&policy) {
        Ok(compiled) if problems.is_empty() => Ok((policy, compiled)),
        Ok(_) => Err(problems),
        Err(meaning) => {
            // Problems of meaning where a value was removed would be about the removal.
            problems.extend(
                meaning
                    .into_iter()
                    .filter(|p| !found.pruned.iter().any(|pruned| pruned.overlaps(&p.path))),
            );
            Err(problems)
        }
    }
}

/// `spec` and `status` against the schema; any other top-level key is unknown (and removed).
fn check_body(body: &mut Value, schema: &JSONSchemaProps, found: &mut schema_check::Findings) {
    let root = FieldPath::root();
    let Some(object) = body.as_object_mut() else {
        return;
    };
    let properties = schema.properties.as_ref();
    for required in schema.required.iter().flatten() {
        if !object.contains_key(required) {
            found.problems.push(Problem::new(
                &root.field(required),
                "required field is missing",
            ));
        }
    }
    let mut drop = Vec::new();
    for (key, item) in object.iter_mut() {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(field_schema) = properties.and_then(|p| p.get(key)) {
            if !schema_check::check(item, field_schema, &root.field(key), found) && key != "spec" {
                drop.push(key.clone());
            }
        } else {
            let hint = closest(key, ["apiVersion", "kind", "metadata", "spec", "status"])
                .map_or_else(
                    || " (known fields: apiVersion, kind, metadata, spec, status)".to_owned(),
                    |c| format!("; did you mean {c:?}?"),
                );
            found.problems.push(Problem::new(
                &root.field(key),
                format!("unknown field {key:?}{hint}"),
            ));
            drop.push(key.clone());
        }
    }
    for key in drop {
        object.remove(&key);
    }
}

fn check_metadata(metadata: &Value, cluster: bool, path: &FieldPath, problems: &mut Vec<Problem>) {
    let Some(map) = metadata.as_object() else {
        problems.push(Problem::new(
            path,
            format!(
                "expected an object with at least a name, found {}",
                describe(metadata)
            ),
        ));
        return;
    };
    match map.get("name") {
        None => problems.push(Problem::new(
            &path.field("name"),
            "required field is missing",
        )),
        Some(Value::String(name)) => {
            if !is_dns_subdomain(name) {
                problems.push(Problem::new(
                    &path.field("name"),
                    format!("invalid name {name:?}: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253"),
                ));
            }
        }
        Some(other) => problems.push(Problem::new(
            &path.field("name"),
            format!("expected a string, found {}", describe(other)),
        )),
    }
    match (map.get("namespace"), cluster) {
        (None, _) => {}
        (Some(_), true) => problems.push(Problem::new(
            &path.field("namespace"),
            "a ClusterMmapPolicy is cluster-scoped and has no namespace; remove it, or use an MmapPolicy",
        )),
        (Some(Value::String(namespace)), false) => {
            if !is_dns_label(namespace) {
                problems.push(Problem::new(
                    &path.field("namespace"),
                    format!("invalid namespace {namespace:?}: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63"),
                ));
            }
        }
        (Some(other), false) => problems.push(Problem::new(&path.field("namespace"), format!("expected a string, found {}", describe(other)))),
    }
    for (key, value) in map {
        if !METADATA_FIELDS.contains(&key.as_str()) {
            let hint = closest(key, METADATA_FIELDS.iter().copied())
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            problems.push(Problem::new(
                &path.field(key),
                format!("unknown field {key:?}{hint}"),
            ));
        } else if matches!(key.as_str(), "labels" | "annotations") {
            match value.as_object() {
                None if !value.is_null() => {
                    problems.push(Problem::new(
                        &path.field(key),
                        format!("expected a map of strings, found {}", describe(value)),
                    ));
                }
                None => {}
                Some(entries) => {
                    for (k, v) in entries {
                        if !v.is_string() {
                            problems.push(Problem::new(
                                &path.field(key).key(k),
                                format!("expected a string, found {} (quote it)", describe(v)),
                            ));
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty()
        && let Err(error) = serde_json::from_value::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >(metadata.clone())
    {
        problems.push(Problem::new(path, format!("cannot read metadata: {error}")));
    }
}

fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !text.is_empty()
        && text.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests;
