//! The policy watcher against a real kube-apiserver (see [`crate::kube_testing`]), acting as the
//! collector's identity with only the chart's RBAC.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use mapsentry_policy::status::{ACCEPTED, KERNEL_ENFORCED};
use serde_json::json;

use super::*;
use crate::kube_testing::{ApiServer, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn api(client: &Client, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource()),
        None => Api::all_with(client.clone(), &kind.resource()),
    }
}

fn object(kind: Kind, name: &str, namespace: Option<&str>, spec: &Value) -> DynamicObject {
    let mut metadata = json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    serde_json::from_value(json!({
        "apiVersion": API_VERSION, "kind": kind.as_str(),
        "metadata": metadata, "spec": spec,
    }))
    .expect("object json")
}

fn wx_spec(mode: &str, prot: &[&str]) -> Value {
    json!({"mode": mode, "rules": [
        {"name": "write-and-execute", "match": {"protAll": prot}, "action": "Alert"}
    ]})
}

/// The object's status once it describes `generation`.
async fn status_of(api: &Api<DynamicObject>, name: &str, generation: i64) -> (PolicyStatus, Value) {
    eventually(
        &format!("the status of {name} for generation {generation}"),
        WAIT,
        || async {
            let object = api.get(name).await.ok()?;
            let raw = object.data.get("status")?.clone();
            let status: PolicyStatus = serde_json::from_value(raw.clone()).ok()?;
            (status.observed_generation == Some(generation)).then_some((status, raw))
        },
    )
    .await
}

fn prot_all_in_force(policies: &SharedPolicies, id: &PolicyId) -> Option<Vec<String>> {
    policies.read(|store| store.get(id).map(|p| p.rules()[0].match_.prot_all.clone()))
}

