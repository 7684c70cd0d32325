use std::time::Duration;

use mapsentry_proto::v1::{self, Kind, subscribe_response::Item};
use tokio_stream::StreamExt as _;

use super::*;
use crate::{
    HubConfig,
    filter::RecordFilter,
    hub::AgentInfo,
    metrics::tests::get,
    policy::files::{
        PolicyFiles,
        tests::{GOOD_V1, temp_dir, wx_event},
    },
    testing::attributed,
};

fn agent() -> AgentInfo {
    AgentInfo {
        node: "node-a".into(),
        boot_id: "boot".into(),
        ..AgentInfo::default()
    }
}

async fn next_alert(sub: &mut crate::hub::Subscription) -> Option<v1::AlertRecord> {
    loop {
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(response)) => match response.item {
                Some(Item::Alert(alert)) => return Some(alert),
                Some(Item::Event(_) | Item::Loss(_)) => {
                    panic!("an alerts-only subscription got {response:?}")
                }
                _ => {}
            },
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_storm_of_wx_calls_is_one_alert_and_counted_per_call() {
    let dir = temp_dir("alerts");
    std::fs::write(dir.join("wx.yaml"), GOOD_V1).expect("write policy");
    let (files, _) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    let hub = Hub::new(HubConfig::default());
    let metrics = Arc::new(Metrics::default());
    let task = start(
        &hub,
        files.watch(Duration::from_mins(1)),
        Arc::clone(&metrics),
        AlertConfig::default(),
        async { 0 },
    );
    let filter = RecordFilter::new(None, &[Kind::Alerts as i32]).expect("filter");
    let mut sub = hub.subscribe(filter, None).expect("subscribe");

    // 100 W+X calls and one harmless call, in two batches, made now (the dedup window runs on
    // the calls' time; the periodic flush on the clock).
    let t0 = now_ns();
    let mut harmless = wx_event(t0);
    harmless.args.prot = 0x1;
    let batch = |range: std::ops::Range<u64>| -> Vec<v1::Event> {
        range.map(|t| v1::Event::from(wx_event(t0 + t))).collect()
    };
    let mut first = batch(0..50);
    first.push(v1::Event::from(harmless));
    hub.store_batch(&agent(), 1, attributed(first))
        .expect("store");
    hub.store_batch(&agent(), 2, attributed(batch(50..100)))
        .expect("store");

    let alert = next_alert(&mut sub).await.expect("one alert");
    assert_eq!(alert.policy, "wx");
    assert_eq!(alert.rule, "write-and-execute");
    assert_eq!(alert.action, "alert");
    assert_eq!(alert.mode, "audit");
    assert_eq!(alert.node, "node-a");
    assert_eq!(alert.count, 1);
    assert_eq!((alert.namespace, alert.pod), (None, None));
    let event = alert.event.expect("the sample call");
    assert_eq!(event.comm, "mmap_call");
    assert_eq!(event.args.expect("args").prot, 0x7);
    assert_eq!(
        next_alert(&mut sub).await,
        None,
        "the storm is deduplicated"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(crate::metrics::serve(
        Arc::clone(&metrics),
        Arc::clone(&hub),
        listener,
        std::future::pending(),
    ));
    let (_, body) = get(addr, "/metrics").await;
    assert!(body.contains(
        "mapsentry_policy_violations_total{namespace=\"\",pod=\"\",policy=\"wx\",rule=\"write-and-execute\",action=\"alert\",mode=\"audit\"} 100\n"
    ), "{body}");
    assert!(
        body.contains("mapsentry_policy_evaluated_total 101\n"),
        "{body}"
    );
    assert!(
        body.contains("mapsentry_collector_events_stored_total 101\n"),
        "{body}"
    );
    assert!(
        body.contains("mapsentry_collector_alerts_published_total 1\n"),
        "{body}"
    );

    hub.close();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the evaluation ends with the hub")
        .expect("join");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_enforced_call_alerts_with_the_kernels_action() {
    let dir = temp_dir("alerts-enforced");
    let enforce = GOOD_V1
        .replace("mode: Audit", "mode: Enforce")
        .replace("action: Alert", "action: Kill");
    std::fs::write(dir.join("wx.yaml"), enforce).expect("write policy");
    let (files, _) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    let hub = Hub::new(HubConfig::default());
    let metrics = Arc::new(Metrics::default());
    let _task = start(
        &hub,
        files.watch(Duration::from_mins(1)),
        Arc::clone(&metrics),
        AlertConfig::default(),
        async { 0 },
    );
    let filter = RecordFilter::new(None, &[Kind::Alerts as i32]).expect("filter");
    let mut sub = hub.subscribe(filter, None).expect("subscribe");
    let mut event = wx_event(5);
    event.enforced = Some(mapsentry_policy::Enforcement {
        action: EnforceAction::Deny,
        rule_id: 1,
    });
    hub.store_batch(&agent(), 1, attributed([v1::Event::from(event)]))
        .expect("store");
    let alert = next_alert(&mut sub).await.expect("an alert");
    assert_eq!(
        (alert.action.as_str(), alert.mode.as_str()),
        ("deny", "enforce")
    );
    // Counted with the mode the call was judged in (an Audit match counts mode="audit").
    let body = metrics.render(&hub);
    assert!(
        body.contains(
            "mapsentry_policy_violations_total{namespace=\"\",pod=\"\",policy=\"wx\",rule=\"write-and-execute\",action=\"deny\",mode=\"enforce\"} 1\n"
        ),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Matches still pending in the dedup window when the collector stops are reported to the
/// subscribers before their streams end.
#[tokio::test]
async fn alerts_pending_in_the_window_are_reported_at_shutdown() {
    let dir = temp_dir("alerts-shutdown");
    std::fs::write(dir.join("wx.yaml"), GOOD_V1).expect("write policy");
    let (files, _) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    let hub = Hub::new(HubConfig::default());
    let task = start(
        &hub,
        files.watch(Duration::from_mins(1)),
        Arc::new(Metrics::default()),
        AlertConfig::default(),
        async { 0 },
    );
    let filter = RecordFilter::new(None, &[Kind::Alerts as i32]).expect("filter");
    let mut sub = hub.subscribe(filter, None).expect("subscribe");
    let t0 = now_ns();
    let batch: Vec<v1::Event> = (0..30).map(|t| v1::Event::from(wx_event(t0 + t))).collect();
    hub.store_batch(&agent(), 1, attributed(batch))
        .expect("store");
    assert_eq!(next_alert(&mut sub).await.map(|a| a.count), Some(1));
    assert_eq!(
        next_alert(&mut sub).await,
        None,
        "the rest waits in the window"
    );

    hub.close();
    let last = next_alert(&mut sub)
        .await
        .expect("the pending matches are reported at shutdown");
    assert_eq!(last.count, 30);
    assert_eq!(last.rule, "write-and-execute");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the evaluation ends with the hub")
        .expect("join");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("the stream ends once the evaluation is done")
            .is_none()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn alert_updates_over_a_pods_rate_are_deferred_not_dropped() {
    // 25 policies matching the same call: 25 alerts of one (host) caller at once.
    let dir = temp_dir("alerts-rate");
    for n in 0..25 {
        let text = GOOD_V1.replace("name: wx", &format!("name: wx-{n}"));
        std::fs::write(dir.join(format!("wx-{n}.yaml")), text).expect("write policy");
    }
    let (files, _) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    let hub = Hub::new(HubConfig::default());
    let metrics = Arc::new(Metrics::default());
    let _task = start(
        &hub,
        files.watch(Duration::from_mins(1)),
        Arc::clone(&metrics),
        AlertConfig {
            per_pod_rate: 5,
            flush_interval: Duration::from_millis(100),
            ..AlertConfig::default()
        },
        async { 0 },
    );
    let filter = RecordFilter::new(None, &[Kind::Alerts as i32]).expect("filter");
    let mut sub = hub.subscribe(filter, None).expect("subscribe");
    let started = std::time::Instant::now();
    hub.store_batch(
        &agent(),
        1,
        attributed([v1::Event::from(wx_event(now_ns()))]),
    )
    .expect("store");
    let mut policies = std::collections::BTreeSet::new();
    let mut times = Vec::new();
    while policies.len() < 25 {
        let alert = next_alert(&mut sub)
            .await
            .unwrap_or_else(|| panic!("only {} of 25 alerts arrived", policies.len()));
        assert!(policies.insert(alert.policy), "each alert once");
        times.push(started.elapsed());
    }
    let (deferred, superseded) = metrics.alerts_rate_limited();
    println!(
        "FIGURES alert-rate: 25 alerts of one caller at 5/s: first 5 within {:?}, last at {:?}, \
         deferred {deferred}, superseded {superseded}",
        times[4], times[24]
    );
    assert_eq!(deferred, 20, "a burst of 5, the other 20 deferred");
    assert_eq!(superseded, 0);
    assert!(
        times[24] >= Duration::from_millis(3500),
        "20 deferred alerts at 5/s take about 4 s: {:?}",
        times[24]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
