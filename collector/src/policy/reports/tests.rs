use super::*;

fn report(persist_error: &str) -> v1::EnforcementReport {
    v1::EnforcementReport {
        policy_set_version: 4,
        persist_error: persist_error.to_owned(),
        refused: vec![v1::RefusedRule {
            policy: "shop/no-wx".into(),
            rule: "wx".into(),
            reason: "beyond the bound".into(),
        }],
    }
}

#[test]
fn the_latest_report_per_node_is_kept_and_only_changes_are_announced() {
    let reports = NodeReports::default();
    let mut changed = reports.subscribe();
    reports.set("n1", &report("read-only"));
    assert!(changed.has_changed().unwrap());
    changed.mark_unchanged();
    reports.set("n1", &report("read-only"));
    assert!(!changed.has_changed().unwrap(), "the same report again");
    reports.set("n2", &report(""));
    let all = reports.snapshot();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].persist_error.as_deref(), Some("read-only"));
    assert_eq!(all[1].persist_error, None);
    assert_eq!(
        all[0].refused[0].policy,
        PolicyId {
            namespace: Some("shop".into()),
            name: "no-wx".into()
        }
    );
    assert!(changed.has_changed().unwrap());
}
