//! Events on pods against a real kube-apiserver (see [`crate::kube_testing`]), posted as the
//! collector's identity with only the chart's RBAC, from alerts of the real evaluation.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use mapsentry_policy::{Attribution, K8sMeta};
use mapsentry_proto::v1;
use serde_json::json;

use super::*;
use crate::{
    HubConfig,
    alerts::{self, AlertConfig},
    hub::AgentInfo,
    kube_testing::{ApiServer, eventually},
    policy::files::{
        PolicyFiles,
        tests::{GOOD_V1, temp_dir, wx_event},
    },
    testing::attributed,
};

struct Setup {
    server: ApiServer,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    evaluation: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
    pod_uid: String,
    dir: std::path::PathBuf,
}

/// An API server with pod shop/web, a collector hub evaluating `policy`, and the Events poster.
async fn setup(name: &str, policy: &str, per_pod_per_minute: u32) -> Setup {
    let server = ApiServer::start(name, "").await;
    let admin = server.admin().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin, "shop")
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod shop/web");
    let dir = temp_dir(&format!("kube-events-{name}"));
    std::fs::write(dir.join("policy.yaml"), policy).expect("write policy");
    let (files, _) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    let hub = Hub::new(HubConfig::default());
    let metrics = Arc::new(Metrics::default());
    let evaluation = alerts::start(
        &hub,
        files.watch(Duration::from_mins(1)),
        Arc::clone(&metrics),
        AlertConfig::default(),
        async { 0 },
    );
    let events = super::start(
        server.collector().await,
        &hub,
        Arc::clone(&metrics),
        EventsConfig {
            per_pod_per_minute,
            ..EventsConfig::default()
        },
    )
    .expect("the Events poster");
    Setup {
        server,
        hub,
        metrics,
        evaluation,
        events,
        pod_uid: pod.metadata.uid.expect("uid"),
        dir,
    }
}

fn agent() -> AgentInfo {
    AgentInfo {
        node: "node-a".into(),
        boot_id: "boot".into(),
        ..AgentInfo::default()
    }
}

/// A W+X call by shop/web's container `app`.
fn pod_wx(time_ns: u64, pod_uid: &str) -> v1::Event {
    let mut event = wx_event(time_ns);
    event.attribution = Some(Arc::new(Attribution::Pod(K8sMeta {
        namespace: Some("shop".into()),
        pod: Some("web".into()),
        container: Some("app".into()),
        pod_uid: Some(pod_uid.into()),
        image: Some("registry.example/web:1".into()),
        resolved: true,
        ..K8sMeta::default()
    })));
    v1::Event::from(event)
}

async fn pod_events(server: &ApiServer) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(server.admin().await, "shop");
    api.list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(REASON))
        .collect()
}

use mapsentry_policy::time::now_ns;

/// A storm of W+X calls in a pod is one Event on the pod whose series counts every call: the
/// first alert creates it at once, and the matches still in the dedup window when the collector
/// stops are flushed into its series. A host process's alert makes no Event.
#[tokio::test]
async fn a_storm_in_a_pod_is_one_event_series_on_the_pod_completed_at_shutdown() {
    let setup = setup("storm", GOOD_V1, 10).await;
    let t0 = now_ns();
    let mut batch: Vec<v1::Event> = (0..100).map(|i| pod_wx(t0 + i, &setup.pod_uid)).collect();
    batch.push(v1::Event::from(wx_event(t0 + 100)));
    setup
        .hub
        .store_batch(&agent(), 1, attributed(batch))
        .expect("store");

    let first = eventually(
        "the first Event on shop/web",
        Duration::from_secs(20),
        || async { pod_events(&setup.server).await.into_iter().next() },
    )
    .await;
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert_eq!(first.action.as_deref(), Some("Alert"));
    let regarding = first.regarding.clone().expect("regarding");
    assert_eq!(
        (
            regarding.kind.as_deref(),
            regarding.namespace.as_deref(),
            regarding.name.as_deref(),
            regarding.uid.as_deref()
        ),
        (
            Some("Pod"),
            Some("shop"),
            Some("web"),
            Some(setup.pod_uid.as_str())
        )
    );
    let note = first.note.clone().unwrap_or_default();
    assert!(
        note.starts_with("policy wx rule write-and-execute action alert (audit mode) container=app: mmap comm=mmap_call"),
        "{note}"
    );
    assert!(
        note.contains("prot=PROT_READ|PROT_WRITE|PROT_EXEC"),
        "{note}"
    );
    assert!(first.series.is_none(), "one call so far: {first:?}");

    // The collector stops: the 99 matches waiting in the dedup window are reported.
    setup.hub.close();
    tokio::time::timeout(Duration::from_secs(10), setup.evaluation)
        .await
        .expect("evaluation ends")
        .expect("join");
    tokio::time::timeout(Duration::from_secs(20), setup.events)
        .await
        .expect("the poster ends after the last alerts")
        .expect("join");
    let events = pod_events(&setup.server).await;
    assert_eq!(events.len(), 1, "one Event, not one per call: {events:?}");
    let series = events[0].series.clone().expect("a series");
    assert_eq!(series.count, 100, "{events:?}");
    assert_eq!(events[0].metadata.name, first.metadata.name);
    // The host process's alert made no Event anywhere.
    let all: Api<Event> = Api::all(setup.server.admin().await);
    let everywhere = all
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(REASON))
        .count();
    assert_eq!(everywhere, 1);
    assert_eq!(setup.metrics.kube_events_suppressed_total(), 0);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// Five rules broken at once by one pod, with a limit of two writes per pod per minute: two
