//! The evaluator against a straightforward reference written from the CRD types and the
//! semantics in `compile.rs`'s module docs (property tests), plus precedence and indexing cases.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use proptest::{collection::vec, option, prelude::*, sample::subsequence};

use super::*;
use crate::context::PodContext;
use crate::{
    FileInfo, MmapArgs, Syscall,
    compile::compile,
    crd::{
        ByteSize, ClusterMmapPolicy, ClusterMmapPolicySpec, DenyFallback, ExceptSpec, FileMatch,
        MappingKind, MatchSpec, MmapPolicy, MmapPolicySpec, Rule, SyscallName,
    },
    load::load_str,
    names,
    policy::Policy,
};

// ---------------------------------------------------------------------------------------------
// The reference: direct reading of the spec types, no masks, no index, no globset.

/// Glob match with `*` (within a component), leading `**/` and trailing `/**`.
fn glob_matches(glob: &str, path: &str) -> bool {
    if let Some(rest) = glob.strip_prefix("**/") {
        // `**/rest`: rest at the start, or after any '/'.
        return glob_matches(rest, path)
            || path
                .char_indices()
                .filter(|(_, c)| *c == '/')
                .any(|(i, _)| glob_matches(rest, &path[i + 1..]));
    }
    if let Some(prefix) = glob.strip_suffix("/**") {
        return path
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .any(|(i, _)| glob_matches(prefix, &path[..i]));
    }
    match glob.split_once('*') {
        None => glob == path,
        Some((head, tail)) => {
            let Some(rest) = path.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .take_while(|&n| !rest[..n].contains('/'))
                .filter(|&n| rest.is_char_boundary(n))
                .any(|n| glob_matches(tail, &rest[n..]))
        }
    }
}

fn any_glob(globs: &[String], path: Option<&str>) -> bool {
    path.is_some_and(|p| globs.iter().any(|g| glob_matches(g, p)))
}

fn map_type_matches(name: &str, flags: u64) -> bool {
    let t = flags & 0xf;
    match name {
        "MAP_SHARED" => t == 1 || t == 3,
        other => names::parse_flag(other) == Some(t),
    }
}

fn is_type(name: &str) -> bool {
    names::parse_flag(name).is_some_and(|v| v < 0x10)
}

fn reference_rule(rule: &Rule, event: &MmapEvent, ctx: &EvalContext) -> bool {
    let m = &rule.match_;
    let prot = event.args.prot;
    let flags = event.args.flags;
    let bit = |n: &str| names::parse_prot(n).unwrap();
    let holds = m.prot_all.iter().all(|n| prot & bit(n) != 0)
        && (m.prot_any.is_empty() || m.prot_any.iter().any(|n| prot & bit(n) != 0))
        && m.flags_all.iter().all(|n| {
            if is_type(n) {
                map_type_matches(n, flags)
            } else {
                flags & names::parse_flag(n).unwrap() != 0
            }
        })
        && (m.flags_any.is_empty()
            || m.flags_any.iter().any(|n| {
                if is_type(n) {
                    map_type_matches(n, flags)
                } else {
                    flags & names::parse_flag(n).unwrap() != 0
                }
            }))
        && match m.mapping {
            None => true,
            Some(MappingKind::Anonymous) => event.is_anonymous(),
            Some(MappingKind::File) => !event.is_anonymous(),
        }
        && m.file.as_ref().is_none_or(|f| {
            event.file.as_ref().is_some_and(|file| {
                f.memfd.is_none_or(|w| w == file.memfd)
                    && f.shm.is_none_or(|w| w == file.shm)
                    && f.deleted.is_none_or(|w| w == file.deleted)
                    && (f.path_globs.is_empty() || any_glob(&f.path_globs, Some(&file.path)))
                    && !any_glob(&f.not_path_globs, Some(&file.path))
            })
        })
        && m.min_length
            .as_ref()
            .is_none_or(|min| event.args.length >= min.bytes().unwrap())
        && (m.syscalls.is_empty()
            || m.syscalls
                .iter()
                .any(|s| Syscall::from(*s) == event.syscall))
        && (m.comm.is_empty() || m.comm.contains(&event.comm))
        && (m.executable_globs.is_empty()
            || any_glob(&m.executable_globs, ctx.executable.as_deref()));
    let excepted = rule.except.as_ref().is_some_and(|e| {
        let workload = ctx.workload.as_ref();
        (e.comm.is_empty() || e.comm.contains(&event.comm))
            && (e.executable_globs.is_empty()
                || any_glob(&e.executable_globs, ctx.executable.as_deref()))
            && (e.containers.is_empty()
                || workload
                    .and_then(|w| w.container.as_ref())
                    .is_some_and(|c| e.containers.contains(c)))
            && (e.images.is_empty()
                || any_glob(&e.images, workload.and_then(|w| w.image.as_deref())))
    });
    holds && !excepted
}

