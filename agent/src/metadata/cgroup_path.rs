//! What a cgroup v2 path says about its owner: a container of a Kubernetes pod (pod UID, quality-of-service
//! class, container runtime and id) or a host process (its systemd unit, if any).
//!
//! Covers the kubelet's two cgroup drivers and the three runtimes:
//!
//! | driver | shape |
//! |---|---|
//! | systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//!
//! Guaranteed pods sit directly under `kubepods` (`kubepods-pod<uid>.slice`, `kubepods/pod<uid>`).
//! Container scopes are `cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` (CRI-O; its
//! monitor is `crio-conmon-<id>.scope`) and `docker-<id>.scope` (Docker/cri-dockerd); cgroupfs
//! names the container directory by the bare id (CRI-O: `crio-<id>`). Anything may precede the
//! `kubepods` part (kind and other nested nodes put the node's own cgroup and a `kubelet` root
//! first), and runtimes may nest a directory under the container scope (crun's `container`).
//! Pure code: no I/O.

use std::fmt;

/// The Kubernetes quality-of-service class, from the cgroup the pod sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// The container runtime, as far as the cgroup name tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// cgroupfs driver with a bare id: containerd and Docker name the directory the same way.
    Unknown,
}

impl Runtime {
    /// The scheme the kubelet puts before the id in `status.containerStatuses[].containerID`
    /// (`containerd://<id>`), when the runtime is known.
    #[must_use]
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            Self::Containerd => Some("containerd"),
            Self::CriO => Some("cri-o"),
            Self::Docker => Some("docker"),
            Self::Unknown => None,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme().unwrap_or("unknown"))
    }
}

/// Who owns a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CgroupOwner {
    /// Inside a pod's cgroup. `container` is `None` for the pod cgroup itself and for a runtime
    /// helper that is not a container (CRI-O's `conmon`).
    Pod {
        pod_uid: String,
        qos: QosClass,
        container: Option<ContainerRef>,
    },
    /// Not in a pod: a host process. `unit` is the innermost systemd unit (`ssh.service`,
    /// `session-3.scope`) when the path has one.
    Host { unit: Option<String> },
}

/// A container as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// The runtime's container id (64 lowercase hex digits).
    pub id: String,
}

/// Parse a cgroup v2 path relative to the hierarchy root (`/kubepods.slice/...`, `/` for the
/// root). Never fails: a path that is not a pod's is a host's.
#[must_use]
pub fn parse(path: &str) -> CgroupOwner {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (at, part) in parts.iter().enumerate() {
        let Some((pod_uid, qos)) = pod_component(&parts[..at], part) else {
            continue;
        };
        let container = parts.get(at + 1).and_then(|next| container_component(next));
        return CgroupOwner::Pod {
            pod_uid,
            qos,
            container,
        };
    }
    let unit = parts
        .iter()
        .rev()
        .find(|p| is_systemd_unit(p))
        .map(|p| (*p).to_owned());
    CgroupOwner::Host { unit }
}

/// A pod cgroup: `...kubepods[-qos]-pod<uid>.slice` (systemd) or `pod<uid>` under a `kubepods`
/// directory (cgroupfs). `before` are the components above it.
fn pod_component(before: &[&str], part: &str) -> Option<(String, QosClass)> {
    if let Some(stem) = part.strip_suffix(".slice") {
        // systemd: the slice name repeats its ancestors, joined with '-'.
        let (prefix, uid) = stem.rsplit_once("-pod")?;
        if !prefix.split('-').any(|p| p == "kubepods") {
            return None;
        }
        let uid = uid.replace('_', "-");
        if !is_uid(&uid) {
            return None;
        }
        let qos = match prefix.rsplit('-').next() {
            Some("burstable") => QosClass::Burstable,
            Some("besteffort") => QosClass::BestEffort,
            _ => QosClass::Guaranteed,
        };
        return Some((uid, qos));
    }
    // cgroupfs: kubepods/[burstable|besteffort/]pod<uid>
    let uid = part.strip_prefix("pod")?;
    if !is_uid(uid) {
        return None;
    }
    let qos = match before {
        [.., kube, "burstable"] if kube.ends_with("kubepods") => QosClass::Burstable,
        [.., kube, "besteffort"] if kube.ends_with("kubepods") => QosClass::BestEffort,
        [.., kube] if kube.ends_with("kubepods") => QosClass::Guaranteed,
        _ => return None,
    };
    Some((uid.to_owned(), qos))
}

/// The component right under a pod cgroup.
fn container_component(part: &str) -> Option<ContainerRef> {
    let scoped = |prefix: &str| {
        part.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".scope"))
    };
    let (runtime, id) = if part.starts_with("crio-conmon-") {
        return None;
    } else if let Some(id) = scoped("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = scoped("crio-").or_else(|| part.strip_prefix("crio-")) {
        (Runtime::CriO, id)
    } else if let Some(id) = scoped("docker-") {
        (Runtime::Docker, id)
    } else {
        (Runtime::Unknown, part)
    };
    is_container_id(id).then(|| ContainerRef {
        runtime,
        id: id.to_owned(),
    })
}

/// `8-4-4-4-12` hex digits, as the API server makes pod UIDs.
fn is_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// 64 lowercase hex digits: the id containerd, CRI-O and Docker give a container.
fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_systemd_unit(part: &str) -> bool {
    [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
        .iter()
        .any(|suffix| part.len() > suffix.len() && part.ends_with(suffix))
}

#[cfg(test)]
mod tests;
