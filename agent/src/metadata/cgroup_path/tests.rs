use super::{CgroupOwner, ContainerRef, QosClass, Runtime, parse};

const UID: &str = "0f1b5b5e-3c2a-4d7e-9a51-7d1c2e3f4a5b";
const UID_: &str = "0f1b5b5e_3c2a_4d7e_9a51_7d1c2e3f4a5b";
const ID: &str = "3f9a1c0e5b7d2468ace13579bdf02468ace13579bdf02468ace13579bdf02468";

fn pod(qos: QosClass, runtime: Runtime) -> CgroupOwner {
    CgroupOwner::Pod {
        pod_uid: UID.to_owned(),
        qos,
        container: Some(ContainerRef {
            runtime,
            id: ID.to_owned(),
        }),
    }
}

fn pod_only(qos: QosClass) -> CgroupOwner {
    CgroupOwner::Pod {
        pod_uid: UID.to_owned(),
        qos,
        container: None,
    }
}

fn host(unit: Option<&str>) -> CgroupOwner {
    CgroupOwner::Host {
        unit: unit.map(str::to_owned),
    }
}

/// Path shapes as the clusters named write them (uid and id substituted).
#[test]
fn real_world_shapes() {
    use QosClass::{BestEffort, Burstable, Guaranteed};
    use Runtime::{Containerd, CriO, Docker, Unknown};
    let cases: Vec<(&str, String, CgroupOwner)> = vec![
        // kind: the node is a Docker container; kubelet runs with --cgroup-root=/kubelet.
        (
            "kind systemd burstable",
            format!(
                "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/\
                 kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            pod(Burstable, Containerd),
        ),
        (
            "kind as seen inside the node's cgroup namespace, besteffort",
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            pod(BestEffort, Containerd),
        ),
        // k3s: containerd, cgroupfs driver by default.
        (
            "k3s cgroupfs burstable",
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            pod(Burstable, Unknown),
        ),
        (
            "k3s cgroupfs guaranteed",
            format!("/kubepods/pod{UID}/{ID}"),
            pod(Guaranteed, Unknown),
        ),
        (
            "k3s cgroupfs besteffort",
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            pod(BestEffort, Unknown),
        ),
        // EKS AL2023 / GKE COS on cgroup v2: containerd, systemd driver.
        (
            "EKS systemd burstable",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            pod(Burstable, Containerd),
        ),
        (
            "GKE systemd guaranteed",
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            pod(Guaranteed, Containerd),
        ),
        (
            "GKE systemd besteffort",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            pod(BestEffort, Containerd),
        ),
        // OpenShift: CRI-O, systemd driver; crun nests a `container` directory on cgroup v2.
        (
            "OpenShift crio burstable",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
            ),
            pod(Burstable, CriO),
        ),
        (
            "OpenShift crio under crun's nested container cgroup",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"
            ),
            pod(Burstable, CriO),
        ),
        (
            "OpenShift crio conmon is the pod's, not a container",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            pod_only(Burstable),
        ),
        (
            "CRI-O cgroupfs",
            format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            pod(Burstable, CriO),
        ),
        // Docker (dockershim / cri-dockerd), both drivers.
        (
            "docker systemd besteffort",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
            ),
            pod(BestEffort, Docker),
        ),
        (
            "docker cgroupfs guaranteed",
            format!("/kubepods/pod{UID}/{ID}"),
            pod(Guaranteed, Unknown),
        ),
        // The pod cgroup itself.
        (
            "pod slice without container",
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            pod_only(Burstable),
        ),
        // Host processes.
        ("root", "/".to_owned(), host(None)),
        (
            "systemd service",
            "/system.slice/containerd.service".to_owned(),
            host(Some("containerd.service")),
        ),
        (
            "login session",
            "/user.slice/user-1000.slice/session-3.scope".to_owned(),
            host(Some("session-3.scope")),
        ),
        (
            "plain docker container, not in a pod",
            format!("/system.slice/docker-{ID}.scope"),
            host(Some(&format!("docker-{ID}.scope"))),
        ),
        (
            "cgroupfs, no unit",
            "/mapsentry-test/worker".to_owned(),
            host(None),
        ),
        (
            "kubepods QoS slice alone",
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            host(Some("kubepods-burstable.slice")),
        ),
    ];
    for (name, path, want) in cases {
        assert_eq!(parse(&path), want, "{name}: {path}");
    }
}

/// Names that look almost right are not taken for pods or containers.
#[test]
fn near_misses_are_not_pods() {
    let cases = [
        // a uid with a wrong group length
        format!("/kubepods/burstable/pod{}/{ID}", &UID[1..]),
        // `pod<uid>` not under a kubepods directory
        format!("/system.slice/pod{UID}/{ID}"),
        // systemd pod slice outside kubepods
        format!("/machine.slice/machine-pod{UID_}.slice"),
        // not hex
        format!("/kubepods/pod{}", UID.replace('f', "g")),
    ];
    for path in cases {
        assert!(
            matches!(parse(&path), CgroupOwner::Host { .. }),
            "{path} parsed as {:?}",
            parse(&path)
        );
    }
}

#[test]
fn container_ids_must_be_full_length_hex() {
    let short = format!("/kubepods/burstable/pod{UID}/{}", &ID[..12]);
    assert_eq!(parse(&short), pod_only(QosClass::Burstable));
    let upper = format!("/kubepods/burstable/pod{UID}/{}", ID.to_uppercase());
    assert_eq!(parse(&upper), pod_only(QosClass::Burstable));
    let odd = format!("/kubepods/burstable/pod{UID}/cri-containerd-{ID}.slice");
    assert_eq!(parse(&odd), pod_only(QosClass::Burstable));
}

#[test]
fn runtime_schemes_match_the_kubelet_container_id_prefixes() {
    assert_eq!(Runtime::Containerd.scheme(), Some("containerd"));
    assert_eq!(Runtime::CriO.scheme(), Some("cri-o"));
    assert_eq!(Runtime::Docker.scheme(), Some("docker"));
    assert_eq!(Runtime::Unknown.scheme(), None);
}

/// Paths read from a real kind cluster: lines of `path<TAB>pod uid<TAB>container id<TAB>QoS`
/// in the file named by `MAPSENTRY_KIND_PATHS`.
#[test]
#[ignore = "needs cgroup paths collected from a kind cluster by e2e/kube/kind-check.sh"]
fn kind_cluster_paths() {
    let file = std::env::var("MAPSENTRY_KIND_PATHS")
        .expect("MAPSENTRY_KIND_PATHS names the collected paths");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let [path, uid, id, qos] = line.split('\t').collect::<Vec<_>>()[..] else {
            panic!("bad line {line:?}")
        };
        let CgroupOwner::Pod {
            pod_uid,
            qos: parsed_qos,
            container,
        } = parse(path)
        else {
            panic!("{path} not parsed as a pod's")
        };
        assert_eq!(pod_uid, uid, "{path}");
        assert_eq!(parsed_qos.as_str(), qos, "{path}");
        assert_eq!(container.map(|c| c.id).as_deref(), Some(id), "{path}");
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} paths in {file}");
}
