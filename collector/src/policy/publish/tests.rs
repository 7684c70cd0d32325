use mapsentry_policy::load_str;

use super::*;

fn policies(modes: &[&str]) -> Vec<Policy> {
    modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let text = format!(
                "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: p{i}}}\nspec:\n  mode: {mode}\n  rules: [{{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, action: Kill}}]\n"
            );
            load_str(&text).policies.remove(0).policy
        })
        .collect()
}

#[test]
fn publishes_enforce_policies_with_rising_versions_latest_wins() {
    let mut publisher = PolicyPublisher::new();
    let mut rx = publisher.subscribe();
    assert!(
        rx.borrow_and_update().is_none(),
        "nothing before the first publish"
    );
    let first = publisher.publish(&policies(&["Enforce", "Audit"])).unwrap();
    let second = publisher
        .publish(&policies(&["Enforce", "Enforce"]))
        .unwrap();
    assert!(second > first);
    assert!(rx.has_changed().unwrap());
    let set = rx.borrow_and_update().clone().unwrap();
    assert_eq!(
        set.version, second,
        "a late reader sees only the latest set"
    );
    assert_eq!(set.policies_json.len(), 2);
    assert!(
        set.policies_json[1].contains("\"name\":\"p1\""),
        "{:?}",
        set.policies_json
    );
}
