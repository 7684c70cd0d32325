//! How agents and subscribers reach a collector: `http://` (plaintext, only when asked for) or
//! `https://` with a CA (`--ca`, else the system roots), an optional client certificate for
//! mutual TLS (`--cert`/`--key`) and an optional bearer token (`--token-file`); and what a refusal
//! means, in words a user can act on.

use std::{
    error::Error as StdError,
    fmt, fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("collector URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("collector URL {url:?}: the scheme must be https:// (TLS) or http:// (plaintext)")]
    Scheme { url: String },
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
    #[error("{flags} given, but {url:?} is plaintext (http://); use an https:// URL for TLS")]
    TlsOnPlaintext { flags: String, url: String },
    #[error("--cert and --key go together (mutual TLS needs both)")]
    HalfIdentity,
    #[error("collector URL {url:?}: TLS settings are not usable")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Client-side security settings, as the `agent` and `tail` flags give them.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// PEM file of the CA that signed the collector's certificate (`--ca`).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS (`--cert`, `--key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// File holding the bearer token (`--token-file`); surrounding whitespace is ignored.
    pub token_file: Option<PathBuf>,
}

/// A bearer token, ready for the `authorization` header. Its Debug form hides the secret.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// Read the token from `path` (`--token-file`).
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let text = fs::read_to_string(path).map_err(|source| ClientError::Read {
            flag: "--token-file",
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.trim()).map_err(|reason| ClientError::Invalid {
            flag: "--token-file",
            path: path.to_owned(),
            reason,
        })
    }

    /// A token from its text.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(Self)
            .map_err(|_| "the token has characters a header cannot carry".into())
    }

    /// Put the token on `request`.
    pub fn apply<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
    }
}

/// Whether `url` asks for plaintext (`http://`).
#[must_use]
pub fn is_plaintext(url: &str) -> bool {
    url.starts_with("http://")
}

/// The endpoint for `url` with TLS set up from `security`, and the bearer token if any.
/// Plaintext URLs with TLS files given are refused (the user meant TLS); plaintext without them is
/// allowed, with a warning in the log unless the host is loopback (`mapsentry run`'s embedded
/// collector).
pub fn endpoint(
    url: &str,
    security: &ClientSecurity,
) -> Result<(Endpoint, Option<BearerToken>), ClientError> {
    let token = security
        .token_file
        .as_deref()
        .map(BearerToken::from_file)
        .transpose()?;
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5));
    if security.cert.is_some() != security.key.is_some() {
        return Err(ClientError::HalfIdentity);
    }
    if is_plaintext(url) {
        let tls_flags: Vec<&str> = [
            security.ca.as_ref().map(|_| "--ca"),
            security.cert.as_ref().map(|_| "--cert"),
            security.key.as_ref().map(|_| "--key"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !tls_flags.is_empty() {
            return Err(ClientError::TlsOnPlaintext {
                flags: tls_flags.join(", "),
                url: url.to_owned(),
            });
        }
        let loopback = matches!(
            endpoint.uri().host(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        );
        if !loopback {
            tracing::warn!(
                %url,
                "connecting in PLAINTEXT: events{} travel unencrypted and the collector is not authenticated; use an https:// URL",
                if token.is_some() { " and the bearer token" } else { "" }
            );
        }
        return Ok((endpoint, token));
    }
    if !url.starts_with("https://") {
        return Err(ClientError::Scheme {
            url: url.to_owned(),
        });
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &security.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("--ca", ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&security.cert, &security.key) {
        tls = tls.identity(Identity::from_pem(
            read_pem("--cert", cert)?,
            read_pem("--key", key)?,
        ));
    }
    let endpoint = endpoint
        .tls_config(tls)
        .map_err(|source| ClientError::Tls {
            url: url.to_owned(),
            source,
        })?;
    Ok((endpoint, token))
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = fs::read(path).map_err(|source| ClientError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ClientError::Invalid {
            flag,
            path: path.to_owned(),
            reason: "not a PEM file (no -----BEGIN line)".into(),
        });
    }
    Ok(bytes)
}

/// Why the collector will never accept this client as configured, or `None` when `status` may be
/// transient (collector away, overloaded). Covers authentication (`UNAUTHENTICATED`),
/// authorization (`PERMISSION_DENIED`) and certificate failures in the TLS handshake on either side.
#[must_use]
pub fn refusal(status: &Status) -> Option<String> {
    match status.code() {
        Code::Unauthenticated => {
            return Some(format!(
                "unauthenticated: {} (check --token-file or --cert/--key)",
                status.message()
            ));
        }
        Code::PermissionDenied => {
            return Some(format!("permission denied: {}", status.message()));
        }
        _ => {}
    }
    certificate_failure(status).map(|reason| format!("certificate: {reason}"))
}

/// A TLS certificate failure somewhere in `error`'s source chain.
#[must_use]
pub fn certificate_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = next {
        let tls = error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return describe(tls);
        }
        // h2 keeps only the kind and text of an I/O error, so an alert the server sent after the
        // handshake (TLS 1.3 checks client certificates then) arrives as words.
        if let Some(alert) = error
            .to_string()
            .split("received fatal alert: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            && let Some(alert) = CERTIFICATE_ALERTS
                .iter()
                .find(|a| format!("{a:?}") == alert)
        {
            return describe(&rustls::Error::AlertReceived(*alert));
        }
        next = error.source();
    }
    None
}

const CERTIFICATE_ALERTS: [rustls::AlertDescription; 8] = [
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::AccessDenied,
];

fn describe(error: &rustls::Error) -> Option<String> {
    use rustls::Error;
    match error {
        Error::InvalidCertificate(why) => Some(format!(
            "the collector's certificate is not trusted ({why:?}); check --ca and the URL's host name"
        )),
        Error::NoCertificatesPresented => Some("the peer presented no certificate".into()),
        Error::AlertReceived(alert) if CERTIFICATE_ALERTS.contains(alert) => Some(format!(
            "the collector refused this client's certificate ({alert:?}); it needs --cert/--key signed by the collector's client CA"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
