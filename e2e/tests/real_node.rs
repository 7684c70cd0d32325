//! mapsentry on a real Kubernetes node, every part real: a single-node cluster on this machine
//! (`e2e/kube/start-node.sh`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd + runc, kubelet, kube-proxy, CoreDNS, at the versions `e2e/kube/build-kube.sh`
//! pins), the chart installed with `helm install` (default values, the locally built image), the
//! agent DaemonSet and collector Deployment running as pods under the kubelet with the chart's
//! security context, capabilities, mounts, probes and RBAC, workload pods running the e2e helper
//! `mmap_call`, and `mapsentry tail` on the host reaching the collector through its Service.
//!
//! Scenario, in namespace `wx-apps` with a W+X `MmapPolicy` (action Kill):
//! 1. Audit: a pod's W+X mapping reaches `tail` naming namespace, pod and container with the pod
//!    UID and container id the API (containerd) gave them; the alert arrives; an
//!    `MmapPolicyViolation` Event is on the pod; the policy's status is written. An init
//!    container, an ephemeral container and a pod that runs for under a second are attributed.
//! 2. Enforce (the same policy switched): a new pod's W+X call is killed (exit 137 in the pod
//!    status) while the same call in namespace `bystanders` completes.
//! 3. The agent pod deleted with the collector scaled to zero: the DaemonSet's new agent enforces
//!    the set persisted on the node (the chart's hostPath state directory) before any collector
//!    is there to send it.
//!
//! Rules reach a new pod's cgroup at the agent's next rescan once it knows the pod (every
//! second), so workloads wait 3 s before their call. The figures (node Ready time, the agent
//! pod's RSS and CPU) are printed; see BENCHMARKS.md.
//!
//! Needs root, BPF (tracepoint mode is enough), the packages of scripts/setup.sh, Go (the first
//! run builds the cluster, ~10 min) and cargo (release builds of the images' binaries). A node
//! that cannot start fails the test; nothing here is skipped.

mod common;

use std::{
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{forward_lines, mapsentry_bin};
use mapsentry_e2e::kube_harness::{
    ChartTools, Kubectl,
    node::{RealNode, build_images},
    output,
};
use serde_json::{Value, json};

const RELEASE: &str = "mapsentry";
const RELEASE_NS: &str = "mapsentry";
const WX_NS: &str = "wx-apps";
const OTHER_NS: &str = "bystanders";
const POLICY: &str = "no-write-execute";
const RULE: &str = "write-and-execute";
const WORKLOAD: &str = "localhost/mapsentry-e2e/workload:1";
/// One anonymous private W+X page (PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS).
const WX_CALL: &str =
    r#"{"calls":[{"addr":0,"length":4096,"prot":7,"flags":34,"fd":"anon","offset":0}]}"#;
const PROT_RWX: u64 = 7;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;
/// The agent's state directory on the node (the chart's default `agent.hostPaths.state`).
const HOST_STATE_DIR: &str = "/var/lib/mapsentry";
/// Time for something the cluster was asked to do (a pod to run, an alert to arrive).
const STEP: Duration = Duration::from_mins(1);

/// The shell command of a workload container: the W+X call after `delay` seconds (`mmap_call`
/// reads one line before calling), then `then`.
fn wx_script(delay: u32, then: &str) -> String {
    let sleep = if delay > 0 {
        format!("sleep {delay}; ")
    } else {
        String::new()
    };
    format!("{sleep}echo go | mmap_call '{WX_CALL}'{then}")
}

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": WORKLOAD, "imagePullPolicy": "Never",
           "command": ["/bin/sh", "-c", script]})
}

fn pod(namespace: &str, name: &str, containers: &[Value], init: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "enableServiceLinks": false, "containers": containers,
                    "initContainers": init}})
}

fn policy(mode: &str) -> String {
    format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata:\n  name: {POLICY}\n  \
         namespace: {WX_NS}\nspec:\n  mode: {mode}\n  rules:\n    - name: {RULE}\n      match:\n        \
         protAll: [PROT_WRITE, PROT_EXEC]\n      action: Kill\n"
    )
}

/// The scenario's view of the cluster: the node, kubectl, and what to print when a step fails.
struct Cluster {
    node: RealNode,
    kubectl: Kubectl,
}

