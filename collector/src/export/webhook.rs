//! `--alert-webhook URL`: alerts POSTed as JSON arrays (`Content-Type: application/json`), one
//! request at a time, in publication order.
//!
//! - **Batches**: a POST carries up to `batch` alerts; once an alert is queued the sink waits up
//!   to `flush` for the batch to fill, then sends what it has.
//! - **Answers**: 2xx delivers the batch. 408, 429, 5xx, connection errors and timeouts are
//!   retried with exponential backoff (`backoff_min` doubling to `backoff_max`, with jitter)
//!   for up to `retry_for` after the first attempt, then the batch is dropped. Any other answer
//!   (3xx: redirects are not followed; 4xx) drops the batch at once (`rejected`). Every failed
//!   attempt is counted in `mapsentry_alert_export_failures_total{sink="webhook"}`.
//! - **Queue**: alerts published while a batch is being retried wait in a bounded queue; a full
//!   queue drops its oldest alert.
//! - **Shutdown**: the sink keeps delivering for at most [`SHUTDOWN_GRACE`], then counts what is
//!   left as dropped.
//! - **TLS**: `https://` URLs are verified against the system's roots, or only against
//!   `--alert-webhook-ca` when given (rustls).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use backon::BackoffBuilder as _;
use bytes::Bytes;
use http::{
    Request, StatusCode, Uri,
    header::{CONTENT_TYPE, USER_AGENT},
};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{RootCertStore, pki_types::CertificateDer};
use tracing::Instrument as _;

use super::{DropReason, ExportMetrics, FailureLog, Line, queue::Queue};
use crate::{fanout::PublishedAlert, tls};

/// The `sink` label of the webhook's counters.
pub const SINK: &str = "webhook";
/// How long a stopping collector keeps delivering.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// Most alerts in one POST.
    pub batch: usize,
    /// How long a batch that is not full waits for more alerts.
    pub flush: Duration,
    /// Alerts queued before the oldest is dropped.
    pub queue: usize,
    /// The longest one request may take (connecting, sending, the answer).
    pub timeout: Duration,
    /// How long a batch is retried before it is dropped.
    pub retry_for: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Trust only this PEM CA for `https://` (default: the system's roots).
    pub ca: Option<PathBuf>,
}

impl WebhookConfig {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            batch: 100,
            flush: Duration::from_secs(1),
            queue: 10_000,
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_mins(5),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            ca: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--alert-webhook {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "--alert-webhook {url:?}: the system has no usable root certificates; give --alert-webhook-ca"
    )]
    NoRoots {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] tls::TlsError),
    #[error("--alert-webhook-ca {}: {reason}", path.display())]
    CaInvalid { path: PathBuf, reason: String },
    #[error("{flag}: must be at least {least}")]
    TooSmall {
        flag: &'static str,
        least: &'static str,
    },
}

type Connector = HttpsConnector<HttpConnector>;

/// The HTTP(S) client of one webhook.
#[derive(Debug, Clone)]
pub struct Client {
    http: HttpClient<Connector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
    /// The URL as logs show it: scheme and authority only (webhook paths and queries often
    /// carry secrets).
    pub shown: String,
}

/// What a failed attempt calls for.
#[derive(Debug)]
enum Failure {
    Retry(String),
    Reject(String),
}

