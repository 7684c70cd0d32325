//! Policy sets for agents: the collector's current enforce-mode policies, versioned, published
//! on a `watch` channel that every agent stream follows (latest value wins; a slow agent skips
//! intermediate sets, never gets a stale one after a newer one).

use std::time::{SystemTime, UNIX_EPOCH};

use mapsentry_policy::{Mode, Policy, enforce::policy_json};
use mapsentry_proto::v1;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing the policy set: {source}")]
    Encode {
        #[source]
        source: mapsentry_policy::enforce::EnforceError,
    },
}

/// The publishing end; the collector's policy source calls [`PolicyPublisher::publish`] with its
/// current policies whenever they change.
#[derive(Debug)]
pub struct PolicyPublisher {
    tx: watch::Sender<Option<v1::PolicySet>>,
    version: u64,
}

impl Default for PolicyPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyPublisher {
    /// No set until the first `publish`. Versions start at the current time in milliseconds,
    /// so a restarted collector's sets still count up.
    #[must_use]
    pub fn new() -> Self {
        let version = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            tx: watch::Sender::new(None),
            version,
        }
    }

    /// What agent streams follow (pass to [`crate::ServerConfig::policy_sets`]).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<v1::PolicySet>> {
        self.tx.subscribe()
    }

    /// Publish the enforce-mode policies of `policies` (audit ones are left out) as the next
    /// version; returns it.
    pub fn publish(&mut self, policies: &[Policy]) -> Result<u64, PublishError> {
        let policies_json = policies
            .iter()
            .filter(|p| p.mode() == Mode::Enforce)
            .map(policy_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PublishError::Encode { source })?;
        self.version += 1;
        let set = v1::PolicySet {
            version: self.version,
            policies_json,
        };
        tracing::info!(
            version = set.version,
            policies = set.policies_json.len(),
            "publishing the enforce-mode policy set to agents"
        );
        self.tx.send_replace(Some(set));
        Ok(self.version)
    }
}

#[cfg(test)]
mod tests;
