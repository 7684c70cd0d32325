//! Table tests: one table per match and except field, each row a call and whether the rule matches.

use super::*;
use crate::{FileInfo, context::PodContext, load::load_str};

const PROT_READ: u64 = 1;
const PROT_WRITE: u64 = 2;
const PROT_EXEC: u64 = 4;
const MAP_SHARED: u64 = 1;
const MAP_PRIVATE: u64 = 2;
const MAP_SHARED_VALIDATE: u64 = 3;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED: u64 = 0x10;
const MAP_HUGETLB: u64 = 0x4_0000;

/// A call to vary: `mmap(NULL, 4096, prot, flags, -1, 0)` by `app`.
fn call(prot: u64, flags: u64) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        ppid: 1,
        cgroup_id: 1,
        ret: 0x7f00_0000_0000,
        ..MmapEvent::anonymous("app", 10, 4096, prot, flags)
    }
}

fn file(path: &str) -> FileInfo {
    FileInfo {
        path: path.into(),
        inode: 1,
        dev: 1,
        memfd: path.starts_with("/memfd:"),
        shm: path.starts_with("/dev/shm/"),
        deleted: false,
        path_truncated: false,
        fs_magic: 0,
    }
}

fn file_call(prot: u64, path: &str) -> MmapEvent {
    let mut event = call(prot, MAP_PRIVATE);
    event.args.fd = 3;
    event.file = Some(file(path));
    event
}

/// The one rule of a cluster policy with this rule body (YAML, indented for `rules:` items).
fn rule(body: &str) -> CompiledRule {
    let text = format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: t}}\nspec:\n  hostProcesses: true\n  rules:\n    - name: r\n{body}"
    );
    let outcome = load_str(&text);
    assert!(outcome.errors.is_empty(), "{body}: {:#?}", outcome.errors);
    let mut compiled = outcome
        .policies
        .into_iter()
        .next()
        .map(|l| l.compiled)
        .unwrap();
    compiled.rules.remove(0)
}

fn host() -> EvalContext {
    EvalContext {
        executable: Some("/usr/bin/app".into()),
        workload: None,
    }
}

fn check(body: &str, rows: &[(&str, MmapEvent, EvalContext, bool)]) {
    let rule = rule(body);
    for (name, event, ctx, want) in rows {
        assert_eq!(
            rule.matches(event, ctx),
            *want,
            "rule\n{body}row {name:?}: {event:?} {ctx:?}"
        );
    }
}

#[test]
fn prot_all() {
    check(
        "      match: {protAll: [PROT_WRITE, PROT_EXEC]}\n",
        &[
            (
                "wx",
                call(PROT_WRITE | PROT_EXEC, MAP_PRIVATE),
                host(),
                true,
            ),
            (
                "rwx",
                call(PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE),
                host(),
                true,
            ),
            (
                "rx",
                call(PROT_READ | PROT_EXEC, MAP_PRIVATE),
                host(),
                false,
            ),
            (
                "rw",
                call(PROT_READ | PROT_WRITE, MAP_PRIVATE),
                host(),
                false,
            ),
            ("none", call(0, MAP_PRIVATE), host(), false),
        ],
    );
}

#[test]
fn prot_any() {
    check(
        "      match: {protAny: [PROT_EXEC, PROT_SEM]}\n",
        &[
            ("x", call(PROT_EXEC, MAP_PRIVATE), host(), true),
            ("sem", call(8, MAP_PRIVATE), host(), true),
            (
                "rw",
                call(PROT_READ | PROT_WRITE, MAP_PRIVATE),
                host(),
                false,
            ),
            ("none", call(0, MAP_PRIVATE), host(), false),
        ],
    );
}

#[test]
fn flags_all_bits_and_types() {
    check(
        "      match: {flagsAll: [MAP_FIXED, MAP_ANONYMOUS]}\n",
        &[
            (
                "both",
                call(PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS),
                host(),
                true,
            ),
            (
                "fixed only",
                call(PROT_READ, MAP_PRIVATE | MAP_FIXED),
                host(),
                false,
            ),
            ("neither", call(PROT_READ, MAP_PRIVATE), host(), false),
        ],
    );
    check(
        "      match: {flagsAll: [MAP_SHARED]}\n",
        &[
            ("shared", call(PROT_READ, MAP_SHARED), host(), true),
            (
                "shared_validate is shared",
                call(PROT_READ, MAP_SHARED_VALIDATE),
                host(),
                true,
            ),
            ("private", call(PROT_READ, MAP_PRIVATE), host(), false),
        ],
    );
    check(
        "      match: {flagsAll: [MAP_PRIVATE, MAP_HUGETLB]}\n",
        &[
            (
                "private hugetlb",
                call(PROT_READ, MAP_PRIVATE | MAP_HUGETLB),
                host(),
                true,
            ),
            (
                "shared_validate is not private",
                call(PROT_READ, MAP_SHARED_VALIDATE | MAP_HUGETLB),
                host(),
                false,
            ),
            ("private", call(PROT_READ, MAP_PRIVATE), host(), false),
        ],
    );
}

