use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

#[test]
fn empty_selector_selects_everything() {
    let selector = Selector::compile(&LabelSelector::default(), &FieldPath::root()).unwrap();
    assert!(selector.matches(&Labels::new()));
    assert!(selector.matches(&labels(&[("app", "x")])));
}

#[test]
fn labels_and_expressions_are_anded() {
    let raw = LabelSelector {
        match_labels: Some(labels(&[("app", "web")])),
        match_expressions: Some(vec![
            expression("tier", "In", &["front", "edge"]),
            expression("canary", "DoesNotExist", &[]),
            expression("team", "NotIn", &["blue"]),
            expression("owner", "Exists", &[]),
        ]),
    };
    let selector = Selector::compile(&raw, &FieldPath::root()).unwrap();
    let base = [("app", "web"), ("tier", "edge"), ("owner", "me")];
    assert!(selector.matches(&labels(&base)));
    assert!(selector.matches(&labels(&[
        ("app", "web"),
        ("tier", "front"),
        ("owner", "me"),
        ("team", "red")
    ])));
    assert!(
        !selector.matches(&labels(&[("app", "db"), ("tier", "edge"), ("owner", "me")])),
        "matchLabels"
    );
    assert!(
        !selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "back"),
            ("owner", "me")
        ])),
        "In"
    );
    assert!(
        !selector.matches(&labels(&[("app", "web"), ("tier", "edge")])),
        "Exists"
    );
    assert!(
        !selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("owner", "me"),
            ("canary", "")
        ])),
        "DoesNotExist"
    );
    assert!(
        !selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("owner", "me"),
            ("team", "blue")
        ])),
        "NotIn"
    );
}

#[test]
fn every_bad_part_is_reported_with_its_path() {
    let raw = LabelSelector {
        match_labels: Some(labels(&[("bad key!", "ok"), ("app", "-bad")])),
        match_expressions: Some(vec![
            expression("tier", "Within", &["a"]),
            expression("tier", "In", &[]),
            expression("tier", "Exists", &["a"]),
            expression("Example.com/x", "Exists", &[]),
        ]),
    };
    let problems =
        Selector::compile(&raw, &FieldPath::root().field("spec").field("podSelector")).unwrap_err();
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let expected = [
        r#"spec.podSelector.matchLabels["app"]: invalid label value "-bad""#,
        r#"spec.podSelector.matchLabels["bad key!"]: invalid label key "bad key!""#,
        r#"spec.podSelector.matchExpressions[0].operator: unknown operator "Within" (expected In, NotIn, Exists or DoesNotExist)"#,
        "spec.podSelector.matchExpressions[1].values: operator In needs at least one value",
        "spec.podSelector.matchExpressions[2].values: operator Exists takes no values",
        r#"spec.podSelector.matchExpressions[3].key: invalid label key "Example.com/x": the prefix must be a DNS subdomain"#,
    ];
    assert_eq!(rendered.len(), expected.len(), "{rendered:#?}");
    for (got, want) in rendered.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "got {got:?}, want it to start with {want:?}"
        );
    }
}
