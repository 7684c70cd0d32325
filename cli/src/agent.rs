//! `mapsentry agent --collector URL [--node NAME] [--kubeconfig PATH]`: capture on this node,
//! attribute every call to its pod and container (or host unit), and stream it to a collector,
//! until Ctrl-C or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;

use mapsentry_agent::{
    Capture,
    enforce::policies::Enforcer,
    metadata::{Attributor, EnrichConfig, Kubernetes},
    shipper::{Shipper, ShipperConfig},
};
use mapsentry_proto::v1;
use tokio::sync::watch;

use mapsentry_proto::client::ClientSecurity;

use crate::{
    agent_http::{self, AgentStatus, Info},
    capture_args::{CaptureArgs, hostname},
    client_args::ClientArgs,
    enforcing::Enforcing,
    pump::pump,
    signals::Shutdown,
};

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

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install()?;
    let health = Arc::new(AgentStatus::default());
    let endpoint = match args.metrics_listen {
        Some(addr) => agent_http::start(&health, addr, true).await?,
        None => agent_http::start(&health, agent_http::DEFAULT_LISTEN.parse()?, false).await?,
    };
    if let Some(endpoint) = &endpoint {
        eprintln!(
            "mapsentry: agent metrics on http://{0}/metrics, health on /healthz and /readyz",
            endpoint.addr
        );
    }
    let kubernetes = Kubernetes::from_flags(args.kubeconfig.clone(), args.node.as_deref())?;
    let mut attributor = Attributor::start(&kubernetes, EnrichConfig::default())
        .await
        .context("cannot start pod attribution")?;
    let mut capture = Capture::start(&args.capture.config(0)).context("cannot start capturing")?;
    let node = args.node.unwrap_or_else(hostname);
    health.attached(
        Info {
            node: node.clone(),
            attach_mode: capture.attached().mode.as_str().to_owned(),
            hook: capture.attached().target.clone(),
            deny_unavailable: capture.attached().deny_unavailable.clone(),
        },
        attributor.pods().cloned(),
        attributor.missing_counter(),
    );
    let mut enforcer = Enforcer::new(
        Some(args.state_dir.clone()),
        capture.attached().deny_unavailable.as_deref(),
    );
    match enforcer.load_persisted() {
        Ok(Some(version)) => eprintln!(
            "mapsentry: enforcing the persisted policy set version {version} from {}",
            args.state_dir.display()
        ),
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "the persisted policy set cannot be read; enforcing nothing until the collector sends one");
        }
    }
    let (sets_tx, sets_rx) = watch::channel(None);
    let mut enforcing = Enforcing::new(enforcer, Some(sets_rx))
        .with_pods(attributor.pods().cloned())
        .under(args.capture.enforce_under.as_deref());
    enforcing.apply(&mut capture);
    let shipper = start_shipper(
        &args.collector,
        &node,
        args.buffer_bytes,
        &capture,
        Some(sets_tx),
        args.client.security(),
    )?;
    eprintln!(
        "mapsentry: agent on node {node} capturing in {} mode, shipping to {} (boot id {}); {}",
        capture.attached().mode,
        args.collector,
        shipper.boot_id(),
        describe(&kubernetes),
    );
    let kernel = pump(
        &mut capture,
        &mut attributor,
        &shipper,
        &mut shutdown,
        Some(&mut enforcing),
        Some(&health),
        |_| Ok(true),
    )
    .await?;
    let stats = shipper.finish().await;
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    eprintln!(
        "mapsentry: detached; seen {}, captured {}, shipped {}, acked {}, dropped {:?}, \
         enrichment missing {}",
        kernel.seen,
        stats.captured,
        stats.shipped,
        stats.acked,
        stats.dropped,
        attributor.missing_counter().get()
    );
    Ok(())
}

/// A shipper that tells the collector who this agent is.
pub fn start_shipper(
    collector: &str,
    node: &str,
    buffer_bytes: usize,
    capture: &Capture,
    policy_sets: Option<watch::Sender<Option<v1::PolicySet>>>,
    security: ClientSecurity,
) -> anyhow::Result<Shipper> {
    let mut config = ShipperConfig::new(collector, node);
    config.security = security;
    config.buffer_bytes = buffer_bytes;
    config.policy_sets = policy_sets;
    capture
        .attached()
        .mode
        .as_str()
        .clone_into(&mut config.attach_mode);
    config.capabilities = vec![
        format!("attach:{}", capture.attached().mode),
        "enforce:kill".to_owned(),
    ];
    if capture.attached().deny_unavailable.is_none() {
        config.capabilities.push("enforce:deny".to_owned());
    }
    Shipper::start(config).context("starting the shipper")
}

/// Where pod metadata comes from, for the start-up line.
pub fn describe(kubernetes: &Kubernetes) -> String {
    match kubernetes {
        Kubernetes::Off => "no Kubernetes: host processes attributed, pods by UID only".into(),
        Kubernetes::Default { node } => format!("watching the pods of node {node}"),
        Kubernetes::Kubeconfig { path, node } => {
            format!("watching the pods of node {node} with {}", path.display())
        }
    }
}
