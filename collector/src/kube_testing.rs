//! A real kube-apiserver and etcd on loopback (the versions e2e/kube/build-kube.sh pins) for the
//! collector's Kubernetes tests
//! (built once per machine by e2e/kube/build-kube.sh, started per test by
//! e2e/kube/start-apiserver.sh in its own state directory), with the policy CRDs of
//! manifests/crds/mapsentry.dev.yaml applied and the collector's identity bound to the chart's
//! ClusterRole (helm/mapsentry/templates/collector-rbac.yaml), used by impersonation.

use std::{
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, Client, api::PostParams};
use serde::Deserialize as _;

/// The user the collector's client acts as (bound to the chart's collector ClusterRole).
pub const COLLECTOR_USER: &str = "mapsentry-collector";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One etcd + kube-apiserver, stopped and removed when dropped.
pub struct ApiServer {
    pub state: PathBuf,
}

impl ApiServer {
    /// Start one, apply the CRDs and the collector's RBAC.
    pub async fn start(name: &str, extra_args: &str) -> Self {
        static BUILD: Mutex<()> = Mutex::new(());
        {
            let _once = BUILD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run(&mut Command::new(repo("e2e/kube/build-kube.sh")));
        }
        let state = std::env::temp_dir().join(format!(
            "mapsentry-collector-kube-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&state);
        let server = Self { state };
        server.start_apiserver(extra_args, false);
        server.apply_crds().await;
        server.apply_collector_rbac().await;
        server
    }

    pub fn start_apiserver(&self, extra_args: &str, only: bool) {
        let mut cmd = Command::new(repo("e2e/kube/start-apiserver.sh"));
        cmd.arg(&self.state).env("APISERVER_EXTRA_ARGS", extra_args);
        if only {
            cmd.arg("--apiserver-only");
        }
        run(&mut cmd);
    }

    pub fn stop_apiserver(&self) {
        run(Command::new(repo("e2e/kube/stop-apiserver.sh"))
            .arg(&self.state)
            .arg("--apiserver-only"));
    }

    pub fn compact(&self) {
        run(Command::new(repo("e2e/kube/etcd-compact.sh")).arg(&self.state));
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// The admin's client.
    pub async fn admin(&self) -> Client {
        mapsentry_service::kube::client(Some(&self.kubeconfig()))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client with only the collector's rights (the chart's ClusterRole).
    pub async fn collector(&self) -> Client {
        let file = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
        config.auth_info.impersonate = Some(COLLECTOR_USER.into());
        Client::try_from(config).expect("client")
    }

    async fn apply_crds(&self) {
        let text = std::fs::read_to_string(repo("manifests/crds/mapsentry.dev.yaml"))
            .expect("manifests/crds/mapsentry.dev.yaml");
        let api: Api<CustomResourceDefinition> = Api::all(self.admin().await);
        let mut names = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd = CustomResourceDefinition::deserialize(document).expect("a CRD");
            names.push(crd.metadata.name.clone().expect("name"));
            api.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("creating {:?}: {e}", crd.metadata.name));
        }
        for name in names {
            eventually(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                || async {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                },
            )
            .await;
        }
    }

    /// The chart's collector ClusterRole (its rules read from the template), bound to
    /// [`COLLECTOR_USER`].
    async fn apply_collector_rbac(&self) {
        let template =
            std::fs::read_to_string(repo("helm/mapsentry/templates/collector-rbac.yaml"))
                .expect("collector-rbac.yaml");
        let start = template.find("\nrules:\n").expect("rules in the template") + 1;
        let end = template[start..]
            .find("\n---")
            .expect("end of the ClusterRole")
            + start;
        let rules: serde_json::Value =
            serde_yaml_ng::from_str(&template[start..end]).expect("the rules as YAML");
        let admin = self.admin().await;
        let role: ClusterRole = serde_json::from_value(serde_json::json!({
            "metadata": {"name": COLLECTOR_USER},
            "rules": rules["rules"],
        }))
        .expect("ClusterRole");
        Api::<ClusterRole>::all(admin.clone())
            .create(&PostParams::default(), &role)
            .await
            .expect("creating the collector ClusterRole");
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": COLLECTOR_USER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COLLECTOR_USER},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COLLECTOR_USER}],
        }))
        .expect("ClusterRoleBinding");
        Api::<ClusterRoleBinding>::all(admin)
            .create(&PostParams::default(), &binding)
            .await
            .expect("creating the collector ClusterRoleBinding");
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(repo("e2e/kube/stop-apiserver.sh"))
            .arg(&self.state)
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Poll `probe` every 50 ms until it gives a value; panic naming `what` after `timeout`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
