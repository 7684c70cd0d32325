//! The policy view of who made a call: the [`EvalContext`] (and its [`PodContext`]) that
//! `podSelector`, `namespaceSelector`, `except.containers`, `except.images` and `hostProcesses`
//! are judged on, and [`eval_context`], which builds it from an event's attribution. Compiling
//! and evaluating both read it; neither owns it.

use crate::{
    event::{MmapEvent, attribution::Attribution},
    selector::Labels,
};

/// Who made a call, as far as policies care. `MmapEvent` carries the process; this carries its
/// place in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalContext {
    /// The caller's executable path, when known.
    pub executable: Option<String>,
    /// The pod and container of the caller; None for a process outside any pod (a host process).
    pub workload: Option<PodContext>,
}

/// The pod side of a caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContext {
    pub namespace: String,
    pub pod: String,
    /// Container name as in the pod spec.
    pub container: Option<String>,
    pub image: Option<String>,
    pub pod_labels: Labels,
    /// Labels of the pod's namespace (`kubernetes.io/metadata.name` is assumed when absent).
    pub namespace_labels: Labels,
}

/// Who made `event`, as policies see it:
///
/// - a process in a pod (resolved or not): a [`PodContext`] with its namespace, pod, container,
///   image, pod labels and namespace labels. A pod not found in the API server has empty
///   namespace and pod names, so only cluster policies without a `namespaceSelector` reach it:
///   it is never taken for a host process.
/// - a host process, an event whose cgroup was not found, and an event that was never enriched:
///   no pod (`hostProcesses` decides).
#[must_use]
pub fn eval_context(event: &MmapEvent) -> EvalContext {
    let workload = match event.attribution.as_deref() {
        Some(Attribution::Pod(meta)) => Some(PodContext {
            namespace: meta.namespace.clone().unwrap_or_default(),
            pod: meta.pod.clone().unwrap_or_default(),
            container: meta.container.clone(),
            image: meta.image.clone(),
            pod_labels: meta.labels.clone(),
            namespace_labels: meta.namespace_labels.clone(),
        }),
        Some(Attribution::Host { .. } | Attribution::Unknown { .. }) | None => None,
    };
    EvalContext {
        executable: None,
        workload,
    }
}

#[cfg(test)]
mod tests;
