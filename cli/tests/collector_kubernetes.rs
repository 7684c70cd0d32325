//! `mapsentry collector --kubeconfig` as its own process against a real kube-apiserver
//! (e2e/kube/start-apiserver.sh): a ClusterMmapPolicy applied through the API is accepted (its
//! status written by the collector) and in force: W+X calls of a pod, shipped by a real agent
//! shipper over gRPC, become one Kubernetes Event on the pod (reason MmapPolicyViolation) whose
//! series counts every call once the collector stops.

use std::{path::PathBuf, process::Command, time::Duration};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
};
use mapsentry_agent::shipper::{Shipper, ShipperConfig, backoff::Backoff};
use mapsentry_policy::{Attribution, K8sMeta, MmapArgs, MmapEvent, Syscall};
use serde::Deserialize as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mapsentry");

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct ApiServer(PathBuf);

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(repo("e2e/kube/stop-apiserver.sh"))
            .arg(&self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("object json")
}

async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// A W+X `mmap` by shop/web's container `app`.
fn pod_wx(time_ns: u64, pod_uid: &str) -> MmapEvent {
    MmapEvent {
        time_ns,
        syscall: Syscall::Mmap,
        pid: 4242,
        tid: 4242,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "jit".into(),
        cgroup_id: 99,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 0x7,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x7f00_0000_0000,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: Some(std::sync::Arc::new(Attribution::Pod(K8sMeta {
            namespace: Some("shop".into()),
            pod: Some("web".into()),
            container: Some("app".into()),
            pod_uid: Some(pod_uid.into()),
            resolved: true,
            ..K8sMeta::default()
        }))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_binary_takes_policies_from_the_api_and_posts_events_on_pods() {
    let state = std::env::temp_dir().join(format!(
        "mapsentry-cli-collector-kube-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&state);
    run(&mut Command::new(repo("e2e/kube/build-kube.sh")));
    run(Command::new(repo("e2e/kube/start-apiserver.sh")).arg(&state));
    let server = ApiServer(state.clone());
    let kubeconfig = server.0.join("kubeconfig");
    let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    let admin = Client::try_from(config).unwrap();

    // The CRDs, as committed.
    let crds: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    );
    let text = std::fs::read_to_string(repo("manifests/crds/mapsentry.dev.yaml")).unwrap();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd = dynamic(Value::deserialize(document).unwrap());
        let name = crd.metadata.name.clone().unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
        eventually(
            &format!("{name} established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.ok()?;
                crd.data["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
                    .then_some(())
            },
        )
        .await;
    }
    let namespaces: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &resource("", "v1", "Namespace", "namespaces"),
    );
    namespaces
        .create(
            &PostParams::default(),
            &dynamic(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            ),
        )
        .await
        .unwrap();
    let pods: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "shop", &resource("", "v1", "Pod", "pods"));
    let pod = pods
        .create(
            &PostParams::default(),
            &dynamic(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}}),
            ),
        )
        .await
        .unwrap();
    let pod_uid = pod.metadata.uid.unwrap();

    // The collector, from the binary.
    let listen = free_addr();
    let log_path = server.0.join("collector.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut collector = tokio::process::Command::new(BIN)
        .args([
            "collector",
            "--plaintext",
            "--listen",
            &listen,
            "--metrics-listen",
            &free_addr(),
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let policies: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &resource(
            "mapsentry.dev",
            "v1alpha1",
            "ClusterMmapPolicy",
            "clustermmappolicies",
        ),
    );
    policies
        .create(
            &PostParams::default(),
            &dynamic(json!({
                "apiVersion": "mapsentry.dev/v1alpha1", "kind": "ClusterMmapPolicy",
                "metadata": {"name": "no-wx"},
                "spec": {"mode": "Audit", "rules": [{"name": "write-and-execute",
                    "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"]}, "action": "Alert"}]}
            })),
        )
        .await
        .unwrap();
    eventually(
        "status Accepted written by the collector",
        Duration::from_secs(30),
        || async {
            let object = policies.get("no-wx").await.ok()?;
            let conditions = object.data["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;

    // An agent ships 20 W+X calls of shop/web.
    let mut config = ShipperConfig::new(format!("http://{listen}"), "node-a");
    config.batch_max_delay = Duration::from_millis(20);
    config.backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let shipper = Shipper::start(config).unwrap();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    shipper
        .send((0..20).map(|i| pod_wx(t0 + i, &pod_uid)).collect())
        .await
        .unwrap();

    let events: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "shop",
        &resource("events.k8s.io", "v1", "Event", "events"),
    );
    let ours = || async {
        events.list(&ListParams::default()).await.ok().map(|list| {
            list.items
                .into_iter()
                .filter(|e| e.data["reason"] == "MmapPolicyViolation")
                .collect::<Vec<_>>()
        })
    };
    let first = eventually("an Event on shop/web", Duration::from_secs(30), || async {
        ours().await.filter(|e| !e.is_empty())
    })
    .await;
    assert_eq!(first[0].data["regarding"]["name"], "web");
    assert_eq!(first[0].data["type"], "Warning");

    // SIGTERM: the collector reports what its dedup window holds, into the Event's series.
    drop(shipper);
    run(Command::new("kill").args(["-TERM", &collector.id().unwrap().to_string()]));
    let status = tokio::time::timeout(Duration::from_secs(30), collector.wait())
        .await
        .expect("the collector stops within 30 s")
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("policy accepted and in force"), "{log}");
    let all = ours().await.unwrap();
    assert_eq!(all.len(), 1, "one Event for the storm: {all:?}");
    assert_eq!(all[0].data["series"]["count"], 20, "{all:?}");
}
