use std::collections::BTreeMap;

use mapsentry_policy::enforce::rule_id;

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
    assert_eq!(enforcer.stats().kernel_rules, 3, "wx, jit and huge");
    assert_eq!(enforcer.stats().refused, 1, "deny (no LSM, Refuse)");
    assert!(
        enforcer.refused()[0].reason.contains("BPF LSM"),
        "{:?}",
        enforcer.refused()
    );

    let cgroups = [
        (10, pod("shop", "web")),
        (11, pod("shop", "db")),
        (12, pod("other", "web")),
        (13, CgroupScope::Host),
        (14, CgroupScope::UnknownPod),
    ];
    let (rules, unresolved) = enforcer.resolve(&cgroups);
    assert_eq!(unresolved, 1);
    assert_eq!(rules.keys().copied().collect::<Vec<_>>(), vec![10, 13, 14]);
    assert_eq!(rules[&10].len(), 2, "wx and jit");
    assert_eq!(rules[&10][0].prot_all, 0x6);
    assert_eq!(rules[&10][0].action, KernelAction::Kill);
    assert_eq!(rules[&10][1].comm, 1, "jit's comm class");
    assert_eq!(rules[&13][0].min_length, 1 << 30);
    assert_eq!(
        rules[&14].len(),
        3,
        "a pod not known yet fails closed: every policy that could apply to it"
    );
}

fn images_except() -> String {
    policy_json(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: jit}\nspec:\n  mode: Enforce\n  rules:\n    - {name: whole, match: {protAny: [PROT_EXEC], mapping: Anonymous}, except: {images: ['openjdk:*']}, action: Kill}\n    - {name: part, match: {protAll: [PROT_WRITE, PROT_EXEC]}, except: {containers: [jit], comm: [java]}, action: Kill}\n",
    )
}

fn container(name: &str, image: &str) -> CgroupScope {
    CgroupScope::Pod(PodContext {
        namespace: "shop".into(),
        pod: "p".into(),
        container: Some(name.into()),
        image: Some(image.into()),
        ..PodContext::default()
    })
}

#[test]
fn container_and_image_exceptions_are_resolved_per_cgroup() {
    let mut enforcer = Enforcer::new(None, None);
    enforcer.set_policies(1, vec![images_except()]).unwrap();
    assert!(enforcer.refused().is_empty(), "{:?}", enforcer.refused());
    let cgroups = [
        (1, container("app", "openjdk:21")),
        (2, container("app", "debian:12")),
        (3, container("jit", "debian:12")),
        (4, CgroupScope::UnknownPod),
        (5, CgroupScope::Host),
    ];
    let (rules, _) = enforcer.resolve(&cgroups);
    let ids = |id: u64| -> Vec<(u32, u8)> {
        rules[&id]
            .iter()
            .map(|r| (r.rule_id, r.except_comm))
            .collect()
    };
    let whole = rule_id(
        &PolicyId {
            namespace: None,
            name: "jit".into(),
        },
        "whole",
    );
    let part = rule_id(
        &PolicyId {
            namespace: None,
            name: "jit".into(),
        },
        "part",
    );
    assert_eq!(
        ids(1),
        [(part, 0)],
        "the excepted image does not get `whole`"
    );
    assert_eq!(
        ids(2),
        [(whole, 0), (part, 0)],
        "another image gets both, no exception"
    );
    assert_eq!(
        ids(3),
        [(whole, 0), (part, 1)],
        "container jit keeps the comm part of `part`'s exception, judged in the kernel"
    );
    assert_eq!(ids(4), [(whole, 0), (part, 0)], "unknown: fail closed");
    assert!(
        !rules.contains_key(&5),
        "host processes are not in the policy's scope"
    );
}

#[test]
fn a_set_that_cannot_be_persisted_is_taken_and_the_failure_kept() {
    let file = std::env::temp_dir().join(format!(
        "mapsentry-enforce-not-a-dir-{}",
        std::process::id()
    ));
    std::fs::write(&file, "").unwrap();
    let mut enforcer = Enforcer::new(Some(file.join("state")), None);
    enforcer
        .set_policies(3, vec![shop_kill()])
        .expect("taken all the same");
    assert_eq!(enforcer.version(), 3);
    let stats = enforcer.stats();
    assert_eq!(
        (stats.persisted, stats.persist_failures),
        (false, 1),
        "{stats:?}"
    );
    assert!(
        enforcer.persist_error().unwrap().contains("state"),
        "{:?}",
        enforcer.persist_error()
    );
    let (rules, _) = enforcer.resolve(&[(10, pod("shop", "web"))]);
    assert_eq!(rules[&10].len(), 3);
    std::fs::remove_file(&file).unwrap();
    let mut writable = Enforcer::new(None, None);
    writable.set_policies(1, vec![shop_kill()]).unwrap();
    assert!(writable.stats().persisted && writable.persist_error().is_none());
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
        3,
        "wx, jit, and deny where the kernel can deny"
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