impl Client {
    /// Check `config` and build its client; refuses what could never deliver.
    pub fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let url_error = |reason: &str| WebhookError::Url {
            url: config.url.clone(),
            reason: reason.to_owned(),
        };
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| url_error(&format!("not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(url_error(&format!(
                    "scheme {other:?} is not supported; use http:// or https://"
                )));
            }
            None => {
                return Err(url_error(
                    "no scheme; use http://HOST[:PORT]/PATH or https://...",
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(url_error("no host"));
        };
        if authority.as_str().contains('@') {
            return Err(url_error(
                "credentials in the URL are not supported (they would be sent in the clear in logs)",
            ));
        }
        if authority.host().is_empty() {
            return Err(url_error("no host"));
        }
        for (flag, zero) in [
            ("--alert-webhook-batch", config.batch == 0),
            ("--alert-webhook-queue", config.queue == 0),
        ] {
            if zero {
                return Err(WebhookError::TooSmall { flag, least: "1" });
            }
        }
        if config.timeout.is_zero() {
            return Err(WebhookError::TooSmall {
                flag: "--alert-webhook-timeout",
                least: "1ms",
            });
        }
        if config.ca.is_some() && !https {
            return Err(url_error(
                "--alert-webhook-ca is given but the URL is not https://",
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match (&config.ca, https) {
            (Some(path), _) => {
                let mut roots = RootCertStore::empty();
                for cert in tls::pem_all::<CertificateDer<'static>>("--alert-webhook-ca", path)? {
                    roots.add(cert).map_err(|e| WebhookError::CaInvalid {
                        path: path.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                builder.with_tls_config(client_config(provider, roots, &path.display())?)
            }
            (None, true) => builder
                .with_provider_and_native_roots(provider)
                .map_err(|source| WebhookError::NoRoots {
                    url: config.url.clone(),
                    source,
                })?,
            // Plain http: the TLS side is never used.
            (None, false) => {
                builder.with_tls_config(client_config(provider, RootCertStore::empty(), &"")?)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let shown = format!(
            "{}://{authority}{}",
            uri.scheme_str().unwrap_or_default(),
            if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
                "/..."
            } else {
                ""
            }
        );
        Ok(Self {
            http,
            shown,
            uri,
            timeout: config.timeout,
        })
    }

    /// POST `body` once.
    async fn post(&self, body: Bytes) -> Result<(), Failure> {
        let request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("mapsentry/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| Failure::Reject(format!("building the request: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            // Read the answer through, so that the connection can be used again.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Failure::Retry(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Err(error)) => Err(Failure::Retry(error_chain(&error))),
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status))
                if status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT =>
            {
                Err(Failure::Retry(format!("answered {status}")))
            }
            Ok(Ok(status)) if status.is_redirection() => Err(Failure::Reject(format!(
                "answered {status}; redirects are not followed, give the final URL"
            ))),
            Ok(Ok(status)) => Err(Failure::Reject(format!("answered {status}"))),
        }
    }
}

fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: RootCertStore,
    what: &dyn std::fmt::Display,
) -> Result<rustls::ClientConfig, WebhookError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::CaInvalid {
            path: what.to_string().into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error with its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The body of one POST: a JSON array of alert lines.
pub(crate) fn body(batch: &[Arc<PublishedAlert>]) -> Bytes {
    let lines: Vec<Line<'_>> = batch.iter().map(|a| Line::of(a)).collect();
    Bytes::from(serde_json::to_vec(&lines).unwrap_or_else(|_| b"[]".to_vec()))
}

/// Deliver the batches of `queue` until it is closed and empty (or the shutdown grace is over).
pub(crate) fn start(
    client: Client,
    config: WebhookConfig,
    queue: Arc<Queue>,
    metrics: ExportMetrics,
) -> tokio::task::JoinHandle<()> {
    let mut sender = Sender {
        client,
        config,
        queue,
        metrics,
        failures: FailureLog::new(SINK),
        grace: None,
    };
    tokio::spawn(async move { sender.run().await }.instrument(tracing::info_span!("alert_webhook")))
}

struct Sender {
    client: Client,
    config: WebhookConfig,
    queue: Arc<Queue>,
    metrics: ExportMetrics,
    failures: FailureLog,
    /// The end of the shutdown grace, once the queue is closed.
    grace: Option<Instant>,
}

impl Sender {
    async fn run(&mut self) {
        while let Some(batch) = self
            .queue
            .next_batch(self.config.batch, self.config.flush)
            .await
        {
            let n = batch.len() as u64;
            if self.grace_over() {
                self.metrics.dropped(SINK, DropReason::Shutdown, n);
                continue;
            }
            self.deliver(body(&batch), n).await;
        }
    }

    /// Whether the queue is closed and the grace after it is over.
    fn grace_over(&mut self) -> bool {
        if self.grace.is_none() && self.queue.is_closed() {
            self.grace = Some(Instant::now() + SHUTDOWN_GRACE);
        }
        self.grace.is_some_and(|end| Instant::now() >= end)
    }

    async fn deliver(&mut self, body: Bytes, n: u64) {
        let first = Instant::now();
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.backoff_min)
            .with_max_delay(self.config.backoff_max)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let failure = match self.client.post(body.clone()).await {
                Ok(()) => {
                    self.metrics.delivered(SINK, n);
                    return;
                }
                Err(failure) => failure,
            };
            self.metrics.failure(SINK);
            match failure {
                Failure::Reject(why) => {
                    self.failures.failed(&format_args!(
                        "{}: {why}; {n} alerts dropped",
                        self.client.shown
                    ));
                    self.metrics.dropped(SINK, DropReason::Rejected, n);
                    return;
                }
                Failure::Retry(why) => {
                    self.failures
                        .failed(&format_args!("{}: {why}; retrying", self.client.shown));
                }
            }
            let delay = delays.next().unwrap_or(self.config.backoff_max);
            let retry_end = first + self.config.retry_for;
            let retry_at = Instant::now() + delay;
            if retry_at > retry_end {
                self.metrics.dropped(SINK, DropReason::RetriesExhausted, n);
                self.failures.failed(&format_args!(
                    "{}: undelivered after {:?}; {n} alerts dropped",
                    self.client.shown, self.config.retry_for
                ));
                return;
            }
            // Sleep until the retry, watching for the shutdown grace to run out.
            while Instant::now() < retry_at {
                if self.grace_over() {
                    self.metrics.dropped(SINK, DropReason::Shutdown, n);
                    return;
                }
                let left = retry_at.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(200))).await;
            }
            if self.grace_over() {
                self.metrics.dropped(SINK, DropReason::Shutdown, n);
                return;
            }
        }
    }
}
