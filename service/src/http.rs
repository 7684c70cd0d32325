//! The HTTP endpoint of a role (`--metrics-listen`): Prometheus `/metrics` (OpenMetrics text),
//! `/healthz` (liveness) and `/readyz` (readiness), on axum. What each path answers comes from
//! the role's [`Probes`]; the server only routes, so the agent and the collector share it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{net::TcpListener, sync::oneshot};
use tracing::Instrument as _;

/// How long [`Server::stop`] lets requests in flight finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

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
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serve `probes` on `listener` in a task of its own.
    pub fn start(listener: TcpListener, probes: Arc<dyn Probes>) -> Result<Self> {
        let addr = listener
            .local_addr()
            .map_err(|source| HttpError::LocalAddr { source })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                let served = axum::serve(listener, router(probes))
                    .with_graceful_shutdown(async {
                        drop(stopped.await);
                    })
                    .await;
                if let Err(error) = served {
                    tracing::error!(error = %crate::error::chain(&error), "the metrics endpoint stopped");
                }
            }
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
        drop(self.stop);
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
