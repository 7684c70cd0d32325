use std::sync::Arc;

use super::*;
use crate::{Attribution, K8sMeta, PolicySet, Workload, load_str};

fn wx_call(attribution: Option<Attribution>) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        cgroup_id: 1,
        attribution: attribution.map(Arc::new),
        ..MmapEvent::anonymous("app", 1, 4096, 6, 0x22)
    }
}

fn pod(namespace: &str, app: &str, container: &str, image: &str) -> Attribution {
    Attribution::Pod(K8sMeta {
        namespace: Some(namespace.into()),
        pod: Some(format!("{app}-0")),
        container: Some(container.into()),
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("ab".repeat(32)),
        image: Some(image.into()),
        labels: [("app".to_owned(), app.to_owned())].into(),
        namespace_labels: [("team".to_owned(), namespace.to_owned())].into(),
        workload: Some(Workload {
            kind: "StatefulSet".into(),
            name: app.into(),
        }),
        resolved: true,
    })
}

#[test]
fn a_pod_attribution_becomes_the_pod_context() {
    let ctx = eval_context(&wx_call(Some(pod("shop", "web", "app", "nginx:1.27"))));
    assert_eq!(
        ctx,
        EvalContext {
            executable: None,
            workload: Some(PodContext {
                namespace: "shop".into(),
                pod: "web-0".into(),
                container: Some("app".into()),
                image: Some("nginx:1.27".into()),
                pod_labels: [("app".to_owned(), "web".to_owned())].into(),
                namespace_labels: [("team".to_owned(), "shop".to_owned())].into(),
            }),
        }
    );
}

#[test]
fn host_unknown_and_unenriched_calls_have_no_pod() {
    for attribution in [
        Some(Attribution::Host {
            cgroup: "/system.slice/sshd.service".into(),
            unit: Some("sshd.service".into()),
        }),
        Some(Attribution::Unknown { cgroup_id: 1 }),
        None,
    ] {
        assert_eq!(
            eval_context(&wx_call(attribution.clone())).workload,
            None,
            "{attribution:?}"
        );
    }
}

#[test]
fn an_unresolved_pod_is_a_pod_without_names() {
    let unresolved = Attribution::Pod(K8sMeta {
        pod_uid: Some("u".into()),
        ..K8sMeta::default()
    });
    let ctx = eval_context(&wx_call(Some(unresolved)));
    let workload = ctx.workload.expect("still a pod, not a host process");
    assert_eq!(workload.namespace, "");
    assert_eq!(workload.pod, "");
}

/// Policies select on the attribution through `eval_context`, as the collector evaluates them.
#[test]
fn selectors_and_exceptions_judge_the_attribution() {
    let rule = "{name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Alert}";
    let outcome = load_str(&format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: web-only, namespace: shop}}\n\
         spec: {{podSelector: {{matchLabels: {{app: web}}}}, rules: [{rule}]}}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: shop-but-sidecar}}\n\
         spec: {{namespaceSelector: {{matchLabels: {{team: shop}}}}, rules: [{{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, except: {{containers: [sidecar]}}, action: Alert}}]}}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: shop-but-jdk}}\n\
         spec: {{namespaceSelector: {{matchLabels: {{team: shop}}}}, rules: [{{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, except: {{images: ['docker.io/library/openjdk:*']}}, action: Alert}}]}}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: hosts}}\n\
         spec: {{hostProcesses: true, namespaceSelector: {{matchLabels: {{none: none}}}}, rules: [{rule}]}}\n"
    ));
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    let set = PolicySet::new(outcome.policies.into_iter().map(|l| l.compiled).collect())
        .expect("policy set");
    let matched = |attribution: Option<Attribution>| {
        let event = wx_call(attribution);
        let mut names: Vec<String> = set
            .evaluate(&event, &eval_context(&event))
            .iter()
            .map(|m| m.policy.to_string())
            .collect();
        names.sort();
        names
    };
    let cases: [(&str, Option<Attribution>, &[&str]); 6] = [
        (
            "podSelector and namespaceSelector",
            Some(pod("shop", "web", "app", "nginx:1.27")),
            &["shop-but-jdk", "shop-but-sidecar", "shop/web-only"],
        ),
        (
            "podSelector misses",
            Some(pod("shop", "db", "app", "postgres:16")),
            &["shop-but-jdk", "shop-but-sidecar"],
        ),
        (
            "namespaceSelector misses",
            Some(pod("other", "web", "app", "nginx:1.27")),
            &[],
        ),
        (
            "except.containers",
            Some(pod("shop", "db", "sidecar", "envoy:1")),
            &["shop-but-jdk"],
        ),
        (
            "except.images",
            Some(pod("shop", "db", "app", "docker.io/library/openjdk:21")),
            &["shop-but-sidecar"],
        ),
        (
            "hostProcesses",
            Some(Attribution::Host {
                cgroup: "/system.slice/cron.service".into(),
                unit: Some("cron.service".into()),
            }),
            &["hosts"],
        ),
    ];
    for (name, attribution, want) in cases {
        assert_eq!(matched(attribution), want, "{name}");
    }
}