#[test]
fn flags_any_bits_and_types() {
    check(
        "      match: {flagsAny: [MAP_HUGETLB, MAP_SHARED]}\n",
        &[
            (
                "hugetlb",
                call(PROT_READ, MAP_PRIVATE | MAP_HUGETLB),
                host(),
                true,
            ),
            ("shared", call(PROT_READ, MAP_SHARED), host(), true),
            (
                "private",
                call(PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS),
                host(),
                false,
            ),
        ],
    );
}

#[test]
fn mapping_kind() {
    let anonymous = call(PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS);
    let backed = file_call(PROT_EXEC, "/usr/lib/libc.so.6");
    let mut unknown_file = backed.clone();
    unknown_file.file = None;
    check(
        "      match: {mapping: Anonymous}\n",
        &[
            ("anonymous", anonymous.clone(), host(), true),
            ("file", backed.clone(), host(), false),
        ],
    );
    check(
        "      match: {mapping: File}\n",
        &[
            ("anonymous", anonymous, host(), false),
            ("file", backed, host(), true),
            ("file-backed, file unknown", unknown_file, host(), true),
        ],
    );
}

#[test]
fn file_kinds_and_paths() {
    let mut deleted = file_call(PROT_EXEC, "/tmp/x");
    deleted.file.as_mut().unwrap().deleted = true;
    let anonymous = call(PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS);
    check(
        "      match: {file: {memfd: true}}\n",
        &[
            ("memfd", file_call(PROT_EXEC, "/memfd:jit"), host(), true),
            ("plain", file_call(PROT_EXEC, "/tmp/x"), host(), false),
            ("anonymous has no file", anonymous.clone(), host(), false),
        ],
    );
    check(
        "      match: {file: {shm: true}}\n",
        &[
            ("shm", file_call(PROT_READ, "/dev/shm/q"), host(), true),
            ("plain", file_call(PROT_READ, "/tmp/x"), host(), false),
        ],
    );
    check(
        "      match: {file: {deleted: true}}\n",
        &[
            ("deleted", deleted.clone(), host(), true),
            ("present", file_call(PROT_EXEC, "/tmp/x"), host(), false),
        ],
    );
    check(
        "      match: {file: {deleted: false, memfd: false}}\n",
        &[
            ("present", file_call(PROT_EXEC, "/tmp/x"), host(), true),
            ("deleted", deleted, host(), false),
            ("memfd", file_call(PROT_EXEC, "/memfd:x"), host(), false),
        ],
    );
    check(
        "      match: {file: {}}\n",
        &[
            ("any known file", file_call(PROT_READ, "/x"), host(), true),
            ("anonymous", anonymous, host(), false),
        ],
    );
    check(
        "      match: {file: {pathGlobs: [\"/tmp/**\", \"/home/*/bin/*\"], notPathGlobs: [\"/tmp/ok/*\"]}}\n",
        &[
            (
                "tmp deep",
                file_call(PROT_EXEC, "/tmp/a/b/c.so"),
                host(),
                true,
            ),
            (
                "home bin",
                file_call(PROT_EXEC, "/home/u/bin/tool"),
                host(),
                true,
            ),
            (
                "* stays in one component",
                file_call(PROT_EXEC, "/home/u/bin/sub/tool"),
                host(),
                false,
            ),
            (
                "excluded",
                file_call(PROT_EXEC, "/tmp/ok/x.so"),
                host(),
                false,
            ),
            (
                "elsewhere",
                file_call(PROT_EXEC, "/usr/lib/x.so"),
                host(),
                false,
            ),
        ],
    );
}

