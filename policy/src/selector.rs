//! Compiled Kubernetes label selectors (`matchLabels` + `matchExpressions`, all must hold), with the
//! API server's checks of keys, values and operators; from the objects' YAML or from the text
//! form (`app=web,env in (prod),!canary`, [`text`]).

pub mod text;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::field_path::{FieldPath, Problem};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A label selector ready to test label sets. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    DoesNotExist { key: String },
}

impl Selector {
    /// Compile `selector`; every problem is reported with its path under `path`.
    pub fn compile(selector: &LabelSelector, path: &FieldPath) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut requirements = Vec::new();
        let labels_path = path.field("matchLabels");
        for (key, value) in selector.match_labels.iter().flatten() {
            let at = labels_path.key(key);
            check_key(key, &at, &mut problems);
            check_value(value, &at, &mut problems);
            requirements.push(Requirement::In {
                key: key.clone(),
                values: vec![value.clone()],
            });
        }
        let expressions_path = path.field("matchExpressions");
        for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let at = expressions_path.index(index);
            check_key(&expression.key, &at.field("key"), &mut problems);
            let values = expression.values.clone().unwrap_or_default();
            for (i, value) in values.iter().enumerate() {
                check_value(value, &at.field("values").index(i), &mut problems);
            }
            let key = expression.key.clone();
            let requirement = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    problems.push(Problem::new(
                        &at.field("values"),
                        format!("operator {} needs at least one value", expression.operator),
                    ));
                    continue;
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    problems.push(Problem::new(
                        &at.field("values"),
                        format!("operator {} takes no values", expression.operator),
                    ));
                    continue;
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                other => {
                    problems.push(Problem::new(
                        &at.field("operator"),
                        format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"),
                    ));
                    continue;
                }
            };
            requirements.push(requirement);
        }
        if problems.is_empty() {
            Ok(Self { requirements })
        } else {
            Err(problems)
        }
    }

    /// Whether `labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_lookup(|key| labels.get(key).map(String::as_str))
    }

    /// Whether the labels that `lookup` returns satisfy every requirement.
    pub fn matches_lookup<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::In { key, values } => {
                    lookup(key).is_some_and(|v| values.iter().any(|x| x == v))
                }
                Requirement::NotIn { key, values } => {
                    lookup(key).is_none_or(|v| !values.iter().any(|x| x == v))
                }
                Requirement::Exists { key } => lookup(key).is_some(),
                Requirement::DoesNotExist { key } => lookup(key).is_none(),
            })
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str, path: &FieldPath, problems: &mut Vec<Problem>) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            problems.push(Problem::new(path, format!("invalid label key {key:?}: the prefix must be a DNS subdomain (lowercase, digits, '-', '.')")));
        }
    }
    if name.is_empty() || !is_label_text(name) {
        problems.push(Problem::new(
            path,
            format!("invalid label key {key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ));
    }
}

fn check_value(value: &str, path: &FieldPath, problems: &mut Vec<Problem>) {
    if !value.is_empty() && !is_label_text(value) {
        problems.push(Problem::new(
            path,
            format!("invalid label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ));
    }
}

fn is_label_text(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests;
