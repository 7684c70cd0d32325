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
fn comm_executables_files_excepts_and_mapping_types_are_judged_in_the_kernel() {
    let p = cluster(
        "Enforce",
        "",
        "    - {name: jit, match: {protAny: [PROT_EXEC], mapping: Anonymous, comm: [java], executableGlobs: ['/opt/**']}, except: {comm: [jitok], executableGlobs: ['/usr/bin/*'], images: ['openjdk:*']}, action: Kill}\n    - {name: tmp, match: {protAny: [PROT_EXEC], file: {memfd: false, deleted: true, pathGlobs: ['/tmp/**'], notPathGlobs: ['/tmp/ok/{a,b}']}}, action: Kill}\n    - {name: private, match: {flagsAll: [MAP_PRIVATE], flagsAny: [MAP_SHARED, MAP_HUGETLB]}, action: Kill}\n",
    );
    let plan = kernel_plan(&p, true);
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    let jit = &plan.rules[0];
    assert_eq!(jit.comm, ["java"]);
    assert_eq!(jit.executable.as_ref().unwrap().globs, ["/opt/**"]);
    let except = jit.except.as_ref().expect("the kernel part of except");
    assert_eq!(except.comm, ["jitok"]);
    assert_eq!(except.executable.as_ref().unwrap().patterns.len(), 1);
    assert!(jit.workload_except, "images are resolved per cgroup");

    let tmp = plan.rules[1].file.as_ref().expect("file conditions");
    assert_eq!(
        (tmp.memfd, tmp.shm, tmp.deleted),
        (Some(false), None, Some(true))
    );
    assert_eq!(
        tmp.path.as_ref().unwrap().patterns[0].to_string(),
        "/tmp/<anything>"
    );
    assert_eq!(
        tmp.not_path.as_ref().unwrap().patterns.len(),
        2,
        "{{a,b}} expands"
    );

    let private = &plan.rules[2];
    assert_eq!(private.types_all, 1 << 2, "MAP_PRIVATE is type 2");
    assert!(private.flags_any_given);
    assert_eq!(private.flags_any, 0x40000, "MAP_HUGETLB");
    assert_eq!(
        private.types_any,
        (1 << 1) | (1 << 3),
        "MAP_SHARED and MAP_SHARED_VALIDATE"
    );
}

#[test]
fn a_glob_the_kernel_cannot_judge_is_refused_with_the_glob_named() {
    let cases = [
        (
            "{protAny: [PROT_EXEC], executableGlobs: ['/usr/*/bin/*']}",
            "",
            "match.executableGlobs[0]: glob \"/usr/*/bin/*\"",
        ),
        (
            "{protAny: [PROT_EXEC], file: {pathGlobs: ['/x', '/lib/lib?.so']}}",
            "",
            "match.file.pathGlobs[1]: glob \"/lib/lib?.so\"",
        ),
        (
            "{protAny: [PROT_EXEC], file: {notPathGlobs: ['**/*.so']}}",
            "",
            "match.file.notPathGlobs[0]",
        ),
        (
            "{protAny: [PROT_EXEC]}",
            ", except: {executableGlobs: ['/opt/[a-z]*']}",
            "except.executableGlobs[0]",
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

/// One YAML list item per `i`, as `rules:` takes them.
fn rule_lines(range: impl Iterator<Item = usize>, rule: impl Fn(usize) -> String) -> String {
    range.fold(String::new(), |mut out, i| {
        out.push_str("    - ");
        out.push_str(&rule(i));
        out.push('\n');
        out
    })
}

#[test]
fn a_set_beyond_the_kernels_bounds_refuses_the_rules_past_them_in_order() {
    let rules = rule_lines(0..RULES_MAX + 2, |i| {
        format!("{{name: r{i}, match: {{protAny: [PROT_EXEC], minLength: {i}}}, action: Kill}}")
    });
    let plan = kernel_set_plan([&cluster("Enforce", "", &rules)], true);
    assert_eq!(plan.rules.len(), RULES_MAX);
    assert_eq!(
        plan.refused
            .iter()
            .map(|r| r.rule.as_str())
            .collect::<Vec<_>>(),
        [format!("r{RULES_MAX}"), format!("r{}", RULES_MAX + 1)]
    );
    assert!(
        plan.refused[0].reason.contains("at most 32 Enforce rules"),
        "{:?}",
        plan.refused
    );

    // 65 distinct patterns: the rule whose globs cross the bound is refused, later ones that fit
    // are still taken.
    let globs = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("'/p{i}/**'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = format!(
        "    - {{name: a, match: {{file: {{pathGlobs: [{}]}}}}, action: Kill}}\n    - {{name: b, match: {{file: {{pathGlobs: [{}]}}}}, action: Kill}}\n    - {{name: c, match: {{comm: [x]}}, action: Kill}}\n",
        globs(0, 60),
        globs(60, 5)
    );
    let plan = kernel_set_plan([&cluster("Enforce", "", &rules)], true);
    assert_eq!(
        plan.rules
            .iter()
            .map(|r| r.rule.as_str())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert!(
        plan.refused[0]
            .reason
            .contains("at most 64 distinct kernel patterns"),
        "{:?}",
        plan.refused
    );
    assert_eq!(plan.patterns().len(), 60);
    assert_eq!(plan.comm_class(&["x".to_owned()]), 1);
    assert_eq!(
        plan.path_class(plan.rules[0].file.as_ref().unwrap().path.as_ref()),
        1
    );

    let rules = rule_lines(0..=COMM_CLASSES_MAX, |i| {
        format!("{{name: r{i}, match: {{comm: [c{i}]}}, action: Kill}}")
    });
    let plan = kernel_set_plan([&cluster("Enforce", "", &rules)], true);
    assert_eq!(plan.rules.len(), RULES_MAX, "the rule bound comes first");
    let names: Vec<String> = (0..=COMM_NAMES_MAX).map(|i| format!("n{i}")).collect();
    let rules = format!(
        "    - {{name: many, match: {{comm: [{}]}}, action: Kill}}\n",
        names.join(", ")
    );
    let plan = kernel_set_plan([&cluster("Enforce", "", &rules)], true);
    assert!(
        plan.refused[0]
            .reason
            .contains("at most 256 distinct command names"),
        "{:?}",
        plan.refused
    );
}

#[test]
fn the_example_policies_switched_to_enforce_refuse_no_rule() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/policies") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("mode: Audit", "mode: Enforce");
        let outcome = load_str(&text);
        assert!(
            outcome.errors.is_empty(),
            "{}: {:?}",
            path.display(),
            outcome.errors
        );
        policies.extend(outcome.policies.into_iter().map(|l| l.policy));
    }
    assert!(policies.len() >= 6, "{policies:?}");
    for deny_available in [true, false] {
        let plan = kernel_set_plan(&policies, deny_available);
        assert!(plan.refused.is_empty(), "{:#?}", plan.refused);
        let names: Vec<&str> = plan.rules.iter().map(|r| r.rule.as_str()).collect();
        for expected in [
            "anonymous-exec",
            "memfd-exec",
            "exec-from-writable-path",
            "write-and-execute",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
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
