//! Who may talk to the collector (`--tokens FILE`, `--client-ca`).
//!
//! The tokens file holds one JSON object per line (blank lines and lines starting with `#` are
//! skipped):
//!
//! ```text
//! {"token": "s3cret-for-team-a", "namespaces": ["team-a", "team-a-staging"]}
//! {"token": "s3cret-for-ops", "namespaces": ["*"]}
//! {"token": "s3cret-for-agents", "namespaces": [], "agent": true}
//! ```
//!
//! `namespaces` are the Kubernetes namespaces whose events the token may read (`"*"`: all);
//! `agent: true` lets the token ship events (the agent stream). Clients send
//! `authorization: Bearer <token>`.
//!
//! With `--tokens`, every subscriber call needs a listed token (else `UNAUTHENTICATED`) and sees
//! only its namespaces: the observer filters server-side, so events of other namespaces (and
//! unattributed events, which belong to no namespace) never reach it; asking for a namespace
//! outside the token is `PERMISSION_DENIED`. Agent streams need a token with `agent: true`, or,
//! when `--client-ca` is set, a client certificate (verified in the TLS handshake) suffices.
//! Without `--tokens`, anyone who passed the TLS layer reads everything.

use std::{collections::HashMap, fs, io, path::Path};

use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--tokens {path}: cannot read it")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("--tokens {path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The namespaces a subscriber may read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    Namespaces(Vec<String>),
}

impl Scope {
    /// Whether an event in `namespace` (`None`: not attributed to a pod) may be shown.
    #[must_use]
    pub fn allows(&self, namespace: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(allowed) => namespace.is_some_and(|n| allowed.iter().any(|a| a == n)),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: String,
    namespaces: Vec<String>,
    #[serde(default)]
    agent: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct Grant {
    scope: Scope,
    agent: bool,
}

/// The loaded tokens. Debug does not show them.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<String, Grant>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.0.len())
    }
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parse the JSON-lines form; `path` names the input in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, AuthError> {
        let mut tokens = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let error = |reason: String| AuthError::Line {
                path: path.to_owned(),
                line: line_no,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: Entry = serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
            if entry.token.trim().is_empty() || entry.token.trim() != entry.token {
                return Err(error("token is empty or has surrounding spaces".into()));
            }
            if entry.namespaces.iter().any(String::is_empty) {
                return Err(error("namespaces has an empty name".into()));
            }
            let scope = if entry.namespaces.iter().any(|n| n == "*") {
                Scope::All
            } else {
                Scope::Namespaces(entry.namespaces)
            };
            let grant = Grant {
                scope,
                agent: entry.agent,
            };
            if tokens.insert(entry.token, grant).is_some() {
                return Err(error("this token is listed twice".into()));
            }
        }
        Ok(Self(tokens))
    }

    fn grant<T>(&self, request: &Request<T>) -> Result<&Grant, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("no bearer token (authorization header)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <token>`"))?;
        self.0
            .get(token)
            .ok_or_else(|| Status::unauthenticated("the bearer token is not known"))
    }
}

/// The collector's access rules.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub tokens: Option<Tokens>,
    /// Client certificates are required and verified by the TLS layer.
    pub client_certs: bool,
}

impl Auth {
    /// The scope of a subscriber call, or why it is refused.
    pub fn subscriber<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        match &self.tokens {
            None => Ok(Scope::All),
            Some(tokens) => Ok(tokens.grant(request)?.scope.clone()),
        }
    }

    /// Whether an agent stream may ship events.
    pub fn agent<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        if self.client_certs && request.peer_certs().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        if tokens.grant(request)?.agent {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this token may not ship events (it has no \"agent\": true)",
            ))
        }
    }
}

#[cfg(test)]
mod tests;
