//! Readiness of a collector: not ready until its policy store is synced (the initial policy load
//! is done), then ready. Read by `/readyz` on the metrics listener ([`crate::metrics`]) and by the
//! gRPC health service, whose `mapsentry.v1.AgentService` and `mapsentry.v1.Observer` statuses
//! stay `NOT_SERVING` until then ([`crate::server`]). Liveness (`/healthz`, the overall gRPC
//! status `""`) is the server answering at all.
//!
//! Readiness is the conjunction of named conditions: `policies` (the initial policy load) and,
//! with `--jetstream`, `jetstream` (NATS reachable and the streams in place). Not ready names
//! every condition that does not hold.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;

/// The condition [`Health::set_ready`] and [`Health::set_not_ready`] speak of.
const POLICIES: &str = "policies";

/// Shared readiness: `None` when ready, else why not. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<Option<String>>>,
    /// The conditions that do not hold, and why.
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    /// Not ready, for `reason` (e.g. `policies not loaded yet`).
    #[must_use]
    pub fn not_ready(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            state: Arc::new(watch::Sender::new(Some(reason.clone()))),
            failing: Arc::new(Mutex::new([(POLICIES, reason)].into_iter().collect())),
        }
    }

    /// Ready from the start (nothing to wait for).
    #[must_use]
    pub fn ready() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(None)),
            failing: Arc::default(),
        }
    }

    /// The policies are loaded.
    pub fn set_ready(&self) {
        self.set_ready_for(POLICIES);
    }

    /// The policies are not loaded, for `reason`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set_not_ready_for(POLICIES, reason);
    }

    /// Condition `condition` holds.
    pub fn set_ready_for(&self, condition: &'static str) {
        self.update(|failing| failing.remove(condition).is_some());
    }

    /// Condition `condition` does not hold, for `reason`.
    pub fn set_not_ready_for(&self, condition: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|failing| failing.insert(condition, reason.clone()).as_ref() != Some(&reason));
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<&'static str, String>) -> bool) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if change(&mut failing) {
            let reason = (!failing.is_empty())
                .then(|| failing.values().cloned().collect::<Vec<_>>().join("; "));
            self.state.send_replace(reason);
        }
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
