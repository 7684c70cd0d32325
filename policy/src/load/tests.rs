use super::*;
use crate::crd::{Action, MappingKind, Mode, SyscallName};

const GOOD: &str = r#"
apiVersion: mapsentry.dev/v1alpha1
kind: MmapPolicy
metadata:
  name: no-wx
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: web}
  mode: Enforce
  rules:
    - name: write-exec
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Kill
    - name: anon-exec
      match:
        protAny: [PROT_EXEC]
        mapping: Anonymous
        syscalls: [mmap, mmap2]
        minLength: 4096
      except:
        comm: [java]
        images: ["*/openjdk:*"]
---
apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: hugetlb
spec:
  hostProcesses: true
  rules:
    - name: hugetlb
      match:
        flagsAny: [MAP_HUGETLB]
"#;

/// Every problem of `text`'s documents, as `document N: path: reason` lines.
fn problems(text: &str) -> Vec<String> {
    let outcome = load_str(text);
    outcome
        .errors
        .iter()
        .flat_map(|error| match error {
            LoadError::Invalid {
                document, problems, ..
            } => problems
                .iter()
                .map(|p| format!("document {document}: {p}"))
                .collect::<Vec<_>>(),
            LoadError::Syntax { document, message } => {
                vec![format!("document {document}: syntax: {message}")]
            }
        })
        .collect()
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n{spec}"
    )
}

#[test]
fn good_documents_load_with_defaults() {
    let outcome = load_str(GOOD);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    assert_eq!(outcome.policies.len(), 2);
    let first = &outcome.policies[0];
    assert_eq!(first.document, 1);
    assert_eq!(first.compiled.id.to_string(), "shop/no-wx");
    let Policy::Namespaced(p) = &first.policy else {
        panic!("expected an MmapPolicy, got {:?}", first.policy)
    };
    assert_eq!(p.spec.mode, Mode::Enforce);
    assert_eq!(p.spec.rules[0].action, Action::Kill);
    assert_eq!(p.spec.rules[1].action, Action::Alert, "default action");
    assert_eq!(p.spec.rules[1].match_.mapping, Some(MappingKind::Anonymous));
    assert_eq!(
        p.spec.rules[1].match_.syscalls,
        [SyscallName::Mmap, SyscallName::Mmap2]
    );
    let second = &outcome.policies[1];
    assert_eq!(second.document, 2);
    assert_eq!(second.compiled.id.to_string(), "hugetlb");
    assert_eq!(second.policy.mode(), Mode::Audit, "default mode");
}

#[test]
fn a_namespaced_policy_without_namespace_lands_in_default() {
    let text = "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: p}\nspec:\n  rules: [{name: r, match: {minLength: 1}}]\n";
    let outcome = load_str(text);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    assert_eq!(outcome.policies[0].compiled.id.to_string(), "default/p");
}

