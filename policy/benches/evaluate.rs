//! Evaluation throughput: 100 policies x 10 rules (80 namespaced over 40 namespaces, 20 cluster
//! policies), loaded from YAML by the real loader, against a mix of calls shaped like a busy node.
//!
//! Run: `nice -n 10 cargo bench -p mapsentry-policy --bench evaluate`
//! Goal (issue 4): >= 5,000,000 evaluations/s on one core. One evaluation = one call checked
//! against the whole policy set (scoping, index, every candidate rule, matches collected).
//! Rates are per second of this thread's CPU time (per core, whatever else the machine runs);
//! wall-clock rates are printed next to them.

#![expect(clippy::cast_precision_loss, reason = "rates for display")]

use std::{collections::BTreeMap, fmt::Write as _, hint::black_box, time::Instant};

use mapsentry_policy::{
    CallerScope, EvalContext, FileInfo, MmapArgs, MmapEvent, PodContext, PolicySet, Syscall,
    load_str,
};

const NAMESPACES: usize = 40;

fn rules(seed: usize) -> String {
    let big = 8u64 << 30;
    let extra = seed % 7;
    format!(
        r#"
    - name: write-exec
      match: {{protAll: [PROT_WRITE, PROT_EXEC]}}
      action: Kill
    - name: anon-exec
      match: {{protAny: [PROT_EXEC], mapping: Anonymous}}
      except: {{comm: [java, node, dotnet]}}
      action: Kill
    - name: memfd-exec
      match: {{protAny: [PROT_EXEC], file: {{memfd: true}}}}
      action: Kill
    - name: exec-from-writable
      match: {{protAny: [PROT_EXEC], mapping: File, file: {{pathGlobs: ["/tmp/**", "/dev/shm/**", "/var/tmp/**", "/home/**"]}}}}
      action: Kill
    - name: exec-outside-system
      match: {{protAny: [PROT_EXEC], mapping: File, file: {{memfd: false, notPathGlobs: ["/usr/**", "/lib/**", "/lib64/**", "/bin/**", "/sbin/**", "/opt/app{extra}/**"]}}}}
    - name: hugetlb
      match: {{flagsAny: [MAP_HUGETLB]}}
    - name: huge
      match: {{minLength: {big}}}
    - name: deleted-exec
      match: {{protAny: [PROT_EXEC], file: {{deleted: true}}}}
    - name: fixed-exec-shell
      match: {{flagsAll: [MAP_FIXED], protAny: [PROT_EXEC], comm: [sh, bash, dash]}}
      action: Deny
    - name: shared-exec
      match: {{flagsAll: [MAP_SHARED], protAny: [PROT_EXEC], syscalls: [mmap2, old_mmap]}}
"#
    )
}

fn policies() -> String {
    let mut text = String::new();
    for i in 0..80 {
        let namespace = i % NAMESPACES;
        let _ = write!(
            text,
            "---\napiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: p{i}, namespace: ns{namespace}}}\nspec:\n  mode: {}\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  rules:{}",
            if i % 2 == 0 { "Enforce" } else { "Audit" },
            i % 3,
            rules(i)
        );
    }
    for i in 0..20 {
        let selector = if i % 2 == 0 {
            "\n  namespaceSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [system]}]}"
        } else {
            ""
        };
        let _ = write!(
            text,
            "---\napiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {{name: c{i}}}\nspec:\n  hostProcesses: {}{selector}\n  rules:{}",
            i % 4 == 0,
            rules(i + 100)
        );
    }
    text
}

fn file(path: &str) -> FileInfo {
    FileInfo {
        path: path.to_owned(),
        inode: 1,
        dev: 1,
        memfd: path.starts_with("/memfd:"),
        shm: false,
        deleted: false,
        path_truncated: false,
        fs_magic: 0xef53,
    }
}

