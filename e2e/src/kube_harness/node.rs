//! A real single-node Kubernetes cluster on this machine (`e2e/kube/start-node.sh`): etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc, kubelet,
//! kube-proxy and CoreDNS at the versions `e2e/kube/build-kube.sh` pins, with container images
//! made locally (`e2e/kube/build-images.sh`). Dropping a [`RealNode`] stops it and puts the machine
//! back as it was (`e2e/kube/stop-node.sh`).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{Kubectl, repo_root, try_output};

/// The node's name, as `start-node.sh` registers it.
pub const NODE_NAME: &str = "mapsentry-e2e-node";
/// The node's components, each with `NAME.log` in the state directory, in start order.
pub const COMPONENTS: [&str; 8] = [
    "etcd",
    "apiserver",
    "controller-manager",
    "scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
];

fn kube_script(name: &str) -> PathBuf {
    repo_root().join("e2e/kube").join(name)
}

/// Build container images with `e2e/kube/build-images.sh WHAT OUT` (`pause`, `workload`,
/// `mapsentry` or `all`); the tarballs' paths.
///
/// # Errors
/// The script's failure (the cargo or gcc build, a missing tool), with its output.
pub fn build_images(what: &str, out: &Path) -> Result<Vec<PathBuf>, String> {
    let printed = try_output(
        Command::new(kube_script("build-images.sh"))
            .arg(what)
            .arg(out),
        None,
    )?;
    Ok(printed.lines().map(PathBuf::from).collect())
}

/// The cluster's binaries, built once per machine and cached (`e2e/kube/build-kube.sh`).
///
/// # Errors
/// The build's failure, with its output.
pub fn kube_bin_dir() -> Result<PathBuf, String> {
    let printed = try_output(&mut Command::new(kube_script("build-kube.sh")), None)?;
    printed
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|dir| dir.join("kubelet").is_file())
        .ok_or_else(|| format!("build-kube.sh printed no bin directory: {printed:?}"))
}

/// A running node; stopped, and the machine restored, when dropped.
#[derive(Debug)]
pub struct RealNode {
    state: PathBuf,
    bin: PathBuf,
    /// From the start of `start-node.sh` to the node Ready with DNS and service proxy up.
    pub ready_after: Duration,
}

impl RealNode {
    /// Start the node with these image tarballs imported into containerd; waits until it is
    /// Ready. A failure names the component that was not ready and ends with its log's tail
    /// (`start-node.sh` prints it); what had started is stopped again.
    ///
    /// # Errors
    /// When the binaries cannot be built or the node does not become Ready.
    pub fn start(images: &[PathBuf]) -> Result<Self, String> {
        let bin = kube_bin_dir()?;
        let state = std::env::temp_dir().join(format!("mapsentry-node-{}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        let mut node = Self {
            state,
            bin,
            ready_after: Duration::ZERO,
        };
        let started = Instant::now();
        let result = try_output(
            Command::new(kube_script("start-node.sh"))
                .arg(&node.state)
                .args(images),
            None,
        );
        match result {
            Ok(_) => {
                node.ready_after = started.elapsed();
                Ok(node)
            }
            // (Dropping `node` stops what did start.)
            Err(failure) => Err(format!(
                "the node did not start:\n{failure}\n{}",
                node.diagnostics()
            )),
        }
    }

    /// kubectl of the pinned version with the admin kubeconfig (`system:masters`).
    #[must_use]
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.bin.join("kubectl"), &self.kubeconfig())
    }

    /// The admin kubeconfig.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// One of the cluster's binaries (`kubectl`, `ctr`, ...).
    #[must_use]
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The state directory (certificates, logs, containerd's and the kubelet's roots).
    #[must_use]
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The last `lines` lines of a component's log (see [`COMPONENTS`]).
    #[must_use]
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let log = fs::read_to_string(self.state.join(format!("{component}.log")))
            .unwrap_or_else(|e| format!("(no {component}.log: {e})"));
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What to print when a step fails: the pods, recent cluster events and the end of the
    /// kubelet's and containerd's logs.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let kubectl = self.kubectl();
        for args in [
            &["get", "nodes,pods", "--all-namespaces", "-o", "wide"][..],
            &[
                "get",
                "events",
                "--all-namespaces",
                "--sort-by=.lastTimestamp",
            ][..],
        ] {
            let answer = kubectl.try_run(args, None).unwrap_or_else(|e| e);
            let _ = writeln!(out, "--- kubectl {}\n{answer}", args.join(" "));
        }
        for component in ["kubelet", "containerd"] {
            let _ = writeln!(
                out,
                "--- the end of {component}.log\n{}",
                self.log_tail(component, 25)
            );
        }
        out
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        match Command::new(kube_script("stop-node.sh"))
            .arg(&self.state)
            .output()
        {
            Ok(out) if !out.stderr.is_empty() => {
                eprintln!("stop-node.sh: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(_) => {}
            Err(e) => eprintln!("cannot run stop-node.sh: {e}"),
        }
        let _ = fs::remove_dir_all(&self.state);
    }
}