#[test]
fn every_problem_of_a_document_is_reported_with_its_path() {
    let text = policy(
        r"  mode: enforce
  rules:
    - name: a
      match:
        protAll: [PROT_WRITE, PROT_WRIT]
        protAl: [PROT_EXEC]
        minLength: -1
    - name: a
      match:
        flagsAll: [MAP_SHARED, MAP_PRIVATE]
        flagsAny: [MAP_ANON, MAP_HUGETLB]
        syscalls: [mmap3]
      action: Block
",
    );
    let got = problems(&text);
    let want = [
        r#"document 1: spec.mode: unsupported value "enforce" (expected one of "Audit", "Enforce"); did you mean "Enforce"?"#,
        "document 1: spec.rules[0].match.minLength: expected a whole number or a quantity string (8Gi), found a number (-1)",
        r#"document 1: spec.rules[0].match.protAl: unknown field "protAl"; did you mean "protAll"?"#,
        r#"document 1: spec.rules[1].action: unsupported value "Block" (expected one of "Alert", "Kill", "Deny")"#,
        r#"document 1: spec.rules[1].match.syscalls[0]: unsupported value "mmap3" (expected one of "mmap", "mmap2", "old_mmap", "mprotect"); did you mean "mmap"?"#,
        // The meaning of what remains, in the same pass.
        r#"document 1: spec.rules[0].match.protAll[1]: unknown protection "PROT_WRIT"; did you mean "PROT_WRITE"?"#,
        r#"document 1: spec.rules[1].name: duplicate rule name "a" (also spec.rules[0]); alerts name rules, so names must be unique"#,
        r#"document 1: spec.rules[1].match.flagsAny[0]: unknown flag "MAP_ANON"; write MAP_ANONYMOUS"#,
        "document 1: spec.rules[1].match.flagsAll: MAP_SHARED and MAP_PRIVATE are both mapping types; a call has exactly one, so the rule could never match",
    ];
    assert_eq!(
        got, want,
        "structural problems first, then the meaning of the rest"
    );

    // A removed value does not cause problems of its own: minLength was the only condition.
    let got = problems(&policy(
        "  rules:\n    - name: a\n      match: {minLength: -1}\n",
    ));
    assert_eq!(
        got,
        [
            "document 1: spec.rules[0].match.minLength: expected a whole number or a quantity string (8Gi), found a number (-1)"
        ]
    );
    let got = problems(&policy(
        "  rules:\n    - name: a\n      match: {minLength: 8GB}\n",
    ));
    assert_eq!(
        got,
        [
            r#"document 1: spec.rules[0].match.minLength: invalid size "8GB": write bytes (4096) or a whole number with a suffix: Ki, Mi, Gi, Ti, Pi (powers of 1024) or k, M, G, T, P (powers of 1000)"#
        ]
    );

    let text = policy(
        r#"  rules:
    - name: a
      match:
        protAll: [PROT_WRITE, PROT_WRIT, PROT_NONE]
    - name: a
      match:
        flagsAll: [MAP_SHARED, MAP_PRIVATE]
        flagsAny: [MAP_ANON, MAP_HUGETLB]
        comm: [a-very-long-command-name]
        executableGlobs: [java, "/usr/[bin"]
    - name: c
      match: {}
      except: {}
"#,
    );
    let got = problems(&text);
    let want = [
        r#"document 1: spec.rules[0].match.protAll[1]: unknown protection "PROT_WRIT"; did you mean "PROT_WRITE"?"#,
        "document 1: spec.rules[0].match.protAll[2]: PROT_NONE is not a bit (it means prot is 0) and cannot be matched; list PROT_READ, PROT_WRITE or PROT_EXEC",
        r#"document 1: spec.rules[1].name: duplicate rule name "a" (also spec.rules[0]); alerts name rules, so names must be unique"#,
        r#"document 1: spec.rules[1].match.flagsAny[0]: unknown flag "MAP_ANON"; write MAP_ANONYMOUS"#,
        "document 1: spec.rules[1].match.flagsAll: MAP_SHARED and MAP_PRIVATE are both mapping types; a call has exactly one, so the rule could never match",
        r#"document 1: spec.rules[1].match.comm[0]: "a-very-long-command-name" is 24 bytes but the kernel keeps at most 15 of a command name, so it never matches; write "a-very-long-com" or use executableGlobs"#,
        r#"document 1: spec.rules[1].match.executableGlobs[0]: glob "java" can never match an absolute path; write "/java", "**/java" or a full path"#,
        r#"document 1: spec.rules[1].match.executableGlobs[1]: invalid glob "/usr/[bin": unclosed character class; missing ']'"#,
        "document 1: spec.rules[2].match: empty match: the rule would match every call; give at least one condition",
        "document 1: spec.rules[2].except: empty except: it would exempt every call; give a condition or remove it",
    ];
    assert_eq!(got, want);
}