#[tokio::test]
async fn policy_objects_are_applied_rejected_fixed_and_removed_with_their_status() {
    let server = ApiServer::start("crd-lifecycle", "").await;
    let admin = server.admin().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace shop");

    let policies = SharedPolicies::new();
    let mut evaluation = policies.subscribe();
    let (progress_tx, progress) = tokio::sync::watch::channel(CrdStats::default());
    let task = start_with_stats(server.collector().await, policies.clone(), progress_tx);

    // 1. A valid policy: in force, status Accepted.
    let shop = api(&admin, Kind::Namespaced, Some("shop"));
    shop.create(
        &PostParams::default(),
        &object(
            Kind::Namespaced,
            "no-wx",
            Some("shop"),
            &wx_spec("Audit", &["PROT_WRITE", "PROT_EXEC"]),
        ),
    )
    .await
    .expect("creating shop/no-wx");
    let id = PolicyId {
        namespace: Some("shop".into()),
        name: "no-wx".into(),
    };
    let (status, _) = status_of(&shop, "no-wx", 1).await;
    assert!(status.accepted, "{status:?}");
    assert_eq!(status.accepted_generation, Some(1));
    let accepted = status.condition(ACCEPTED).expect("Accepted condition");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "Valid")
    );
    assert!(accepted.last_transition_time.is_some());
    assert_eq!(
        prot_all_in_force(&policies, &id),
        Some(vec!["PROT_WRITE".to_owned(), "PROT_EXEC".to_owned()])
    );
    let set = evaluation.borrow_and_update().clone().expect("a set");
    assert_eq!(set.policies().len(), 1, "the evaluation has it");

    // 2a. What the CRD schema can say is refused at admission, before the collector sees it: an
    // unknown bit name, two rules of one name.
    for (what, spec) in [
        (
            "PROT_EXCE",
            json!({"rules": [
                {"name": "wx", "match": {"protAll": ["PROT_WRITE", "PROT_EXCE"]}}
            ]}),
        ),
        (
            "a second rule named wx",
            json!({"rules": [
                {"name": "wx", "match": {"protAll": ["PROT_EXEC"]}},
                {"name": "wx", "match": {"protAny": ["PROT_WRITE"]}}
            ]}),
        ),
    ] {
        let mut refused = shop.get("no-wx").await.expect("get");
        refused.data["spec"] = spec;
        let error = shop
            .replace("no-wx", &PostParams::default(), &refused)
            .await
            .expect_err(what);
        let kube::Error::Api(status) = &error else {
            panic!("{what}: {error}")
        };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(status.message.contains("spec.rules"), "{what}: {status:?}");
    }

    // 2b. Edited to a version only mapsentry's own validation refuses: rejected with every error
    // and its field path; the previous version stays in force.
    let mut bad = shop.get("no-wx").await.expect("get");
    bad.data["spec"] = json!({"mode": "Audit", "rules": [
        {"name": "write-and-execute", "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"], "minLength": "8Gb", "file": {"pathGlobs": ["/tmp/[x"]}}, "action": "Alert"}
    ]});
    shop.replace("no-wx", &PostParams::default(), &bad)
        .await
        .expect("replacing with an invalid spec");
    let (status, _) = status_of(&shop, "no-wx", 2).await;
    assert!(!status.accepted, "{status:?}");
    assert_eq!(
        status.accepted_generation,
        Some(1),
        "generation 1 stays in force"
    );
    let paths: Vec<&str> = status.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[0].match.file.pathGlobs[0]",
            "spec.rules[0].match.minLength"
        ]
    );
    assert!(
        status.errors[1].reason.contains("invalid size \"8Gb\""),
        "{status:?}"
    );
    let accepted = status.condition(ACCEPTED).expect("Accepted condition");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("generation 1 stays in force"),
        "{accepted:?}"
    );
    assert_eq!(
        prot_all_in_force(&policies, &id),
        Some(vec!["PROT_WRITE".to_owned(), "PROT_EXEC".to_owned()]),
        "the previous good version stays in force"
    );

    // 3. Fixed: accepted, and nothing of the rejection lingers in the status.
    let mut good = shop.get("no-wx").await.expect("get");
    good.data["spec"] = wx_spec("Audit", &["PROT_EXEC"]);
    shop.replace("no-wx", &PostParams::default(), &good)
        .await
        .expect("replacing with a fixed spec");
    let (status, raw) = status_of(&shop, "no-wx", 3).await;
    assert!(status.accepted, "{status:?}");
    assert!(raw.get("errors").is_none(), "the errors are gone: {raw}");
    assert_eq!(status.accepted_generation, Some(3));
    assert_eq!(
        prot_all_in_force(&policies, &id),
        Some(vec!["PROT_EXEC".to_owned()])
    );

    // 4. An Enforce ClusterMmapPolicy with rules the kernel cannot enforce: accepted, and the
    // status says which rules and why.
    let cluster = api(&admin, Kind::Cluster, None);
    cluster
        .create(
            &PostParams::default(),
            &object(
                Kind::Cluster,
                "enforce-wx",
                None,
                &json!({"mode": "Enforce", "rules": [
                    {"name": "kill-wx", "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"]}, "action": "Kill"},
                    {"name": "kill-java-exec", "match": {"protAll": ["PROT_EXEC"], "executableGlobs": ["/usr/bin/java?"]}, "action": "Kill"},
                    {"name": "deny-hugetlb", "match": {"flagsAny": ["MAP_HUGETLB"]}, "action": "Deny"}
                ]}),
            ),
        )
        .await
        .expect("creating enforce-wx");
    let (status, _) = status_of(&cluster, "enforce-wx", 1).await;
    assert!(status.accepted, "{status:?}");
    let refused: Vec<(&str, &str)> = status
        .refused_rules
        .iter()
        .map(|r| (r.rule.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, "kill-java-exec");
    assert!(
        refused[0]
            .1
            .contains("glob \"/usr/bin/java?\" cannot be judged by the kernel"),
        "{refused:?}"
    );
    assert_eq!(refused[1].0, "deny-hugetlb");
    assert!(refused[1].1.contains("needs BPF LSM"), "{refused:?}");
    let kernel = status.condition(KERNEL_ENFORCED).expect("KernelEnforced");
    assert_eq!(
        (kernel.status.as_str(), kernel.reason.as_str()),
        ("False", "RulesRefused")
    );

    // 5. Deleted: removed from the policies in force.
    shop.delete("no-wx", &DeleteParams::default())
        .await
        .expect("deleting shop/no-wx");
    eventually("shop/no-wx removed", WAIT, || async {
        prot_all_in_force(&policies, &id).is_none().then_some(())
    })
    .await;
    let names = policies.read(mapsentry_policy::PolicyStore::ids);
    assert_eq!(
        names,
        [PolicyId {
            namespace: None,
            name: "enforce-wx".into()
        }]
    );
    let counts = *progress.borrow();
    assert_eq!(counts.rejected, 1, "{counts:?}");
    assert_eq!(counts.removed, 1, "{counts:?}");
    assert_eq!(counts.status_write_failures, 0, "{counts:?}");
    drop(evaluation);
    task.abort();
}

