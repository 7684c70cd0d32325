//! The collector role (`mapsentry collector`), put together: the gRPC server (ingest, observer,
//! health, reflection) over the hub, the retention log, the policies (`--policy` files with hot
//! reload and, in a cluster, the policy objects with their status), evaluation of every stored
//! call into alerts, Kubernetes Events on the offending pods, and the `/metrics`, `/healthz`,
//! `/readyz` endpoint (ready once the initial policy load is done). [`run`] is the whole role;
//! `mapsentry run` embeds the same parts ([`open_hub`], [`Alerting`]) beside its own capture.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use mapsentry_service::{
    http::{self, HttpError, Probes, Server},
    kube::KubeClientError,
    status,
};
use tokio::net::TcpListener;

use crate::{
    Health, Hub, HubConfig, NodeReports, PolicyPublisher, ServerConfig,
    alerts::{self, AlertConfig},
    export::{ExportConfig, ExportError, Exporter},
    jetstream::{self, Backbone, JetStreamConfig, JetStreamError, kube_lease},
    kube_events::{self, EventsConfig, EventsError},
    metrics::{self, Metrics},
    policy::{
        crds,
        files::{self, FirstRead, PolicyFiles, PolicyFilesError},
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
    /// With `--jetstream`: events and alerts in NATS JetStream, this collector one of its
    /// replicas (the retention log is then not used).
    pub jetstream: Option<JetStreamConfig>,
}

/// Where policies come from and how their alerts are aggregated.
#[derive(Debug, Clone, Default)]
pub struct PoliciesConfig {
    /// `--policy` files and directories.
    pub files: Vec<PathBuf>,
    pub alerts: AlertConfig,
    /// `--alert-output`, `--alert-webhook` and their filters.
    pub export: ExportConfig,
    /// The workload labels of the violation metrics.
    pub workload_labels: metrics::WorkloadLabels,
}

/// The collector in a cluster.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// This kubeconfig (None: the in-cluster service account, else `$KUBECONFIG`, else
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    pub events: EventsConfig,
    /// With `--jetstream`: the Lease that makes one replica the writer of Events and status.
    pub lease: LeaseConfig,
}

/// Where the replicas' Kubernetes Lease is.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The collector's namespace (None: `$POD_NAMESPACE`, else the service account's, else
    /// `default`).
    pub namespace: Option<String>,
    pub name: String,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            name: "mapsentry-collector".into(),
        }
    }
}

impl LeaseConfig {
    /// The namespace of the Lease.
    #[must_use]
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|n| n.trim().to_owned())
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into())
    }
}