impl Cluster {
    /// Panic with `what` and the state of everything that could be the cause: the cluster (pods,
    /// events, the kubelet's and containerd's logs) and mapsentry's pods' logs.
    fn fail(&self, what: &str) -> ! {
        let mut logs = String::new();
        for (label, args) in [
            (
                "agent",
                [
                    "logs",
                    "-n",
                    RELEASE_NS,
                    "daemonset/mapsentry-agent",
                    "--tail=30",
                ],
            ),
            (
                "collector",
                [
                    "logs",
                    "-n",
                    RELEASE_NS,
                    "deployment/mapsentry-collector",
                    "--tail=30",
                ],
            ),
        ] {
            let answer = self.kubectl.try_run(&args, None).unwrap_or_else(|e| e);
            let _ = writeln!(logs, "--- the {label} pod's log\n{answer}");
        }
        panic!("{what}\n{}{logs}", self.node.diagnostics());
    }

    /// Poll `probe` every 250 ms until it gives a value; fails naming `what` after `timeout`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl.try_run(&all, None).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn create(&self, object: &Value) -> Value {
        match self.kubectl.try_run(
            &["create", "-o", "json", "-f", "-"],
            Some(&object.to_string()),
        ) {
            Ok(text) => serde_json::from_str(&text).expect("kubectl create -o json"),
            Err(e) => self.fail(&format!("the API server refused {object}: {e}")),
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.get(&["get", "pod", name, "-n", namespace])
    }

    /// The pod once `done` holds for it.
    fn pod_until(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait(&format!("pod {namespace}/{name}: {what}"), STEP, || {
            self.pod(namespace, name).filter(|p| done(p))
        })
    }

    /// The terminated state of `container` (regular, init or ephemeral) once it has ended.
    fn terminated(&self, namespace: &str, name: &str, container: &str) -> (Value, Value) {
        let pod = self.pod_until(namespace, name, &format!("{container} ended"), |p| {
            !status_of(p, container)["state"]["terminated"].is_null()
        });
        let state = status_of(&pod, container)["state"]["terminated"].clone();
        (pod, state)
    }

    /// The pod's workload container(s) ready; the pod.
    fn running(&self, namespace: &str, name: &str) -> Value {
        self.pod_until(namespace, name, "Running", |p| {
            p["status"]["phase"] == "Running"
        })
    }

    /// The policy's status once its observed generation is the current one and accepted.
    fn policy_accepted(&self) -> Value {
        self.wait(
            &format!("the collector to write the status of {WX_NS}/{POLICY}"),
            STEP,
            || {
                let p = self.get(&["get", "mmappolicy", POLICY, "-n", WX_NS])?;
                let status = &p["status"];
                (status["observedGeneration"] == p["metadata"]["generation"]
                    && status["accepted"] == true
                    && condition(status, "Accepted") == Some("True"))
                .then(|| p.clone())
            },
        )
    }
}

/// A container's status (regular, init or ephemeral) in a pod object.
fn status_of<'a>(pod: &'a Value, container: &str) -> &'a Value {
    for key in [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ] {
        if let Some(found) = pod["status"][key]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == container))
        {
            return found;
        }
    }
    &Value::Null
}