#[test]
fn min_length_and_syscalls() {
    let mut big = call(PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
    big.args.length = 1 << 30;
    let mut just_under = big.clone();
    just_under.args.length = (1 << 30) - 1;
    check(
        "      match: {minLength: 1073741824}\n",
        &[
            ("1 GiB", big, host(), true),
            ("1 GiB - 1", just_under, host(), false),
        ],
    );
    let mut mmap2 = call(PROT_READ, MAP_PRIVATE);
    mmap2.syscall = Syscall::Mmap2;
    let mut old = mmap2.clone();
    old.syscall = Syscall::OldMmap;
    check(
        "      match: {syscalls: [mmap2, old_mmap]}\n",
        &[
            ("mmap", call(PROT_READ, MAP_PRIVATE), host(), false),
            ("mmap2", mmap2, host(), true),
            ("old_mmap", old, host(), true),
        ],
    );
}

#[test]
fn comm_and_executable() {
    let mut java = call(PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS);
    java.comm = "java".into();
    check(
        "      match: {comm: [java, node]}\n",
        &[
            ("java", java.clone(), host(), true),
            ("app", call(PROT_EXEC, MAP_PRIVATE), host(), false),
        ],
    );
    let at = |exe: Option<&str>| EvalContext {
        executable: exe.map(str::to_owned),
        workload: None,
    };
    check(
        "      match: {executableGlobs: [\"/opt/**\", \"**/python3*\"]}\n",
        &[
            ("opt", java.clone(), at(Some("/opt/jdk/bin/java")), true),
            (
                "python anywhere",
                java.clone(),
                at(Some("/usr/local/bin/python3.12")),
                true,
            ),
            ("usr bin", java.clone(), at(Some("/usr/bin/java")), false),
            ("unknown executable never matches", java, at(None), false),
        ],
    );
}

#[test]
fn except_needs_every_field_given() {
    let mut java = call(PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS);
    java.comm = "java".into();
    let pod = |container: &str, image: &str| EvalContext {
        executable: Some("/opt/java/bin/java".into()),
        workload: Some(PodContext {
            namespace: "ns".into(),
            pod: "p".into(),
            container: Some(container.into()),
            image: Some(image.into()),
            ..PodContext::default()
        }),
    };
    check(
        "      match: {protAny: [PROT_EXEC]}\n      except: {comm: [java], images: [\"docker.io/library/eclipse-temurin:*\"]}\n",
        &[
            (
                "java in temurin is exempt",
                java.clone(),
                pod("app", "docker.io/library/eclipse-temurin:21"),
                false,
            ),
            (
                "java elsewhere is not",
                java.clone(),
                pod("app", "docker.io/library/busybox:1"),
                true,
            ),
            (
                "temurin image, other comm",
                call(PROT_EXEC, MAP_PRIVATE),
                pod("app", "docker.io/library/eclipse-temurin:21"),
                true,
            ),
            ("host process has no image", java.clone(), host(), true),
        ],
    );
    check(
        "      match: {protAny: [PROT_EXEC]}\n      except: {containers: [jit], executableGlobs: [\"/opt/**\"]}\n",
        &[
            (
                "container and executable",
                java.clone(),
                pod("jit", "x"),
                false,
            ),
            ("other container", java.clone(), pod("app", "x"), true),
            ("host process has no container", java, host(), true),
        ],
    );
}

#[test]
fn scopes() {
    let outcome = load_str(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  rules: [{name: r, match: {minLength: 1}}]\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: b}\nspec:\n  namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}]}\n  rules: [{name: r, match: {minLength: 1}}]\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: c}\nspec:\n  hostProcesses: true\n  namespaceSelector: {matchLabels: {tier: none}}\n  rules: [{name: r, match: {minLength: 1}}]\n",
    );
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    let [a, b, c] = [0, 1, 2].map(|i| outcome.policies[i].compiled.scope.clone());
    let in_pod = |namespace: &str, app: &str| EvalContext {
        executable: None,
        workload: Some(PodContext {
            namespace: namespace.into(),
            pod: "p".into(),
            pod_labels: [("app".to_owned(), app.to_owned())].into(),
            ..PodContext::default()
        }),
    };
    assert!(a.applies(&in_pod("shop", "web")));
    assert!(!a.applies(&in_pod("shop", "db")), "podSelector");
    assert!(!a.applies(&in_pod("other", "web")), "namespace");
    assert!(
        !a.applies(&host()),
        "namespaced policies never apply to host processes"
    );
    assert!(
        b.applies(&in_pod("shop", "web")),
        "the name label is assumed"
    );
    assert!(!b.applies(&in_pod("kube-system", "web")));
    assert!(!b.applies(&host()), "hostProcesses defaults to false");
    assert!(c.applies(&host()));
    assert!(!c.applies(&in_pod("shop", "web")), "namespaceSelector");
}
