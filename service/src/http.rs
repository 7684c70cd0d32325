//! The HTTP endpoint of a role (`--metrics-listen`): Prometheus `/metrics` (OpenMetrics text),
//! `/healthz` (liveness) and `/readyz` (readiness), routed by axum and served by hyper's HTTP/1
//! connection with our own accept loop. What each path answers comes from the role's
//! [`Probes`]; the server only routes, so the agent and the collector share it.
//!
//! Bounded in time and number, so that no client can stop it from answering its probes: a
//! request's headers must arrive within [`HEADER_TIMEOUT`] (which also ends a kept-alive
//! connection idle that long), a connection lives at most [`CONNECTION_MAX`] (then it is closed
//! after the request in flight, or at once [`STOP_GRACE`] later), at most [`MAX_CONNECTIONS`] are
//! open at a time, and a failed accept (file descriptors exhausted) is retried after a pause
//! ([`crate::listen::Acceptor`]) instead of ending the server.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::Instrument as _;

use crate::listen::{Acceptor, Conn};

/// How long [`Server::stop`] lets requests in flight finish, and a connection past
/// [`CONNECTION_MAX`] its request.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// A request's headers must arrive within this (an idle kept-alive connection ends after it).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is served.
pub const CONNECTION_MAX: Duration = Duration::from_secs(30);
/// Connections open at a time (probes and scrapers need a few).
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--metrics-listen {addr}: cannot bind")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the address of the metrics listener")]
    LocalAddr {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = HttpError> = std::result::Result<T, E>;

/// A health answer: status code and text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    #[must_use]
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
        }
    }

    #[must_use]
    pub fn unavailable(body: impl Into<String>) -> Self {
        Self {
            status: 503,
            body: body.into(),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.body,
        )
            .into_response()
    }
}

/// What a role's endpoint answers.
pub trait Probes: Send + Sync + 'static {
    /// `/metrics`: the OpenMetrics text exposition ([`crate::metrics::encode`]).
    fn metrics(&self) -> String;
    /// `/healthz`.
    fn liveness(&self) -> Reply;
    /// `/readyz`.
    fn readiness(&self) -> Reply;
}

/// The routes of `probes`; any other path is 404 with a hint.
pub fn router(probes: Arc<dyn Probes>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(probes): State<Arc<dyn Probes>>| async move {
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    probes.metrics(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|State(probes): State<Arc<dyn Probes>>| async move { probes.liveness() }),
        )
        .route(
            "/readyz",
            get(|State(probes): State<Arc<dyn Probes>>| async move { probes.readiness() }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try GET /metrics, /healthz or /readyz\n",
            )
        })
        .with_state(probes)
}

/// Bind `addr`. When the address was not asked for (`required` false: the role's default), a
/// failure is a warning and the endpoint is off; when it was, a failure is an error naming the
/// flag.
pub async fn bind(addr: SocketAddr, required: bool) -> Result<Option<TcpListener>> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if !required => {
            tracing::warn!(%addr, %error, "the default metrics address cannot be bound; /metrics, /healthz and /readyz are off (set --metrics-listen)");
            Ok(None)
        }
        Err(source) => Err(HttpError::Bind { addr, source }),
    }
}

/// A running endpoint; stop it with [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serve `probes` on `listener` in a task of its own.
    pub fn start(listener: TcpListener, probes: Arc<dyn Probes>) -> Result<Self> {
        let addr = listener
            .local_addr()
            .map_err(|source| HttpError::LocalAddr { source })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(
            serve(
                Acceptor::new(listener, MAX_CONNECTIONS, "metrics"),
                router(probes),
                stopped,
            )
            .instrument(tracing::info_span!("http", %addr)),
        );
        Ok(Self { addr, stop, task })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight finish (at most 2 s), and end.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Accept and serve until `stopped` turns true, then wait for the connections to end.
async fn serve(mut acceptor: Acceptor, router: Router, mut stopped: watch::Receiver<bool>) {
    // Every connection task holds a receiver: the sender is closed once they have all ended.
    let (all_done, done) = watch::channel(());
    loop {
        let (tcp, _peer, slot) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let stopped = stopped.clone();
        let done = done.clone();
        tokio::spawn(
            async move {
                serve_connection(Conn::new(tcp, slot), service, stopped).await;
                drop(done);
            }
            .in_current_span(),
        );
    }
    drop(acceptor);
    drop(done);
    all_done.closed().await;
}

/// One HTTP/1 connection, within [`HEADER_TIMEOUT`] per request and [`CONNECTION_MAX`] in all.
async fn serve_connection(
    conn: Conn<tokio::net::TcpStream>,
    service: TowerToHyperService<Router>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(conn), service));
    let ended = tokio::select! {
        served = connection.as_mut() => Some(served),
        () = tokio::time::sleep(CONNECTION_MAX) => None,
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    let served = if let Some(served) = ended {
        served
    } else {
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(STOP_GRACE, connection).await {
            Ok(served) => served,
            Err(_) => return,
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests;
