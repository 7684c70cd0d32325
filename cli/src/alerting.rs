//! Policies, alerts and metrics of a collector (`collector` and `run`): `--policy` files with
//! hot reload, evaluation of every stored call, and Prometheus `/metrics` (with `/healthz` and
//! `/readyz`: ready once the initial policy load is done); with a Kubernetes client (`collector
//! --kubernetes`), the policy objects in the same store (with their status) and Events on the
//! offending pods.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use mapsentry_collector::{
    Health, Hub, PolicyPublisher,
    alerts::{self, AlertConfig},
    kube_events::{self, EventsConfig},
    metrics::{self, Metrics},
    policies::SharedPolicies,
    policy_crds,
    policy_files::{self, PolicyFiles},
};
use mapsentry_policy::PolicyStore;
use tokio::{net::TcpListener, sync::oneshot};
use tracing::Instrument as _;

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Policy file or directory (its *.yaml, *.yml and *.json files), repeatable. Reloaded on
    /// change; a new version that does not validate is rejected (its errors logged) and the
    /// previous good one stays in force.
    #[arg(long = "policy", value_name = "PATH")]
    pub policies: Vec<PathBuf>,
    /// Dedup window of alerts, in seconds: further matches of one (pod, policy, rule) within it
    /// are counted into the next update rather than reported one by one.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    alert_window: u64,
    /// Alert updates published per pod (per node for host processes) per second; updates over
    /// it are deferred to a later second, never dropped (0: no limit).
    #[arg(long, value_name = "N", default_value_t = AlertConfig::default().per_pod_rate)]
    alert_rate_per_pod: u32,
}

/// The running evaluation and metrics server; stop them with [`Alerting::stop`].
#[derive(Debug)]
pub struct Alerting {
    /// Documents of the policy files rejected at start (each already reported).
    pub rejected_at_start: usize,
    /// Ready once the initial policy load is done.
    pub health: Health,
    evaluation: tokio::task::JoinHandle<()>,
    metrics: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// The policy object watcher and the Events poster, in a cluster.
    kubernetes: Option<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)>,
}

/// What a collector does in a cluster.
pub struct KubernetesPlan {
    pub client: kube::Client,
    pub events: EventsConfig,
    /// The agents' enforcement reports, folded into the policies' status.
    pub node_reports: Option<mapsentry_collector::NodeReports>,
}

impl std::fmt::Debug for KubernetesPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesPlan")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl PolicyArgs {
    /// Load the policies, start evaluating what `hub` stores, serve metrics on `metrics_listen`
    /// (`(addr, required)`: a listener that is not required is skipped with a warning when its
    /// address cannot be bound). The enforce-mode policies go to `publisher` whenever they change.
    /// With `kubernetes`, the policy objects join the files in one store and alerts become
    /// Events on their pods.
    pub async fn start(
        &self,
        hub: &Arc<Hub>,
        metrics_listen: Option<(SocketAddr, bool)>,
        publisher: PolicyPublisher,
        kubernetes: Option<KubernetesPlan>,
    ) -> anyhow::Result<Alerting> {
        let health = Health::not_ready("the initial policy load is not done");
        let shared = SharedPolicies::new();
        if kubernetes.is_some() {
            // Agents get no set before the objects are listed: one without their Enforce
            // policies would withdraw those rules on every node after a collector restart.
            shared.hold_publishing(policy_crds::SOURCES);
        }
        let (files, scan) = PolicyFiles::open_into(self.policies.clone(), shared.clone())?;
        let ids = shared.read(PolicyStore::ids);
        if !self.policies.is_empty() {
            eprintln!(
                "mapsentry: {} policies in force{}",
                ids.len(),
                if scan.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} documents rejected, see the log)", scan.errors.len())
                }
            );
            for error in &scan.errors {
                eprintln!("mapsentry: policy rejected: {error}");
            }
        }
        let policies = files
            .with_publisher(publisher)
            .watch(policy_files::DEFAULT_INTERVAL);
        let counters = Arc::new(Metrics::default());
        let config = AlertConfig {
            window: Duration::from_secs(self.alert_window),
            per_pod_rate: self.alert_rate_per_pod,
            ..AlertConfig::default()
        };
        let evaluation = alerts::start(hub, policies, Arc::clone(&counters), config);
        let kubernetes = match kubernetes {
            None => None,
            Some(plan) => {
                let events = kube_events::start(
                    plan.client.clone(),
                    hub,
                    Arc::clone(&counters),
                    plan.events,
                )?;
                let crds =
                    policy_crds::start_with_reports(plan.client, shared.clone(), plan.node_reports);
                eprintln!(
                    "mapsentry: watching MmapPolicy and ClusterMmapPolicy objects; alerts become Events on their pods"
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
            Some((addr, required)) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(error) if !required => {
                    tracing::warn!(%addr, %error, "the default metrics address cannot be bound; metrics are off (set --metrics-listen)");
                    None
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("--metrics-listen {addr}: cannot bind")));
                }
            },
        };
        let metrics = match listener {
            None => None,
            Some(listener) => {
                eprintln!(
                    "mapsentry: metrics on http://{}/metrics",
                    listener
                        .local_addr()
                        .context("reading the metrics address")?
                );
                let (stop, stopped) = oneshot::channel::<()>();
                let hub = Arc::clone(hub);
                let health = health.clone();
                let task = tokio::spawn(
                    async move {
                        if let Err(error) =
                            metrics::serve_with_health(counters, hub, health, listener, async {
                                drop(stopped.await);
                            })
                            .await
                        {
                            tracing::error!(error = %anyhow::Error::new(error), "metrics server stopped");
                        }
                    }
                    .instrument(tracing::info_span!("metrics")),
                );
                Some((stop, task))
            }
        };
        Ok(Alerting {
            rejected_at_start: scan.errors.len(),
            health,
            evaluation,
            metrics,
            kubernetes,
        })
    }
}

impl Alerting {
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
        if let Some((stop, task)) = self.metrics {
            drop(stop);
            let _ = task.await;
        }
    }
}