/// A policy a file defines already cannot be redefined by an object: the object is rejected
/// (reason Duplicate) and the file's version stays, until the file no longer defines it.
#[tokio::test]
async fn an_object_cannot_take_over_a_policy_of_the_files() {
    let server = ApiServer::start("crd-duplicate", "").await;
    let admin = server.admin().await;
    let policies = SharedPolicies::new();
    let (_, errors) = policies.update(|store| {
        let out = store.reload_text(
            "/etc/mapsentry/wx.yaml",
            &serde_yaml_ng::to_string(&object(
                Kind::Cluster,
                "wx",
                None,
                &wx_spec("Audit", &["PROT_WRITE", "PROT_EXEC"]),
            ))
            .expect("yaml"),
        );
        (out, true)
    });
    assert!(errors.is_empty(), "{errors:?}");
    let _evaluation = policies.subscribe();
    let task = start(server.collector().await, policies.clone());
    let cluster = api(&admin, Kind::Cluster, None);
    cluster
        .create(
            &PostParams::default(),
            &object(Kind::Cluster, "wx", None, &wx_spec("Audit", &["PROT_READ"])),
        )
        .await
        .expect("creating wx");
    let (status, _) = status_of(&cluster, "wx", 1).await;
    assert!(!status.accepted);
    let accepted = status.condition(ACCEPTED).expect("Accepted");
    assert_eq!(accepted.reason, "Duplicate");
    assert_eq!(status.errors[0].path, "metadata.name");
    assert!(
        status.errors[0].reason.contains("/etc/mapsentry/wx.yaml"),
        "{status:?}"
    );
    let id = PolicyId {
        namespace: None,
        name: "wx".into(),
    };
    assert_eq!(
        policies.read(|s| s.source_of(&id).map(str::to_owned)),
        Some("/etc/mapsentry/wx.yaml".to_owned())
    );
    // Once the file no longer defines it, the object's version is applied.
    policies.update(|store| {
        let removed = store.remove_source("/etc/mapsentry/wx.yaml");
        let changed = !removed.is_empty();
        (removed, changed)
    });
    let status = eventually("the object accepted", WAIT, || async {
        let object = cluster.get("wx").await.ok()?;
        let status: PolicyStatus =
            serde_json::from_value(object.data.get("status")?.clone()).ok()?;
        status.accepted.then_some(status)
    })
    .await;
    assert!(status.errors.is_empty(), "{status:?}");
    assert_eq!(
        policies.read(|s| s.source_of(&id).map(str::to_owned)),
        Some("ClusterMmapPolicy/wx".to_owned())
    );
    task.abort();
}

/// Through an API server outage and a compaction, the watch resumes (410 Gone, relist): the
/// policies stay in force meanwhile, and objects created or deleted while it was away are
/// picked up.
#[tokio::test]
async fn the_watch_relists_after_410_gone_and_keeps_the_policies_meanwhile() {
    let server = ApiServer::start("crd-outage", "--watch-cache=false").await;
    let admin = server.admin().await;
    let cluster = api(&admin, Kind::Cluster, None);
    for name in ["before", "doomed"] {
        cluster
            .create(
                &PostParams::default(),
                &object(Kind::Cluster, name, None, &wx_spec("Audit", &["PROT_EXEC"])),
            )
            .await
            .expect("create");
    }
    let policies = SharedPolicies::new();
    let _evaluation = policies.subscribe();
    let (progress_tx, progress) = tokio::sync::watch::channel(CrdStats::default());
    let task = start_with_stats(server.collector().await, policies.clone(), progress_tx);
    let id = |name: &str| PolicyId {
        namespace: None,
        name: name.into(),
    };
    eventually("both policies in force", WAIT, || async {
        (policies.read(mapsentry_policy::PolicyStore::ids).len() == 2).then_some(())
    })
    .await;

    server.stop_apiserver();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        policies.read(mapsentry_policy::PolicyStore::ids).len(),
        2,
        "kept through the outage"
    );
    server.compact();
    server.start_apiserver("--watch-cache=false", true);
    // While the watcher waits out its backoff: one object deleted, one created.
    let admin = server.admin().await;
    let cluster = api(&admin, Kind::Cluster, None);
    cluster
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete doomed");
    cluster
        .create(
            &PostParams::default(),
            &object(
                Kind::Cluster,
                "after",
                None,
                &wx_spec("Audit", &["PROT_EXEC"]),
            ),
        )
        .await
        .expect("create after");
    eventually(
        "the policies after the outage",
        Duration::from_mins(1),
        || async {
            (policies.read(mapsentry_policy::PolicyStore::ids) == [id("after"), id("before")])
                .then_some(())
        },
    )
    .await;
    let counts = *progress.borrow();
    assert!(counts.watch_errors >= 1, "{counts:?}");
    assert!(counts.lists >= 3, "relisted: {counts:?}");
    task.abort();
}
