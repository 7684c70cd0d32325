//! The collector's TLS listener (rustls): `--tls-cert`/`--tls-key`, and with `--client-ca` client
//! certificates are required and verified. The files are reloaded when they change: each
//! handshake checks their modification times and rebuilds the rustls config if any moved, so a
//! rotated Secret takes effect for the next connection without a restart. A reload that fails
//! (half-written files) keeps the previous config and logs why.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use mapsentry_service::listen::{Acceptor, Conn};

use futures_core::Stream;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

/// The longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection must have sent the HTTP/2 client preface within this of being accepted.
pub const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);
/// The HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub const HTTP2_PREFACE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: cannot read it")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Invalid {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-cert/--tls-key: the certificate and key do not make a usable server identity")]
    Identity {
        #[source]
        source: rustls::Error,
    },
}

/// The server's certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// Build the rustls config from the files as they are now.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = pem_all::<CertificateDer<'static>>("--tls-cert", &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read("--tls-key", &self.key)?).map_err(|e| {
            TlsError::Invalid {
                flag: "--tls-key",
                path: self.key.clone(),
                reason: format!("no usable private key: {e}"),
            }
        })?;
        let builder =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Identity { source })?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in pem_all::<CertificateDer<'static>>("--client-ca", path)? {
                    roots.add(cert).map_err(|e| TlsError::Invalid {
                        flag: "--client-ca",
                        path: path.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .map_err(|e| TlsError::Invalid {
                    flag: "--client-ca",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Identity { source })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn pem_all<T: PemObject>(flag: &'static str, path: &Path) -> Result<Vec<T>, TlsError> {
    let bytes = read(flag, path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            flag,
            path: path.to_owned(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if items.is_empty() {
        return Err(TlsError::Invalid {
            flag,
            path: path.to_owned(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(items)
}

/// The current rustls config, rebuilt when a file's modification time changes.
#[derive(Debug)]
pub struct Reloading {
    tls: ServerTls,
    state: Mutex<(Vec<Option<SystemTime>>, Arc<ServerConfig>)>,
}

impl Reloading {
    /// Load the files now; a bad file is an error here (at startup), only a warning later.
    pub fn new(tls: ServerTls) -> Result<Self, TlsError> {
        let stamps = stamps(&tls);
        let config = tls.load()?;
        Ok(Self {
            tls,
            state: Mutex::new((stamps, config)),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = stamps(&self.tls);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != state.0 {
            match self.tls.load() {
                Ok(config) => {
                    tracing::info!("TLS certificate files changed: reloaded");
                    *state = (now, config);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "TLS certificate files changed but do not load; keeping the previous ones");
                    state.0 = now;
                }
            }
        }
        Arc::clone(&state.1)
    }
}

fn stamps(tls: &ServerTls) -> Vec<Option<SystemTime>> {
    tls.files()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Accept from `acceptor` and hand over connections that completed the TLS handshake. Handshakes
/// run concurrently (at most [`HANDSHAKE_TIMEOUT`] each); failed ones are logged (with the peer
/// and reason) and dropped. A connection must then send the HTTP/2 preface within what is left
/// of [`FIRST_BYTES_DEADLINE`]. Ends when the receiver is dropped.
pub fn incoming(
    mut acceptor: Acceptor,
    tls: Arc<Reloading>,
) -> impl Stream<Item = Result<Conn<TlsStream<tokio::net::TcpStream>>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(
        async move {
            loop {
                let (tcp, peer, slot) = tokio::select! {
                    accepted = acceptor.accept() => accepted,
                    () = tx.closed() => return,
                };
                let tls_acceptor = TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                tokio::spawn(
                    async move {
                        let started = tokio::time::Instant::now();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls_acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                let left = FIRST_BYTES_DEADLINE.saturating_sub(started.elapsed());
                                let conn = Conn::new(stream, slot)
                                    .with_first_bytes(HTTP2_PREFACE_BYTES, left);
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(error)) => {
                                tracing::warn!(%peer, %error, "TLS handshake refused");
                            }
                            Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        .in_current_span(),
    );
    ReceiverStream::new(rx)
}
