use super::*;
use crate::{crd::NodeScope, load::load_str};

fn policy(mode: &str, extra: &str, rules: &str) -> Policy {
    let yaml = format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: p, namespace: shop, generation: 7}}\nspec:\n  mode: {mode}\n{extra}  rules:\n{rules}"
    );
    let outcome = load_str(&yaml);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    outcome.policies.into_iter().next().expect("one").policy
}

#[test]
fn an_audit_policy_is_accepted_with_one_condition() {
    let p = policy(
        "Audit",
        "",
        "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}\n",
    );
    let status = PolicyStatus::accepted_policy(&p);
    assert!(status.accepted);
    assert_eq!(status.observed_generation, Some(7));
    assert_eq!(status.accepted_generation, Some(7));
    assert_eq!(status.conditions.len(), 1);
    let accepted = status.condition(ACCEPTED).expect("Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "Valid")
    );
    assert!(status.refused_rules.is_empty());
}

#[test]
fn an_enforce_policy_lists_refused_rules_with_their_reasons_and_nodes() {
    let p = policy(
        "Enforce",
        "",
        "    - {name: kill-wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}\n    - {name: jit, match: {protAll: [PROT_EXEC], mapping: Anonymous}, except: {executableGlobs: ['/opt/*/bin/*']}, action: Kill}\n    - {name: deny-huge, match: {flagsAny: [MAP_HUGETLB]}, action: Deny}\n    - {name: watch, match: {protAny: [PROT_EXEC]}, action: Alert}\n",
    );
    let status = PolicyStatus::accepted_policy(&p);
    assert!(status.accepted);
    let refused: Vec<(&str, NodeScope)> = status
        .refused_rules
        .iter()
        .map(|r| (r.rule.as_str(), r.nodes))
        .collect();
    assert_eq!(
        refused,
        [
            ("jit", NodeScope::All),
            ("deny-huge", NodeScope::WithoutBpfLsm)
        ]
    );
    assert!(
        status.refused_rules[0]
            .reason
            .contains("except.executableGlobs[0]: glob \"/opt/*/bin/*\""),
        "{status:?}"
    );
    assert!(
        status.refused_rules[1]
            .reason
            .contains("denyFallback is Refuse"),
        "{status:?}"
    );
    let kernel = status.condition(KERNEL_ENFORCED).expect("KernelEnforced");
    assert_eq!(
        (kernel.status.as_str(), kernel.reason.as_str()),
        ("False", "RulesRefused")
    );
    assert!(kernel.message.contains("jit, deny-huge"), "{kernel:?}");
    assert!(status.fallback_rules.is_empty());
}

#[test]
fn deny_with_fallback_kill_is_reported_as_a_fallback_not_a_refusal() {
    let p = policy(
        "Enforce",
        "  denyFallback: Kill\n",
        "    - {name: deny-wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Deny}\n",
    );
    let status = PolicyStatus::accepted_policy(&p);
    assert!(status.refused_rules.is_empty(), "{status:?}");
    assert_eq!(status.fallback_rules.len(), 1);
    assert_eq!(status.fallback_rules[0].rule, "deny-wx");
    assert_eq!(status.fallback_rules[0].nodes, NodeScope::WithoutBpfLsm);
    let kernel = status.condition(KERNEL_ENFORCED).expect("KernelEnforced");
    assert_eq!(kernel.status, "True");
}

#[test]
fn stamps_keep_the_transition_time_while_the_status_holds() {
    let p = policy(
        "Audit",
        "",
        "    - {name: wx, match: {protAll: [PROT_WRITE]}}\n",
    );
    let mut first = PolicyStatus::accepted_policy(&p);
    first.stamp(None, "2026-11-27T10:00:00Z");
    let mut again = PolicyStatus::accepted_policy(&p);
    again.stamp(Some(&first), "2026-11-27T11:00:00Z");
    assert_eq!(again, first);
    let problems = [crate::Problem::new(
        &crate::FieldPath::root().field("spec"),
        "bad",
    )];
    let mut rejected = PolicyStatus::rejected_generation(Some(8), &problems, Some(7), "Invalid");
    rejected.stamp(Some(&first), "2026-11-27T12:00:00Z");
    let c = rejected.condition(ACCEPTED).expect("Accepted");
    assert_eq!(
        c.last_transition_time.as_deref(),
        Some("2026-11-27T12:00:00Z")
    );
    assert!(c.message.contains("generation 7 stays in force"), "{c:?}");
    assert!(!rejected.same_as(&first));
    assert!(again.same_as(&PolicyStatus::accepted_policy(&p)));
}

#[test]
fn node_reports_add_set_refusals_and_say_where_a_set_is_not_persisted() {
    let p = policy(
        "Enforce",
        "",
        "    - {name: kill-wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}\n",
    );
    let persisted_nowhere = NodeReport {
        node: "n1".into(),
        version: 9,
        persist_error: Some(
            "/var/lib/mapsentry/policy-set.json.tmp: Read-only file system (os error 30)".into(),
        ),
        refused: Vec::new(),
    };
    let status = PolicyStatus::accepted_policy_on(&p, std::slice::from_ref(&persisted_nowhere));
    let kernel = status.condition(KERNEL_ENFORCED).expect("KernelEnforced");
    assert_eq!(
        (kernel.status.as_str(), kernel.reason.as_str()),
        ("True", "NotPersisted"),
        "enforced, but the node would lose it at a restart"
    );
    assert!(
        kernel.message.contains("node n1 (set version 9)")
            && kernel.message.contains("Read-only file system"),
        "{kernel:?}"
    );

    let bounded = NodeReport {
        node: "n2".into(),
        version: 9,
        persist_error: None,
        refused: vec![
            Refusal {
                policy: p.id(),
                rule: "kill-wx".into(),
                reason: "the kernel holds at most 32 Enforce rules per policy set".into(),
            },
            Refusal {
                policy: crate::policy::PolicyId {
                    namespace: None,
                    name: "other".into(),
                },
                rule: "x".into(),
                reason: "not this policy's".into(),
            },
        ],
    };
    let status = PolicyStatus::accepted_policy_on(&p, &[persisted_nowhere, bounded]);
    assert_eq!(status.refused_rules.len(), 1, "{status:?}");
    assert!(
        status.refused_rules[0]
            .reason
            .contains("reported by node n2")
    );
    let kernel = status.condition(KERNEL_ENFORCED).expect("KernelEnforced");
    assert_eq!(
        (kernel.status.as_str(), kernel.reason.as_str()),
        ("False", "RulesRefused")
    );
    assert!(
        kernel.message.contains("not persisted on node n1"),
        "{kernel:?}"
    );
    assert_eq!(
        PolicyStatus::accepted_policy_on(&p, &[]),
        PolicyStatus::accepted_policy(&p)
    );
}