/// A Kubernetes client and what to do with it.
pub struct KubernetesPlan {
    pub client: kube::Client,
    pub events: EventsConfig,
    pub lease: LeaseConfig,
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
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
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
    let hub = match config.jetstream {
        Some(jetstream) => {
            if config.retention_log.is_some() {
                tracing::warn!(
                    "--data-dir is not used with --jetstream: events and alerts live in JetStream"
                );
            }
            status!(
                "collector replica {} on the JetStream backbone at {}",
                jetstream.replica_id,
                jetstream.url
            );
            Hub::with_backbone(config.hub, Backbone::connect(jetstream).await?)
        }
        None => open_hub(config.hub, config.retention_log)?,
    };
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
                lease: kubernetes.lease,
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
    /// The first read of the policy files.
    first_read: FirstRead,
    /// Ready once the initial policy load is done.
    pub health: Health,
    evaluation: tokio::task::JoinHandle<()>,
    metrics: Option<Server>,
    /// The alert export (file, stdout, webhook), when asked for.
    export: Option<Exporter>,
    /// The policy object watcher and the Events poster, in a cluster.
    kubernetes: Option<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)>,
    /// How long evaluation may take to stop.
    stop_timeout: Duration,
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
        let backbone = hub.backbone().cloned();
        if let Some(backbone) = &backbone {
            backbone.follow_readiness(health.clone());
        }
        let shared = SharedPolicies::new();
        if kubernetes.is_some() {
            // Agents get no set before the objects are listed: one without their Enforce
            // policies would withdraw those rules on every node after a collector restart.
            shared.hold_publishing(crds::SOURCES);
        }
        // Read on a thread of their own: a slow or hostile file holds up neither the start nor
        // serving; ready (and evaluating) once they were read.
        let (first_read, policies) = PolicyFiles::new(config.files.clone(), shared.clone())?
            .start(Some(publisher), files::DEFAULT_INTERVAL);
        let counters = Arc::new(Metrics::default().with_workload_labels(config.workload_labels));
        // Before evaluation starts, so that the export sees every alert.
        let export = Exporter::start(hub, &config.export, counters.export())?;
        if let Some(export) = &export {
            status!("alerts exported: {}", export.sinks().join("; "));
        }
        if let Some(backbone) = backbone {
            counters.add_jetstream(Arc::clone(&backbone.metrics));
            return Self::start_replica(
                hub,
                backbone,
                policies,
                shared,
                first_read,
                export,
                health,
                counters,
                config.alerts,
                metrics_listen,
                kubernetes,
            )
            .await;
        }
        let evaluation = alerts::start(
            hub,
            policies,
            Arc::clone(&counters),
            config.alerts,
            first_read.clone().done(),
        );
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
        ready_when_synced(&health, &shared);
        let metrics = serve_metrics(metrics_listen, counters, hub, &health).await?;
        Ok(Self {
            first_read,
            health,
            evaluation,
            metrics,
            export,
            kubernetes,
            stop_timeout: Duration::from_secs(5),
        })
    }

    /// [`Alerting::start`] for a replica on the JetStream backbone: this replica evaluates its
    /// share of the partitions and keeps the ledger when it holds that lease; in a cluster, the
    /// holder of the Kubernetes Lease writes the Events and the policy objects' status.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts Alerting::start has built"
    )]
    async fn start_replica(
        hub: &Arc<Hub>,
        backbone: Arc<Backbone>,
        policies: alerts::Policies,
        shared: SharedPolicies,
        first_read: FirstRead,
        export: Option<Exporter>,
        health: Health,
        counters: Arc<Metrics>,
        alerts: AlertConfig,
        metrics_listen: Option<(SocketAddr, bool)>,
        kubernetes: Option<KubernetesPlan>,
    ) -> Result<Self> {
        let stop = hub.closed_watch();
        // Evaluation starts once the policy files were read (they are read on a thread of their
        // own), so that the first batches are judged by them.
        let evaluation = {
            let (backbone, counters, stop) =
                (Arc::clone(&backbone), Arc::clone(&counters), stop.clone());
            let read = first_read.clone().done();
            tokio::spawn(async move {
                read.await;
                let _ =
                    jetstream::evaluate::start(backbone, policies, counters, alerts, stop).await;
            })
        };
        let ledger = Arc::clone(&backbone);
        let ledger_stop = stop.clone();
        tokio::spawn(async move { ledger.keep_ledger(ledger_stop).await });
        let kubernetes = match kubernetes {
            None => None,
            Some(plan) => {
                let lease = kube_lease::KubeLeaseConfig::new(
                    plan.lease.namespace(),
                    plan.lease.name.clone(),
                    backbone.config.replica_id.clone(),
                )
                .with_duration(backbone.config.lease_ttl);
                status!(
                    "Kubernetes Lease {}/{}: its holder writes the Events and policy status",
                    lease.namespace,
                    lease.name
                );
                let elector = kube_lease::start(plan.client.clone(), lease, stop.clone());
                let events = jetstream::events::start(
                    Arc::clone(&backbone),
                    plan.client.clone(),
                    &elector,
                    Arc::clone(&counters),
                    plan.events,
                    stop.clone(),
                );
                let (leading_tx, leading) = tokio::sync::watch::channel(false);
                let mut leadership = elector.leadership.clone();
                tokio::spawn(async move {
                    loop {
                        leading_tx.send_replace(leadership.borrow_and_update().leading);
                        if leadership.changed().await.is_err() {
                            return;
                        }
                    }
                });
                // The reports this replica's agents send, shared; every replica's, followed.
                let cluster_reports = NodeReports::default();
                if let Some(local) = plan.node_reports {
                    jetstream::reports::start(
                        Arc::clone(&backbone),
                        local,
                        cluster_reports.clone(),
                        stop.clone(),
                    );
                }
                let crds = crds::start_gated(
                    plan.client,
                    shared.clone(),
                    Some(leading),
                    Some(cluster_reports),
                );
                status!(
                    "watching MmapPolicy and ClusterMmapPolicy objects; alerts become Events on their pods"
                );
                Some((crds, events))
            }
        };
        ready_when_synced(&health, &shared);
        let metrics = serve_metrics(metrics_listen, counters, hub, &health).await?;
        Ok(Self {
            first_read,
            health,
            evaluation,
            metrics,
            export,
            kubernetes,
            // Each partition publishes what it aggregated before its lease goes.
            stop_timeout: Duration::from_secs(20),
        })
    }

    /// Documents of the policy files rejected at start (each already reported), once they were
    /// read.
    pub async fn rejected_at_start(&self) -> usize {
        self.first_read.clone().done().await
    }

    /// After the hub closed: let evaluation report what it holds, stop the metrics server.
    pub async fn stop(self) {
        if tokio::time::timeout(self.stop_timeout, self.evaluation)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.stop_timeout, "policy evaluation did not stop in time");
        }
        if let Some(export) = self.export {
            // The alerts flushed at shutdown, delivered within the sinks' grace.
            export.stop().await;
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

/// Ready once the policy store is synced: every file read once (the reloads running) and, in a
/// cluster, both kinds of policy objects listed.
fn ready_when_synced(health: &Health, shared: &SharedPolicies) {
    let health = health.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        shared.synced().await;
        health.set_ready();
    });
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listen`, if given.
async fn serve_metrics(
    listen: Option<(SocketAddr, bool)>,
    counters: Arc<Metrics>,
    hub: &Arc<Hub>,
    health: &Health,
) -> Result<Option<Server>> {
    let listener = match listen {
        None => None,
        Some((addr, required)) => http::bind(addr, required).await?,
    };
    let Some(listener) = listener else {
        return Ok(None);
    };
    let endpoint: Arc<dyn Probes> = Arc::new(metrics::Endpoint {
        metrics: counters,
        hub: Arc::clone(hub),
        health: health.clone(),
    });
    let server = Server::start(listener, endpoint)?;
    status!("metrics on http://{}/metrics", server.addr());
    Ok(Some(server))
}
