use std::{sync::Arc, time::Duration};

use mapsentry_policy::{Attribution, MmapEvent};
use mapsentry_proto::v1::{self, subscribe_response::Item};
use tokio_stream::StreamExt as _;

use super::*;
use crate::{HubConfig, filter::RecordFilter, testing};

fn agent() -> AgentInfo {
    AgentInfo {
        node: "node-a".into(),
        boot_id: "boot-1".into(),
        kernel: "6.18".into(),
        attach_mode: "tracepoint".into(),
        started_unix_ns: 1,
    }
}

/// The records a subscriber from the first cursor gets, whole.
async fn stored(hub: &Arc<Hub>, count: usize) -> Vec<v1::EventRecord> {
    let filter = RecordFilter::new(None, &[]).unwrap();
    let mut subscription = hub.subscribe(filter, Some(0)).unwrap();
    let mut records = Vec::new();
    while records.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("a record within 5 s")
            .expect("the subscription open")
            .item;
        match item {
            Some(Item::Event(record)) => records.push(record),
            Some(Item::Started(_)) => {}
            other => panic!("expected events, got {other:?}"),
        }
    }
    records
}

/// Events of one pod (one `Arc` per cgroup, as the enricher shares it), of the host, and
/// unattributed, arrive at subscribers whole, exactly as their wire form, under the agent's node;
/// the hub counts them stored for the agent and keeps its loss report.
#[tokio::test]
async fn events_are_stored_whole_under_the_agent_with_its_losses() {
    let hub = Hub::new(HubConfig::default());
    let local = InProcess::start(Arc::clone(&hub), agent()).unwrap();
    let pod = testing::event(Some("shop"), Some("web-1"), "java");
    let mut second = pod.clone();
    second.pid += 1;
    let host = MmapEvent {
        cgroup_id: 77,
        attribution: Some(Arc::new(Attribution::Host {
            cgroup: "/system.slice/sshd.service".into(),
            unit: Some("sshd.service".into()),
        })),
        ..testing::event(None, None, "sshd")
    };
    let bare = testing::event(None, None, "true");
    let sent = [pod, second, host, bare];
    local.send(sent[..2].to_vec()).await.unwrap();
    local.send(sent[2..].to_vec()).await.unwrap();
    local.send(Vec::new()).await.unwrap();
    local.report_losses([("ring_buffer_full".to_owned(), 3)].into());

    let records = stored(&hub, 4).await;
    for (record, event) in records.iter().zip(&sent) {
        assert_eq!(record.node, "node-a");
        assert_eq!(record.event.as_ref(), Some(&v1::Event::from(event)));
    }
    let stats = local.finish().await;
    assert_eq!(
        stats,
        InProcessStats {
            captured: 4,
            stored: 4,
            refused: 0,
            not_stored: 0
        }
    );
    let node = hub.stats().nodes.into_iter().next().expect("the node");
    assert_eq!(
        (
            node.node.as_str(),
            node.boot_id.as_str(),
            node.attach_mode.as_str(),
            node.connected
        ),
        ("node-a", "boot-1", "tracepoint", false)
    );
    assert_eq!((node.captured, node.shipped, node.acked), (4, 4, 4));
    assert_eq!(node.dropped.get("ring_buffer_full"), Some(&3));
}

/// An event over a field limit (its comm, or its pod's namespace) is counted and left out; the
/// rest of its batch is stored.
#[tokio::test]
async fn events_over_a_field_limit_are_counted_and_the_rest_stored() {
    let hub = Hub::new(HubConfig::default());
    let local = InProcess::start(Arc::clone(&hub), agent()).unwrap();
    let long_comm = testing::event(None, None, &"c".repeat(65));
    let long_namespace = MmapEvent {
        cgroup_id: 99,
        ..testing::event(Some(&"n".repeat(64)), Some("web-1"), "java")
    };
    let fine = testing::event(Some("shop"), Some("web-1"), "java");
    local
        .send(vec![long_comm, long_namespace.clone(), fine.clone()])
        .await
        .unwrap();
    // The refused attribution is not kept: the same cgroup's next event is refused again.
    local.send(vec![long_namespace]).await.unwrap();
    let records = stored(&hub, 1).await;
    assert_eq!(records[0].event.as_ref(), Some(&v1::Event::from(&fine)));
    assert_eq!(
        local.finish().await,
        InProcessStats {
            captured: 4,
            stored: 1,
            refused: 3,
            not_stored: 0
        }
    );
    assert_eq!(hub.stats().retained, 1);
}

/// Starting takes a place in the hub's node table, as an agent stream's Hello does: beyond the
/// table's limit, it is refused.
#[tokio::test]
async fn the_node_table_refuses_an_agent_beyond_its_limit() {
    let hub = Hub::new(HubConfig {
        max_nodes: 1,
        ..HubConfig::default()
    });
    let first = InProcess::start(Arc::clone(&hub), agent()).unwrap();
    let other = AgentInfo {
        node: "node-b".into(),
        ..agent()
    };
    let error = InProcess::start(Arc::clone(&hub), other).unwrap_err();
    assert_eq!(error.max, 1);
    first.finish().await;
}
