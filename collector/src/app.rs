//! The collector role (`mapsentry collector`), put together: the gRPC server (ingest, observer,
//! health, reflection) over the hub, the retention log, the policies (`--policy` files with hot
//! reload and, in a cluster, the policy objects with their status), evaluation of every stored
//! call into alerts, Kubernetes Events on the offending pods, and the `/metrics`, `/healthz`,
//! `/readyz` endpoint (ready once the initial policy load is done). [`run`] is the whole role;
//! `mapsentry run` embeds the same parts ([`open_hub`], [`Alerting`]) beside its own capture.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use mapsentry_policy::PolicyStore;
use mapsentry_service::{
    http::{self, HttpError, Probes, Server},
    kube::KubeClientError,
    status,
};
use tokio::net::TcpListener;

use crate::{
    Health, Hub, HubConfig, NodeReports, PolicyPublisher, ServerConfig,
    alerts::{self, AlertConfig},
    kube_events::{self, EventsConfig, EventsError},
    metrics::{self, Metrics},
    policy::{
        crds,
        files::{self, PolicyFiles, PolicyFilesError},
        store::SharedPolicies,
    },
    retention::{LogConfig, LogError},
    server::{ServerError, serve},
};

/// The collector's default metrics listener (the chart's `collector.metrics.port`).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9090);

