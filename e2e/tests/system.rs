//! The whole system on one host, every component real: the kube-apiserver (`e2e/kube/`)
//! with the Helm chart's CRDs, ServiceAccounts and RBAC applied (rendered offline with
//! `helm template`), the `mapsentry collector` and `mapsentry agent` binaries authenticating as
//! the chart's ServiceAccounts (tokens from the TokenRequest API, so the real RBAC authorizer
//! judges every call they make), `mapsentry tail` as the alert subscriber, pods created through
//! the API with their container status written as a kubelet would, and real test processes in
//! kubelet-shaped cgroups (systemd driver) making real mmap calls, captured by real BPF.
//!
//! Scenario: namespace `e2e-enforce` has a W+X Kill `MmapPolicy` in Enforce mode, its neighbour
//! `e2e-audit` the same policy in Audit mode, both applied through the API. The same W+X mmap is
//! killed (SIGKILL at the call) in the first and only alerted on in the second; the subscriber
//! gets per-pod alerts naming namespace, pod and container; the collector's /metrics counts the
//! violations per pod; switching the Audit policy to Enforce through the API takes effect without
//! restarting anything; each policy's status says Accepted (and KernelEnforced) for its current
//! generation, and each pod carries `MmapPolicyViolation` Events; an invalid change is rejected
//! in the status, naming the field, while the previous generation stays enforced. A `forbidden`
//! answer from the API server in either component's log fails the test.
//!
//! Needs root, cgroup v2, BPF (tracepoint mode is enough), the cached kube-apiserver
//! (`e2e/kube/build-kube.sh`), helm and kubectl from `helm/tools.sh`, and the `mapsentry`
//! binary (`cargo build --workspace --bins`).

mod common;

use std::{
    fs,
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Helper, mapsentry_bin, mmap_call};
use mapsentry_e2e::{
    daemon::{Daemon, Stream},
    kube_harness::{
        ApiServer, ChartTools, ContainerCgroup, Kubectl, KubeletPod, documents_of_kinds, http_get,
        kinds_of, token_kubeconfig, try_http_get,
    },
};
use serde_json::{Value, json};

const RELEASE: &str = "mapsentry";
const RELEASE_NS: &str = "mapsentry";
const NODE: &str = "e2e-node";
const AUDIT_NS: &str = "e2e-audit";
const ENFORCE_NS: &str = "e2e-enforce";
const POD: &str = "wx";
const CONTAINER: &str = "app";
const IMAGE: &str = "registry.example/wx:1";
const POLICY: &str = "no-write-execute";
const RULE: &str = "write-and-execute";
const PRIVATE_ANON: u64 = 0x22;
/// Time for a component to do one thing it was asked (a policy applied, an alert delivered).
const STEP: Duration = Duration::from_secs(20);
/// Time for the agent to start: loading BPF takes a while on a busy machine.
const AGENT_START: Duration = Duration::from_mins(1);

