//! The JetStream backbone (`mapsentry collector --jetstream URL`): events and alerts live in NATS
//! JetStream streams (replicated, file storage, message deduplication), and collectors become
//! stateless replicas behind one Service. Without `--jetstream` nothing here runs: the hub keeps
//! its own window and retention log (`crate::retention`).
//!
//! - [`publish`]: an agent batch is published to its node's subject and acked to the agent only
//!   after JetStream's publish ack; each node's subject is a chain written with compare-and-set
//!   (`Nats-Expected-Last-Subject-Sequence`), and each message has the id `node/boot/seq`, so a
//!   batch resent to another replica is stored once.
//! - [`subscribe`]: any replica serves `Subscribe` from the streams; cursors are stream
//!   sequences; filters are applied here; a cursor older than what the stream retains gets a
//!   loss notice counted by the [`ledger`].
//! - [`evaluate`]: policy evaluation, partitioned by node; each partition is evaluated by the
//!   replica holding its lease ([`lease`]), which carries every alert series on from its last
//!   update in the alerts stream.
//! - [`kube_lease`] and [`events`]: the Kubernetes Events (and policy status) have one writer, the
//!   holder of a `coordination.k8s.io/v1` Lease.
//! - [`reports`]: the agents' enforcement reports, shared through a key-value bucket, so the
//!   status writer knows every node's whichever replica its agent streams to.
//! - [`metrics`]: publish latency, acks, duplicates, replays, consumer lag.
//!
//! `docs/design-notes.md` ("Beyond one collector") says why it is shaped this way.

pub mod evaluate;
pub mod events;
pub mod kube_lease;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod publish;
pub mod reports;
pub mod subscribe;
pub mod wire;

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use async_nats::jetstream::{self, kv, stream};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::health::Health;

/// How a collector reaches NATS.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// `nats://host:port` (comma-separated for several seed servers; `tls://` requires TLS).
    pub url: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// Stream and key-value bucket replicas (1 on a single server; 3 on a three-server cluster).
    pub replicas: usize,
    /// The events stream keeps at most this many bytes (0: no limit) ...
    pub events_max_bytes: i64,
    /// ... and events at most this old (zero: no limit); the oldest messages go first.
    pub events_max_age: Duration,
    pub alerts_max_bytes: i64,
    pub alerts_max_age: Duration,
    /// JetStream's duplicate window: a message id seen within it is not stored again.
    pub duplicate_window: Duration,
    /// Evaluation partitions, when this collector creates the events stream (an existing stream
    /// keeps the number it was created with).
    pub partitions: u32,
    /// Partition and ledger leases: a lease not renewed for this long is taken over.
    pub lease_ttl: Duration,
    /// This replica's name in leases and logs (unique per process).
    pub replica_id: String,
    /// The longest a publish (and its ack) or an API request may take.
    pub request_timeout: Duration,
}

impl JetStreamConfig {
    /// The defaults for `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            replicas: 1,
            events_max_bytes: 10 << 30,
            events_max_age: Duration::from_hours(24),
            alerts_max_bytes: 1 << 30,
            alerts_max_age: Duration::from_hours(24 * 7),
            duplicate_window: Duration::from_mins(2),
            partitions: 16,
            lease_ttl: Duration::from_secs(15),
            replica_id: default_replica_id(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The seed servers of a `--jetstream` URL: `nats://a:4222,nats://b:4222` is three servers
/// (async-nats reads a string as one URL), white space around each ignored.
#[must_use]
pub fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// This process's replica id: the pod (or host) name and the pid.
#[must_use]
pub fn default_replica_id() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".into());
    let nonce = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().chars().take(8).collect::<String>())
        .unwrap_or_default();
    format!("{host}-{}-{nonce}", std::process::id())
}

/// How a collector authenticates to NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes them.
    Creds(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

/// TLS to NATS (rustls): a CA to verify the servers with, a client certificate for mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("--jetstream-creds {}: cannot read the credentials file", path.display())]
    Creds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--jetstream {url}: cannot start a NATS client")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream is not ready: {reason}")]
    NotReady { reason: String },
}

/// The connection, the streams and the shared state of one replica's backbone.
#[derive(Debug)]
pub struct Backbone {
    pub config: JetStreamConfig,
    client: async_nats::Client,
    context: jetstream::Context,
    streams: OnceLock<Streams>,
    /// The connection and the setup of the streams.
    state: watch::Sender<State>,
    pub metrics: Arc<metrics::JetStreamMetrics>,
    pub(crate) chains: publish::Chains,
    /// The streams' states as of the last second (for Stats and the metrics).
    states: watch::Sender<(subscribe::StreamState, subscribe::StreamState)>,
    /// Subscriptions this replica serves.
    pub(crate) subscribers: std::sync::atomic::AtomicU64,
}

/// The connection's state and the streams' setup.
#[derive(Debug, Clone)]
struct State {
    url: String,
    connected: bool,
    /// Why the streams are not set up (None once they are).
    setup: Option<String>,
}

