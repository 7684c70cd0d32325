//! Persisting never blocks enforcing: `mapsentry agent` whose `--state-dir` is on a read-only
//! file system (as under a chart with `readOnlyRootFilesystem` and nothing mounted there) still
//! enforces the set the collector pushes, and says why it could not persist it: in its log, its
//! `/readyz` body, its metrics, and, through its report on the agent stream, the policy's
//! `KernelEnforced` condition the collector writes. Real kube-apiserver with the CRDs, real
//! collector and agent binaries, real BPF, a real read-only mount; the rules are confined to one
//! test cgroup (`--enforce-under`).

mod common;

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use common::{
    Helper,
    apiserver::{ApiServer, Running, eventually, http_get, metric},
    mmap_call,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResourceExt as _,
    api::{ApiResource, DynamicObject, PostParams},
};
use mapsentry_e2e::{cgroup::TestCgroup, mount::ReadOnlyDir};
use mapsentry_policy::{ClusterMmapPolicy, MmapPolicy};
use serde_json::{Value, json};

const NODE: &str = "e2e-persist";

fn policy() -> Value {
    json!({
        "apiVersion": "mapsentry.dev/v1alpha1", "kind": "ClusterMmapPolicy",
        "metadata": {"name": "persist-wx"},
        "spec": {"hostProcesses": true, "mode": "Enforce", "rules": [
            {"name": "wx", "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"]}, "action": "Kill"}]},
    })
}

fn cluster_policies() -> ApiResource {
    ApiResource {
        group: "mapsentry.dev".into(),
        version: "v1alpha1".into(),
        api_version: "mapsentry.dev/v1alpha1".into(),
        kind: "ClusterMmapPolicy".into(),
        plural: "clustermmappolicies".into(),
    }
}

/// The CRDs, established, and the policy object.
async fn install(server: &ApiServer) -> Api<DynamicObject> {
    let admin = server.admin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in [MmapPolicy::crd(), ClusterMmapPolicy::crd()] {
        let name = crd.metadata.name.clone().expect("CRD name");
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("creating CRD {name}: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let established = crds.get(&name).await.ok().is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} not established"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let policies: Api<DynamicObject> = Api::all_with(admin, &cluster_policies());
    let object: DynamicObject = serde_json::from_value(policy()).expect("policy object");
    policies
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the policy");
    policies
}

#[test]
fn an_agent_that_cannot_persist_still_enforces_and_says_why() {
    let tag = std::process::id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = ApiServer::start("enforce-persist");
    let policies = runtime.block_on(install(&server));
    let cgroup = TestCgroup::create(&format!("mapsentry-test-persist-{tag}"))
        .expect("creating a cgroup (needs root and cgroup v2)");
    let state = ReadOnlyDir::mount(&format!("mapsentry-e2e-ro-agent-state-{tag}"));

    let admin_kubeconfig = server.state.join("kubeconfig");
    let mut collector = Running::start(&[
        "collector",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--kubeconfig",
        admin_kubeconfig.to_str().unwrap(),
    ]);
    let grpc = collector.printed_addr("collector serving on ");
    let under = format!("/mapsentry-test-persist-{tag}");
    let mut agent = Running::start(&[
        "agent",
        "--collector",
        &format!("http://{grpc}"),
        "--node",
        NODE,
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--enforce-under",
        &under,
    ]);
    let endpoint = agent.printed_addr("agent metrics on ");
    let logged = agent.stderr_until(
        "the persist failure in the log",
        Duration::from_secs(30),
        |line| {
            line.contains("cannot be persisted")
                .then(|| line.to_owned())
        },
    );
    assert!(logged.contains("Read-only file system"), "{logged}");

    let body = eventually("/readyz to say why", Duration::from_secs(30), || {
        let (status, body) = http_get(endpoint, "/readyz");
        (status == 200 && body.contains("could not be persisted")).then_some(body)
    });
    assert!(
        body.starts_with("ready;")
            && body.contains(&state.path().display().to_string())
            && body.contains("Read-only file system"),
        "{body}"
    );
    let metrics = eventually("the metrics", Duration::from_secs(30), || {
        let (_, body) = http_get(endpoint, "/metrics");
        (metric(&body, "mapsentry_enforce_cgroups")? == 1).then_some(body)
    });
    assert_eq!(
        metric(&metrics, "mapsentry_enforce_persist_failures_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mapsentry_enforce_policy_set_persisted"),
        Some(0)
    );
    assert_eq!(metric(&metrics, "mapsentry_enforce_kernel_rules"), Some(1));

    // Enforced all the same.
    let spec = json!({"calls": [{"length": 4096, "prot": 7, "flags": 0x22, "fd": "anon"}]});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let (status, report) = helper.go_until_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "the pushed set is enforced although it was not persisted: {report:?}"
    );

    // The collector writes it into the policy's status: enforced, not persisted, where and why.
    let kernel = runtime.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let object = policies.get("persist-wx").await.expect("the policy object");
            let kernel = object.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "KernelEnforced" && c["reason"] == "NotPersisted")
                .cloned();
            if let Some(kernel) = kernel {
                return kernel;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no NotPersisted condition: {}",
                object.data["status"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let message = kernel["message"].as_str().unwrap_or_default();
    assert_eq!(kernel["status"], "True", "enforced all the same: {kernel}");
    assert!(
        message.contains(&format!("node {NODE}")) && message.contains("Read-only file system"),
        "{kernel}"
    );

    agent.stop();
    collector.stop();
}