/// Events, the rest counted as suppressed.
#[tokio::test]
async fn event_writes_are_rate_limited_per_pod_and_the_excess_is_counted() {
    let mut rules = String::new();
    for i in 0..5 {
        let _ = write!(
            rules,
            "    - name: wx-{i}\n      match:\n        protAll: [PROT_WRITE, PROT_EXEC]\n"
        );
    }
    let policy = format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata:\n  name: five\nspec:\n  rules:\n{rules}"
    );
    let setup = setup("rate", &policy, 2).await;
    setup
        .hub
        .store_batch(&agent(), 1, attributed([pod_wx(now_ns(), &setup.pod_uid)]))
        .expect("store");
    eventually("two Events", Duration::from_secs(20), || async {
        (pod_events(&setup.server).await.len() == 2).then_some(())
    })
    .await;
    // The waiting series are retried every 2 s, within the budget: still two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pod_events(&setup.server).await.len(), 2);
    let suppressed = setup.metrics.kube_events_suppressed_total();
    assert!(suppressed >= 3, "{suppressed}");
    let text = setup.metrics.render(&setup.hub);
    let exported: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mapsentry_kube_events_suppressed_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed counter in {text}"));
    assert!(exported >= 3, "{text}");
    assert!(
        text.contains("mapsentry_kube_events_written_total 2\n"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// Two writers of one series (replicas across a Lease takeover, the second without the first's
/// progress): the second's create of a one-call Event finds it made and adopts it, no error and
/// no second Event; its later count goes into the same Event.
#[tokio::test]
async fn a_series_created_by_the_previous_writer_is_adopted_even_at_one_call() {
    let setup = setup("adopt", GOOD_V1, 10).await;
    let line = |count| AlertLine {
        action: mapsentry_policy::Action::Kill,
        ..crate::testing::alert_line(Some("shop"), Some("web"), "app", "wx", count)
    };
    let poster = || {
        let client = setup.server.collector();
        let metrics = Arc::clone(&setup.metrics);
        async move {
            let mut poster = Poster::new(client.await, EventsConfig::default(), metrics);
            poster.name_series("1".into());
            poster
        }
    };
    let mut before = poster().await;
    before.alert_at(&line(1), Instant::now()).await;
    let mut after = poster().await;
    after.alert_at(&line(1), Instant::now()).await;
    assert_eq!(setup.metrics.kube_events_failed_total(), 0);
    let events = pod_events(&setup.server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].metadata.name.as_deref(), Some("web.1"));
    assert!(events[0].series.is_none(), "one call: {events:?}");

    after.name_series("2".into());
    after.alert_at(&line(7), Instant::now()).await;
    assert_eq!(setup.metrics.kube_events_failed_total(), 0);
    let events = pod_events(&setup.server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].metadata.name.as_deref(), Some("web.1"));
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(7));
    let _ = std::fs::remove_dir_all(&setup.dir);
}