#[test]
fn envelope_problems_are_reported_together() {
    let text = "apiVersion: mapsentry.dev/v1\nkind: ClusterMmapPolicy\nmetadata:\n  name: Bad_Name\n  namespace: x\n  labelz: {}\n  labels: {a: 1}\nspec:\n  rules: []\n  hostProcesses: yes\nextra: 1\n";
    let got = problems(text);
    let want = [
        r#"document 1: apiVersion: unsupported apiVersion "mapsentry.dev/v1" (expected "mapsentry.dev/v1alpha1")"#,
        r#"document 1: metadata.name: invalid name "Bad_Name": lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253"#,
        "document 1: metadata.namespace: a ClusterMmapPolicy is cluster-scoped and has no namespace; remove it, or use an MmapPolicy",
        r#"document 1: metadata.labels["a"]: expected a string, found a number (1) (quote it)"#,
        r#"document 1: metadata.labelz: unknown field "labelz"; did you mean "labels"?"#,
        r#"document 1: extra: unknown field "extra" (known fields: apiVersion, kind, metadata, spec, status)"#,
        r#"document 1: spec.hostProcesses: expected a boolean (true or false), found a string ("yes")"#,
    ];
    assert_eq!(got, want);
}

#[test]
fn missing_and_unknown_kinds_and_required_fields() {
    assert_eq!(
        problems("apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicie\nmetadata: {name: a}\n"),
        [
            r#"document 1: kind: unknown kind "MmapPolicie" (expected MmapPolicy or ClusterMmapPolicy); did you mean "MmapPolicy"?"#
        ]
    );
    assert_eq!(
        problems("kind: MmapPolicy\nspec:\n  rules:\n    - match: {protAny: [PROT_EXEC]}\n"),
        [
            r#"document 1: apiVersion: required field is missing (expected "mapsentry.dev/v1alpha1")"#,
            "document 1: metadata: required field is missing (at least metadata.name)",
            "document 1: spec.rules[0].name: required field is missing",
        ]
    );
    assert_eq!(
        problems("- a\n- b\n"),
        [
            r"document 1: <root>: expected a policy object (apiVersion, kind, metadata, spec), found a list"
        ]
    );
    assert_eq!(
        problems(&policy("  rules: PROT_EXEC\n")),
        [
            "document 1: spec.rules: expected a list, found a string (\"PROT_EXEC\") (write a list: [A, B] or one `- A` per line)"
        ]
    );
}

#[test]
fn bad_documents_do_not_spoil_good_ones_and_keep_their_index() {
    let text = format!(
        "{GOOD}---\n---\napiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: x}}\nspec: {{rules: [{{name: r, match: {{protAny: [PROT_EXCE]}}}}]}}\n"
    );
    let outcome = load_str(&text);
    assert_eq!(outcome.policies.len(), 2);
    assert_eq!(outcome.errors.len(), 1);
    let error = &outcome.errors[0];
    assert_eq!(error.document(), 4, "the empty third document still counts");
    assert_eq!(
        error.to_string(),
        r#"document 4 (MmapPolicy "x"): 1 problem(s): spec.rules[0].match.protAny[0]: unknown protection "PROT_EXCE"; did you mean "PROT_EXEC"?"#
    );
}

#[test]
fn yaml_syntax_errors_name_the_document_and_position() {
    let text = format!("{GOOD}---\nkind: [unclosed\n");
    let outcome = load_str(&text);
    assert_eq!(outcome.policies.len(), 2);
    assert_eq!(outcome.errors.len(), 1);
    let LoadError::Syntax { document, message } = &outcome.errors[0] else {
        panic!("{:?}", outcome.errors)
    };
    assert_eq!(*document, 3);
    assert!(message.contains("line"), "{message}");
}

#[test]
fn nothing_panics_on_odd_yaml() {
    for text in [
        "",
        "---\n",
        "null",
        "42",
        "{1: 2}",
        "!!binary aGVsbG8=",
        "a: &x [*x]",
        "spec: {rules: [{name: r, match: {minLength: -1}}]}",
    ] {
        let outcome = load_str(text);
        assert!(
            outcome.policies.is_empty(),
            "{text:?} loaded {:?}",
            outcome.policies
        );
    }
}
