//! A real kube-apiserver (e2e/kube/*.sh) with pods written as a kubelet would, cgroup
//! directories shaped like the kubelet's, and the `mapsentry` binaries run as a user runs them.

use super::{forward_lines, items_until};
use std::{
    io::{Read, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::mapsentry_bin;

/// The node the tests' pods are on and the agent watches.
pub const NODE: &str = "e2e-node";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("kube")
        .join(name)
}

/// Run `cmd`, panicking with its output unless it succeeds; its stdout, trimmed.
pub fn run(cmd: &mut Command) -> String {
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

/// One etcd + kube-apiserver on loopback ports, stopped and removed when dropped.
pub struct ApiServer {
    pub state: PathBuf,
}

impl ApiServer {
    pub fn start(name: &str) -> Self {
        // The build is cached per machine (/var/cache/mapsentry/kube); the first caller does it.
        static BUILD: Mutex<()> = Mutex::new(());
        {
            let _once = BUILD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run(&mut Command::new(script("build-kube.sh")));
        }
        let state =
            std::env::temp_dir().join(format!("mapsentry-e2e-kube-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let server = Self { state };
        run(Command::new(script("start-apiserver.sh")).arg(&server.state));
        server
    }

    /// Stop the kube-apiserver only (etcd keeps running): an outage.
    pub fn stop_apiserver(&self) {
        run(Command::new(script("stop-apiserver.sh"))
            .arg(&self.state)
            .arg("--apiserver-only"));
    }

    /// Start the kube-apiserver again after [`ApiServer::stop_apiserver`] (same address).
    pub fn restart_apiserver(&self) {
        run(Command::new(script("start-apiserver.sh"))
            .arg(&self.state)
            .arg("--apiserver-only"));
    }

    /// The kubeconfig with only the agent's rights.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig-agent")
    }

    pub async fn admin(&self) -> Client {
        mapsentry_agent::metadata::pods::client_from_kubeconfig(&self.state.join("kubeconfig"))
            .await
            .unwrap_or_else(|e| panic!("admin client: {e}"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(script("stop-apiserver.sh"))
            .arg(&self.state)
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A 64-hex-digit container id.
pub fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub async fn create_namespace(admin: &Client, name: &str, labels: &Value) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("namespace json");
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// A pod on [`NODE`] with one container `app` (image `image`), owned by ReplicaSet `owner_rs`
/// when given; its status written as a kubelet would (`app` running as `app_id`). Returns the
/// pod UID.
pub async fn create_running_pod(
    admin: &Client,
    namespace: &str,
    name: &str,
    labels: &Value,
    owner_rs: Option<&str>,
    image: &str,
    app_id: &str,
) -> String {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]}
    });
    if let Some(rs) = owner_rs {
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
            "uid": "0b6e7d1c-5a4f-4e3d-9c2b-1a0f9e8d7c6b", "controller": true
        }]);
    }
    let pod: Pod = serde_json::from_value(pod).expect("pod json");
    let api: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let created = api
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {namespace}/{name}: {e}"));
    let status = json!({"status": {
        "phase": "Running",
        "containerStatuses": [{"name": "app", "image": image, "imageID": "",
            "ready": true, "restartCount": 0, "containerID": format!("containerd://{app_id}")}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("writing the status of {name}: {e}"));
    created.metadata.uid.expect("uid")
}

/// The kubelet's cgroup layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// systemd driver, containerd: `kubepods.slice/kubepods-burstable.slice/...`
    Systemd,
    /// cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>`
    Cgroupfs,
}

impl Layout {
    pub fn path(self, uid: &str, id: &str) -> String {
        match self {
            Self::Systemd => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            ),
            Self::Cgroupfs => format!("kubepods/besteffort/pod{uid}/{id}"),
        }
    }
}

/// A private subtree of the real cgroup2 hierarchy (`/mapsentry-e2e-<pid>-<name>`), removed
/// deepest first when dropped, after its processes are moved back to the root cgroup.
pub struct CgroupTree {
    root: PathBuf,
    top: PathBuf,
}

impl CgroupTree {
    pub fn new(name: &str) -> Self {
        let root = mapsentry_e2e::cgroup::cgroup2_root()
            .unwrap_or_else(|e| panic!("these tests need a cgroup2 mount: {e}"));
        let top = root.join(format!("mapsentry-e2e-{}-{name}", std::process::id()));
        let tree = Self { root, top };
        tree.remove_all();
        std::fs::create_dir(&tree.top)
            .unwrap_or_else(|e| panic!("creating {} (needs root): {e}", tree.top.display()));
        tree
    }

    /// Make `sub` (with parents) under the tree; returns its absolute path.
    pub fn mkdir(&self, sub: &str) -> PathBuf {
        let path = self.top.join(sub);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        path
    }

    pub fn move_into(dir: &Path, pid: u32) {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {pid} to {}: {e}", procs.display()));
    }

    fn remove_all(&self) {
        if !self.top.exists() {
            return;
        }
        let mut dirs = Vec::new();
        collect_dirs(&self.top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&child.path(), out);
            }
        }
    }
}

/// A `mapsentry` subcommand running, its stdout and stderr lines arriving on channels; killed
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Running {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far (for failure messages).
    pub log: Vec<String>,
}

impl Running {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(mapsentry_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mapsentry {args:?}: {e}"));
        let stdout = forward_lines(child.stdout.take().expect("stdout"));
        let stderr = forward_lines(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
            log: Vec::new(),
        }
    }

    /// The first stderr line satisfying `find` (mapped), within `timeout`.
    pub fn stderr_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = find(&line);
                    self.log.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what}: {e}; stderr so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// The address printed after `marker` on a stderr line (`... marker ADDR...`).
    pub fn printed_addr(&mut self, marker: &str) -> SocketAddr {
        self.stderr_until(marker, Duration::from_secs(30), |line| {
            let rest = line.split_once(marker)?.1;
            let addr = rest
                .trim_start_matches("http://")
                .split(|c: char| c == '/' || c.is_whitespace())
                .next()?;
            addr.parse().ok()
        })
    }

    /// JSON stdout lines until one satisfies `done`; all of them, the last one included.
    pub fn json_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        items_until(
            &self.stdout,
            what,
            timeout,
            |line| {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
            },
            done,
        )
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `GET path` on a plain HTTP endpoint: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// The value of the unlabelled sample `name` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Poll `probe` every 100 ms until it gives a value; panics after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
