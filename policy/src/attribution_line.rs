//! The attribution fields of an event JSON line, flattened into it:
//!
//! | field | pod process | host process | cgroup not found | not enriched (older lines) |
//! |---|---|---|---|---|
//! | `namespace`, `pod`, `container` | names (null while unresolved) | null | null | null |
//! | `k8s` | `{pod_uid, container_id, image, labels, workload, resolved}` | null | `{..., "resolved": false}` (all null) | null |
//! | `host` | null | `{"cgroup": path, "unit": systemd unit or null}` | null | null |
//!
//! `k8s.namespace_labels` (what `namespaceSelector` matched) is present when the namespace has
//! labels. Reading a line back gives the same attribution, except that a "cgroup not found" one
//! carries `cgroup_id` 0 (the event's own `cgroup_id` is the id); lines without these fields
//! (recorded before attribution) read as not enriched.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::k8s::{Attribution, K8sMeta, Workload};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Wire {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    k8s: Option<K8sWire>,
    #[serde(default)]
    host: Option<HostWire>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct K8sWire {
    #[serde(default)]
    pod_uid: Option<String>,
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default, deserialize_with = "string_labels")]
    labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "string_labels"
    )]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    workload: Option<Workload>,
    #[serde(default)]
    resolved: bool,
}

/// Labels as read from a line: entries whose value is not a string are skipped (hand-written
/// lines for `policy test`), a null map is empty.
fn string_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    let map: Option<BTreeMap<String, Value>> = Option::deserialize(deserializer)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Text(text) => Some((k, text)),
            Value::Other(_) => None,
        })
        .collect())
}

#[derive(Debug, Serialize, Deserialize)]
struct HostWire {
    cgroup: String,
    #[serde(default)]
    unit: Option<String>,
}

fn to_wire(attribution: Option<&Attribution>) -> Wire {
    match attribution {
        None => Wire::default(),
        Some(Attribution::Pod(meta)) => Wire {
            namespace: meta.namespace.clone(),
            pod: meta.pod.clone(),
            container: meta.container.clone(),
            k8s: Some(K8sWire {
                pod_uid: meta.pod_uid.clone(),
                container_id: meta.container_id.clone(),
                image: meta.image.clone(),
                labels: meta.labels.clone(),
                namespace_labels: meta.namespace_labels.clone(),
                workload: meta.workload.clone(),
                resolved: meta.resolved,
            }),
            host: None,
        },
        Some(Attribution::Host { cgroup, unit }) => Wire {
            host: Some(HostWire {
                cgroup: cgroup.clone(),
                unit: unit.clone(),
            }),
            ..Wire::default()
        },
        Some(Attribution::Unknown { .. }) => Wire {
            k8s: Some(K8sWire::default()),
            ..Wire::default()
        },
    }
}

fn from_wire(wire: Wire) -> Option<Attribution> {
    if let Some(host) = wire.host {
        return Some(Attribution::Host {
            cgroup: host.cgroup,
            unit: host.unit,
        });
    }
    let k8s = wire.k8s?;
    if k8s.pod_uid.is_none() && wire.namespace.is_none() && !k8s.resolved {
        return Some(Attribution::Unknown { cgroup_id: 0 });
    }
    Some(Attribution::Pod(K8sMeta {
        namespace: wire.namespace,
        pod: wire.pod,
        container: wire.container,
        pod_uid: k8s.pod_uid,
        container_id: k8s.container_id,
        image: k8s.image,
        labels: k8s.labels,
        namespace_labels: k8s.namespace_labels,
        workload: k8s.workload,
        resolved: k8s.resolved,
    }))
}

#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with signature takes the field by reference"
)]
pub(crate) fn serialize<S: Serializer>(
    attribution: &Option<Arc<Attribution>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    to_wire(attribution.as_deref()).serialize(serializer)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Arc<Attribution>>, D::Error> {
    Wire::deserialize(deserializer).map(|wire| from_wire(wire).map(Arc::new))
}