/// The API server with the chart applied, and a kubeconfig per chart ServiceAccount.
struct ControlPlane {
    admin: Kubectl,
    agent_kubeconfig: PathBuf,
    collector_kubeconfig: PathBuf,
    /// Scratch directory (policy files, the agent's state); removed on drop.
    dir: PathBuf,
    _server: ApiServer,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Start the API server, apply the chart's CRDs, ServiceAccounts and RBAC (the workloads, the
/// DaemonSet and Deployment, are the binaries this test runs itself), and get each
/// ServiceAccount a token.
fn control_plane(name: &str) -> ControlPlane {
    let tools = ChartTools::ensure();
    let server = ApiServer::start(name);
    let admin = Kubectl::new(&tools.kubectl, &server.admin_kubeconfig());
    let dir = server.state().join("system");
    fs::create_dir_all(&dir).unwrap();

    let rendered = tools.render_chart(RELEASE, RELEASE_NS, &[]);
    let crds = documents_of_kinds(&rendered, &["CustomResourceDefinition"]);
    assert_eq!(kinds_of(&crds).len(), 2, "the chart's two CRDs: {crds}");
    admin.apply(&crds);
    admin.run(
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/mmappolicies.mapsentry.dev",
            "crd/clustermmappolicies.mapsentry.dev",
        ],
        None,
    );
    admin.run(&["create", "namespace", RELEASE_NS], None);
    let access = documents_of_kinds(
        &rendered,
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ],
    );
    let kinds = kinds_of(&access);
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            2,
            "one {kind} per component in the chart: {kinds:?}"
        );
    }
    admin.apply(&access);

    let kubeconfig = |component: &str| {
        let account = format!("{RELEASE}-{component}");
        let token = admin.service_account_token(RELEASE_NS, &account);
        let path = dir.join(format!("kubeconfig-{component}"));
        token_kubeconfig(
            &server.admin_kubeconfig(),
            &format!("system:serviceaccount:{RELEASE_NS}:{account}"),
            &token,
            &path,
        );
        path
    };
    let agent_kubeconfig = kubeconfig("agent");
    let collector_kubeconfig = kubeconfig("collector");
    // The tokens authenticate as the ServiceAccounts: the agent's may list pods, not write them.
    let agent = Kubectl::new(&tools.kubectl, &agent_kubeconfig);
    let can = |verb: &str, resource: &str| {
        agent
            .try_run(&["auth", "can-i", verb, resource, "-n", AUDIT_NS], None)
            .unwrap_or_else(|e| e)
            .trim()
            .to_owned()
    };
    assert!(can("list", "pods").ends_with("yes"), "agent: list pods");
    assert!(can("create", "pods").ends_with("no"), "agent: create pods");

    ControlPlane {
        admin,
        agent_kubeconfig,
        collector_kubeconfig,
        dir,
        _server: server,
    }
}

/// The W+X policy of `namespace` in `mode`, as a YAML document (a file, or a CRD object).
fn policy(namespace: &str, mode: &str) -> String {
    format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata:\n  name: {POLICY}\n  \
         namespace: {namespace}\nspec:\n  mode: {mode}\n  rules:\n    - name: {RULE}\n      \
         match:\n        protAll: [PROT_WRITE, PROT_EXEC]\n      action: Kill\n"
    )
}

/// A namespace with pod `wx` running on this node, in a kubelet-shaped cgroup.
struct Workload {
    pod: KubeletPod,
    cgroup: ContainerCgroup,
}

fn workload(admin: &Kubectl, namespace: &str) -> Workload {
    admin.apply(
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"e2e": "system"}}})
        .to_string(),
    );
    let pod = KubeletPod::run(
        admin,
        namespace,
        POD,
        NODE,
        (CONTAINER, IMAGE),
        &json!({"app": "wx"}),
    );
    let top = format!("mapsentry-e2e-{}-system", std::process::id());
    let cgroup = ContainerCgroup::create(&top, &pod);
    Workload { pod, cgroup }
}

/// RW, then W+X (the violation), then R: anonymous private mappings.
fn wx_calls() -> String {
    json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 8192, "prot": 7, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]})
    .to_string()
}

/// Run the helper inside `workload`'s container cgroup; (killed by SIGKILL, pid).
fn run_in(workload: &Workload) -> (bool, u32) {
    let helper = Helper::spawn(mmap_call(), &[&wx_calls()]);
    let pid = helper.pid;
    workload
        .cgroup
        .cgroup()
        .add(pid)
        .expect("moving the helper into the pod's cgroup");
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(report.is_none(), "killed before reporting: {report:?}");
        (true, pid)
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        let results = &report.expect("a finished helper reports")["results"];
        assert!(
            results[1]["ret"].as_i64().unwrap() > 0,
            "the W+X call succeeded: {results}"
        );
        (false, pid)
    }
}

/// `mapsentry collector` on loopback ports of its own choosing, watching the policy objects and
/// posting Events as the identity of `kubeconfig`; (it, gRPC address, metrics address).
fn start_collector(kubeconfig: &Path) -> (Daemon, SocketAddr, SocketAddr) {
    let mut collector = Daemon::start(
        "collector",
        Command::new(mapsentry_bin())
            .args([
                "collector",
                "--plaintext",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--kubernetes",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig),
    );
    let address = |collector: &mut Daemon, prefix: &str| -> SocketAddr {
        let (_, line) = collector.wait_for(prefix, Stream::Stderr, 0, STEP, |l| l.contains(prefix));
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        let addr = rest.trim().trim_end_matches("/metrics");
        addr.parse()
            .unwrap_or_else(|e| panic!("address in {line:?}: {e}"))
    };
    let grpc = address(&mut collector, "collector serving on ");
    let metrics = address(&mut collector, "metrics on http://");
    (collector, grpc, metrics)
}

/// The value of the first metric line starting with `series` (name and labels), if any.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `cgroups=N` and `version=N` of an agent's `enforcement` log line.
fn enforcement(line: &str) -> Option<(u64, u64)> {
    if !line.contains("enforcement") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("version=")?, field("cgroups=")?))
}

