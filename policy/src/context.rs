//! The policy view of an event's attribution: [`eval_context`] builds the [`EvalContext`] that
//! `podSelector`, `namespaceSelector`, `except.containers`, `except.images` and `hostProcesses`
//! are judged on.

use crate::{
    evaluate::{EvalContext, PodContext},
    event::MmapEvent,
    k8s::Attribution,
};

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