fn labels_match(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .and_then(|s| s.match_labels.as_ref())
        .is_none_or(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn reference_applies(policy: &Policy, ctx: &EvalContext) -> bool {
    match (policy, &ctx.workload) {
        (Policy::Namespaced(p), Some(w)) => {
            p.metadata.namespace.as_deref() == Some(w.namespace.as_str())
                && labels_match(p.spec.pod_selector.as_ref(), &w.pod_labels)
        }
        (Policy::Namespaced(_), None) => false,
        (Policy::Cluster(p), Some(w)) => {
            let mut labels = w.namespace_labels.clone();
            labels
                .entry(crate::compile::NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| w.namespace.clone());
            labels_match(p.spec.namespace_selector.as_ref(), &labels)
        }
        (Policy::Cluster(p), None) => p.spec.host_processes,
    }
}

fn reference(
    policies: &[Policy],
    event: &MmapEvent,
    ctx: &EvalContext,
) -> Vec<(String, String, Action, Mode)> {
    policies
        .iter()
        .filter(|p| reference_applies(p, ctx))
        .flat_map(|p| {
            p.rules()
                .iter()
                .filter(|r| reference_rule(r, event, ctx))
                .map(|r| (p.id().to_string(), r.name.clone(), r.action, p.mode()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generators: small alphabets so that rules and calls meet often.

const PROTS: &[&str] = &[
    "PROT_READ",
    "PROT_WRITE",
    "PROT_EXEC",
    "PROT_SEM",
    "PROT_GROWSDOWN",
];
const FLAGS: &[&str] = &[
    "MAP_SHARED",
    "MAP_PRIVATE",
    "MAP_SHARED_VALIDATE",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_HUGETLB",
    "MAP_POPULATE",
    "MAP_NORESERVE",
    "MAP_STACK",
];
const COMMS: &[&str] = &["app", "java", "node"];
const PATHS: &[&str] = &[
    "/usr/bin/java",
    "/usr/lib/libc.so.6",
    "/tmp/x/payload.so",
    "/memfd:jit",
    "/opt/app/bin/app",
    "/dev/shm/q",
];
const GLOBS: &[&str] = &[
    "/usr/**",
    "/tmp/*",
    "/tmp/**",
    "**/java",
    "/usr/lib/*.so*",
    "/opt/*/bin/*",
    "/memfd:*",
    "/dev/shm/q",
];
const IMAGES: &[&str] = &[
    "docker.io/library/eclipse-temurin:21",
    "ghcr.io/acme/app:v1",
];
const IMAGE_GLOBS: &[&str] = &["docker.io/library/*", "*:v1", "ghcr.io/acme/app:v1"];

fn names_of(list: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    subsequence(list, 0..=max).prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

/// Mostly empty lists, so that rules hold few conditions and calls meet them often.
fn sometimes(list: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![2 => Just(Vec::new()), 1 => names_of(list, max)]
}

fn match_spec() -> impl Strategy<Value = MatchSpec> {
    let file = option::weighted(
        0.3,
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            names_of(GLOBS, 2),
            names_of(GLOBS, 1),
        )
            .prop_map(
                |(memfd, shm, deleted, path_globs, not_path_globs)| FileMatch {
                    memfd,
                    shm,
                    deleted,
                    path_globs,
                    not_path_globs,
                },
            ),
    );
    let syscalls = prop_oneof![
        2 => Just(Vec::new()),
        1 => subsequence(&[SyscallName::Mmap, SyscallName::Mmap2, SyscallName::OldMmap][..], 1..=2),
    ];
    (
        (
            sometimes(PROTS, 2),
            sometimes(PROTS, 2),
            sometimes(FLAGS, 3),
            sometimes(FLAGS, 3),
        ),
        (
            option::weighted(
                0.3,
                prop_oneof![Just(MappingKind::Anonymous), Just(MappingKind::File)],
            ),
            file,
        ),
        (
            option::weighted(
                0.2,
                prop_oneof![
                    Just(ByteSize::Bytes(0)),
                    Just(ByteSize::Quantity("4Ki".into())),
                    Just(ByteSize::Bytes(1 << 20))
                ],
            ),
            syscalls,
            sometimes(COMMS, 2),
            sometimes(GLOBS, 2),
        ),
    )
        .prop_map(
            |(
                (prot_all, prot_any, flags_all, flags_any),
                (mapping, file),
                (min_length, syscalls, comm, executable_globs),
            )| MatchSpec {
                prot_all,
                prot_any,
                flags_all,
                flags_any,
                mapping,
                file,
                min_length,
                syscalls,
                comm,
                executable_globs,
            },
        )
}

fn except_spec() -> impl Strategy<Value = ExceptSpec> {
    (
        names_of(COMMS, 2),
        names_of(GLOBS, 1),
        names_of(&["app", "jit"], 1),
        names_of(IMAGE_GLOBS, 1),
    )
        .prop_map(|(comm, executable_globs, containers, images)| ExceptSpec {
            comm,
            executable_globs,
            containers,
            images,
        })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    vec(
        (
            match_spec(),
            option::weighted(0.4, except_spec()),
            prop_oneof![Just(Action::Alert), Just(Action::Kill), Just(Action::Deny)],
        ),
        1..5,
    )
    .prop_map(|rules| {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, (match_, except, action))| Rule {
                name: format!("r{i}"),
                match_,
                except,
                action,
            })
            .collect()
    })
}

fn selector(
    key: &'static str,
    values: &'static [&'static str],
) -> impl Strategy<Value = Option<LabelSelector>> {
    option::weighted(0.4, proptest::sample::select(values)).prop_map(move |v| {
        v.map(|v| LabelSelector {
            match_labels: Some([(key.to_owned(), v.to_owned())].into()),
            match_expressions: None,
        })
    })
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Audit), Just(Mode::Enforce)]
}

fn policy(index: usize) -> impl Strategy<Value = Policy> {
    let name = format!("p{index}");
    let namespaced = (
        proptest::sample::select(&["a", "b"][..]),
        selector("app", &["web", "db"]),
        mode(),
        rules(),
    )
        .prop_map({
            let name = name.clone();
            move |(namespace, pod_selector, mode, rules)| {
                Policy::Namespaced(
                    MmapPolicy::new(
                        &name,
                        MmapPolicySpec {
                            pod_selector,
                            mode,
                            deny_fallback: DenyFallback::Refuse,
                            rules,
                        },
                    )
                    .within(namespace),
                )
            }
        });
    let cluster = (
        selector("kubernetes.io/metadata.name", &["a", "c"]),
        any::<bool>(),
        mode(),
        rules(),
    )
        .prop_map(move |(namespace_selector, host_processes, mode, rules)| {
            Policy::Cluster(ClusterMmapPolicy::new(
                &name,
                ClusterMmapPolicySpec {
                    namespace_selector,
                    host_processes,
                    mode,
                    deny_fallback: DenyFallback::Refuse,
                    rules,
                },
            ))
        });
    prop_oneof![namespaced, cluster]
}

trait Within {
    fn within(self, namespace: &str) -> Self;
}

impl Within for MmapPolicy {
    fn within(mut self, namespace: &str) -> Self {
        self.metadata = ObjectMeta {
            namespace: Some(namespace.to_owned()),
            ..self.metadata
        };
        self
    }
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    (1..6usize).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

fn event() -> impl Strategy<Value = MmapEvent> {
    let file =
        option::weighted(0.6, (proptest::sample::select(PATHS), any::<bool>())).prop_map(|f| {
            f.map(|(path, deleted)| FileInfo {
                path: path.to_owned(),
                inode: 1,
                dev: 1,
                memfd: path.starts_with("/memfd:"),
                shm: path.starts_with("/dev/shm/"),
                deleted,
                path_truncated: false,
                fs_magic: 0,
            })
        });
    let flag_bits: u64 = FLAGS
        .iter()
        .filter_map(|n| names::parse_flag(n))
        .filter(|v| *v >= 0x10)
        .fold(0, |a, b| a | b);
    (
        0u64..0x10,
        any::<bool>(),
        0u64..4,
        any::<u64>(),
        prop_oneof![Just(4096u64), Just(1 << 20), Just(1 << 30)],
        prop_oneof![
            Just(Syscall::Mmap),
            Just(Syscall::Mmap2),
            Just(Syscall::OldMmap)
        ],
        proptest::sample::select(COMMS),
        file,
    )
        .prop_map(
            move |(prot, grows, map_type, bits, length, syscall, comm, file)| {
                let prot = prot | if grows { 0x0100_0000 } else { 0 };
                let flags = map_type | (bits & flag_bits);
                let file = if flags & names::MAP_ANONYMOUS == 0 {
                    file
                } else {
                    None
                };
                MmapEvent {
                    time_ns: 1,
                    syscall,
                    pid: 1,
                    tid: 1,
                    ppid: 0,
                    uid: 0,
                    gid: 0,
                    comm: comm.to_owned(),
                    cgroup_id: 1,
                    args: MmapArgs {
                        addr: 0,
                        length,
                        prot,
                        flags,
                        fd: if file.is_some() { 3 } else { -1 },
                        pgoffset: 0,
                        offset: 0,
                    },
                    ret: 0,
                    file,
                    args_unreadable: false,
                    target_mapping: None,
                    enforced: None,
                    attribution: None,
                }
            },
        )
}

fn context() -> impl Strategy<Value = EvalContext> {
    let workload = (
        proptest::sample::select(&["a", "b", "c"][..]),
        proptest::sample::select(&["web", "db", "none"][..]),
        option::of(proptest::sample::select(&["app", "jit"][..])),
        option::of(proptest::sample::select(IMAGES)),
        any::<bool>(),
    )
        .prop_map(|(namespace, app, container, image, tier)| PodContext {
            namespace: namespace.to_owned(),
            pod: "pod".to_owned(),
            container: container.map(str::to_owned),
            image: image.map(str::to_owned),
            pod_labels: [("app".to_owned(), app.to_owned())].into(),
            namespace_labels: if tier {
                [("tier".to_owned(), "x".to_owned())].into()
            } else {
                BTreeMap::new()
            },
        });
    (
        option::of(proptest::sample::select(PATHS)),
        option::weighted(0.8, workload),
    )
        .prop_map(|(executable, workload)| EvalContext {
            executable: executable.map(str::to_owned),
            workload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn evaluation_agrees_with_the_reference(mut policies in policies(), share in any::<bool>(), calls in vec((event(), context()), 1..20)) {
        // Policies often repeat rules (copied from a library): the set tests each distinct rule
        // once per call, which must not mix up their scopes, modes and actions.
        if share && policies.len() > 1 {
            let rules = policies[0].rules().to_vec();
            match policies.last_mut() {
                Some(Policy::Namespaced(p)) => p.spec.rules = rules,
                Some(Policy::Cluster(p)) => p.spec.rules = rules,
                None => {}
            }
        }
        // Policies the generator made contradictory (two mapping types in flagsAll, an empty
        // match) are rejected by compile and left out of both sides.
        let valid: Vec<Policy> = policies.into_iter().filter(|p| compile(p).is_ok()).collect();
        let set = PolicySet::new(valid.iter().map(|p| compile(p).unwrap()).collect()).unwrap();
        for (event, ctx) in &calls {
            let got: Vec<_> = set.evaluate(event, ctx).iter().map(|m| (m.policy.to_string(), m.rule.to_owned(), m.action, m.mode)).collect();
            prop_assert_eq!(got, reference(&valid, event, ctx), "event {:?}\ncontext {:?}\nindexed {}", event, ctx, set.indexed);
        }
    }

    #[test]
    fn reference_globs_agree_with_globset(glob in proptest::sample::select(GLOBS), path in proptest::sample::select(PATHS)) {
        let compiled = globset::GlobBuilder::new(glob).literal_separator(true).build().unwrap().compile_matcher();
        prop_assert_eq!(compiled.is_match(path), glob_matches(glob, path), "{} vs {}", glob, path);
    }
}

// ---------------------------------------------------------------------------------------------
// Precedence and the index.

fn set(yaml: &str) -> PolicySet {
    let outcome = load_str(yaml);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    PolicySet::new(outcome.policies.into_iter().map(|l| l.compiled).collect()).unwrap()
}

fn wx_call() -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        cgroup_id: 1,
        ..MmapEvent::anonymous("app", 1, 4096, 6, 0x22)
    }
}

const HEADER: &str = "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\n";

#[test]
fn every_match_is_returned_and_the_strongest_enforced_action_wins() {
    let set = set(&format!(
        "{HEADER}metadata: {{name: audit}}\nspec:\n  hostProcesses: true\n  mode: Audit\n  rules: [{{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, action: Deny}}]\n---\n\
         {HEADER}metadata: {{name: enforce}}\nspec:\n  hostProcesses: true\n  mode: Enforce\n  rules:\n    - {{name: exec, match: {{protAny: [PROT_EXEC]}}, action: Kill}}\n    - {{name: anon, match: {{mapping: Anonymous}}, action: Alert}}\n    - {{name: file, match: {{mapping: File}}, action: Deny}}\n"
    ));
    let ctx = EvalContext::default();
    let matches = set.evaluate(&wx_call(), &ctx);
    let summary: Vec<_> = matches
        .iter()
        .map(|m| (m.policy.to_string(), m.rule, m.action, m.mode))
        .collect();
    assert_eq!(
        summary,
        [
            ("audit".to_owned(), "wx", Action::Deny, Mode::Audit),
            ("enforce".to_owned(), "exec", Action::Kill, Mode::Enforce),
            ("enforce".to_owned(), "anon", Action::Alert, Mode::Enforce),
        ]
    );
    assert_eq!(
        matches[0].effective_action(),
        Action::Alert,
        "audit never blocks"
    );
    assert_eq!(
        strongest(&matches),
        Some(Action::Kill),
        "the audit Deny does not count"
    );
    assert_eq!(strongest(&matches[..1]), Some(Action::Alert));
    assert_eq!(strongest(&[]), None);
    let mut exec_file = wx_call();
    exec_file.args.prot = 5;
    exec_file.args.flags = 0x02;
    let matches = set.evaluate(&exec_file, &ctx);
    assert_eq!(
        matches.iter().map(|m| m.rule).collect::<Vec<_>>(),
        ["exec", "file"],
        "file-backed even when the file is unknown"
    );
    assert_eq!(strongest(&matches), Some(Action::Deny), "Deny > Kill");
    let mut read_only = exec_file;
    read_only.args.prot = 1;
    read_only.args.flags = 0x22;
    assert_eq!(
        strongest(&set.evaluate(&read_only, &ctx)),
        Some(Action::Alert),
        "only the anon rule"
    );
}

#[test]
fn duplicate_policies_are_refused() {
    let one = format!(
        "{HEADER}metadata: {{name: x}}\nspec: {{rules: [{{name: r, match: {{minLength: 1}}}}]}}\n"
    );
    let outcome = load_str(&format!("{one}---\n{one}"));
    let error =
        PolicySet::new(outcome.policies.into_iter().map(|l| l.compiled).collect()).unwrap_err();
    assert_eq!(error.to_string(), "policy x is defined more than once");
}

#[test]
fn many_distinct_bits_fall_back_to_testing_every_rule() {
    let flags = [
        "MAP_FIXED",
        "MAP_ANONYMOUS",
        "MAP_32BIT",
        "MAP_GROWSDOWN",
        "MAP_DENYWRITE",
        "MAP_EXECUTABLE",
        "MAP_LOCKED",
        "MAP_NORESERVE",
        "MAP_POPULATE",
        "MAP_NONBLOCK",
        "MAP_STACK",
        "MAP_HUGETLB",
        "MAP_SYNC",
    ];
    let rules: Vec<String> = flags
        .iter()
        .map(|f| format!("{{name: {f}, match: {{flagsAll: [{f}]}}}}"))
        .collect();
    let set = set(&format!(
        "{HEADER}metadata: {{name: x}}\nspec:\n  hostProcesses: true\n  rules: [{}]\n",
        rules.join(", ")
    ));
    assert!(!set.indexed, "13 bits exceed the index");
    let matches = set.evaluate(&wx_call(), &EvalContext::default());
    assert_eq!(
        matches.iter().map(|m| m.rule).collect::<Vec<_>>(),
        ["MAP_ANONYMOUS"]
    );
}

#[test]
fn identical_rules_in_several_policies_are_each_reported_and_scoped() {
    let rule = "rules: [{name: jit, match: {protAny: [PROT_EXEC], mapping: Anonymous}, except: {comm: [java]}, action: Kill}]";
    let set = set(&format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: a, namespace: shop}}\nspec: {{mode: Enforce, {rule}}}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: b, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, {rule}}}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: c, namespace: other}}\nspec: {{{rule}}}\n"
    ));
    let ctx = |app: &str| EvalContext {
        executable: None,
        workload: Some(PodContext {
            namespace: "shop".into(),
            pod: "p".into(),
            pod_labels: [("app".to_owned(), app.to_owned())].into(),
            ..PodContext::default()
        }),
    };
    let ids = |event: &MmapEvent, ctx: &EvalContext| {
        set.evaluate(event, ctx)
            .iter()
            .map(|m| (m.policy.to_string(), m.mode))
            .collect::<Vec<_>>()
    };
    let mut jit = wx_call();
    jit.args.prot = 5;
    assert_eq!(
        ids(&jit, &ctx("web")),
        [
            ("shop/a".to_owned(), Mode::Enforce),
            ("shop/b".to_owned(), Mode::Audit)
        ]
    );
    assert_eq!(
        ids(&jit, &ctx("db")),
        [("shop/a".to_owned(), Mode::Enforce)],
        "podSelector"
    );
    jit.comm = "java".into();
    assert!(
        ids(&jit, &ctx("web")).is_empty(),
        "the shared result honours the exception"
    );
    let scope = set.scope(&ctx("web"));
    assert_eq!(scope.len(), 2);
    let mut out = Vec::new();
    jit.comm = "app".into();
    set.evaluate_scoped(&scope, &jit, &ctx("web"), &mut out);
    assert_eq!(out.len(), 2, "a cached scope gives what evaluate gives");
}
