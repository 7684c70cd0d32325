//! A control plane for whole-system tests without a cluster: the real kube-apiserver and etcd
//! (`e2e/kube/`), the Helm chart rendered offline and its CRDs, ServiceAccounts and RBAC applied,
//! a kubeconfig per ServiceAccount from the TokenRequest API, and pods created through the API
//! with their container statuses written as a kubelet would, each with a kubelet-shaped cgroup
//! (systemd driver) that a real test process can be moved into.
//!
//! helm and kubectl come from `helm/tools.sh` (cached under `/var/cache/mapsentry/helm`, as the
//! chart tests use them). Every failure panics with the command and its output: these are test
//! fixtures.
#![expect(
    clippy::missing_panics_doc,
    reason = "test fixtures: every failure panics with the command and its output"
)]

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::cgroup::{TestCgroup, cgroup2_root};

/// The workspace root (scripts, chart).
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Run `command`; its stdout, or the reason it failed (status and both streams).
pub fn try_output(command: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {command:?}: {e}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {command:?}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// As [`try_output`], panicking on failure.
///
/// # Panics
/// When the command cannot run or fails.
pub fn output(command: &mut Command, stdin: Option<&str>) -> String {
    try_output(command, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// helm 3 and kubectl, from `helm/tools.sh` (installed once into its cache).
#[derive(Debug, Clone)]
pub struct ChartTools {
    pub helm: PathBuf,
    pub kubectl: PathBuf,
}

impl ChartTools {
    /// # Panics
    /// When `helm/tools.sh` cannot provide them (it names what is missing).
    #[must_use]
    pub fn ensure() -> Self {
        let printed = output(
            Command::new("bash").current_dir(repo_root()).args([
                "-c",
                r#"source helm/tools.sh >&2 && printf '%s\n%s\n' "$HELM" "$KUBECTL""#,
            ]),
            None,
        );
        let mut lines = printed.lines().map(PathBuf::from);
        let (Some(helm), Some(kubectl)) = (lines.next(), lines.next()) else {
            panic!("helm/tools.sh printed {printed:?}, not the helm and kubectl paths");
        };
        Self { helm, kubectl }
    }

    /// `helm template RELEASE helm/mapsentry --namespace NAMESPACE --include-crds [--set ...]`.
    ///
    /// # Panics
    /// When helm fails.
    #[must_use]
    pub fn render_chart(&self, release: &str, namespace: &str, set: &[&str]) -> String {
        let mut command = Command::new(&self.helm);
        command
            .current_dir(repo_root())
            .args([
                "template",
                release,
                "helm/mapsentry",
                "--namespace",
                namespace,
            ])
            .arg("--include-crds");
        for value in set {
            command.args(["--set", value]);
        }
        output(&mut command, None)
    }
}

/// The documents of a multi-document YAML stream (as `helm template` prints it) whose top-level
/// `kind` is one of `kinds`, joined into one stream.
#[must_use]
pub fn documents_of_kinds(stream: &str, kinds: &[&str]) -> String {
    let mut documents = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else {
            let current = documents.last_mut().expect("one document at least");
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|doc| {
            doc.lines()
                .filter_map(|l| l.strip_prefix("kind:"))
                .any(|kind| kinds.contains(&kind.trim()))
        })
        .fold(String::new(), |mut out, doc| {
            out.push_str("---\n");
            out.push_str(&doc);
            out
        })
}

/// The top-level `kind`s of a multi-document YAML stream, in order.
#[must_use]
pub fn kinds_of(stream: &str) -> Vec<String> {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("kind:"))
        .map(|k| k.trim().to_owned())
        .collect()
}

fn kube_script(name: &str) -> PathBuf {
    repo_root().join("e2e/kube").join(name)
}

/// One etcd + kube-apiserver on loopback (`e2e/kube/start-apiserver.sh`), stopped and its state
/// removed when dropped.
#[derive(Debug)]
pub struct ApiServer {
    state: PathBuf,
}

impl ApiServer {
    /// Start one with its own state directory under the temporary directory; builds the binaries
    /// first when the cache is empty (minutes, once per machine).
    ///
    /// # Panics
    /// When it cannot be built or does not become ready.
    #[must_use]
    pub fn start(name: &str) -> Self {
        output(&mut Command::new(kube_script("build-kube.sh")), None);
        let state =
            std::env::temp_dir().join(format!("mapsentry-kube-{name}-{}", std::process::id()));
        let server = Self { state };
        // A free port can be taken between the script's check and the bind by anything else on
        // the machine: a second attempt with fresh ports and state.
        let mut failures = Vec::new();
        for _ in 0..2 {
            let _ = Command::new(kube_script("stop-apiserver.sh"))
                .arg(&server.state)
                .output();
            let _ = fs::remove_dir_all(&server.state);
            match try_output(
                Command::new(kube_script("start-apiserver.sh")).arg(&server.state),
                None,
            ) {
                Ok(_) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("the kube-apiserver did not start:\n{}", failures.join("\n"));
    }

    /// The admin kubeconfig (`system:masters`).
    #[must_use]
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// The state directory (logs, certificates); files written here go with the server.
    #[must_use]
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The API server's log, for failure messages.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.state.join("apiserver.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(kube_script("stop-apiserver.sh"))
            .arg(&self.state)
            .output();
        let _ = fs::remove_dir_all(&self.state);
    }
}

/// kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    #[must_use]
    pub fn new(bin: &Path, kubeconfig: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    /// `kubectl ARGS` with `stdin`; stdout, or why it failed.
    pub fn try_run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        try_output(&mut self.command(args), stdin)
    }

    /// `kubectl ARGS` with `stdin`; stdout.
    ///
    /// # Panics
    /// When kubectl fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "run for its effect as often as for its output"
    )]
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_run(args, stdin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl ARGS -o json`, parsed.
    ///
    /// # Panics
    /// When kubectl fails or prints something else than JSON.
    #[must_use]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.run(&all, None);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kubectl {all:?} printed no JSON ({e}): {text}"))
    }

    /// `kubectl apply -f -` of `yaml` (YAML or JSON, one or more documents).
    ///
    /// # Panics
    /// When the API server refuses it.
    #[expect(
        clippy::must_use_candidate,
        reason = "applied for its effect; the output is for diagnostics"
    )]
    pub fn apply(&self, yaml: &str) -> String {
        self.run(&["apply", "-f", "-"], Some(yaml))
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API
    /// (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`), valid for an hour.
    ///
    /// # Panics
    /// When the request is refused.
    #[must_use]
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
        });
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let answer = self.run(
            &["create", "--raw", &path, "-f", "-"],
            Some(&request.to_string()),
        );
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("POST {path} answered no JSON ({e}): {answer}"));
        answer["status"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {path} answered no token: {answer}"))
            .to_owned()
    }
}

