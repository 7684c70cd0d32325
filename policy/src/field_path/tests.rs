use super::*;

#[test]
fn paths_render_like_kubectl_explain() {
    let path = FieldPath::root()
        .field("spec")
        .field("rules")
        .index(1)
        .field("match")
        .field("protAll")
        .index(0);
    assert_eq!(path.to_string(), "spec.rules[1].match.protAll[0]");
    assert_eq!(FieldPath::root().to_string(), "<root>");
    assert_eq!(
        FieldPath::root()
            .field("metadata")
            .field("labels")
            .key("app")
            .to_string(),
        r#"metadata.labels["app"]"#
    );
}

#[test]
fn closest_finds_typos_and_ignores_strangers() {
    assert_eq!(
        closest("protAl", ["protAll", "protAny", "flagsAll"]),
        Some("protAll")
    );
    assert_eq!(
        closest("PROT_WRIT", ["PROT_READ", "PROT_WRITE"]),
        Some("PROT_WRITE")
    );
    assert_eq!(closest("xyz", ["protAll", "protAny"]), None);
    assert_eq!(closest("mode", ["mode"]), Some("mode"));
}

#[test]
fn overlapping_paths() {
    let rule = FieldPath::root().field("spec").field("rules").index(0);
    let matched = rule.field("match");
    assert!(matched.overlaps(&matched.field("minLength")));
    assert!(matched.field("minLength").overlaps(&matched));
    assert!(rule.overlaps(&rule.field("match").field("protAll").index(1)));
    assert!(!matched.overlaps(&rule.field("matches")));
    assert!(!rule.overlaps(&FieldPath::root().field("spec").field("rules").index(1)));
    assert!(FieldPath::root().overlaps(&rule));
}
