//! Enforce policies act on the pods they select, resolved through the pod cache: a real
//! kube-apiserver holding pods, real cgroups shaped like the kubelet's, `mapsentry run --policy
//! FILE --kubeconfig ...` (the same enforcement path as the agent's).
//!
//! - The `MmapPolicy` of namespace `shop` with `podSelector: app=web` and a Kill rule for W+X
//!   mappings kills the process in shop's pod at its W+X mmap (after its allowed RW mmap
//!   succeeded); the same calls in namespace `other`'s pod, and in a host cgroup, are untouched.
//! - `except.images` is resolved per cgroup: of two containers of namespace `shop`, the one
//!   running an excepted image completes its W+X mapping, the other is killed at it, and a
//!   container whose pod the API server does not know fails closed (killed).
//!
//! `--enforce-under` confines the rules to each test's cgroup tree: pod cgroups of this machine
//! that the test's API server does not know would otherwise fail closed too.

mod common;

use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    Helper,
    apiserver::{
        ApiServer, CgroupTree, Layout, NODE, Running, container_id, create_namespace,
        create_running_pod,
    },
    mmap_call,
};
use mapsentry_e2e::cgroup::cgroup2_root;
use serde_json::{Value, json};

const PRIVATE_ANON: u64 = 0x22;
const WX_LENGTH: u64 = 5 * 4096;

const SHOP_WEB_NO_WX: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: MmapPolicy
metadata: {name: no-wx, namespace: shop}
spec:
  mode: Enforce
  podSelector: {matchLabels: {app: web}}
  rules:
    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}
";

const NO_WX_BUT_JIT: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: MmapPolicy
metadata: {name: no-wx-but-jit, namespace: shop}
spec:
  mode: Enforce
  rules:
    - name: wx
      match: {protAll: [PROT_WRITE, PROT_EXEC]}
      except: {images: ['registry.example/jit:*']}
      action: Kill
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

/// What became of the helper run in a cgroup.
struct Ran {
    killed: bool,
    pid: u32,
    report: Option<Value>,
}

/// Run the helper in `cgroup`.
fn run_in(cgroup: &Path) -> Ran {
    let helper = Helper::spawn(mmap_call(), &[&spec()]);
    let pid = helper.pid;
    CgroupTree::move_into(cgroup, pid);
    let (status, report) = helper.go_until_exit();
    let killed = status.signal() == Some(9);
    if killed {
        assert!(
            report.is_none(),
            "killed before it could report: {report:?}"
        );
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
    }
    Ran {
        killed,
        pid,
        report,
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

/// `mapsentry run` enforcing `policy` with the pods of `server`, confined to `tree`, once its
/// `enforcement` line says `cgroups` cgroups have rules and `unresolved` have no known pod.
fn run_enforcing(
    server: &ApiServer,
    tree: &CgroupTree,
    policy: &str,
    cgroups: u64,
    unresolved: u64,
) -> (Running, PathBuf) {
    let top = tree.mkdir("");
    let under = format!(
        "/{}",
        top.strip_prefix(cgroup2_root().unwrap()).unwrap().display()
    );
    let file = std::env::temp_dir().join(format!(
        "mapsentry-e2e-enforce-pods-{}-{cgroups}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, policy).expect("writing the policy");
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
        file.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        NODE,
        "--enforce-under",
        &under,
    ]);
    // The pod cache syncs after the start (until then, the pod cgroups fail closed); the rescan
    // (every second) then resolves them.
    run.stderr_until(
        "the policy resolved to the known pods",
        Duration::from_secs(30),
        |line| {
            (enforcement_field(line, "cgroups")? == cgroups
                && enforcement_field(line, "unresolved")? == unresolved)
                .then_some(())
        },
    );
    (run, file)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_namespaced_kill_policy_kills_in_the_selected_pod_only() {
    let server = ApiServer::start("enforce-pods");
    let (shop_uid, other_uid) = runtime().block_on(async {
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
    // shop/web-0's pod and container cgroups; nothing of namespace `other`.
    let (run, policy) = run_enforcing(&server, &tree, SHOP_WEB_NO_WX, 2, 0);

    let victim = run_in(&shop_cgroup);
    assert!(victim.killed, "the W+X mmap in shop/web-0 is killed");
    assert!(
        !run_in(&other_cgroup).killed,
        "the same labels in namespace other: untouched"
    );
    assert!(!run_in(&host_cgroup).killed, "a host process: untouched");

    // The killed call's line says so, and names its pod.
    let lines = run.json_until("the enforced W+X call", Duration::from_secs(20), |l| {
        l["pid"] == victim.pid && l["syscall"] == "mmap" && l["args"]["length"] == WX_LENGTH
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
            l["pid"] == victim.pid
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

#[test]
fn an_excepted_image_survives_another_is_killed_and_an_unknown_pod_fails_closed() {
    let server = ApiServer::start("enforce-images");
    let (jit_uid, web_uid) = runtime().block_on(async {
        let admin = server.admin().await;
        create_namespace(&admin, "shop", &json!({})).await;
        let labels = json!({"app": "shop"});
        let jit = create_running_pod(
            &admin,
            "shop",
            "jit-0",
            &labels,
            None,
            "registry.example/jit:1",
            &container_id(21),
        )
        .await;
        let web = create_running_pod(
            &admin,
            "shop",
            "web-0",
            &labels,
            None,
            "registry.example/web:1",
            &container_id(22),
        )
        .await;
        (jit, web)
    });
    let tree = CgroupTree::new("enforce-images");
    let jit_cgroup = tree.mkdir(&Layout::Systemd.path(&jit_uid, &container_id(21)));
    let web_cgroup = tree.mkdir(&Layout::Cgroupfs.path(&web_uid, &container_id(22)));
    let unknown_cgroup = tree
        .mkdir(&Layout::Cgroupfs.path("0f0e0d0c-0b0a-4909-8807-060504030201", &container_id(23)));
    // The web pod's two cgroups get the rule, the jit container's does not (its pod cgroup,
    // which has no container, does), the unknown pod's two fail closed.
    let (run, policy) = run_enforcing(&server, &tree, NO_WX_BUT_JIT, 5, 2);

    let jit = run_in(&jit_cgroup);
    let ret = jit
        .report
        .as_ref()
        .and_then(|r| r["results"][1]["ret"].as_i64());
    assert!(
        !jit.killed && ret.is_some_and(|r| r > 0),
        "the excepted image completes its W+X mapping: {:?}",
        jit.report
    );
    assert!(
        run_in(&web_cgroup).killed,
        "another image is killed at the W+X mapping"
    );
    assert!(
        run_in(&unknown_cgroup).killed,
        "a container whose pod is not known fails closed"
    );

    run.stop();
    let _ = std::fs::remove_file(&policy);
}