/// Write a kubeconfig at `out` for the same cluster as `admin_kubeconfig` that authenticates
/// with `token` as `user`.
///
/// # Panics
/// When the admin kubeconfig lacks the server or CA, or the file cannot be written.
pub fn token_kubeconfig(admin_kubeconfig: &Path, user: &str, token: &str, out: &Path) {
    let admin = fs::read_to_string(admin_kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", admin_kubeconfig.display()));
    let field = |name: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map_or_else(
                || panic!("no {name} in {}", admin_kubeconfig.display()),
                |v| v.trim().to_owned(),
            )
    };
    let (server, ca) = (field("server:"), field("certificate-authority-data:"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: e2e\n  context: {{cluster: e2e, user: {user}}}\ncurrent-context: e2e\n"
    );
    fs::write(out, config).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// A pod as the kubelet of `node` would run it: created through the API, its container reported
/// running with `container_id` (containerd) through `pods/status`.
#[derive(Debug, Clone)]
pub struct KubeletPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    pub container_id: String,
    pub image: String,
}

static IDS: AtomicU64 = AtomicU64::new(0);

/// A container id (64 hex digits) unique to this process and call.
#[must_use]
pub fn new_container_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        u64::from(std::process::id()),
        nanos,
        n,
        0x6d61_7073_656e_7472_u64
    )
}

