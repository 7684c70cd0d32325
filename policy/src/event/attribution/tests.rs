use super::{Attribution, K8sMeta, Workload};

fn meta() -> K8sMeta {
    K8sMeta {
        namespace: Some("shop".into()),
        pod: Some("web-7d9f-abcde".into()),
        container: Some("app".into()),
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("0123".repeat(16)),
        image: Some("nginx:1.27".into()),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        namespace_labels: [("team".to_owned(), "a".to_owned())].into(),
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        resolved: true,
    }
}

#[test]
fn k8s_object_has_the_contract_fields() {
    let json = serde_json::to_value(meta()).expect("serializes");
    for field in [
        "namespace",
        "pod",
        "container",
        "pod_uid",
        "container_id",
        "image",
        "labels",
        "workload",
        "resolved",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(
        json["workload"],
        serde_json::json!({"kind": "Deployment", "name": "web"})
    );
    assert_eq!(json["labels"], serde_json::json!({"app": "web"}));
    let back: K8sMeta = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, meta());
}

#[test]
fn unresolved_pod_keeps_what_the_cgroup_told() {
    let meta = K8sMeta {
        pod_uid: Some("6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e".into()),
        container_id: Some("ab".repeat(32)),
        ..K8sMeta::default()
    };
    let json = serde_json::to_value(&meta).expect("serializes");
    assert_eq!(json["resolved"], false);
    assert_eq!(json["pod"], serde_json::Value::Null);
    assert_eq!(json["labels"], serde_json::json!({}));
    assert!(
        json.get("namespace_labels").is_none(),
        "empty namespace labels are left out: {json}"
    );
}

#[test]
fn host_and_unknown_have_no_k8s_object() {
    let host = Attribution::Host {
        cgroup: "/system.slice/ssh.service".into(),
        unit: Some("ssh.service".into()),
    };
    assert!(host.k8s().is_none());
    assert!(host.resolved());
    let unknown = Attribution::Unknown { cgroup_id: 42 };
    assert!(unknown.k8s().is_none());
    assert!(!unknown.resolved());
    let pod = Attribution::Pod(meta());
    assert_eq!(pod.k8s(), Some(&meta()));
    assert!(pod.resolved());
}
