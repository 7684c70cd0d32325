//! The collector's gRPC server: ingest, observer, health and reflection on one listener.
//!
//! Every connection is bounded in time before anything is authenticated: at most
//! `max_connections` open, accepted by [`Acceptor`] (which outlives failed accepts), with TCP
//! keepalive; the TLS handshake within 10 s and the HTTP/2 preface within 10 s of the accept;
//! HTTP/2 pings every [`HTTP2_KEEPALIVE`] (a peer that does not answer within
//! [`HTTP2_KEEPALIVE_TIMEOUT`] is dropped); every call's response headers within
//! [`REQUEST_TIMEOUT`] (for `Connect`, the agent's Hello within
//! [`crate::ingest::HELLO_DEADLINE`]).

use std::{future::Future, sync::Arc, time::Duration};

use futures_core::Stream;
use mapsentry_proto::{
    received::server::agent_service_server::AgentServiceServer,
    v1::{self, observer_server::ObserverServer},
};
use mapsentry_service::listen::{Acceptor, Conn};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    auth::Auth,
    health::Health,
    hub::Hub,
    ingest::Ingest,
    observer::{Observer, Slots},
    tls::{self, FIRST_BYTES_DEADLINE, HTTP2_PREFACE_BYTES, Reloading, ServerTls, TlsError},
};

/// HTTP/2 pings on every connection, and how long a peer has to answer one.
pub const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a call may take to its response headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the reflection service failed")]
    Reflection {
        #[source]
        source: tonic_reflection::server::Error,
    },
    #[error("TLS setup failed")]
    Tls {
        #[source]
        source: TlsError,
    },
    #[error("the gRPC server failed")]
    Serve {
        #[source]
        source: tonic::transport::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest message accepted from agents and subscribers, in bytes.
    pub max_message_bytes: usize,
    /// Most events in one agent batch.
    pub max_batch_events: usize,
    /// Most subscriptions served at once; beyond, `RESOURCE_EXHAUSTED`.
    pub max_subscribers: usize,
    /// Most connections open at once; beyond, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Each agent stream's ingest rate in bytes a second (0: no limit).
    pub agent_ingest_bytes_per_second: u64,
    /// Enforce-mode policy sets to push to every agent ([`crate::PolicyPublisher::subscribe`]).
    pub policy_sets: Option<watch::Receiver<Option<v1::PolicySet>>>,
    /// Where the agents' enforcement reports go (for the policies' status); `None`: nowhere.
    pub node_reports: Option<crate::NodeReports>,
    /// TLS (and with a client CA, mutual TLS); `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// Tokens and client-certificate rules for subscribers and agents.
    pub auth: Auth,
    /// Readiness: until ready, gRPC health reports the agent and observer services
    /// `NOT_SERVING` (the overall status `""` is `SERVING` while the server answers).
    pub health: Health,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 << 20,
            max_batch_events: 16_384,
            max_subscribers: 1024,
            max_connections: 8192,
            agent_ingest_bytes_per_second: 64 << 20,
            policy_sets: None,
            node_reports: None,
            tls: None,
            auth: Auth::default(),
            health: Health::ready(),
        }
    }
}

/// Serve `hub` on `listener` until `shutdown` resolves; then close the hub (ending subscriber
/// and agent streams after what is queued) and let in-flight calls finish.
pub async fn serve(
    hub: Arc<Hub>,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let mut readiness = config.health.subscribe();
    let now = readiness.borrow_and_update().clone();
    report_readiness(&health_reporter, now).await;
    let _stop_following = AbortOnDrop(tokio::spawn(follow_readiness(health_reporter, readiness)));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|source| ServerError::Reflection { source })?;
    let auth = Arc::new(config.auth.clone());
    let mut ingest = Ingest::new(Arc::clone(&hub), config.max_batch_events)
        .with_auth(Arc::clone(&auth))
        .with_budget(
            config.agent_ingest_bytes_per_second,
            2 * config.max_message_bytes as u64,
        );
    if let Some(sets) = &config.policy_sets {
        ingest = ingest.with_policy_sets(sets.clone());
    }
    if let Some(reports) = &config.node_reports {
        ingest = ingest.with_node_reports(reports.clone());
    }
    let ingest = AgentServiceServer::new(ingest)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let slots = Arc::new(Slots::new(config.max_subscribers));
    let observer = Observer::new(Arc::clone(&hub))
        .with_auth(auth)
        .with_slots(slots)
        .with_max_stats_bytes(config.max_message_bytes);
    let observer = ObserverServer::new(observer)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let shutdown_hub = Arc::clone(&hub);
    let shutdown = async move {
        shutdown.await;
        shutdown_hub.close();
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_TIMEOUT)
        .add_service(health)
        .add_service(reflection)
        .add_service(ingest)
        .add_service(observer);
    let acceptor = Acceptor::new(listener, config.max_connections, "gRPC");
    match &config.tls {
        Some(tls) => {
            let tls = Reloading::new(tls.clone()).map_err(|source| ServerError::Tls { source })?;
            router
                .serve_with_incoming_shutdown(tls::incoming(acceptor, Arc::new(tls)), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(plaintext(acceptor), shutdown)
                .await
        }
    }
    .map_err(|source| ServerError::Serve { source })
}

/// Connections from `acceptor`, each to send the HTTP/2 preface within
/// [`FIRST_BYTES_DEADLINE`].
fn plaintext(
    acceptor: Acceptor,
) -> impl Stream<Item = Result<Conn<tokio::net::TcpStream>, std::io::Error>> {
    futures_util::stream::unfold(acceptor, |mut acceptor| async move {
        let (tcp, _peer, slot) = acceptor.accept().await;
        let conn = Conn::new(tcp, slot).with_first_bytes(HTTP2_PREFACE_BYTES, FIRST_BYTES_DEADLINE);
        Some((Ok(conn), acceptor))
    })
}

/// Report each change of `readiness` to gRPC health, until the sender is gone.
async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    mut readiness: watch::Receiver<Option<String>>,
) {
    while readiness.changed().await.is_ok() {
        let state = readiness.borrow_and_update().clone();
        report_readiness(&reporter, state).await;
    }
}

/// The agent and observer services `SERVING` when ready (`None`), else `NOT_SERVING` (the
/// reason logged).
async fn report_readiness(reporter: &tonic_health::server::HealthReporter, state: Option<String>) {
    match state {
        None => {
            reporter.set_serving::<AgentServiceServer<Ingest>>().await;
            reporter.set_serving::<ObserverServer<Observer>>().await;
        }
        Some(reason) => {
            tracing::info!(%reason, "not ready: gRPC health reports NOT_SERVING");
            reporter
                .set_not_serving::<AgentServiceServer<Ingest>>()
                .await;
            reporter.set_not_serving::<ObserverServer<Observer>>().await;
        }
    }
}

/// Aborts the task when dropped (the server returned).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
