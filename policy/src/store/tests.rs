use super::*;

fn policy(name: &str, prot: &str) -> String {
    format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{rules: [{{name: r, match: {{protAny: [{prot}]}}}}]}}\n"
    )
}

fn id(name: &str) -> PolicyId {
    PolicyId {
        namespace: Some("shop".into()),
        name: name.into(),
    }
}

fn prot_any(store: &PolicyStore, name: &str) -> Vec<String> {
    store
        .get(&id(name))
        .map(|p| p.rules()[0].match_.prot_any.clone())
        .unwrap_or_default()
}

#[test]
fn good_then_bad_then_good_keeps_the_last_good_version() {
    let mut store = PolicyStore::new();
    let (reload, errors) = store.reload_text("a.yaml", &policy("p", "PROT_EXEC"));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reload.accepted, [id("p")]);

    let (reload, errors) = store.reload_text("a.yaml", &policy("p", "PROT_EXE"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().starts_with("a.yaml: document 1 (MmapPolicy \"p\"): 1 problem(s): spec.rules[0].match.protAny[0]: unknown protection"), "{}", errors[0]);
    assert_eq!(
        reload,
        Reload {
            kept: vec![id("p")],
            ..Reload::default()
        }
    );
    assert_eq!(
        prot_any(&store, "p"),
        ["PROT_EXEC"],
        "the previous version stays in force"
    );

    let (reload, errors) = store.reload_text("a.yaml", &policy("p", "PROT_WRITE"));
    assert!(errors.is_empty());
    assert_eq!(reload.accepted, [id("p")]);
    assert_eq!(prot_any(&store, "p"), ["PROT_WRITE"]);
    let (reload, _) = store.reload_text("a.yaml", &policy("p", "PROT_WRITE"));
    assert_eq!(
        reload,
        Reload::default(),
        "an unchanged file changes nothing"
    );
    assert_eq!(store.policy_set().unwrap().policies().len(), 1);
}

#[test]
fn policies_leave_with_their_documents_but_not_on_syntax_errors() {
    let mut store = PolicyStore::new();
    store.reload_text(
        "a.yaml",
        &format!(
            "{}---\n{}",
            policy("p", "PROT_EXEC"),
            policy("q", "PROT_EXEC")
        ),
    );
    assert_eq!(store.ids(), [id("p"), id("q")]);
    let (reload, errors) = store.reload_text(
        "a.yaml",
        &format!("{}---\nkind: [broken\n", policy("p", "PROT_READ")),
    );
    assert_eq!(errors.len(), 1);
    assert!(reload.removed.is_empty(), "q may be in the unreadable part");
    assert_eq!(store.ids(), [id("p"), id("q")]);
    let (reload, _) = store.reload_text("a.yaml", &policy("p", "PROT_READ"));
    assert_eq!(reload.removed, [id("q")]);
    assert_eq!(store.remove_source("a.yaml"), [id("p")]);
    assert!(store.ids().is_empty());
}

#[test]
fn a_policy_has_one_source() {
    let mut store = PolicyStore::new();
    store.reload_text("a.yaml", &policy("p", "PROT_EXEC"));
    let (reload, errors) = store.reload_text("b.yaml", &policy("p", "PROT_READ"));
    assert_eq!(reload, Reload::default());
    assert_eq!(
        errors[0].to_string(),
        "b.yaml: policy shop/p is already defined by a.yaml; each policy may be defined once"
    );
    assert_eq!(prot_any(&store, "p"), ["PROT_EXEC"]);
}

#[test]
fn objects_are_accepted_or_rejected_with_their_problems() {
    let mut store = PolicyStore::new();
    let good: Value = serde_yaml_ng::from_str(&policy("p", "PROT_EXEC")).unwrap();
    assert_eq!(store.apply_object(&good), Ok(id("p")));
    let bad: Value = serde_yaml_ng::from_str(&policy("p", "EXEC")).unwrap();
    let problems = store.apply_object(&bad).unwrap_err();
    assert_eq!(
        problems[0].path.to_string(),
        "spec.rules[0].match.protAny[0]"
    );
    assert_eq!(prot_any(&store, "p"), ["PROT_EXEC"]);
    assert!(store.remove(&id("p")));
    assert!(store.ids().is_empty());
}

#[test]
fn files_and_objects_share_the_store_and_each_policy_has_one_source() {
    let mut store = PolicyStore::new();
    store.reload_text("a.yaml", &policy("p", "PROT_EXEC"));
    // An object of the same id as the file's policy is refused, at metadata.name.
    let same: Value = serde_yaml_ng::from_str(&policy("p", "PROT_READ")).unwrap();
    let problems = store.apply_object(&same).unwrap_err();
    assert_eq!(problems[0].path.to_string(), "metadata.name");
    assert!(
        problems[0].reason.contains("already defined by a.yaml"),
        "{problems:?}"
    );
    assert_eq!(prot_any(&store, "p"), ["PROT_EXEC"]);
    // Deleting that object leaves the file's policy alone.
    assert!(!store.remove_object("MmapPolicy", &id("p")));
    assert_eq!(store.source_of(&id("p")), Some("a.yaml"));
    // Another object lives next to it, and a file cannot take it over.
    let other: Value = serde_yaml_ng::from_str(&policy("q", "PROT_READ")).unwrap();
    assert_eq!(store.apply_object(&other), Ok(id("q")));
    assert_eq!(store.source_of(&id("q")), Some("MmapPolicy/shop/q"));
    let (_, errors) = store.reload_text("b.yaml", &policy("q", "PROT_EXEC"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(prot_any(&store, "q"), ["PROT_READ"]);
    assert!(store.remove_object("MmapPolicy", &id("q")));
    assert_eq!(store.ids(), [id("p")]);
}

#[test]
fn a_text_beyond_the_limits_is_refused_unread_and_the_previous_version_stays() {
    let mut store = PolicyStore::new();
    store.reload_text("a.yaml", &policy("p", "PROT_EXEC"));
    let nested = format!(
        "{}\nx: {}1{}\n",
        policy("p", "PROT_WRITE"),
        "[".repeat(100),
        "]".repeat(100)
    );
    let (reload, errors) = store.reload_text("a.yaml", &nested);
    assert_eq!(reload, Reload::default());
    assert_eq!(
        errors[0].to_string(),
        "a.yaml: nesting depth 65 at line 6 is more than the limit of 64; refused unread, its previous version (if any) stays in force"
    );
    assert_eq!(prot_any(&store, "p"), ["PROT_EXEC"]);
}
