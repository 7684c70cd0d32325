//! `mapsentry agent --collector URL [--node NAME] [--kubeconfig PATH]`: the flags of the agent
//! role ([`mapsentry_agent::node::run`]).

use std::{net::SocketAddr, path::PathBuf};

use mapsentry_agent::node;

use crate::{capture_args::CaptureArgs, client_args::ClientArgs};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The collector, e.g. `https://mapsentry-collector:50051` (TLS, see --ca/--cert/--key) or
    /// `http://...` (plaintext, logged as a warning).
    #[arg(long, value_name = "URL")]
    collector: String,
    /// This node's name in events and stats, and the node whose pods are watched (default:
    /// `$NODE_NAME`, else the hostname; required with Kubernetes).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Watch this node's pods with this kubeconfig. Without it: the in-cluster service account
    /// when running in a pod, else `$KUBECONFIG` when set, else no Kubernetes (pod processes
    /// are then attributed by pod UID and container id only, unresolved).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Bytes of events held while the collector is slow or away; the oldest go beyond it.
    #[arg(long, default_value_t = 64 << 20)]
    buffer_bytes: usize,
    /// Where the last good enforce-mode policy set is kept: re-applied at start, before the
    /// collector is reached, so enforcement holds with the collector down.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/mapsentry")]
    state_dir: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics, liveness on /healthz and readiness on
    /// /readyz [default: 0.0.0.0:9091, skipped with a warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    capture: CaptureArgs,
}

impl AgentArgs {
    pub fn config(self) -> node::Config {
        node::Config {
            capture: self.capture.config(0),
            enrich: self.capture.enrich(),
            enforce_under: self.capture.enforce_under,
            security: self.client.security(),
            collector: self.collector,
            node: self.node,
            kubeconfig: self.kubeconfig,
            buffer_bytes: self.buffer_bytes,
            state_dir: self.state_dir,
            metrics_listen: self.metrics_listen,
        }
    }
}
