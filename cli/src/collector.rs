//! `mapsentry collector --listen ADDR`: the flags of the collector role
//! ([`mapsentry_collector::run`]), and those `run` shares with it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use mapsentry_collector::{
    HubConfig, ServerConfig,
    alerts::AlertConfig,
    app::{self, KubernetesConfig, LeaseConfig, PoliciesConfig},
    auth::Tokens,
    jetstream::{JetStreamConfig, NatsAuth, NatsTls},
    kube_events::EventsConfig,
    metrics::WorkloadLabels,
    retention::{LogConfig, SyncPolicy},
    tls::ServerTls,
};

use crate::export_args::ExportArgs;

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
    #[command(flatten)]
    pub export: ExportArgs,
    /// Workload labels of mapsentry_policy_violations_total: pod (namespace and pod), namespace,
    /// or none. /metrics takes no token, so where other tenants can reach it, keep their
    /// namespaces and pods out of it.
    #[arg(long, value_name = "LABELS", default_value_t = WorkloadLabels::default())]
    metrics_workload_labels: WorkloadLabels,
}

impl PolicyArgs {
    pub fn config(&self) -> anyhow::Result<PoliciesConfig> {
        Ok(PoliciesConfig {
            files: self.policies.clone(),
            alerts: AlertConfig {
                window: Duration::from_secs(self.alert_window),
                per_pod_rate: self.alert_rate_per_pod,
                ..AlertConfig::default()
            },
            export: self.export.config()?,
            workload_labels: self.metrics_workload_labels,
        })
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
    #[command(flatten)]
    jetstream: JetStreamArgs,
}

/// Collector replicas on NATS JetStream.
#[derive(Debug, Clone, clap::Args)]
pub struct JetStreamArgs {
    /// Keep events and alerts in NATS JetStream at URL (nats://HOST:PORT, several
    /// comma-separated; tls:// requires TLS): this collector becomes one of any number of
    /// stateless replicas. Without it, the collector keeps its own window and --data-dir log.
    #[arg(long, value_name = "URL", env = "MAPSENTRY_JETSTREAM")]
    jetstream: Option<String>,
    /// NATS credentials file (user JWT and NKey seed, as nsc writes them).
    #[arg(long, value_name = "FILE", requires = "jetstream",
          conflicts_with_all = ["jetstream_user", "jetstream_token_file"])]
    jetstream_creds: Option<PathBuf>,
    /// NATS user name (with --jetstream-password-file).
    #[arg(long, value_name = "USER", env = "MAPSENTRY_JETSTREAM_USER",
          requires_all = ["jetstream", "jetstream_password_file"])]
    jetstream_user: Option<String>,
    /// File holding the NATS password of --jetstream-user.
    #[arg(long, value_name = "FILE", requires = "jetstream_user")]
    jetstream_password_file: Option<PathBuf>,
    /// File holding a NATS authentication token.
    #[arg(
        long,
        value_name = "FILE",
        requires = "jetstream",
        conflicts_with = "jetstream_user"
    )]
    jetstream_token_file: Option<PathBuf>,
    /// PEM CA to verify the NATS servers with (TLS is then required).
    #[arg(long, value_name = "FILE", requires = "jetstream")]
    jetstream_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with NATS (with --jetstream-key).
    #[arg(long, value_name = "FILE", requires_all = ["jetstream", "jetstream_key"])]
    jetstream_cert: Option<PathBuf>,
    /// PEM private key of --jetstream-cert.
    #[arg(long, value_name = "FILE", requires = "jetstream_cert")]
    jetstream_key: Option<PathBuf>,
    /// Replicas of the streams and buckets this collector creates (3 on a three-server cluster).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    jetstream_replicas: u8,
    /// Bytes the events stream keeps; the oldest messages go beyond it (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = JetStreamConfig::new("").events_max_bytes)]
    jetstream_max_bytes: i64,
    /// Seconds the events stream keeps an event (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = JetStreamConfig::new("").events_max_age.as_secs())]
    jetstream_max_age: u64,
    /// Bytes the alerts stream keeps (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = JetStreamConfig::new("").alerts_max_bytes)]
    jetstream_alerts_max_bytes: i64,
    /// Seconds the alerts stream keeps an alert update (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = JetStreamConfig::new("").alerts_max_age.as_secs())]
    jetstream_alerts_max_age: u64,
    /// JetStream's duplicate window in seconds: a batch id seen within it is not stored again
    /// (docs/design-notes.md says why 120 s).
    #[arg(long, value_name = "SECONDS", default_value_t = JetStreamConfig::new("").duplicate_window.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    jetstream_duplicate_window: u64,
    /// Evaluation partitions of a new events stream (nodes are spread over them; each is
    /// evaluated by one replica at a time). An existing stream keeps its number.
    #[arg(long, value_name = "N", default_value_t = JetStreamConfig::new("").partitions,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    jetstream_partitions: u32,
    /// Seconds after which a replica's leases (partitions, the ledger, the Kubernetes Lease)
    /// are taken over when it stops renewing them.
    #[arg(long, value_name = "SECONDS", default_value_t = JetStreamConfig::new("").lease_ttl.as_secs(),
          value_parser = clap::value_parser!(u64).range(3..))]
    lease_seconds: u64,
    /// Namespace of the Kubernetes Lease [default: $POD_NAMESPACE, else the service account's].
    #[arg(long, value_name = "NS", requires = "jetstream")]
    lease_namespace: Option<String>,
    /// Name of the Kubernetes Lease whose holder writes the Events and policy status.
    #[arg(long, value_name = "NAME", default_value = "mapsentry-collector")]
    lease_name: String,
}

