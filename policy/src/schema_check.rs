//! Structural check of a document against its CRD's `OpenAPI` schema, as the API server does, but
//! collecting every problem instead of stopping at the first: unknown fields (named, with the
//! likely intended one), missing required fields, wrong types, values outside an enum.
//!
//! The schema is the one generated from the types in [`crate::crd`], so the types stay the single
//! source of truth for what a policy may contain.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use crate::field_path::{FieldPath, Problem, closest};

/// What [`check`] found: the problems, and the paths of the values it removed so that the rest of
/// the document can still be read (and checked for meaning).
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<Problem>,
    pub pruned: Vec<FieldPath>,
}

/// Every structural problem of `value` at `path` under `schema`, added to `found`. Unknown fields
/// and wrong optional fields are removed from `value`. Returns false when `value` itself is wrong
/// and its parent must drop it.
pub fn check(
    value: &mut Value,
    schema: &JSONSchemaProps,
    path: &FieldPath,
    found: &mut Findings,
) -> bool {
    if value.is_null() {
        if schema.nullable != Some(true)
            && let Some(expected) = schema.type_.as_deref()
        {
            found.problems.push(Problem::new(
                path,
                format!(
                    "expected {}, found null (an empty value)",
                    article(expected)
                ),
            ));
            return false;
        }
        return true;
    }
    if schema.x_kubernetes_int_or_string == Some(true) {
        // The one int-or-string field is a size: its numbers are whole and not negative.
        if !(value.is_string() || value.is_u64()) {
            found.problems.push(Problem::new(
                path,
                format!(
                    "expected a whole number or a quantity string (8Gi), found {}",
                    describe(value)
                ),
            ));
            return false;
        }
        return true;
    }
    let ok = match schema.type_.as_deref() {
        Some("object") => check_object(value, schema, path, found),
        Some("array") => check_array(value, schema, path, found),
        Some("string") => expect(value.is_string(), "a string", value, path, found),
        Some("boolean") => expect(
            value.is_boolean(),
            "a boolean (true or false)",
            value,
            path,
            found,
        ),
        Some("integer") => check_integer(value, schema, path, found),
        Some("number") => expect(value.is_number(), "a number", value, path, found),
        _ => true,
    };
    if let Some(allowed) = &schema.enum_
        && ok
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let list = allowed
            .iter()
            .map(|a| a.0.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let hint = value
            .as_str()
            .and_then(|v| closest(v, allowed.iter().filter_map(|a| a.0.as_str())))
            .map(|c| format!("; did you mean {c:?}?"))
            .unwrap_or_default();
        found.problems.push(Problem::new(
            path,
            format!("unsupported value {value} (expected one of {list}){hint}"),
        ));
        return false;
    }
    ok
}

fn expect(ok: bool, expected: &str, value: &Value, path: &FieldPath, found: &mut Findings) -> bool {
    if !ok {
        found.problems.push(Problem::new(
            path,
            format!("expected {expected}, found {}", describe(value)),
        ));
    }
    ok
}

fn check_integer(
    value: &Value,
    schema: &JSONSchemaProps,
    path: &FieldPath,
    found: &mut Findings,
) -> bool {
    let number = match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n,
        _ => {
            let hint = if value.is_string() {
                " (write the number without quotes or units)"
            } else {
                ""
            };
            found.problems.push(Problem::new(
                path,
                format!("expected an integer, found {}{hint}", describe(value)),
            ));
            return false;
        }
    };
    if let (Some(minimum), Some(n)) = (schema.minimum, number.as_f64())
        && n < minimum
    {
        found.problems.push(Problem::new(
            path,
            format!("must be at least {minimum}, found {number}"),
        ));
        return false;
    }
    true
}

fn check_object(
    value: &mut Value,
    schema: &JSONSchemaProps,
    path: &FieldPath,
    found: &mut Findings,
) -> bool {
    let Some(map) = value.as_object_mut() else {
        found.problems.push(Problem::new(
            path,
            format!(
                "expected an object (key: value pairs), found {}",
                describe(value)
            ),
        ));
        return false;
    };
    let mut ok = true;
    for required in schema.required.iter().flatten() {
        if !map.contains_key(required) {
            found.problems.push(Problem::new(
                &path.field(required),
                "required field is missing",
            ));
            ok = false;
        }
    }
    let properties = schema.properties.as_ref();
    let mut drop = Vec::new();
    for (key, item) in map.iter_mut() {
        let (at, good) = match (
            properties.and_then(|p| p.get(key)),
            &schema.additional_properties,
        ) {
            (Some(field_schema), _) => (
                path.field(key),
                check(item, field_schema, &path.field(key), found),
            ),
            (None, Some(JSONSchemaPropsOrBool::Schema(values))) => {
                (path.key(key), check(item, values, &path.key(key), found))
            }
            (None, Some(JSONSchemaPropsOrBool::Bool(true))) => continue,
            (None, _) if schema.x_kubernetes_preserve_unknown_fields == Some(true) => continue,
            (None, _) => {
                let known = properties
                    .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                    .unwrap_or_default();
                let hint = match closest(key, known.iter().copied()) {
                    Some(candidate) => format!("; did you mean {candidate:?}?"),
                    None if known.is_empty() => String::new(),
                    None => format!(" (known fields: {})", known.join(", ")),
                };
                found.problems.push(Problem::new(
                    &path.field(key),
                    format!("unknown field {key:?}{hint}"),
                ));
                (path.field(key), false)
            }
        };
        if !good {
            if schema.required.iter().flatten().any(|r| r == key) {
                ok = false;
            } else {
                drop.push(key.clone());
                found.pruned.push(at);
            }
        }
    }
    for key in drop {
        map.remove(&key);
    }
    ok
}

fn check_array(
    value: &mut Value,
    schema: &JSONSchemaProps,
    path: &FieldPath,
    found: &mut Findings,
) -> bool {
    let Some(items) = value.as_array_mut() else {
        let hint = if value.is_string() {
            " (write a list: [A, B] or one `- A` per line)"
        } else {
            ""
        };
        found.problems.push(Problem::new(
            path,
            format!("expected a list, found {}{hint}", describe(value)),
        ));
        return false;
    };
    let mut ok = true;
    if let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items {
        for (index, item) in items.iter_mut().enumerate() {
            ok &= check(item, item_schema, &path.index(index), found);
        }
    }
    ok
}

/// `a string "x"`, `a number (5)`, `a list`, ... for messages.
#[must_use]
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn article(type_name: &str) -> String {
    match type_name {
        "object" => "an object".to_owned(),
        "array" => "a list".to_owned(),
        "integer" => "an integer".to_owned(),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests;
