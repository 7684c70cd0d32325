//! `--ca`, `--cert`, `--key`, `--token-file`: how `agent` and `tail` reach an `https://` collector.

use std::path::PathBuf;

use mapsentry_proto::client::ClientSecurity;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// PEM CA certificate that signed the collector's certificate (https:// URLs; default: the
    /// system's roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// File holding a bearer token for the collector (sent as `authorization: Bearer ...`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ClientArgs {
    pub fn security(&self) -> ClientSecurity {
        ClientSecurity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token_file: self.token_file.clone(),
        }
    }
}
