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

use super::attribution::{Attribution, K8sMeta, Workload};

/// The fields as read from a line.
#[derive(Debug, Default, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
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

#[derive(Debug, Deserialize)]
struct HostWire {
    cgroup: String,
    #[serde(default)]
    unit: Option<String>,
}

/// The same fields as written, borrowed from the attribution (no copy per line).
#[derive(Debug, Default, Serialize)]
struct WireOut<'a> {
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    container: Option<&'a str>,
    k8s: Option<K8sWireOut<'a>>,
    host: Option<HostWireOut<'a>>,
}

#[derive(Debug, Serialize)]
struct K8sWireOut<'a> {
    pod_uid: Option<&'a str>,
    container_id: Option<&'a str>,
    image: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    workload: Option<&'a Workload>,
    resolved: bool,
}

#[derive(Debug, Serialize)]
struct HostWireOut<'a> {
    cgroup: &'a str,
    unit: Option<&'a str>,
}

/// An empty label map, written `{}`.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn to_wire(attribution: Option<&Attribution>) -> WireOut<'_> {
    match attribution {
        None => WireOut::default(),
        Some(Attribution::Pod(meta)) => WireOut {
            namespace: meta.namespace.as_deref(),
            pod: meta.pod.as_deref(),
            container: meta.container.as_deref(),
            k8s: Some(K8sWireOut {
                pod_uid: meta.pod_uid.as_deref(),
                container_id: meta.container_id.as_deref(),
                image: meta.image.as_deref(),
                labels: &meta.labels,
                namespace_labels: (!meta.namespace_labels.is_empty())
                    .then_some(&meta.namespace_labels),
                workload: meta.workload.as_ref(),
                resolved: meta.resolved,
            }),
            host: None,
        },
        Some(Attribution::Host { cgroup, unit }) => WireOut {
            host: Some(HostWireOut {
                cgroup,
                unit: unit.as_deref(),
            }),
            ..WireOut::default()
        },
        Some(Attribution::Unknown { .. }) => WireOut {
            k8s: Some(K8sWireOut {
                pod_uid: None,
                container_id: None,
                image: None,
                labels: &NO_LABELS,
                namespace_labels: None,
                workload: None,
                resolved: false,
            }),
            ..WireOut::default()
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
