use super::*;
use crate::load::load_str;

fn policy(yaml: &str) -> Policy {
    let outcome = load_str(yaml);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    outcome
        .policies
        .into_iter()
        .next()
        .expect("one policy")
        .policy
}

fn cluster(mode: &str, extra: &str, rules: &str) -> Policy {
    policy(&format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: p}}\nspec:\n  hostProcesses: true\n  mode: {mode}\n{extra}  rules:\n{rules}"
    ))
}

#[test]
fn an_enforce_kill_rule_becomes_masks_with_a_stable_id() {
    let p = cluster(
        "Enforce",
        "",
        "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC], flagsAny: [MAP_ANONYMOUS], mapping: Anonymous, minLength: 4Ki, syscalls: [mmap, mprotect]}, action: Kill}\n",
    );
    let plan = kernel_plan(&p, false);
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    let rule = &plan.rules[0];
    assert_eq!(rule.action, KernelActionSpec::Kill);
    assert_eq!((rule.prot_all, rule.prot_any), (0x6, 0));
    assert_eq!((rule.flags_all, rule.flags_any), (0, 0x20));
    assert_eq!(rule.min_length, 4096);
    assert_eq!(rule.syscalls, vec![Syscall::Mmap, Syscall::Mprotect]);
    assert_eq!(rule.mapping, Some(MappingKind::Anonymous));
    assert_eq!(rule.rule_id, rule_id(&p.id(), "wx"));
    assert_eq!(
        kernel_plan(&p, false).rules[0].rule_id,
        rule.rule_id,
        "stable"
    );
    assert_ne!(rule_id(&p.id(), "wx"), rule_id(&p.id(), "xw"));
}

#[test]
fn audit_policies_and_alert_rules_give_the_kernel_nothing() {
    let rules = "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}\n";
    assert_eq!(
        kernel_plan(&cluster("Audit", "", rules), true),
        KernelPlan::default()
    );
    let alert = "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Alert}\n";
    assert_eq!(
        kernel_plan(&cluster("Enforce", "", alert), true),
        KernelPlan::default()
    );
}

#[test]
fn rules_the_kernel_cannot_judge_are_refused_whole_with_the_field() {
    let cases = [
        (
            "{protAny: [PROT_EXEC], file: {memfd: true}}",
            "",
            "match.file",
        ),
        ("{protAny: [PROT_EXEC], comm: [java]}", "", "match.comm"),
        (
            "{protAny: [PROT_EXEC], executableGlobs: ['/usr/bin/*']}",
            "",
            "match.executableGlobs",
        ),
        (
            "{protAny: [PROT_EXEC]}",
            ", except: {images: ['openjdk:*']}",
            "except.images",
        ),
        (
            "{protAny: [PROT_EXEC]}",
            ", except: {containers: [jit]}",
            "except.containers",
        ),
        (
            "{flagsAll: [MAP_PRIVATE]}",
            "",
            "MAP_PRIVATE is a mapping type",
        ),
    ];
    for (m, except, field) in cases {
        let p = cluster(
            "Enforce",
            "",
            &format!(
                "    - {{name: r, match: {m}{except}, action: Kill}}\n    - {{name: ok, match: {{protAny: [PROT_EXEC]}}, action: Kill}}\n"
            ),
        );
        let plan = kernel_plan(&p, true);
        assert_eq!(plan.refused.len(), 1, "{m} {except}: {plan:?}");
        assert_eq!(plan.refused[0].rule, "r");
        assert!(
            plan.refused[0].reason.contains(field),
            "{field}: {}",
            plan.refused[0].reason
        );
        assert_eq!(plan.rules.len(), 1, "the other rule stays enforced");
        assert_eq!(plan.rules[0].rule, "ok");
    }
}

#[test]
fn deny_without_lsm_follows_deny_fallback() {
    let rules = "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Deny}\n";
    let refuse = cluster("Enforce", "", rules);
    let plan = kernel_plan(&refuse, false);
    assert!(plan.rules.is_empty());
    assert!(plan.refused[0].reason.contains("BPF LSM"), "{plan:?}");
    let with_lsm = kernel_plan(&refuse, true);
    assert_eq!(with_lsm.rules[0].action, KernelActionSpec::Deny);
    assert!(!with_lsm.rules[0].deny_fell_back);

    let kill = cluster("Enforce", "  denyFallback: Kill\n", rules);
    let plan = kernel_plan(&kill, false);
    assert!(plan.refused.is_empty());
    assert_eq!(plan.rules[0].action, KernelActionSpec::Kill);
    assert!(plan.rules[0].deny_fell_back);
    assert_eq!(
        kernel_plan(&kill, true).rules[0].action,
        KernelActionSpec::Deny
    );
}

#[test]
fn an_unknown_deny_fallback_is_rejected_with_its_path() {
    let outcome = load_str(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: p}\nspec:\n  denyFallback: Audit\n  rules: []\n",
    );
    assert_eq!(outcome.errors.len(), 1);
    assert!(
        outcome.errors[0].to_string().contains("denyFallback"),
        "{}",
        outcome.errors[0]
    );
}

#[test]
fn a_policy_travels_as_json_and_loads_back_the_same() {
    let p = cluster(
        "Enforce",
        "  denyFallback: Kill\n",
        "    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Deny}\n",
    );
    let text = policy_json(&p).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (back, _) = crate::load::load_value(&value).expect("loads back");
    assert_eq!(back, p);
}
