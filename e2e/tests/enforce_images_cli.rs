//! `except.images` is resolved per cgroup, through the pod cache: real kube-apiserver holding two
//! pods of namespace `shop`, one running image `registry.example/jit:1`, the other
//! `registry.example/web:1`, real cgroups shaped like the kubelet's, and `mapsentry run --policy
//! FILE --kubeconfig ...` (the agent's enforcement path). The policy kills W+X mappings except in
//! containers of the jit image: the jit container completes its W+X mapping, the web container
//! is killed at it, and a container whose pod the API server does not know fails closed (killed).
//!
//! `--enforce-under` confines the rules to the test's cgroup tree: pod cgroups of this machine
//! that the test's API server does not know would otherwise fail closed too.

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
const WX_LENGTH: u64 = 7 * 4096;

const POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
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

/// The W+X call, then a read-only one: (killed by SIGKILL, the W+X call's result).
fn run_in(cgroup: &Path) -> (bool, Option<i64>) {
    let spec = json!({"calls": [
        {"length": WX_LENGTH, "prot": 7, "flags": PRIVATE_ANON, "fd": "anon"},
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    CgroupTree::move_into(cgroup, helper.pid);
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(
            report.is_none(),
            "killed before it could report: {report:?}"
        );
        (true, None)
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        (false, report.and_then(|r| r["results"][0]["ret"].as_i64()))
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
fn an_excepted_image_survives_another_is_killed_and_an_unknown_pod_fails_closed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = ApiServer::start("enforce-images");
    let (jit_uid, web_uid) = runtime.block_on(async {
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
    let top = tree.mkdir("");
    let under = format!(
        "/{}",
        top.strip_prefix(cgroup2_root().unwrap()).unwrap().display()
    );

    let policy = std::env::temp_dir().join(format!(
        "mapsentry-e2e-enforce-images-{}.yaml",
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
    // Once the pod cache has synced, the rescan resolves both pods: the web pod's two cgroups
    // get the rule, the jit container's does not (its pod cgroup, which has no container,
    // does), the unknown pod's two fail closed.
    let cgroups = run.stderr_until(
        "the policy resolved to the known pods",
        Duration::from_secs(30),
        |line| {
            let unresolved = enforcement_field(line, "unresolved")?;
            enforcement_field(line, "cgroups").filter(|n| *n == 5 && unresolved == 2)
        },
    );
    assert_eq!(cgroups, 5);

    let (killed, ret) = run_in(&jit_cgroup);
    assert!(
        !killed && ret.is_some_and(|r| r > 0),
        "the excepted image completes its W+X mapping: {ret:?}"
    );
    let (killed, _) = run_in(&web_cgroup);
    assert!(killed, "another image is killed at the W+X mapping");
    let (killed, _) = run_in(&unknown_cgroup);
    assert!(killed, "a container whose pod is not known fails closed");

    run.stop();
    let _ = std::fs::remove_file(&policy);
}
