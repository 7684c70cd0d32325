use super::{KubeletPod, documents_of_kinds, kinds_of, new_container_id};

const RENDERED: &str = "---
# Source: x/crds/c.yaml
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  names:
    kind: MmapPolicy
---
# Source: x/templates/sa.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: a
---
# Source: x/templates/ds.yaml
apiVersion: apps/v1
kind: DaemonSet
spec:
  template:
    kind: nothing
";

#[test]
fn documents_are_selected_by_their_top_level_kind_only() {
    let picked = documents_of_kinds(RENDERED, &["CustomResourceDefinition", "ServiceAccount"]);
    assert_eq!(
        kinds_of(&picked),
        ["CustomResourceDefinition", "ServiceAccount"]
    );
    assert!(
        picked.contains("kind: MmapPolicy"),
        "nested lines are kept: {picked}"
    );
    let none = documents_of_kinds(RENDERED, &["MmapPolicy", "nothing"]);
    assert_eq!(none, "", "indented kind: lines do not count");
    assert_eq!(
        kinds_of(&documents_of_kinds(RENDERED, &["DaemonSet"])),
        ["DaemonSet"]
    );
}

#[test]
fn container_cgroups_follow_kubelets_systemd_names() {
    let id = new_container_id();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_ne!(id, new_container_id(), "unique per call");
    let pod = KubeletPod {
        namespace: "ns".into(),
        name: "p".into(),
        uid: "0b6e7d1c-5a4f-4e3d-9c2b-1a0f9e8d7c6b".into(),
        container: "c".into(),
        container_id: id.clone(),
        image: "i".into(),
    };
    assert_eq!(
        pod.systemd_cgroup_path(),
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6e7d1c_5a4f_4e3d_9c2b_1a0f9e8d7c6b.slice/cri-containerd-{id}.scope"
        )
    );
}
