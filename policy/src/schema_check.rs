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

use crate::path::{FieldPath, Problem, closest};

/// Every structural problem of `value` at `path` under `schema`, appended to `problems`.
pub fn check(value: &Value, schema: &JSONSchemaProps, path: &FieldPath, problems: &mut Vec<Problem>) {
    if value.is_null() {
        if schema.nullable != Some(true)
            && let Some(expected) = schema.type_.as_deref()
        {
            problems.push(Problem::new(path, format!("expected {}, found null (an empty value)", article(expected))));
        }
        return;
    }
    if schema.x_kubernetes_int_or_string == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            problems.push(Problem::new(path, format!("expected an integer or a string, found {}", describe(value))));
        }
        return;
    }
    match schema.type_.as_deref() {
        Some("object") => check_object(value, schema, path, problems),
        Some("array") => check_array(value, schema, path, problems),
        Some("string") => expect(value.is_string(), "a string", value, path, problems),
        Some("boolean") => expect(value.is_boolean(), "a boolean (true or false)", value, path, problems),
        Some("integer") => check_integer(value, schema, path, problems),
        Some("number") => expect(value.is_number(), "a number", value, path, problems),
        _ => {}
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let list = allowed.iter().map(|a| a.0.to_string()).collect::<Vec<_>>().join(", ");
        let hint = value
            .as_str()
            .and_then(|v| closest(v, allowed.iter().filter_map(|a| a.0.as_str())))
            .map(|c| format!("; did you mean {c:?}?"))
            .unwrap_or_default();
        problems.push(Problem::new(path, format!("unsupported value {value} (expected one of {list}){hint}")));
    }
}

fn expect(ok: bool, expected: &str, value: &Value, path: &FieldPath, problems: &mut Vec<Problem>) {
    if !ok {
        problems.push(Problem::new(path, format!("expected {expected}, found {}", describe(value))));
    }
}

fn check_integer(value: &Value, schema: &JSONSchemaProps, path: &FieldPath, problems: &mut Vec<Problem>) {
    let number = match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n,
        _ => {
            let hint = if value.is_string() { " (write the number without quotes or units)" } else { "" };
            problems.push(Problem::new(path, format!("expected an integer, found {}{hint}", describe(value))));
            return;
        }
    };
    if let (Some(minimum), Some(n)) = (schema.minimum, number.as_f64())
        && n < minimum
    {
        problems.push(Problem::new(path, format!("must be at least {minimum}, found {number}")));
    }
}

fn check_object(value: &Value, schema: &JSONSchemaProps, path: &FieldPath, problems: &mut Vec<Problem>) {
    let Some(map) = value.as_object() else {
        problems.push(Problem::new(path, format!("expected an object (key: value pairs), found {}", describe(value))));
        return;
    };
    for required in schema.required.iter().flatten() {
        if !map.contains_key(required) {
            problems.push(Problem::new(&path.field(required), "required field is missing"));
        }
    }
    let properties = schema.properties.as_ref();
    for (key, item) in map {
        match (properties.and_then(|p| p.get(key)), &schema.additional_properties) {
            (Some(field_schema), _) => check(item, field_schema, &path.field(key), problems),
            (None, Some(JSONSchemaPropsOrBool::Schema(values))) => check(item, values, &path.key(key), problems),
            (None, Some(JSONSchemaPropsOrBool::Bool(true))) => {}
            (None, _) if schema.x_kubernetes_preserve_unknown_fields == Some(true) => {}
            (None, _) => {
                let known = properties.map(|p| p.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
                let hint = match closest(key, known.iter().copied()) {
                    Some(candidate) => format!("; did you mean {candidate:?}?"),
                    None if known.is_empty() => String::new(),
                    None => format!(" (known fields: {})", known.join(", ")),
                };
                problems.push(Problem::new(&path.field(key), format!("unknown field {key:?}{hint}")));
            }
        }
    }
}

fn check_array(value: &Value, schema: &JSONSchemaProps, path: &FieldPath, problems: &mut Vec<Problem>) {
    let Some(items) = value.as_array() else {
        let hint = if value.is_string() { " (write a list: [A, B] or one `- A` per line)" } else { "" };
        problems.push(Problem::new(path, format!("expected a list, found {}{hint}", describe(value))));
        return;
    };
    if let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items {
        for (index, item) in items.iter().enumerate() {
            check(item, item_schema, &path.index(index), problems);
        }
    }
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
