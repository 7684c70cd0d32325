//! Readiness of a collector: not ready until its policy store is synced (the initial policy load
//! is done), then ready. Read by `/readyz` on the metrics listener ([`crate::metrics`]) and by the
//! gRPC health service, whose `mapsentry.v1.AgentService` and `mapsentry.v1.Observer` statuses
//! stay `NOT_SERVING` until then ([`crate::server`]). Liveness (`/healthz`, the overall gRPC
//! status `""`) is the server answering at all.

use std::sync::Arc;

use tokio::sync::watch;

/// Shared readiness: `None` when ready, else why not. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<Option<String>>>,
}

impl Health {
    /// Not ready, for `reason` (e.g. `policies not loaded yet`).
    #[must_use]
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(watch::Sender::new(Some(reason.into()))),
        }
    }

    /// Ready from the start (nothing to wait for).
    #[must_use]
    pub fn ready() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(None)),
        }
    }

    pub fn set_ready(&self) {
        self.state.send_replace(None);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.state.send_replace(Some(reason.into()));
    }

    /// `Ok` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        self.state.borrow().clone().map_or(Ok(()), Err)
    }

    /// Changes of readiness (`None`: ready), starting with the current state.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::ready()
    }
}