impl State {
    /// Why the backbone is not usable, if it is not.
    fn unready(&self) -> Option<String> {
        if !self.connected {
            return Some(format!("NATS at {} is unreachable (connecting)", self.url));
        }
        self.setup.clone()
    }
}

/// The streams and buckets, once set up.
#[derive(Debug, Clone)]
pub struct Streams {
    pub events: stream::Stream,
    pub alerts: stream::Stream,
    pub leases: kv::Store,
    pub ledger: kv::Store,
    pub reports: kv::Store,
    /// Evaluation partitions (as the events stream was created with).
    pub partitions: u32,
}

impl Backbone {
    /// Start a client for `config.url` (it connects, and reconnects, in the background: the
    /// collector starts and stays up while NATS is unreachable, unready), then set up the
    /// streams once connected. Not ready ([`Backbone::follow_readiness`]) until both are done,
    /// and again whenever the connection is down.
    pub async fn connect(config: JetStreamConfig) -> Result<Arc<Self>, JetStreamError> {
        let state = watch::Sender::new(State {
            url: config.url.clone(),
            connected: false,
            setup: Some("the streams are not set up yet".into()),
        });
        let options = connect_options(&config, state.clone()).await?;
        let client = options
            .connect(server_urls(&config.url))
            .await
            .map_err(|source| JetStreamError::Connect {
                url: config.url.clone(),
                source,
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let backbone = Arc::new(Self {
            metrics: Arc::new(metrics::JetStreamMetrics::default()),
            chains: publish::Chains::default(),
            config,
            client,
            context,
            streams: OnceLock::new(),
            state,
            states: watch::Sender::new(Default::default()),
            subscribers: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(
            Self::set_up(Arc::downgrade(&backbone)).instrument(tracing::info_span!("jetstream")),
        );
        Ok(backbone)
    }

    /// The streams, or why they are not usable now.
    pub fn streams(&self) -> Result<&Streams, JetStreamError> {
        if let Some(reason) = self.state.borrow().unready() {
            return Err(JetStreamError::NotReady { reason });
        }
        self.streams.get().ok_or_else(|| JetStreamError::NotReady {
            reason: "the streams are not set up yet".into(),
        })
    }

    /// The events and alerts streams' states, as of the last second.
    #[must_use]
    pub fn cached_states(&self) -> (subscribe::StreamState, subscribe::StreamState) {
        *self.states.borrow()
    }

    /// Subscriptions this replica serves.
    #[must_use]
    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The streams once set up (whatever the connection's state now).
    #[must_use]
    pub fn streams_set_up(&self) -> Option<&Streams> {
        self.streams.get()
    }

    /// Resolves once the streams are set up.
    pub async fn wait_set_up(&self) -> &Streams {
        let mut state = self.state.subscribe();
        loop {
            if let Some(streams) = self.streams.get() {
                return streams;
            }
            if state.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    #[must_use]
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    #[must_use]
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Why the backbone is not usable now, if it is not.
    #[must_use]
    pub fn unready(&self) -> Option<String> {
        self.state.borrow().unready()
    }

    /// Mirror this backbone's readiness into `health` (condition `jetstream`), starting now.
    pub fn follow_readiness(&self, health: Health) {
        let mut state = self.state.subscribe();
        if let Some(reason) = state.borrow().unready() {
            health.set_not_ready_for("jetstream", reason);
        }
        tokio::spawn(async move {
            loop {
                let reason = state.borrow_and_update().unready();
                match reason {
                    None => health.set_ready_for("jetstream"),
                    Some(reason) => health.set_not_ready_for("jetstream", reason),
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Create or update the streams and buckets, retrying until it works; then refresh the
    /// cached stream states every second. Ends when the backbone is dropped.
    async fn set_up(backbone: Weak<Self>) {
        let mut delay = Duration::from_millis(250);
        loop {
            let Some(this) = backbone.upgrade() else {
                return;
            };
            // Nothing can be set up before the first connection.
            if this.client.connection_state() != async_nats::connection::State::Connected {
                drop(this);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match this.ensure_streams().await {
                Ok(streams) => {
                    mapsentry_service::status!(
                        "JetStream backbone ready at {} ({} partitions, {} replicas)",
                        this.config.url,
                        streams.partitions,
                        this.config.replicas
                    );
                    let _ = this.streams.set(streams);
                    this.state.send_modify(|s| s.setup = None);
                    break;
                }
                Err(reason) => {
                    tracing::warn!(%reason, retry_in = ?delay, "cannot set up the JetStream streams");
                    this.state.send_modify(|s| {
                        s.setup = Some(format!("setting up the JetStream streams: {reason}"));
                    });
                    drop(this);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The states Stats and the metrics read.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(this) = backbone.upgrade() else {
                return;
            };
            if let Ok(states) = this.stream_states().await {
                this.states.send_replace(states);
            }
        }
    }

    async fn ensure_streams(&self) -> Result<Streams, String> {
        let config = &self.config;
        // An existing events stream keeps the partitions it was created with: the subjects of
        // its messages name them.
        let partitions = match self.context.get_stream(wire::EVENTS_STREAM).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| e.to_string())?;
                let stored = info
                    .config
                    .metadata
                    .get(wire::PARTITIONS_METADATA)
                    .and_then(|p| p.parse::<u32>().ok());
                match stored {
                    Some(p) if p != config.partitions => {
                        tracing::warn!(
                            asked = config.partitions,
                            stream = p,
                            "the events stream was created with {p} partitions; using them"
                        );
                        p
                    }
                    Some(p) => p,
                    None => config.partitions,
                }
            }
            Err(_) => config.partitions,
        }
        .max(1);
        let events = stream::Config {
            name: wire::EVENTS_STREAM.into(),
            description: Some("mapsentry: agent event batches, one subject per node".into()),
            subjects: vec![format!("{}.>", wire::EVENTS_PREFIX)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_bytes: config.events_max_bytes.max(-1),
            max_age: config.events_max_age,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: config.duplicate_window,
            allow_direct: true,
            metadata: [(wire::PARTITIONS_METADATA.to_owned(), partitions.to_string())]
                .into_iter()
                .collect(),
            ..stream::Config::default()
        };
        let alerts = stream::Config {
            name: wire::ALERTS_STREAM.into(),
            description: Some("mapsentry: alert updates, one subject per alert series".into()),
            subjects: vec![format!("{}.>", wire::ALERTS_PREFIX)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_bytes: config.alerts_max_bytes.max(-1),
            max_age: config.alerts_max_age,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: config.duplicate_window,
            allow_direct: true,
            ..stream::Config::default()
        };
        for stream in [&events, &alerts] {
            self.context
                .create_or_update_stream(stream.clone())
                .await
                .map_err(|e| format!("stream {}: {e}", stream.name))?;
        }
        let leases = self
            .context
            .create_or_update_key_value(kv::Config {
                bucket: wire::LEASES_BUCKET.into(),
                description: "mapsentry: partition leases and replica membership".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..kv::Config::default()
            })
            .await
            .map_err(|e| format!("bucket {}: {e}", wire::LEASES_BUCKET))?;
        // The ledger outlives the events it counts (it is ~1/10,000 of their size): a cursor
        // a day older than the oldest event still gets an exact loss count.
        let ledger_age = if config.events_max_age.is_zero() {
            Duration::ZERO
        } else {
            config.events_max_age * 2 + Duration::from_hours(24)
        };
        let ledger = self
            .context
            .create_or_update_key_value(kv::Config {
                bucket: wire::LEDGER_BUCKET.into(),
                description: "mapsentry: events per message of the events stream".into(),
                history: 1,
                max_age: ledger_age,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..kv::Config::default()
            })
            .await
            .map_err(|e| format!("bucket {}: {e}", wire::LEDGER_BUCKET))?;
        let reports = self
            .context
            .create_or_update_key_value(kv::Config {
                bucket: wire::REPORTS_BUCKET.into(),
                description: "mapsentry: the agents' enforcement reports, by node".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..kv::Config::default()
            })
            .await
            .map_err(|e| format!("bucket {}: {e}", wire::REPORTS_BUCKET))?;
        let events = self
            .context
            .get_stream(wire::EVENTS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let alerts = self
            .context
            .get_stream(wire::ALERTS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Streams {
            events,
            alerts,
            leases,
            ledger,
            reports,
            partitions,
        })
    }
}

/// The client options: authentication, TLS, background (re)connection, and readiness events.
async fn connect_options(
    config: &JetStreamConfig,
    state: watch::Sender<State>,
) -> Result<async_nats::ConnectOptions, JetStreamError> {
    let mut options = match &config.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Creds(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| JetStreamError::Creds {
                path: path.clone(),
                source,
            })?,
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
    };
    if let Some(ca) = &config.tls.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let url = config.url.clone();
    Ok(options
        .name(format!("mapsentry-collector {}", config.replica_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(config.request_timeout))
        .reconnect_delay_callback(|attempts| {
            // 100 ms doubling to 2 s: NATS comes back within seconds of a restart.
            Duration::from_millis(100 * 2u64.saturating_pow(attempts.min(5) as u32))
                .min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let state = state.clone();
            let url = url.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%url, "connected to NATS");
                        state.send_modify(|s| s.connected = true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%url, "disconnected from NATS; reconnecting");
                        state.send_modify(|s| s.connected = false);
                    }
                    async_nats::Event::ClientError(error) => {
                        tracing::warn!(%url, %error, "NATS client error");
                    }
                    async_nats::Event::ServerError(error) => {
                        tracing::warn!(%url, %error, "NATS server error");
                    }
                    other => tracing::info!(%url, event = %other, "NATS"),
                }
            }
        }))
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;