impl KubeletPod {
    /// Create pod `namespace/name` on `node` with one container `container` running `image`,
    /// labelled `labels`, and report it running.
    ///
    /// # Panics
    /// When the API server refuses the pod or its status.
    #[must_use]
    pub fn run(
        kubectl: &Kubectl,
        namespace: &str,
        name: &str,
        node: &str,
        (container, image): (&str, &str),
        labels: &Value,
    ) -> Self {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "restartPolicy": "Never",
                     "containers": [{"name": container, "image": image}]}
        });
        let created = kubectl.run(&["create", "-o", "json", "-f", "-"], Some(&pod.to_string()));
        let created: Value = serde_json::from_str(&created).expect("kubectl create -o json");
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("no uid in {created}"))
            .to_owned();
        let container_id = new_container_id();
        let status = json!({"status": {
            "phase": "Running",
            "containerStatuses": [{"name": container, "image": image, "imageID": "",
                "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                "containerID": format!("containerd://{container_id}")}]
        }});
        let _ = kubectl.run(
            &[
                "patch",
                "pod",
                name,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        );
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            container: container.to_owned(),
            container_id,
            image: image.to_owned(),
        }
    }

    /// Its container's cgroup as kubelet's systemd driver names it for a BestEffort pod under
    /// containerd, relative to the cgroup2 root.
    #[must_use]
    pub fn systemd_cgroup_path(&self) -> String {
        let uid = self.uid.replace('-', "_");
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{}.scope",
            self.container_id
        )
    }
}

/// A container's cgroup in kubelet's layout under a private top directory of the test
/// (`<cgroup2 root>/<top>/kubepods.slice/...`; the agent's path parser finds the kubelet part
/// under any prefix). Dropping it removes the container's cgroup and then every directory up to
/// `top` that has become empty, so nothing is left once the last one of a test is gone.
#[derive(Debug)]
pub struct ContainerCgroup {
    container: Option<TestCgroup>,
    /// The directories above the container's up to `top`, innermost first.
    parents: Vec<PathBuf>,
}

impl ContainerCgroup {
    /// Create `pod`'s container cgroup (systemd layout) under `top`.
    ///
    /// # Panics
    /// When it cannot be created (needs root and cgroup v2).
    #[must_use]
    pub fn create(top: &str, pod: &KubeletPod) -> Self {
        let relative = format!("{top}/{}", pod.systemd_cgroup_path());
        let container = TestCgroup::create(&relative).unwrap_or_else(|e| {
            panic!("creating cgroup {relative} (needs root and cgroup v2): {e}")
        });
        let depth = pod.systemd_cgroup_path().split('/').count();
        let parents = container
            .path()
            .ancestors()
            .skip(1)
            .take(depth)
            .map(Path::to_path_buf)
            .collect();
        Self {
            container: Some(container),
            parents,
        }
    }

    #[must_use]
    pub fn cgroup(&self) -> &TestCgroup {
        self.container.as_ref().expect("present until dropped")
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        drop(self.container.take());
        for dir in &self.parents {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// Whether this host can run these tests: a cgroup2 mount we can write.
#[must_use]
pub fn cgroup2_writable() -> bool {
    cgroup2_root().is_ok_and(|root| {
        fs::metadata(root.join("cgroup.procs")).is_ok_and(|m| !m.permissions().readonly())
    })
}

/// `GET path` over plain HTTP/1.1 (the Prometheus and health endpoints): the status code and
/// the body, or why there is no answer.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("{addr}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no HTTP answer: {answer:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// `GET path`, which must answer 200; the body.
///
/// # Panics
/// When the server cannot be reached or does not answer 200.
#[must_use]
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    match try_http_get(addr, path) {
        Ok((200, body)) => body,
        Ok((code, body)) => panic!("GET http://{addr}{path}: {code}: {body}"),
        Err(e) => panic!("{e}"),
    }
}

pub mod node;

#[cfg(test)]
mod tests;
