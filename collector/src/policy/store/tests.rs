use std::time::Duration;

use super::*;

const ENFORCE: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: wx
spec:
  hostProcesses: true
  mode: Enforce
  rules:
    - name: write-and-execute
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Kill
";

#[tokio::test]
async fn held_sources_keep_the_agents_set_back_until_each_has_loaded_once() {
    let shared = SharedPolicies::new();
    shared.hold_publishing(2);
    let publisher = PolicyPublisher::new();
    let sets = publisher.subscribe();
    shared.set_publisher(publisher);
    assert!(sets.borrow().is_none(), "nothing before the sources load");

    // A file's policy arrives while the objects are still being listed: still nothing.
    shared.update(|store| {
        let (reload, errors) = store.reload_text("/etc/mapsentry/wx.yaml", ENFORCE);
        assert!(errors.is_empty(), "{errors:?}");
        ((), !reload.accepted.is_empty())
    });
    assert!(
        sets.borrow().is_none(),
        "still held: one source has not listed"
    );
    shared.source_synced();
    assert!(
        sets.borrow().is_none(),
        "still held: the second source has not listed"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), shared.synced())
            .await
            .is_err(),
        "not synced yet"
    );

    shared.source_synced();
    let set = sets
        .borrow()
        .clone()
        .expect("released with the policies in force");
    assert_eq!(set.policies_json.len(), 1, "{set:?}");
    tokio::time::timeout(Duration::from_secs(1), shared.synced())
        .await
        .expect("synced resolves once every source loaded");
}

#[tokio::test]
async fn without_held_sources_the_set_goes_out_at_once() {
    let shared = SharedPolicies::new();
    let publisher = PolicyPublisher::new();
    let sets = publisher.subscribe();
    shared.set_publisher(publisher);
    assert_eq!(
        sets.borrow().as_ref().map(|s| s.policies_json.len()),
        Some(0),
        "an empty set: the source of truth has no Enforce policies"
    );
    tokio::time::timeout(Duration::from_secs(1), shared.synced())
        .await
        .expect("nothing to wait for");
}
