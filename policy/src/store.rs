//! The policies in force, updated one source at a time, where a new version that does not
//! validate is rejected and the previous good version stays in force (issue 4). Pure
//! bookkeeping: the caller reads files or watches the API server and hands over text or objects.
//!
//! A source is a policy file (its path) or one API object (`kind/namespace/name`). Reloading a
//! source replaces what it defined:
//! - a document that validates replaces the previous version of its policy;
//! - a document that does not validate keeps the previous version of the same policy (known by
//!   its kind, namespace and name), if there was one;
//! - a policy the source no longer defines is removed, unless the text could not be read to its
//!   end (a YAML syntax error), in which case nothing of that source is removed;
//! - a policy defined by another source already is refused (each policy has one source).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{
    compile::CompiledPolicy,
    evaluate::{EvaluateError, PolicySet},
    field_path::Problem,
    load::{LoadError, load_str, load_value},
    policy::{DEFAULT_NAMESPACE, Policy, PolicyId},
};

#[derive(Debug, Clone)]
struct Entry {
    source: String,
    policy: Policy,
    compiled: CompiledPolicy,
}

/// The accepted policies, by id.
#[derive(Debug, Clone, Default)]
pub struct PolicyStore {
    entries: BTreeMap<PolicyId, Entry>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// New or changed versions now in force.
    pub accepted: Vec<PolicyId>,
    /// Policies whose new version was rejected; the previous version stays in force.
    pub kept: Vec<PolicyId>,
    /// Policies the source no longer defines.
    pub removed: Vec<PolicyId>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A document of the source did not load.
    #[error("{source_name}: {error}")]
    Document {
        source_name: String,
        error: LoadError,
    },
    /// The policy is already defined by another source.
    #[error(
        "{source_name}: policy {id} is already defined by {other}; each policy may be defined once"
    )]
    Duplicate {
        source_name: String,
        id: PolicyId,
        other: String,
    },
}

impl PolicyStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace what `source` defines with the documents of `text`; see the module docs.
    pub fn reload_text(&mut self, source: &str, text: &str) -> (Reload, Vec<StoreError>) {
        let outcome = load_str(text);
        let mut reload = Reload::default();
        let mut errors = Vec::new();
        let mut defined = Vec::new();
        let mut complete = true;
        for error in outcome.errors {
            match &error {
                LoadError::Syntax { .. } => complete = false,
                LoadError::Invalid { kind, name, .. } => {
                    if let Some(id) =
                        identify(kind.as_deref(), name.as_deref(), text, error.document())
                    {
                        if self.entries.get(&id).is_some_and(|e| e.source == source) {
                            reload.kept.push(id.clone());
                        }
                        defined.push(id);
                    } else {
                        complete = false;
                    }
                }
            }
            errors.push(StoreError::Document {
                source_name: source.to_owned(),
                error,
            });
        }
        for loaded in outcome.policies {
            let id = loaded.compiled.id.clone();
            match self.entries.get(&id) {
                Some(other) if other.source != source => {
                    errors.push(StoreError::Duplicate {
                        source_name: source.to_owned(),
                        id,
                        other: other.source.clone(),
                    });
                    continue;
                }
                Some(previous) if previous.policy == loaded.policy => {}
                _ => reload.accepted.push(id.clone()),
            }
            defined.push(id.clone());
            self.entries.insert(
                id,
                Entry {
                    source: source.to_owned(),
                    policy: loaded.policy,
                    compiled: loaded.compiled,
                },
            );
        }
        if complete {
            reload.removed =
                self.remove_where(|id, entry| entry.source == source && !defined.contains(id));
        }
        (reload, errors)
    }

    /// Accept or reject one API object (its JSON). On rejection the previous version stays and
    /// the problems are returned for the object's status.
    /// A policy another source (a file) defines already is refused, with a problem at
    /// `metadata.name`.
    pub fn apply_object(&mut self, value: &Value) -> Result<PolicyId, Vec<Problem>> {
        let (policy, compiled) = load_value(value)?;
        let id = compiled.id.clone();
        let source = object_source(&id, policy.kind());
        if let Some(other) = self.entries.get(&id).filter(|e| e.source != source) {
            return Err(vec![Problem::new(
                &crate::field_path::FieldPath::root()
                    .field("metadata")
                    .field("name"),
                format!(
                    "policy {id} is already defined by {}; each policy may be defined once",
                    other.source
                ),
            )]);
        }
        self.entries.insert(
            id.clone(),
            Entry {
                source,
                policy,
                compiled,
            },
        );
        Ok(id)
    }

    /// Forget the policy the API object `kind` `id` defined (the object was deleted); a policy of
    /// the same id from another source stays. Whether there was one.
    pub fn remove_object(&mut self, kind: &str, id: &PolicyId) -> bool {
        let source = object_source(id, kind);
        if self.entries.get(id).is_some_and(|e| e.source == source) {
            self.entries.remove(id);
            return true;
        }
        false
    }

    /// Where the policy in force under `id` came from: a file's path, or `KIND/ID` for an API
    /// object.
    #[must_use]
    pub fn source_of(&self, id: &PolicyId) -> Option<&str> {
        self.entries.get(id).map(|e| e.source.as_str())
    }

    /// Forget everything `source` defined (its file was deleted).
    pub fn remove_source(&mut self, source: &str) -> Vec<PolicyId> {
        self.remove_where(|_, entry| entry.source == source)
    }

    /// Forget one policy (its object was deleted).
    pub fn remove(&mut self, id: &PolicyId) -> bool {
        self.entries.remove(id).is_some()
    }

    /// The policy in force under `id`.
    #[must_use]
    pub fn get(&self, id: &PolicyId) -> Option<&Policy> {
        self.entries.get(id).map(|e| &e.policy)
    }

    /// The policies in force, in id order.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.entries.values().map(|e| &e.policy)
    }

    #[must_use]
    pub fn ids(&self) -> Vec<PolicyId> {
        self.entries.keys().cloned().collect()
    }

    /// The policies in force, ready to evaluate.
    pub fn policy_set(&self) -> Result<PolicySet, EvaluateError> {
        PolicySet::new(self.entries.values().map(|e| e.compiled.clone()).collect())
    }

    fn remove_where(&mut self, mut doomed: impl FnMut(&PolicyId, &Entry) -> bool) -> Vec<PolicyId> {
        let ids: Vec<PolicyId> = self
            .entries
            .iter()
            .filter(|(id, e)| doomed(id, e))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.entries.remove(id);
        }
        ids
    }
}

fn object_source(id: &PolicyId, kind: &str) -> String {
    format!("{kind}/{id}")
}

/// The id a rejected document meant to define, when its kind and name are readable.
fn identify(
    kind: Option<&str>,
    name: Option<&str>,
    text: &str,
    document: usize,
) -> Option<PolicyId> {
    let name = name?.to_owned();
    match kind? {
        "ClusterMmapPolicy" => Some(PolicyId {
            namespace: None,
            name,
        }),
        "MmapPolicy" => {
            let value = serde_yaml_ng::Deserializer::from_str(text)
                .nth(document - 1)
                .and_then(|d| {
                    use serde::Deserialize as _;
                    Value::deserialize(d).ok()
                })?;
            let namespace = value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_NAMESPACE);
            Some(PolicyId {
                namespace: Some(namespace.to_owned()),
                name,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