/// The container id containerd gave `container`, without the `containerd://` scheme.
fn container_id(pod: &Value, container: &str) -> String {
    let id = status_of(pod, container)["containerID"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerID for {container} in {pod}"));
    id.strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("containerID {id} is not containerd's"))
        .to_owned()
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a str> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

/// `mapsentry tail` on the host, every JSON line kept.
struct Tail {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Tail {
    fn start(server: &str) -> Self {
        let mut child = Command::new(mapsentry_bin())
            .args([
                "tail", "--server", server, "--output", "json", "--since", "0",
            ])
            .args(["--kind", "events", "--kind", "alerts"])
            .args(["--namespace", WX_NS, "--namespace", OTHER_NS])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mapsentry tail: {e}"));
        let lines = forward_lines(child.stdout.take().expect("stdout"));
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line, seen before or arriving within [`STEP`], that satisfies `find`.
    fn find(&mut self, cluster: &Cluster, what: &str, find: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|v| find(v)) {
            return found.clone();
        }
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("tail printed no JSON ({e}): {line}"));
                    let hit = find(&value);
                    self.seen.push(value);
                    if hit {
                        return self.seen.last().expect("pushed").clone();
                    }
                }
                Err(e) => cluster.fail(&format!(
                    "mapsentry tail: no {what} ({e}); {} lines seen, the last: {:?}",
                    self.seen.len(),
                    self.seen.last()
                )),
            }
        }
    }

    /// The W+X event of `namespace/pod` container `container`, which must carry the pod UID and
    /// container id the cluster gave them.
    fn wx_event(&mut self, cluster: &Cluster, pod: &Value, container: &str) -> Value {
        let namespace = pod["metadata"]["namespace"].as_str().expect("namespace");
        let name = pod["metadata"]["name"].as_str().expect("name");
        // (The container id comes from the cgroup path: every event of the container has it.)
        let id = container_id(pod, container);
        let event = self.find(
            cluster,
            &format!("W+X event of {namespace}/{name} container {container}"),
            |v| {
                v["kind"] == "event"
                    && v["namespace"] == namespace
                    && v["pod"] == name
                    && v["args"]["prot"] == PROT_RWX
                    && v["comm"] == "mmap_call"
                    && v["k8s"]["container_id"] == id.as_str()
            },
        );
        assert_eq!(
            event["container"], container,
            "the event names the container: {event}"
        );
        assert_eq!(
            event["k8s"]["pod_uid"], pod["metadata"]["uid"],
            "the event carries the pod's UID: {event}"
        );
        assert_eq!(event["k8s"]["image"], WORKLOAD, "image: {event}");
        assert_eq!(event["k8s"]["resolved"], true, "resolved: {event}");
        event
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host pid of the agent container's first process, from its cgroup in the cgroup2 hierarchy
/// (`/sys/fs/cgroup/unified` on this hybrid host, where runc places containers too).
fn agent_host_pid(cluster: &Cluster) -> (String, u32) {
    let pods = cluster
        .get(&[
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            "app.kubernetes.io/component=agent",
        ])
        .expect("agent pods");
    let pod = pods["items"][0].clone();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let id = container_id(&pod, "agent");
    let root = mapsentry_e2e::cgroup::cgroup2_root().expect("a cgroup2 hierarchy");
    let found = fs::read_to_string(walk_for(&root.join("kubepods"), &id).join("cgroup.procs"))
        .expect("agent cgroup.procs");
    let pid = found
        .lines()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| cluster.fail(&format!("no process in the agent's cgroup {id}")));
    (uid, pid)
}

/// The directory named `name` under `root`, at any depth.
fn walk_for(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.file_name() == name {
                    return entry.path();
                }
                stack.push(entry.path());
            }
        }
    }
    panic!("no cgroup {name} under {}", root.display());
}

/// (RSS in KiB, CPU seconds since start, seconds since start) of a host process.
fn usage(pid: u32) -> (u64, f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let ticks = 100.0; // USER_HZ
    let field = |i: usize| fields[i].parse::<f64>().expect("number") / ticks;
    let cpu = field(11) + field(12); // utime, stime (fields 14 and 15 of stat)
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime");
    (rss, cpu, uptime - field(19)) // starttime (field 22)
}