/// Everything `mapsentry collector` was told.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC (agents, subscribers, health, reflection).
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` (None: [`DEFAULT_METRICS_LISTEN`], skipped with a
    /// warning when taken).
    pub metrics_listen: Option<SocketAddr>,
    pub policies: PoliciesConfig,
    pub hub: HubConfig,
    /// Keep a retention log (None: retention in memory only).
    pub retention_log: Option<LogConfig>,
    /// Limits, TLS and authentication of the gRPC server.
    pub server: ServerConfig,
    /// In a cluster: the policy objects and Events.
    pub kubernetes: Option<KubernetesConfig>,
}

/// Where policies come from and how their alerts are aggregated.
#[derive(Debug, Clone, Default)]
pub struct PoliciesConfig {
    /// `--policy` files and directories.
    pub files: Vec<PathBuf>,
    pub alerts: AlertConfig,
}

/// The collector in a cluster.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// This kubeconfig (None: the in-cluster service account, else `$KUBECONFIG`, else
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    pub events: EventsConfig,
}

/// A Kubernetes client and what to do with it.
pub struct KubernetesPlan {
    pub client: kube::Client,
    pub events: EventsConfig,
    /// The agents' enforcement reports, folded into the policies' status.
    pub node_reports: Option<NodeReports>,
}

impl std::fmt::Debug for KubernetesPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesPlan")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("--listen {addr}: cannot bind")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the bound address")]
    LocalAddr {
        #[source]
        source: std::io::Error,
    },
    #[error("--data-dir {}", dir.display())]
    RetentionLog {
        dir: PathBuf,
        #[source]
        source: LogError,
    },
    #[error(transparent)]
    Kubernetes(#[from] KubeClientError),
    #[error(transparent)]
    PolicyFiles(#[from] PolicyFilesError),
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("serving gRPC")]
    Serve {
        #[source]
        source: ServerError,
    },
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Run the collector until `shutdown` resolves: stop serving, flush the alerts still in the
/// dedup window to subscribers and Events, stop.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let mut server = config.server;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AppError::LocalAddr { source })?;
    status!("collector serving on {addr}");
    let hub = open_hub(config.hub, config.retention_log)?;
    let metrics_listen = (
        config.metrics_listen.unwrap_or(DEFAULT_METRICS_LISTEN),
        config.metrics_listen.is_some(),
    );
    let publisher = PolicyPublisher::new();
    server.policy_sets = Some(publisher.subscribe());
    let kubernetes = match config.kubernetes {
        None => None,
        Some(kubernetes) => {
            // The agents' enforcement reports reach the policies' status.
            let reports = NodeReports::default();
            server.node_reports = Some(reports.clone());
            Some(KubernetesPlan {
                client: mapsentry_service::kube::client(kubernetes.kubeconfig.as_deref()).await?,
                events: kubernetes.events,
                node_reports: Some(reports),
            })
        }
    };
    let alerting = Alerting::start(
        &hub,
        &config.policies,
        Some(metrics_listen),
        publisher,
        kubernetes,
    )
    .await?;
    server.health = alerting.health.clone();
    serve(hub, &server, listener, shutdown)
        .await
        .map_err(|source| AppError::Serve { source })?;
    alerting.stop().await;
    status!("collector stopped");
    Ok(())
}

/// The hub, reading back the retention log when there is one.
pub fn open_hub(config: HubConfig, log: Option<LogConfig>) -> Result<Arc<Hub>> {
    match log {
        None => Ok(Hub::new(config)),
        Some(log) => {
            let dir = log.dir.clone();
            Hub::open(config, log).map_err(|source| AppError::RetentionLog { dir, source })
        }
    }
}

/// The running policies, evaluation and metrics endpoint; stop them with [`Alerting::stop`].
#[derive(Debug)]
pub struct Alerting {
    /// Documents of the policy files rejected at start (each already reported).
    pub rejected_at_start: usize,
    /// Ready once the initial policy load is done.
    pub health: Health,
    evaluation: tokio::task::JoinHandle<()>,
    metrics: Option<Server>,
    /// The policy object watcher and the Events poster, in a cluster.
    kubernetes: Option<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)>,
}

impl Alerting {
    /// Load the policies, start evaluating what `hub` stores, serve metrics on `metrics_listen`
    /// (`(addr, required)`: a listener that is not required is skipped with a warning when its
    /// address cannot be bound). The enforce-mode policies go to `publisher` whenever they change.
    /// With `kubernetes`, the policy objects join the files in one store and alerts become
    /// Events on their pods.
    pub async fn start(
        hub: &Arc<Hub>,
        config: &PoliciesConfig,
        metrics_listen: Option<(SocketAddr, bool)>,
        publisher: PolicyPublisher,
        kubernetes: Option<KubernetesPlan>,
    ) -> Result<Self> {
        let health = Health::not_ready("the initial policy load is not done");
        let shared = SharedPolicies::new();
        if kubernetes.is_some() {
            // Agents get no set before the objects are listed: one without their Enforce
            // policies would withdraw those rules on every node after a collector restart.
            shared.hold_publishing(crds::SOURCES);
        }
        let (files, scan) = PolicyFiles::open_into(config.files.clone(), shared.clone())?;
        let ids = shared.read(PolicyStore::ids);
        if !config.files.is_empty() {
            status!(
                "{} policies in force{}",
                ids.len(),
                if scan.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} documents rejected, see the log)", scan.errors.len())
                }
            );
            for error in &scan.errors {
                tracing::error!(target: mapsentry_service::STATUS_TARGET, "policy rejected: {error}");
            }
        }
        let policies = files
            .with_publisher(publisher)
            .watch(files::DEFAULT_INTERVAL);
        let counters = Arc::new(Metrics::default());
        let evaluation = alerts::start(hub, policies, Arc::clone(&counters), config.alerts);
        let kubernetes = match kubernetes {
            None => None,
            Some(plan) => {
                let events = kube_events::start(
                    plan.client.clone(),
                    hub,
                    Arc::clone(&counters),
                    plan.events,
                )?;
                let crds = crds::start_with_reports(plan.client, shared.clone(), plan.node_reports);
                status!(
                    "watching MmapPolicy and ClusterMmapPolicy objects; alerts become Events on their pods"
                );
                Some((crds, events))
            }
        };
        // Ready once the policy store is synced: every file read once (the reloads running)
        // and, in a cluster, both kinds of policy objects listed.
        if kubernetes.is_some() {
            let health = health.clone();
            tokio::spawn(async move {
                shared.synced().await;
                health.set_ready();
            });
        } else {
            health.set_ready();
        }
        let listener = match metrics_listen {
            None => None,
            Some((addr, required)) => http::bind(addr, required).await?,
        };
        let metrics = match listener {
            None => None,
            Some(listener) => {
                let endpoint: Arc<dyn Probes> = Arc::new(metrics::Endpoint {
                    metrics: counters,
                    hub: Arc::clone(hub),
                    health: health.clone(),
                });
                let server = Server::start(listener, endpoint)?;
                status!("metrics on http://{}/metrics", server.addr());
                Some(server)
            }
        };
        Ok(Self {
            rejected_at_start: scan.errors.len(),
            health,
            evaluation,
            metrics,
            kubernetes,
        })
    }

    /// After the hub closed: let evaluation report what it holds, stop the metrics server.
    pub async fn stop(self) {
        if tokio::time::timeout(Duration::from_secs(5), self.evaluation)
            .await
            .is_err()
        {
            tracing::warn!("policy evaluation did not stop within 5 s");
        }
        if let Some((crds, events)) = self.kubernetes {
            crds.abort();
            // The Events of the alerts flushed at shutdown.
            if tokio::time::timeout(Duration::from_secs(10), events)
                .await
                .is_err()
            {
                tracing::warn!("the Kubernetes Events poster did not finish within 10 s");
            }
        }
        if let Some(server) = self.metrics {
            server.stop().await;
        }
    }
}
