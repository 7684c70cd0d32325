use super::*;

#[test]
fn a_report_shared_reads_back_as_the_node_sent_it() {
    let sent = v1::EnforcementReport {
        policy_set_version: 7,
        persist_error: "Read-only file system (os error 30)".into(),
        refused: vec![
            v1::RefusedRule {
                policy: "shop/no-wx".into(),
                rule: "wx".into(),
                reason: "needs BPF LSM".into(),
            },
            v1::RefusedRule {
                policy: "cluster-wide".into(),
                rule: "memfd".into(),
                reason: "too many rules".into(),
            },
        ],
    };
    let here = NodeReports::default();
    here.set("node-a", &sent);
    let [report] = here.snapshot().try_into().expect("one node");
    let stored = StoredReport {
        node: report.node.clone(),
        report: Some(to_wire(&report)),
    };
    let back = StoredReport::decode(wire::encode(&stored).as_ref()).expect("decodes");
    assert_eq!(back.node, "node-a");
    assert_eq!(back.report.as_ref(), Some(&sent));
    // Set on another replica from the bucket, it is the same report.
    let there = NodeReports::default();
    there.set(&back.node, back.report.as_ref().unwrap());
    assert_eq!(there.snapshot(), here.snapshot());
}

#[test]
fn node_names_that_read_alike_as_keys_keep_their_own_keys() {
    let (dotted, underscored) = (wire::report_key("a.b"), wire::report_key("a_b"));
    assert_ne!(dotted, underscored);
    assert!(dotted.starts_with("a_b."), "{dotted}");
    assert!(
        dotted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "{dotted}"
    );
}
