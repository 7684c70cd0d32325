use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
use serde_json::json;

use super::*;

fn typed(type_name: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some(type_name.to_owned()),
        ..JSONSchemaProps::default()
    }
}

fn run(value: &Value, schema: &JSONSchemaProps) -> Vec<String> {
    let mut found = Findings::default();
    check(
        &mut value.clone(),
        schema,
        &FieldPath::root().field("x"),
        &mut found,
    );
    found.problems.iter().map(ToString::to_string).collect()
}

#[test]
fn null_is_accepted_only_where_nullable() {
    assert_eq!(
        run(&Value::Null, &typed("array")),
        ["x: expected a list, found null (an empty value)"]
    );
    let nullable = JSONSchemaProps {
        nullable: Some(true),
        ..typed("array")
    };
    assert!(run(&Value::Null, &nullable).is_empty());
}

#[test]
fn maps_check_their_values_and_objects_their_fields() {
    let map = JSONSchemaProps {
        additional_properties: Some(JSONSchemaPropsOrBool::Schema(Box::new(typed("string")))),
        ..typed("object")
    };
    assert_eq!(
        run(&json!({"a": "1", "b": 2}), &map),
        [r#"x["b"]: expected a string, found a number (2)"#]
    );
    let object = JSONSchemaProps {
        properties: Some(BTreeMap::from([
            ("name".to_owned(), typed("string")),
            ("count".to_owned(), typed("integer")),
        ])),
        required: Some(vec!["name".to_owned()]),
        ..typed("object")
    };
    assert_eq!(
        run(&json!({"count": 1.5, "nmae": "a"}), &object),
        [
            "x.name: required field is missing",
            "x.count: expected an integer, found a number (1.5)",
            r#"x.nmae: unknown field "nmae"; did you mean "name"?"#,
        ]
    );
}

#[test]
fn integers_respect_their_minimum_and_enums_their_values() {
    let count = JSONSchemaProps {
        minimum: Some(0.0),
        ..typed("integer")
    };
    assert_eq!(run(&json!(-1), &count), ["x: must be at least 0, found -1"]);
    assert!(run(&json!(u64::MAX), &count).is_empty());
    let mode = JSONSchemaProps {
        enum_: Some(vec![JSON(json!("Audit")), JSON(json!("Enforce"))]),
        ..typed("string")
    };
    assert_eq!(
        run(&json!("Audi"), &mode),
        [
            r#"x: unsupported value "Audi" (expected one of "Audit", "Enforce"); did you mean "Audit"?"#
        ]
    );
}

#[test]
fn wrong_optional_fields_are_removed_and_wrong_required_ones_spoil_their_parent() {
    let object = JSONSchemaProps {
        properties: Some(BTreeMap::from([
            ("name".to_owned(), typed("string")),
            ("count".to_owned(), typed("integer")),
        ])),
        required: Some(vec!["name".to_owned()]),
        ..typed("object")
    };
    let mut value = json!({"name": "a", "count": "x", "extra": 1});
    let mut found = Findings::default();
    assert!(check(&mut value, &object, &FieldPath::root(), &mut found));
    assert_eq!(value, json!({"name": "a"}));
    assert_eq!(
        found
            .pruned
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["count", "extra"]
    );
    let mut value = json!({"name": 5});
    assert!(
        !check(
            &mut value,
            &object,
            &FieldPath::root(),
            &mut Findings::default()
        ),
        "a wrong required field"
    );
    let list = JSONSchemaProps {
        items: Some(JSONSchemaPropsOrArray::Schema(Box::new(object))),
        ..typed("array")
    };
    assert!(
        !check(
            &mut json!([{"name": "a"}, {}]),
            &list,
            &FieldPath::root(),
            &mut Findings::default()
        ),
        "a wrong item"
    );
}
