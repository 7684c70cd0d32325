//! `mapsentry collector --listen ADDR`: the flags of the collector role
//! ([`mapsentry_collector::run`]), and those `run` shares with it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mapsentry_collector::{
    HubConfig, ServerConfig,
    alerts::AlertConfig,
    app::{self, KubernetesConfig, PoliciesConfig},
    auth::Tokens,
    kube_events::EventsConfig,
    retention::LogConfig,
    tls::ServerTls,
};

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

impl PolicyArgs {
    pub fn config(&self) -> PoliciesConfig {
        PoliciesConfig {
            files: self.policies.clone(),
            alerts: AlertConfig {
                window: Duration::from_secs(self.alert_window),
                per_pod_rate: self.alert_rate_per_pod,
                ..AlertConfig::default()
            },
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// Address to serve gRPC on (agents, subscribers, health, reflection).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics, with /healthz and /readyz [default:
    /// 0.0.0.0:9090, skipped with a warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    limits: CollectorLimits,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
}

/// The collector in a cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesArgs {
    /// Watch the MmapPolicy and ClusterMmapPolicy objects (with the --policy files, in one
    /// store; each object's status says whether it is in force and why not), and post a
    /// Kubernetes Event (reason MmapPolicyViolation) on the pod of each alert. The client is the
    /// in-cluster service account when running in a pod, else $KUBECONFIG (else ~/.kube/config).
    #[arg(long)]
    kubernetes: bool,
    /// Like --kubernetes, with this kubeconfig (its current context).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Most Event writes (new Events and series updates) per pod per minute; the writes over it
    /// are counted in mapsentry_kube_events_suppressed_total.
    #[arg(long, value_name = "N", default_value_t = EventsConfig::default().per_pod_per_minute)]
    kube_events_per_minute: u32,
}

impl KubernetesArgs {
    fn config(&self) -> Option<KubernetesConfig> {
        (self.kubernetes || self.kubeconfig.is_some()).then(|| KubernetesConfig {
            kubeconfig: self.kubeconfig.clone(),
            events: EventsConfig {
                per_pod_per_minute: self.kube_events_per_minute,
                ..EventsConfig::default()
            },
        })
    }
}

/// TLS and authentication of a collector. It serves TLS (--tls-cert/--tls-key) unless
/// --plaintext asks for unencrypted gRPC, which it then warns about in its log.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain to serve TLS with (with --tls-key). Reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS; needs --tls-cert).
    /// Reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Bearer tokens, one JSON object a line: {"token": "...", "namespaces": ["ns", ...]}
    /// ("*": all namespaces; "agent": true lets the token ship events). Subscribers then need a
    /// token and see only its namespaces.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Serve unencrypted gRPC: events, policies and tokens travel in the clear and clients are
    /// not verified (logged as a warning). Without TLS files the collector refuses to start
    /// unless this is given.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    plaintext: bool,
}

impl SecurityArgs {
    /// Fill `server`'s TLS and auth settings, checking the files now.
    pub fn apply(&self, server: &mut ServerConfig) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let tls = ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            };
            tls.load()?;
            server.tls = Some(tls);
        } else if self.plaintext {
            tracing::warn!(
                "serving PLAINTEXT (--plaintext): events, policies and tokens travel unencrypted and clients are not verified"
            );
        } else {
            anyhow::bail!(
                "no --tls-cert/--tls-key: the collector serves TLS; pass --plaintext to serve unencrypted gRPC knowingly"
            );
        }
        server.auth.client_certs = self.client_ca.is_some();
        if let Some(path) = &self.tokens {
            server.auth.tokens = Some(Tokens::load(path)?);
        }
        Ok(())
    }
}

/// Bounds of a collector, shared with `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorLimits {
    /// Events kept for subscribers that resume by cursor.
    #[arg(long, default_value_t = HubConfig::default().retention_events)]
    retention_events: usize,
    /// Events queued per subscriber before it gets loss notices.
    #[arg(long, default_value_t = HubConfig::default().subscriber_queue)]
    subscriber_queue: usize,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Most events in one agent batch; a larger batch ends the agent's stream with
    /// INVALID_ARGUMENT (agents send at most 1024).
    #[arg(long, default_value_t = ServerConfig::default().max_batch_events)]
    max_batch_events: usize,
    /// Most subscriptions served at once; beyond, new ones are refused with RESOURCE_EXHAUSTED
    /// (counted in mapsentry_collector_subscribers_refused_total).
    #[arg(long, default_value_t = ServerConfig::default().max_subscribers,
          value_parser = at_least_one)]
    max_subscribers: usize,
    /// Keep a retention log here: batches are written before they are acked, and a restarted
    /// collector reads them back (same cursors, no duplicates). Without it, retention is in
    /// memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bytes the retention log may hold on disk; the oldest segments go beyond it.
    #[arg(long, default_value_t = 1 << 30)]
    data_max_bytes: u64,
}

/// A count of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl CollectorLimits {
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            retention_events: self.retention_events,
            subscriber_queue: self.subscriber_queue,
        }
    }

    /// The retention log asked for, if any.
    pub fn retention_log(&self) -> Option<LogConfig> {
        self.data_dir.as_ref().map(|dir| LogConfig {
            max_bytes: self.data_max_bytes,
            ..LogConfig::new(dir)
        })
    }

    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            max_message_bytes: self.max_message_bytes,
            max_batch_events: self.max_batch_events,
            max_subscribers: self.max_subscribers,
            ..ServerConfig::default()
        }
    }
}

impl CollectorArgs {
    /// The collector's configuration; the TLS and token files are read (and checked) now.
    pub fn config(self) -> anyhow::Result<app::Config> {
        let mut server = self.limits.server();
        self.security.apply(&mut server)?;
        Ok(app::Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            policies: self.policy.config(),
            hub: self.limits.hub(),
            retention_log: self.limits.retention_log(),
            server,
            kubernetes: self.kubernetes.config(),
        })
    }
}
