//! Who made a call, in Kubernetes terms: the attribution the agent attaches to an event.
//!
//! `K8sMeta` is the `"k8s"` object of the event JSON line; `namespace`, `pod` and `container` are
//! also the line's top-level fields (null for host processes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The pod and container a call came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct K8sMeta {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The container's name in the pod spec.
    pub container: Option<String>,
    pub pod_uid: Option<String>,
    /// The runtime's container id (64 hex digits, without the `containerd://` scheme).
    pub container_id: Option<String>,
    /// The image as the pod spec names it.
    pub image: Option<String>,
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The labels of the pod's namespace (what `namespaceSelector` matches).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, String>,
    /// The controller that owns the pod, followed up to its top (`Deployment`, `CronJob`, ...).
    pub workload: Option<Workload>,
    /// False when the pod could not be found (pod UID and container id, if known from the
    /// cgroup, are still set).
    pub resolved: bool,
}

/// A pod's owning workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, or whatever kind
    /// the owner reference names.
    pub kind: String,
    pub name: String,
}

/// What an event is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Attribution {
    /// A process in a pod (`resolved` tells whether the pod was found).
    Pod(K8sMeta),
    /// A process outside any pod: its cgroup path (relative to the cgroup2 root) and the systemd
    /// unit the path names, if any.
    Host {
        cgroup: String,
        unit: Option<String>,
    },
    /// The cgroup id was not found in the cgroup hierarchy (the cgroup was gone before it was
    /// indexed).
    Unknown { cgroup_id: u64 },
}

impl Attribution {
    /// The `"k8s"` object of the JSON line: the pod's metadata, or null.
    #[must_use]
    pub fn k8s(&self) -> Option<&K8sMeta> {
        match self {
            Self::Pod(meta) => Some(meta),
            Self::Host { .. } | Self::Unknown { .. } => None,
        }
    }

    /// Whether the attribution is complete: a found pod or a host process.
    #[must_use]
    pub fn resolved(&self) -> bool {
        match self {
            Self::Pod(meta) => meta.resolved,
            Self::Host { .. } => true,
            Self::Unknown { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests;
