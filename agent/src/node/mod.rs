//! The agent role (`mapsentry agent`): capture on this node, attribute every call to its pod and
//! container (or host unit), enforce the collector's policy sets, and stream every call to the
//! collector, until `shutdown`. [`run`] is the whole role; its parts are shared with the
//! embedded `mapsentry run`: the [`event_loop`], [`enforcing`] (the enforcement loop) and
//! [`status`] (the `/metrics`, `/healthz`, `/readyz` endpoint).

pub mod enforcing;
pub mod event_loop;
pub mod sink;
pub mod status;

use std::{net::SocketAddr, path::PathBuf, pin::pin, sync::Arc};

use mapsentry_proto::{client::ClientSecurity, v1};
use mapsentry_service::status;
use tokio::sync::watch;

use crate::{
    Capture, CaptureConfig, capture,
    enforce::policies::Enforcer,
    metadata::{self, Attributor, EnrichConfig, Kubernetes},
    shipper::{Shipper, ShipperConfig, ShipperError},
};

pub use enforcing::Enforcing;
pub use event_loop::{EventLoopError, event_loop};
pub use sink::Sink;
pub use status::{AgentStatus, Info};

/// The agent's default HTTP listener (the chart's `agent.metrics.port`).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9091);

/// Everything `mapsentry agent` was told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The collector's URL (`https://...`, or `http://...` for plaintext).
    pub collector: String,
    /// This node's name (else `$NODE_NAME`, else the hostname).
    pub node: Option<String>,
    /// Watch this node's pods with this kubeconfig (else the standard resolution, see
    /// [`Kubernetes::from_flags`]).
    pub kubeconfig: Option<PathBuf>,
    /// Bytes of events held while the collector is slow or away.
    pub buffer_bytes: usize,
    /// Where the last good enforce-mode policy set is kept.
    pub state_dir: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz` here (None: [`DEFAULT_METRICS_LISTEN`], skipped with a
    /// warning when taken).
    pub metrics_listen: Option<SocketAddr>,
    pub security: ClientSecurity,
    pub capture: CaptureConfig,
    /// How long events wait for their pod and container.
    pub enrich: EnrichConfig,
    /// Write enforce-mode rules only for the cgroups under this cgroup v2 path (None: every
    /// cgroup).
    pub enforce_under: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Http(#[from] mapsentry_service::http::HttpError),
    #[error("cannot start pod attribution")]
    Attribution {
        #[source]
        source: metadata::attributor::Error,
    },
    #[error("cannot start capturing")]
    Capture {
        #[source]
        source: capture::Error,
    },
    #[error("starting the shipper")]
    Shipper {
        #[source]
        source: ShipperError,
    },
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Run the agent until `shutdown` resolves: detach, ship what is left, stop.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let health = Arc::new(AgentStatus::default());
    let metrics_listen = config.metrics_listen.unwrap_or(DEFAULT_METRICS_LISTEN);
    let endpoint = status::start(&health, metrics_listen, config.metrics_listen.is_some()).await?;
    if let Some(endpoint) = &endpoint {
        status!(
            "agent metrics on http://{0}/metrics, health on /healthz and /readyz",
            endpoint.addr
        );
    }
    let kubernetes = Kubernetes::from_flags(config.kubeconfig.clone(), config.node.as_deref())
        .map_err(|source| NodeError::Attribution { source })?;
    let mut attributor = Attributor::start(&kubernetes, config.enrich)
        .await
        .map_err(|source| NodeError::Attribution { source })?;
    let mut capture =
        Capture::start(&config.capture).map_err(|source| NodeError::Capture { source })?;
    let node = config.node.clone().unwrap_or_else(hostname);
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
        Some(config.state_dir.clone()),
        capture.attached().deny_unavailable.as_deref(),
    );
    match enforcer.load_persisted() {
        Ok(Some(version)) => status!(
            "enforcing the persisted policy set version {version} from {}",
            config.state_dir.display()
        ),
        Ok(None) => {}
        Err(error) => {
            tracing::error!(error = %mapsentry_service::error::chain(&error), "the persisted policy set cannot be read; enforcing nothing until the collector sends one");
        }
    }
    let (sets_tx, sets_rx) = watch::channel(None);
    let mut enforcing = Enforcing::new(enforcer, Some(sets_rx))
        .with_pods(attributor.pods().cloned())
        .under(config.enforce_under.as_deref());
    enforcing.apply(&mut capture);
    let shipper = start_shipper(
        &config.collector,
        &node,
        config.buffer_bytes,
        &capture,
        Some(sets_tx),
        config.security.clone(),
    )?;
    status!(
        "agent on node {node} capturing in {} mode, shipping to {} (boot id {}); {}",
        capture.attached().mode,
        config.collector,
        shipper.boot_id(),
        describe(&kubernetes),
    );
    let kernel = event_loop(
        &mut capture,
        &mut attributor,
        &shipper,
        pin!(shutdown),
        Some(&mut enforcing),
        Some(&health),
        |_| Ok(true),
    )
    .await?;
    let stats = shipper.finish().await;
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    status!(
        "detached; seen {}, captured {}, shipped {}, acked {}, dropped {:?}, enrichment missing {}",
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
) -> Result<Shipper> {
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
    Shipper::start(config).map_err(|source| NodeError::Shipper { source })
}

/// Where pod metadata comes from, for the start-up line.
#[must_use]
pub fn describe(kubernetes: &Kubernetes) -> String {
    match kubernetes {
        Kubernetes::Off => "no Kubernetes: host processes attributed, pods by UID only".into(),
        Kubernetes::Default { node } => format!("watching the pods of node {node}"),
        Kubernetes::Kubeconfig { path, node } => {
            format!("watching the pods of node {node} with {}", path.display())
        }
    }
}

/// This host's name: what `agent` and `run` call the node when not told.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".to_owned(), |s| s.trim().to_owned())
}
