//! A namespaced Enforce policy acts on the pods it selects, resolved through the pod cache: real
//! kube-apiserver holding two pods with the same labels in two namespaces, real cgroups shaped
//! like the kubelet's, `mapsentry run --policy FILE --kubeconfig ...` (the same enforcement path as
//! the agent's). The `MmapPolicy` of namespace `shop` with `podSelector: app=web` and a Kill
//! rule for W+X mappings kills the process in shop's pod at its W+X mmap (after its allowed RW
//! mmap succeeded); the same calls in namespace `other`'s pod, and in a host cgroup, are untouched.
//! `--enforce-under` confines the rules to the test's cgroup tree: pod cgroups of this machine
//! that the test's API server does not know would otherwise fail closed.

mod common;

use std::{os::unix::process::ExitStatusExt as _, path::Path, time::Duration};

use common::{
    Helper,
    apiserver::{
        ApiServer, CgroupTree, Layout, NODE, Running, container_id, create_namespace,
        create_running_pod,
    },
    mmap_call,
};
use mapsentry_e2e::cgroup::cgroup2_root;
use serde_json::json;

const PRIVATE_ANON: u64 = 0x22;
const WX_LENGTH: u64 = 5 * 4096;

const POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: MmapPolicy
metadata: {name: no-wx, namespace: shop}
spec:
  mode: Enforce
  podSelector: {matchLabels: {app: web}}
  rules:
    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}
";

/// RW (allowed), then W+X (the rule's), then R.
fn spec() -> String {
    json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": WX_LENGTH, "prot": 7, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]})
    .to_string()
}

/// Run the helper in `cgroup`: (killed by SIGKILL, pid).
fn run_in(cgroup: &Path) -> (bool, u32) {
    let helper = Helper::spawn(mmap_call(), &[&spec()]);
    let pid = helper.pid;
    CgroupTree::move_into(cgroup, pid);
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(
            report.is_none(),
            "killed before it could report: {report:?}"
        );
        (true, pid)
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        (false, pid)
    }
}

/// `field=N` of a tracing `enforcement` line.
fn enforcement_field(line: &str, field: &str) -> Option<u64> {
    if !line.contains("enforcement") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}="))?.parse().ok())
}

#[test]
fn a_namespaced_kill_policy_kills_in_the_selected_pod_only() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = ApiServer::start("enforce-pods");
    let (shop_uid, other_uid) = runtime.block_on(async {
        let admin = server.admin().await;
        create_namespace(&admin, "shop", &json!({"team": "payments"})).await;
        create_namespace(&admin, "other", &json!({})).await;
        let labels = json!({"app": "web"});
        let shop = create_running_pod(
            &admin,
            "shop",
            "web-0",
            &labels,
            None,
            "registry.example/web:1",
            &container_id(11),
        )
        .await;
        let other = create_running_pod(
            &admin,
            "other",
            "web-0",
            &labels,
            None,
            "registry.example/web:1",
            &container_id(12),
        )
        .await;
        (shop, other)
    });
    let tree = CgroupTree::new("enforce-pods");
    let shop_cgroup = tree.mkdir(&Layout::Systemd.path(&shop_uid, &container_id(11)));
    let other_cgroup = tree.mkdir(&Layout::Cgroupfs.path(&other_uid, &container_id(12)));
    let host_cgroup = tree.mkdir("host.scope");
    let top = tree.mkdir("");
    let under = format!(
        "/{}",
        top.strip_prefix(cgroup2_root().unwrap()).unwrap().display()
    );

    let policy = std::env::temp_dir().join(format!(
        "mapsentry-e2e-enforce-pods-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&policy, POLICY).expect("writing the policy");
    let kubeconfig = server.agent_kubeconfig();
    let mut run = Running::start(&[
        "run",
        "--output",
        "json",
        "--listen",
        "127.0.0.1:0",
        "--comm",
        "mmap_call",
        "--policy",
        policy.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        NODE,
        "--enforce-under",
        &under,
    ]);
    // The pod cache syncs after the start (until then, the four pod cgroups fail closed); the
    // rescan (every second) then resolves shop's pod cgroup and its container's cgroup, and
    // nothing of namespace `other`.
    let cgroups = run.stderr_until(
        "the policy resolved to shop's pod cgroups",
        Duration::from_secs(30),
        |line| {
            let unresolved = enforcement_field(line, "unresolved")?;
            enforcement_field(line, "cgroups").filter(|_| unresolved == 0)
        },
    );
    assert_eq!(cgroups, 2, "shop/web-0's pod and container cgroups");

    let (killed, victim_pid) = run_in(&shop_cgroup);
    assert!(killed, "the W+X mmap in shop/web-0 is killed");
    let (killed, _) = run_in(&other_cgroup);
    assert!(!killed, "the same labels in namespace other: untouched");
    let (killed, _) = run_in(&host_cgroup);
    assert!(!killed, "a host process: untouched");

    // The killed call's line says so, and names its pod.
    let lines = run.json_until("the enforced W+X call", Duration::from_secs(20), |l| {
        l["pid"] == victim_pid && l["syscall"] == "mmap" && l["args"]["length"] == WX_LENGTH
    });
    let wx = lines.last().expect("a line");
    assert_eq!(wx["enforced"]["action"], "kill", "{wx}");
    assert_eq!(
        (&wx["namespace"], &wx["pod"]),
        (&json!("shop"), &json!("web-0")),
        "{wx}"
    );
    let rw = lines
        .iter()
        .find(|l| {
            l["pid"] == victim_pid
                && l["syscall"] == "mmap"
                && l["args"]["prot"] == 3
                && l["args"]["flags"] == PRIVATE_ANON
        })
        .expect("the RW call before it");
    assert!(
        rw["ret"].as_i64().unwrap() > 0 && rw["enforced"].is_null(),
        "{rw}"
    );

    run.stop();
    let _ = std::fs::remove_file(&policy);
}