#[test]
fn chart_on_a_real_node() {
    // --- The images and the node.
    let images_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kube-images");
    let mut images = build_images("workload", &images_dir)
        .unwrap_or_else(|e| panic!("building the workload image: {e}"));
    images.extend(
        build_images("mapsentry", &images_dir)
            .unwrap_or_else(|e| panic!("building the mapsentry image: {e}")),
    );
    let node = RealNode::start(&images).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "real_node: node Ready {:.1} s after start-node.sh began",
        node.ready_after.as_secs_f64()
    );
    let cluster = Cluster {
        kubectl: node.kubectl(),
        node,
    };

    // --- The chart, installed for real: default values, the local image.
    let tools = ChartTools::ensure();
    let installed = Command::new(&tools.helm)
        .current_dir(mapsentry_e2e::kube_harness::repo_root())
        .env("KUBECONFIG", cluster.node.kubeconfig())
        .args([
            "install",
            RELEASE,
            "helm/mapsentry",
            "--namespace",
            RELEASE_NS,
        ])
        .args(["--create-namespace", "--wait", "--timeout", "3m"])
        .args([
            "--set",
            "image.repository=localhost/mapsentry",
            "--set",
            "image.tag=e2e",
        ])
        .args(["--set", "image.pullPolicy=Never"])
        .output()
        .expect("running helm");
    if !installed.status.success() {
        cluster.fail(&format!(
            "helm install failed (the agent or collector pods did not become ready): {}{}",
            String::from_utf8_lossy(&installed.stdout),
            String::from_utf8_lossy(&installed.stderr)
        ));
    }
    let installed_at = Instant::now();
    // (helm's --wait counts a DaemonSet ready with maxUnavailable pods not ready: on one node,
    // none.)
    cluster.wait(
        "the agent pod Ready (readiness: programs attached, pod cache synced)",
        STEP,
        || {
            let pods = cluster.get(&[
                "get",
                "pods",
                "-n",
                RELEASE_NS,
                "-l",
                "app.kubernetes.io/component=agent",
            ])?;
            let pod = pods["items"].as_array()?.first()?.clone();
            (status_of(&pod, "agent")["ready"] == true).then_some(())
        },
    );
    let (agent_pod_uid, agent_pid) = agent_host_pid(&cluster);

    // The agent runs with exactly the capabilities the chart gives it.
    let status = fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("agent status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    assert_eq!(
        cap_eff,
        CAP_PERFMON | CAP_BPF,
        "the agent's effective capabilities are exactly BPF and PERFMON: {cap_eff:#x}"
    );

    // --- Policy (Audit) and a subscriber.
    for ns in [WX_NS, OTHER_NS] {
        cluster.kubectl.run(&["create", "namespace", ns], None);
    }
    cluster.kubectl.apply(&policy("Audit"));
    let audit = cluster.policy_accepted();
    let service = cluster
        .get(&["get", "service", "mapsentry-collector", "-n", RELEASE_NS])
        .unwrap_or_else(|| cluster.fail("no collector Service"));
    let server = format!(
        "http://{}:{}",
        service["spec"]["clusterIP"].as_str().expect("clusterIP"),
        service["spec"]["ports"][0]["port"]
    );
    let mut tail = Tail::start(&server);

    // --- 1. Audit: a long-running pod, an init container, an ephemeral container, a short one.
    cluster.create(&pod(
        WX_NS,
        "wx-long",
        &[container("app", &wx_script(3, "; exec sleep 3600"))],
        &[],
    ));
    cluster.create(&pod(
        WX_NS,
        "wx-init",
        &[container("app", "exec sleep 3600")],
        &[container("setup", &wx_script(3, ""))],
    ));
    cluster.create(&pod(
        WX_NS,
        "wx-short",
        &[container("app", &wx_script(0, ""))],
        &[],
    ));

    let long_running = cluster.running(WX_NS, "wx-long");
    let event = tail.wx_event(&cluster, &long_running, "app");
    println!("real_node: W+X event of wx-long: {event}");
    let alert = tail.find(&cluster, "alert for wx-long", |v| {
        v["kind"] == "alert" && v["namespace"] == WX_NS && v["pod"] == "wx-long"
    });
    assert!(
        alert["policy"]
            .as_str()
            .is_some_and(|p| p.ends_with(POLICY)),
        "alert policy: {alert}"
    );
    assert_eq!(alert["rule"], RULE, "alert rule: {alert}");
    assert_eq!(alert["mode"], "audit", "alert mode: {alert}");
    assert_eq!(alert["container"], "app", "alert container: {alert}");
    cluster.wait("an MmapPolicyViolation Event on wx-long", STEP, || {
        let events = cluster.get(&["get", "events", "-n", WX_NS])?;
        events["items"]
            .as_array()?
            .iter()
            .find(|e| {
                e["reason"] == "MmapPolicyViolation" && e["involvedObject"]["name"] == "wx-long"
            })
            .cloned()
    });
    assert_eq!(
        condition(&audit["status"], "Accepted"),
        Some("True"),
        "status: {audit}"
    );

    let (init_pod, _) = cluster.terminated(WX_NS, "wx-init", "setup");
    tail.wx_event(&cluster, &init_pod, "setup");

    let (short, state) = cluster.terminated(WX_NS, "wx-short", "app");
    assert_eq!(
        state["exitCode"], 0,
        "the short pod's call completed (Audit): {state}"
    );
    // Its container ran for under a second (the API's timestamps have whole seconds).
    let seconds = |key: &str| -> u32 {
        let time = state[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {state}"));
        time.get(11..19)
            .and_then(|hms| {
                let mut parts = hms.split(':').map(|p| p.parse::<u32>().ok());
                Some(parts.next()?? * 3600 + parts.next()?? * 60 + parts.next()??)
            })
            .unwrap_or_else(|| panic!("{key} {time} is not RFC 3339"))
    };
    assert!(
        seconds("finishedAt").abs_diff(seconds("startedAt")) <= 1,
        "the short pod ran for under a second: {state}"
    );
    tail.wx_event(&cluster, &short, "app");

    output(
        Command::new(cluster.node.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(cluster.node.kubeconfig())
            .args(["debug", "wx-long", "-n", WX_NS, "--image", WORKLOAD])
            .args([
                "--image-pull-policy",
                "Never",
                "--container",
                "debugger",
                "--",
            ])
            .args(["sh", "-c", &wx_script(3, "")]),
        None,
    );
    let (debugged, _) = cluster.terminated(WX_NS, "wx-long", "debugger");
    tail.wx_event(&cluster, &debugged, "debugger");

    // --- 2. Enforce: the same policy switched; killed in its namespace, not elsewhere.
    cluster.kubectl.apply(&policy("Enforce"));
    let enforce = cluster.policy_accepted();
    assert_eq!(enforce["spec"]["mode"], "Enforce");
    cluster.create(&pod(
        WX_NS,
        "wx-killed",
        &[container("app", &wx_script(3, ""))],
        &[],
    ));
    cluster.create(&pod(
        OTHER_NS,
        "wx-elsewhere",
        &[container("app", &wx_script(3, ""))],
        &[],
    ));
    let (_, killed) = cluster.terminated(WX_NS, "wx-killed", "app");
    assert_eq!(
        killed["exitCode"], 137,
        "the W+X call in {WX_NS} was killed: {killed}"
    );
    let (_, spared) = cluster.terminated(OTHER_NS, "wx-elsewhere", "app");
    assert_eq!(
        spared["exitCode"], 0,
        "the same call in {OTHER_NS} completed: {spared}"
    );

    // The agent's usage over the scenario so far, before it is restarted.
    let (rss_kib, cpu_s, alive_s) = usage(agent_pid);
    println!(
        "real_node: agent pod RSS {:.1} MiB, CPU {cpu_s:.2} s over {alive_s:.0} s ({:.1}% of a core); {:.0} s since helm install",
        f64::from(u32::try_from(rss_kib).unwrap_or(u32::MAX)) / 1024.0,
        100.0 * cpu_s / alive_s,
        installed_at.elapsed().as_secs_f64()
    );

    // --- 3. The set persisted on the node; enforced by a new agent before any collector is up.
    let persisted =
        fs::read_to_string(format!("{HOST_STATE_DIR}/policy-set.json")).unwrap_or_else(|e| {
            cluster.fail(&format!(
                "no persisted set in {HOST_STATE_DIR} on the node: {e}"
            ))
        });
    assert!(
        persisted.contains(POLICY) && persisted.contains("Enforce"),
        "persisted set: {persisted}"
    );
    drop(tail);
    cluster.kubectl.run(
        &[
            "scale",
            "deployment",
            "mapsentry-collector",
            "-n",
            RELEASE_NS,
            "--replicas=0",
        ],
        None,
    );
    cluster.wait("the collector pod gone", STEP, || {
        let pods = cluster.get(&[
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            "app.kubernetes.io/component=collector",
        ])?;
        pods["items"].as_array()?.is_empty().then_some(())
    });
    cluster.kubectl.run(
        &[
            "delete",
            "pod",
            "-n",
            RELEASE_NS,
            "-l",
            "app.kubernetes.io/component=agent",
            "--wait=true",
        ],
        None,
    );
    cluster.wait(
        "a new agent pod Ready (re-created by the DaemonSet)",
        STEP,
        || {
            let pods = cluster.get(&[
                "get",
                "pods",
                "-n",
                RELEASE_NS,
                "-l",
                "app.kubernetes.io/component=agent",
            ])?;
            let pod = pods["items"].as_array()?.first()?.clone();
            (pod["metadata"]["uid"] != agent_pod_uid.as_str()
                && status_of(&pod, "agent")["ready"] == true)
                .then_some(pod)
        },
    );
    let agent_log = cluster.kubectl.run(
        &["logs", "-n", RELEASE_NS, "daemonset/mapsentry-agent"],
        None,
    );
    assert!(
        agent_log.contains("enforcing the persisted policy set version"),
        "the new agent applied the persisted set at start: {agent_log}"
    );
    cluster.create(&pod(
        WX_NS,
        "wx-offline",
        &[container("app", &wx_script(3, ""))],
        &[],
    ));
    let (_, offline) = cluster.terminated(WX_NS, "wx-offline", "app");
    assert_eq!(
        offline["exitCode"], 137,
        "with no collector, the restarted agent killed the W+X call: {offline}"
    );
    let collectors = cluster
        .get(&[
            "get",
            "endpointslices",
            "-n",
            RELEASE_NS,
            "-l",
            "kubernetes.io/service-name=mapsentry-collector",
        ])
        .expect("endpointslices");
    assert!(
        collectors["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|s| s["endpoints"].as_array().is_none_or(Vec::is_empty)),
        "no collector endpoint existed while the new agent enforced: {collectors}"
    );
}