fn call(comm: &str, prot: u64, flags: u64, file: Option<FileInfo>) -> MmapEvent {
    MmapEvent {
        time_ns: 0,
        syscall: Syscall::Mmap,
        pid: 1,
        tid: 1,
        ppid: 0,
        uid: 0,
        gid: 0,
        comm: comm.to_owned(),
        cgroup_id: 1,
        args: MmapArgs {
            addr: 0,
            length: 1 << 16,
            prot,
            flags,
            fd: if file.is_some() { 3 } else { -1 },
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x7f00_0000_0000,
        file,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

/// Calls in the proportions of a busy node: mostly malloc arenas and library loads.
fn busy_mix() -> Vec<MmapEvent> {
    let mut calls = Vec::new();
    calls.extend(std::iter::repeat_n(call("app", 3, 0x22, None), 50));
    calls.extend(std::iter::repeat_n(
        call("app", 1, 0x02, Some(file("/usr/share/zoneinfo/UTC"))),
        25,
    ));
    calls.extend(std::iter::repeat_n(
        call(
            "app",
            5,
            0x802,
            Some(file("/usr/lib/x86_64-linux-gnu/libc.so.6")),
        ),
        15,
    ));
    calls.extend(std::iter::repeat_n(call("java", 0, 0x4022, None), 5));
    calls.extend(std::iter::repeat_n(call("java", 7, 0x22, None), 5));
    calls
}

/// Only executable file mappings outside system paths: every glob rule is a candidate.
fn exec_heavy() -> Vec<MmapEvent> {
    [
        "/tmp/x.so",
        "/srv/plugins/a.so",
        "/opt/app3/lib/b.so",
        "/memfd:jit",
        "/usr/lib/libz.so.1",
    ]
    .iter()
    .map(|path| call("app", 5, 0x02, Some(file(path))))
    .collect()
}

fn contexts() -> Vec<EvalContext> {
    let mut contexts: Vec<EvalContext> = (0..NAMESPACES * 2)
        .map(|i| EvalContext {
            executable: Some("/usr/bin/app".to_owned()),
            workload: Some(PodContext {
                namespace: format!("ns{}", i % NAMESPACES),
                pod: format!("pod-{i}"),
                container: Some("app".to_owned()),
                image: Some("ghcr.io/acme/app:1".to_owned()),
                pod_labels: BTreeMap::from([("app".to_owned(), format!("app{}", i % 3))]),
                namespace_labels: BTreeMap::from([(
                    "tier".to_owned(),
                    if i % 10 == 0 { "system" } else { "apps" }.to_owned(),
                )]),
            }),
        })
        .collect();
    contexts.push(EvalContext {
        executable: Some("/usr/sbin/sshd".to_owned()),
        workload: None,
    });
    contexts
}

/// Time `evaluate` over `calls` x `contexts` for about two seconds; returns evaluations/s.
fn measure(
    name: &str,
    calls: &[MmapEvent],
    contexts: &[EvalContext],
    mut evaluate: impl FnMut(usize, &MmapEvent) -> usize,
) {
    let mut rounds = 1_000usize;
    loop {
        let mut matches = 0usize;
        let start = Instant::now();
        let cpu_start = thread_cpu_seconds();
        for round in 0..rounds {
            let ctx = round % contexts.len();
            for event in calls {
                matches += evaluate(black_box(ctx), black_box(event));
            }
        }
        let cpu = thread_cpu_seconds() - cpu_start;
        let elapsed = start.elapsed();
        if cpu < 2.0 {
            rounds *= 2;
            continue;
        }
        let evaluations = (rounds * calls.len()) as f64;
        println!(
            "{name:<48} {:>10.0} evaluations/s of CPU ({:>6.1} ns each; wall clock {:>10.0}/s), {:.2} matches per call",
            evaluations / cpu,
            cpu * 1e9 / evaluations,
            evaluations / elapsed.as_secs_f64(),
            matches as f64 / evaluations,
        );
        return;
    }
}

fn thread_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn run(name: &str, set: &PolicySet, calls: &[MmapEvent], contexts: &[EvalContext]) {
    let mut out = Vec::with_capacity(64);
    measure(
        &format!("{name}, scope per call"),
        calls,
        contexts,
        |ctx, event| {
            out.clear();
            set.evaluate_into(event, &contexts[ctx], &mut out);
            out.len()
        },
    );
    // What a collector does: the scope once per container, then each call.
    let scopes: Vec<CallerScope> = contexts.iter().map(|ctx| set.scope(ctx)).collect();
    let mut out = Vec::with_capacity(64);
    measure(
        &format!("{name}, scope cached per container"),
        calls,
        contexts,
        |ctx, event| {
            out.clear();
            set.evaluate_scoped(&scopes[ctx], event, &contexts[ctx], &mut out);
            out.len()
        },
    );
}

fn main() {
    let outcome = load_str(&policies());
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    let rules: usize = outcome
        .policies
        .iter()
        .map(|l| l.compiled.rules.len())
        .sum();
    let set = PolicySet::new(outcome.policies.into_iter().map(|l| l.compiled).collect())
        .expect("unique names");
    println!(
        "{} policies, {rules} rules, {} contexts (80 pods in 40 namespaces, 1 host process)",
        set.policies().len(),
        contexts().len()
    );
    run("busy node mix", &set, &busy_mix(), &contexts());
    run("exec file mappings only", &set, &exec_heavy(), &contexts());
}