impl JetStreamArgs {
    /// The backbone's configuration; credential files are read now.
    fn config(&self) -> anyhow::Result<Option<JetStreamConfig>> {
        let Some(url) = &self.jetstream else {
            return Ok(None);
        };
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .with_context(|| format!("{flag} {}", path.display()))
        };
        let auth = if let Some(creds) = &self.jetstream_creds {
            NatsAuth::Creds(creds.clone())
        } else if let (Some(user), Some(password)) =
            (&self.jetstream_user, &self.jetstream_password_file)
        {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: read("--jetstream-password-file", password)?,
            }
        } else if let Some(token) = &self.jetstream_token_file {
            NatsAuth::Token(read("--jetstream-token-file", token)?)
        } else {
            NatsAuth::None
        };
        Ok(Some(JetStreamConfig {
            auth,
            tls: NatsTls {
                ca: self.jetstream_ca.clone(),
                cert: self.jetstream_cert.clone(),
                key: self.jetstream_key.clone(),
            },
            replicas: usize::from(self.jetstream_replicas),
            events_max_bytes: self.jetstream_max_bytes,
            events_max_age: Duration::from_secs(self.jetstream_max_age),
            alerts_max_bytes: self.jetstream_alerts_max_bytes,
            alerts_max_age: Duration::from_secs(self.jetstream_alerts_max_age),
            duplicate_window: Duration::from_secs(self.jetstream_duplicate_window),
            partitions: self.jetstream_partitions,
            lease_ttl: Duration::from_secs(self.lease_seconds),
            ..JetStreamConfig::new(url.clone())
        }))
    }
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
    fn config(&self, lease: LeaseConfig) -> Option<KubernetesConfig> {
        (self.kubernetes || self.kubeconfig.is_some()).then(|| KubernetesConfig {
            kubeconfig: self.kubeconfig.clone(),
            events: EventsConfig {
                per_pod_per_minute: self.kube_events_per_minute,
                ..EventsConfig::default()
            },
            lease,
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
    /// Bytes the events kept for resuming subscribers may take (each counted as its encoded size
    /// plus 512 bytes); the oldest are evicted beyond it or beyond --retention-events.
    #[arg(long, value_name = "BYTES", default_value_t = HubConfig::default().retention_bytes)]
    retention_bytes: usize,
    /// Events queued per subscriber before it gets loss notices.
    #[arg(long, default_value_t = HubConfig::default().subscriber_queue)]
    subscriber_queue: usize,
    /// Bytes queued per subscriber before it gets loss notices (counted like --retention-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = HubConfig::default().subscriber_queue_bytes)]
    subscriber_queue_bytes: usize,
    /// Nodes whose agents the collector tracks (dedup state, counters); a node away 24 h is
    /// forgotten, and beyond the maximum the one away the longest (a new node is refused with
    /// RESOURCE_EXHAUSTED when every tracked node's agent is connected).
    #[arg(long, value_name = "N", default_value_t = HubConfig::default().max_nodes,
          value_parser = at_least_one)]
    max_nodes: usize,
    /// Batches each agent stream may send, in bytes a second (bursts of two largest messages);
    /// a faster agent is held back, nothing is dropped (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().agent_ingest_bytes_per_second)]
    agent_ingest_bytes_per_second: u64,
    /// Connections open at once (agents, subscribers, probes of gRPC health); beyond, new ones
    /// wait in the kernel's backlog. Keep it below the open-file limit (`ulimit -n`).
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_connections,
          value_parser = at_least_one)]
    max_connections: usize,
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
    /// Bytes the retention log may hold on disk (plus one segment, an eighth of it); the oldest
    /// segments are deleted beyond it.
    #[arg(long, default_value_t = 1 << 30)]
    data_max_bytes: u64,
    /// When the retention log is forced to disk: always (each batch before it is acked; survives
    /// a machine crash, costs a disk sync per batch), interval (once a second; a machine crash
    /// loses at most the last second of acked batches), never (left to the kernel). A collector
    /// crash loses nothing acked in any mode.
    #[arg(long, value_name = "POLICY", default_value_t = SyncPolicy::default())]
    data_sync: SyncPolicy,
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
            retention_bytes: self.retention_bytes,
            subscriber_queue: self.subscriber_queue,
            subscriber_queue_bytes: self.subscriber_queue_bytes,
            max_nodes: self.max_nodes,
        }
    }

    /// The retention log asked for, if any.
    pub fn retention_log(&self) -> Option<LogConfig> {
        self.data_dir.as_ref().map(|dir| LogConfig {
            sync: self.data_sync,
            ..LogConfig::with_max_bytes(dir, self.data_max_bytes)
        })
    }

    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            max_message_bytes: self.max_message_bytes,
            max_batch_events: self.max_batch_events,
            max_subscribers: self.max_subscribers,
            max_connections: self.max_connections,
            agent_ingest_bytes_per_second: self.agent_ingest_bytes_per_second,
            ..ServerConfig::default()
        }
    }
}

impl CollectorArgs {
    /// The collector's configuration; the TLS and token files are read (and checked) now.
    pub fn config(self) -> anyhow::Result<app::Config> {
        let mut server = self.limits.server();
        self.security.apply(&mut server)?;
        let lease = LeaseConfig {
            namespace: self.jetstream.lease_namespace.clone(),
            name: self.jetstream.lease_name.clone(),
        };
        Ok(app::Config {
            jetstream: self.jetstream.config()?,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            policies: self.policy.config()?,
            hub: self.limits.hub(),
            retention_log: self.limits.retention_log(),
            server,
            kubernetes: self.kubernetes.config(lease),
        })
    }
}