/// JSON lines of `tail` that are alerts for `namespace/wx` in `mode`.
fn is_alert(line: &str, namespace: &str, mode: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| {
        v["kind"] == "alert" && v["namespace"] == namespace && v["pod"] == POD && v["mode"] == mode
    })
}

/// A log line telling of an authorization failure.
fn is_forbidden(line: &str) -> bool {
    let lower = line.to_lowercase();
    lower.contains("forbidden") || lower.contains("code: 403") || lower.contains(" 403 ")
}

/// The first line of `daemon`'s stderr from `from` on that satisfies `done`. Fails at once when
/// it or one of `others` logs an authorization failure (the chart's RBAC must be enough).
fn wait_allowed(
    daemon: &mut Daemon,
    others: &[&Daemon],
    what: &str,
    from: usize,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> (usize, String) {
    let deadline = Instant::now() + timeout;
    loop {
        assert_never_forbidden(daemon.name(), &daemon.output(Stream::Stderr));
        for other in others {
            assert_never_forbidden(other.name(), &other.output(Stream::Stderr));
        }
        let slice = Duration::from_millis(200);
        if let Some(found) = daemon.find(Stream::Stderr, from, slice, &done) {
            return found;
        }
        if Instant::now() >= deadline {
            return daemon.wait_for(what, Stream::Stderr, from, Duration::ZERO, &done);
        }
    }
}

/// Fail on an authorization failure in a component's log: the chart's RBAC must be enough.
fn assert_never_forbidden(name: &str, stderr: &[String]) {
    let refused: Vec<&String> = stderr.iter().filter(|l| is_forbidden(l)).collect();
    assert!(
        refused.is_empty(),
        "{name} was refused by the API server (the chart's RBAC is not enough): {refused:#?}"
    );
}

/// Apply (create or change) `namespace`'s policy as an MmapPolicy object, as the admin.
fn apply_policy(admin: &Kubectl, namespace: &str, mode: &str) {
    admin.run(
        &["apply", "--validate=false", "-f", "-"],
        Some(&policy(namespace, mode)),
    );
}

/// `namespace`'s policy object.
fn policy_object(admin: &Kubectl, namespace: &str) -> Value {
    admin.json(&["get", "mmappolicies.mapsentry.dev", POLICY, "-n", namespace])
}

/// The condition `kind` of a policy object's status, once the collector has written it.
fn condition(policy: &Value, kind: &str) -> Option<Value> {
    policy["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// The `MmapPolicyViolation` Events on pod `namespace/wx`.
fn violation_events(admin: &Kubectl, namespace: &str) -> Vec<Value> {
    let events = admin.json(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        &format!("involvedObject.kind=Pod,involvedObject.name={POD},reason=MmapPolicyViolation"),
    ]);
    events["items"].as_array().cloned().unwrap_or_default()
}

/// Poll `probe` every 100 ms until it gives a value; panics after `timeout`.
/// Fails at once when `collector` logs an authorization failure.
fn eventually<T>(
    what: &str,
    collector: &Daemon,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        assert_never_forbidden(collector.name(), &collector.output(Stream::Stderr));
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CRD side: each policy's status says its current generation is Accepted and enforced by
/// the kernel, and each pod has its violations as Events.
fn kubernetes_checks(admin: &Kubectl, collector: &Daemon, workloads: &[&Workload]) {
    for workload in workloads {
        let pod = &workload.pod;
        let policy = eventually("the current generation accepted", collector, STEP, || {
            let policy = policy_object(admin, &pod.namespace);
            (policy["status"]["acceptedGeneration"] == policy["metadata"]["generation"])
                .then_some(policy)
        });
        let accepted = condition(&policy, "Accepted").expect("an Accepted condition");
        assert_eq!(accepted["status"], "True", "{}: {policy}", pod.namespace);
        assert_eq!(policy["status"]["accepted"], true, "{policy}");
        let enforced = condition(&policy, "KernelEnforced").expect("a KernelEnforced condition");
        assert_eq!(enforced["status"], "True", "{}: {policy}", pod.namespace);

        let events = eventually(
            "a MmapPolicyViolation Event on the pod",
            collector,
            STEP,
            || Some(violation_events(admin, &pod.namespace)).filter(|e| !e.is_empty()),
        );
        for event in &events {
            let involved = &event["involvedObject"];
            assert_eq!(involved["kind"], "Pod", "{event}");
            assert_eq!(involved["name"], POD, "{event}");
            assert_eq!(involved["uid"], pod.uid.as_str(), "{event}");
            assert_eq!(involved["namespace"], pod.namespace.as_str(), "{event}");
            assert_eq!(event["type"], "Warning", "{event}");
            let message = event["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(POLICY) && message.contains(RULE),
                "{event}"
            );
        }
    }
}

fn alert_checks(alert: &Value, workload: &Workload, mode: &str) {
    let pod = &workload.pod;
    // Namespaced policies are named namespace/name.
    assert_eq!(
        alert["policy"],
        format!("{}/{POLICY}", pod.namespace),
        "{alert}"
    );
    assert_eq!(alert["rule"], RULE, "{alert}");
    assert_eq!(
        alert["action"], "kill",
        "the rule's action, in both modes: {alert}"
    );
    assert_eq!(alert["mode"], mode, "{alert}");
    assert_eq!(alert["namespace"], pod.namespace.as_str(), "{alert}");
    assert_eq!(alert["pod"], POD, "{alert}");
    assert_eq!(alert["container"], CONTAINER, "{alert}");
    assert_eq!(alert["node"], NODE, "{alert}");
    let event = &alert["event"];
    assert_eq!(event["comm"], "mmap_call", "{alert}");
    assert_eq!(event["args"]["prot"], 7, "{alert}");
    assert_eq!(event["k8s"]["pod_uid"], pod.uid.as_str(), "{alert}");
    assert_eq!(
        event["k8s"]["container_id"],
        pod.container_id.as_str(),
        "{alert}"
    );
    assert_eq!(event["k8s"]["image"], IMAGE, "{alert}");
    assert_eq!(event["k8s"]["labels"]["app"], "wx", "{alert}");
    assert_eq!(event["k8s"]["resolved"], true, "{alert}");
}

/// The whole scenario; policies are MmapPolicy objects applied through the API.
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn scenario(plane: &ControlPlane) {
    let started = Instant::now();
    let audit = workload(&plane.admin, AUDIT_NS);
    let enforce = workload(&plane.admin, ENFORCE_NS);
    apply_policy(&plane.admin, AUDIT_NS, "Audit");
    apply_policy(&plane.admin, ENFORCE_NS, "Enforce");

    let (mut collector, grpc, metrics_addr) = start_collector(&plane.collector_kubeconfig);
    let collector_pid = collector.pid();
    let server = format!("http://{grpc}");

    let mut tail = Daemon::start(
        "tail",
        Command::new(mapsentry_bin()).args([
            "tail",
            "--server",
            &server,
            "--kind",
            "alerts",
            "--kind",
            "events",
            "--output",
            "json",
            "--namespace",
            AUDIT_NS,
            "--namespace",
            ENFORCE_NS,
        ]),
    );
    let deadline = Instant::now() + STEP;
    while metric(
        &http_get(metrics_addr, "/metrics"),
        "mapsentry_collector_subscribers ",
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline && tail.running(),
            "tail did not subscribe\n{}",
            tail.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let state_dir = plane.dir.join("agent-state");
    let mut agent = Daemon::start(
        "agent",
        Command::new(mapsentry_bin())
            .args(["agent", "--collector", &server, "--node", NODE])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(&plane.agent_kubeconfig)
            .arg("--state-dir")
            .arg(&state_dir),
    );
    let agent_pid = agent.pid();
    wait_allowed(
        &mut agent,
        &[&collector],
        "the agent to start capturing",
        0,
        AGENT_START,
        |l| l.contains("mapsentry: agent on node"),
    );
    // The Enforce policy reached the agent (resolved, through its pod cache, to the cgroups of
    // e2e-enforce/wx: pod slice and container scope, not e2e-audit's, once the agent is ready).
    let (at, _) = wait_allowed(
        &mut agent,
        &[&collector],
        "the Enforce policy applied to the pod's cgroups",
        0,
        STEP,
        |l| enforcement(l).is_some_and(|(version, cgroups)| version > 0 && cgroups > 0),
    );
    // Ready: programs attached, ring buffer drained, pod cache synced with the API server.
    let marker = "agent metrics on http://";
    let (_, line) = agent.wait_for(
        "the agent's metrics address",
        Stream::Stderr,
        0,
        STEP,
        |l| l.contains(marker),
    );
    let agent_http: SocketAddr = line[line.find(marker).unwrap() + marker.len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("address in {line:?}: {e}"));
    eventually("the agent ready", &collector, STEP, || {
        matches!(try_http_get(agent_http, "/readyz"), Ok((200, _))).then_some(())
    });
    let ready = started.elapsed();
    // Ready means resolved against the pod cache's first list: the last enforcement line is
    // the policy on e2e-enforce's pod alone (pod cgroups of no known pod, say left by a crashed
    // run, hold every rule that could apply to a pod and count here too).
    let line = agent
        .output(Stream::Stderr)
        .into_iter()
        .rev()
        .find(|l| enforcement(l).is_some())
        .expect("an enforcement line");
    assert!(line.contains("awaiting_pods=false"), "{line}");
    let (_, enforced_cgroups) = enforcement(&line).unwrap();

    // Audit: alerted, never stopped.
    let (killed, audit_pid) = run_in(&audit);
    assert!(!killed, "Audit mode must not kill {AUDIT_NS}/{POD}");
    let (_, line) = tail.wait_for("the Audit alert", Stream::Stdout, 0, STEP, |l| {
        is_alert(l, AUDIT_NS, "audit")
    });
    let alert: Value = serde_json::from_str(&line).unwrap();
    alert_checks(&alert, &audit, "audit");
    assert_eq!(alert["event"]["pid"], audit_pid);
    assert!(alert["event"]["enforced"].is_null(), "{alert}");
    assert!(alert["event"]["ret"].as_i64().unwrap() > 0, "{alert}");

    // Enforce next door: killed at the W+X call, alerted.
    let (killed, enforce_pid) = run_in(&enforce);
    assert!(killed, "the W+X mmap in {ENFORCE_NS}/{POD} is killed");
    let (_, line) = tail.wait_for("the Enforce alert", Stream::Stdout, 0, STEP, |l| {
        is_alert(l, ENFORCE_NS, "enforce")
    });
    let alert: Value = serde_json::from_str(&line).unwrap();
    alert_checks(&alert, &enforce, "enforce");
    assert_eq!(alert["event"]["pid"], enforce_pid);
    assert_eq!(alert["event"]["enforced"]["action"], "kill", "{alert}");
    // The subscriber's event stream: the killed process's calls end at the W+X one.
    let events: Vec<Value> = tail
        .output(Stream::Stdout)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "event" && v["pid"] == enforce_pid)
        .collect();
    let prots: Vec<&Value> = events.iter().map(|e| &e["args"]["prot"]).collect();
    assert_eq!(
        prots,
        [3, 7],
        "RW then the killed W+X, nothing after: {events:#?}"
    );
    for event in &events {
        assert_eq!(event["namespace"], ENFORCE_NS);
        assert_eq!(event["pod"], POD);
        assert_eq!(event["container"], CONTAINER);
    }

    // Metrics: the violations of each pod.
    // Both rules Kill; the Audit namespace's match was only reported (mode="audit").
    let violations = |namespace: &str| {
        let mode = if namespace == AUDIT_NS {
            "audit"
        } else {
            "enforce"
        };
        let series = format!(
            "mapsentry_policy_violations_total{{namespace=\"{namespace}\",pod=\"{POD}\",policy=\"{namespace}/{POLICY}\",rule=\"{RULE}\",action=\"kill\",mode=\"{mode}\"}}"
        );
        metric(&http_get(metrics_addr, "/metrics"), &series)
    };
    let deadline = Instant::now() + STEP;
    while violations(ENFORCE_NS).is_none() || violations(AUDIT_NS).is_none() {
        assert!(
            Instant::now() < deadline,
            "no violation series for both pods:\n{}",
            http_get(metrics_addr, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(violations(ENFORCE_NS), Some(1.0));
    assert_eq!(violations(AUDIT_NS), Some(1.0));

    // The Audit namespace switches to Enforce: no restart, the next W+X call there is killed.
    let changed = Instant::now();
    apply_policy(&plane.admin, AUDIT_NS, "Enforce");
    wait_allowed(
        &mut agent,
        &[&collector],
        "the changed policy applied to e2e-audit's cgroups too",
        at + 1,
        STEP,
        |l| enforcement(l).is_some_and(|(_, cgroups)| cgroups > enforced_cgroups),
    );
    let took_effect = changed.elapsed();
    let (killed, _) = run_in(&audit);
    assert!(killed, "after the change, {AUDIT_NS}/{POD} is killed too");
    let (_, line) = tail.wait_for(
        "the alert of the changed policy",
        Stream::Stdout,
        0,
        STEP,
        |l| is_alert(l, AUDIT_NS, "enforce"),
    );
    let alert: Value = serde_json::from_str(&line).unwrap();
    alert_checks(&alert, &audit, "enforce");
    assert_eq!(alert["event"]["enforced"]["action"], "kill", "{alert}");

    kubernetes_checks(&plane.admin, &collector, &[&audit, &enforce]);

    // A change the collector rejects (a size the CRD schema lets through, mapsentry's validation
    // does not): the status names the field, and the previous generation stays in force.
    let before = policy_object(&plane.admin, ENFORCE_NS);
    let invalid =
        policy(ENFORCE_NS, "Enforce") + "    - name: huge\n      match:\n        minLength: lots\n";
    plane
        .admin
        .run(&["apply", "--validate=false", "-f", "-"], Some(&invalid));
    let rejected = eventually("the invalid change rejected", &collector, STEP, || {
        let policy = policy_object(&plane.admin, ENFORCE_NS);
        (policy["metadata"]["generation"] != before["metadata"]["generation"]
            && policy["status"]["observedGeneration"] == policy["metadata"]["generation"])
            .then_some(policy)
    });
    let status = &rejected["status"];
    assert_eq!(status["accepted"], false, "{rejected}");
    let accepted = condition(&rejected, "Accepted").expect("an Accepted condition");
    assert_eq!(accepted["status"], "False", "{rejected}");
    assert_eq!(
        status["acceptedGeneration"], before["metadata"]["generation"],
        "the previous generation stays in force: {rejected}"
    );
    assert!(
        status["errors"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["path"] == "spec.rules[1].match.minLength")),
        "the error names the field: {rejected}"
    );
    let (killed, _) = run_in(&enforce);
    assert!(killed, "the previous generation is still enforced");
    eprintln!(
        "system: ready (pods, collector, tail, agent, policy resolved) in {ready:?}; \
         policy change enforced in {took_effect:?}; total {:?}",
        started.elapsed()
    );
    assert!(agent.running() && collector.running(), "nothing restarted");
    assert_eq!((agent.pid(), collector.pid()), (agent_pid, collector_pid));

    let (status, _, agent_err) = agent.stop(Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status}\n{agent_err:#?}");
    let (_, _, tail_err) = tail.stop(Duration::from_secs(5));
    let (status, _, collector_err) = collector.stop(Duration::from_secs(10));
    assert!(
        status.success(),
        "collector exit: {status}\n{collector_err:#?}"
    );
    assert_never_forbidden("agent", &agent_err);
    assert_never_forbidden("collector", &collector_err);
    assert!(
        !tail_err.iter().any(|l| l.contains("unreachable")),
        "{tail_err:#?}"
    );
}

#[test]
fn chart_rbac_runs_the_system_crd_policies_kill_in_enforce_alert_in_audit_events_metrics_and_a_live_change()
 {
    scenario(&control_plane("system"));
}
