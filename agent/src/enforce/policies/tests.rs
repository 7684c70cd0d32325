use std::collections::BTreeMap;

use super::*;

fn policy_json(yaml: &str) -> String {
    let outcome = mapsentry_policy::load_str(yaml);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    mapsentry_policy::enforce::policy_json(&outcome.policies[0].policy).unwrap()
}

fn shop_kill() -> String {
    policy_json(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: wx, namespace: shop}\nspec:\n  mode: Enforce\n  podSelector: {matchLabels: {app: web}}\n  rules:\n    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}\n    - {name: jit, match: {protAny: [PROT_EXEC], comm: [java]}, action: Kill}\n    - {name: deny, match: {protAll: [PROT_EXEC], mapping: File}, action: Deny}\n",
    )
}

fn host_kill() -> String {
    policy_json(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: host}\nspec:\n  mode: Enforce\n  hostProcesses: true\n  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: none}}\n  rules:\n    - {name: huge, match: {minLength: 1Gi}, action: Kill}\n",
    )
}

fn pod(namespace: &str, app: &str) -> CgroupScope {
    CgroupScope::Pod(PodContext {
        namespace: namespace.into(),
        pod: format!("{app}-1"),
        pod_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ..PodContext::default()
    })
}

#[test]
fn scopes_resolve_to_the_selected_pods_and_host_cgroups() {
    let mut enforcer = Enforcer::new(None, Some("no BPF LSM"));
    enforcer
        .set_policies(5, vec![shop_kill(), host_kill()])
        .unwrap();
    assert_eq!(enforcer.stats().kernel_rules, 2, "wx and huge");
    assert_eq!(
        enforcer.stats().refused,
        2,
        "jit (comm) and deny (no LSM, Refuse)"
    );
    let reasons: Vec<_> = enforcer
        .refused()
        .iter()
        .map(|r| (r.rule.as_str(), r.reason.as_str()))
        .collect();
    assert!(reasons[0].1.contains("match.comm"), "{reasons:?}");
    assert!(reasons[1].1.contains("BPF LSM"), "{reasons:?}");

    let cgroups = [
        (10, pod("shop", "web")),
        (11, pod("shop", "db")),
        (12, pod("other", "web")),
        (13, CgroupScope::Host),
        (14, CgroupScope::UnknownPod),
    ];
    let (rules, unresolved) = enforcer.resolve(&cgroups);
    assert_eq!(unresolved, 1);
    assert_eq!(rules.keys().copied().collect::<Vec<_>>(), vec![10, 13]);
    assert_eq!(rules[&10].len(), 1);
    assert_eq!(rules[&10][0].prot_all, 0x6);
    assert_eq!(rules[&10][0].action, KernelAction::Kill);
    assert_eq!(rules[&13][0].min_length, 1 << 30);
}

#[test]
fn the_last_good_set_is_persisted_and_an_invalid_one_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("mapsentry-enforce-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut enforcer = Enforcer::new(Some(dir.clone()), None);
    enforcer.set_policies(7, vec![shop_kill()]).unwrap();
    let error = enforcer
        .set_policies(8, vec![host_kill(), "{\"kind\": \"MmapPolicy\"}".into()])
        .unwrap_err();
    assert!(error.to_string().contains("version 8, policy 1"), "{error}");
    assert_eq!(enforcer.version(), 7, "the previous set stays in force");

    let mut restarted = Enforcer::new(Some(dir.clone()), None);
    assert_eq!(restarted.load_persisted().unwrap(), Some(7));
    let (rules, _) = restarted.resolve(&[(10, pod("shop", "web"))]);
    assert_eq!(
        rules[&10].len(),
        2,
        "wx, and deny where the kernel can deny"
    );
    assert_eq!(rules[&10][0].action, KernelAction::Deny, "Deny first");

    std::fs::write(dir.join(STATE_FILE), "{\"version\": 1}").unwrap();
    let error = Enforcer::new(Some(dir.clone()), None)
        .load_persisted()
        .unwrap_err();
    assert!(error.to_string().contains("policies"), "{error}");
    assert_eq!(
        Enforcer::new(Some(dir.join("absent")), None)
            .load_persisted()
            .unwrap(),
        None
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
