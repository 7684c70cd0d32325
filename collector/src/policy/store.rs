//! The one policy store of a collector, fed by every source: policy files (each a source by its
//! path, [`super::files`]) and, in a cluster, the policy objects (each a source by
//! `KIND/NAMESPACE/NAME`, [`super::crds`]). After every change the policies in force go to
//! the evaluation (a `watch` of the [`PolicySet`]) and their enforce-mode part to the agents
//! (the [`PolicyPublisher`], when set).
//!
//! Sources that load asynchronously (the policy objects, listed from the API server) hold the
//! agents' sets back until their first load is complete ([`SharedPolicies::hold_publishing`]):
//! a set published before it would lack their Enforce policies, and every agent would withdraw
//! those rules until the list arrived (after each collector restart).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mapsentry_policy::{Policy, PolicySet, PolicyStore};
use tokio::sync::watch;

use crate::{PolicyPublisher, alerts::Policies};

/// A handle on the shared store; clones share it.
#[derive(Debug, Clone)]
pub struct SharedPolicies {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    tx: watch::Sender<Option<Arc<PolicySet>>>,
    /// Sources whose first load is not complete yet.
    unsynced: watch::Sender<usize>,
}

#[derive(Debug)]
struct State {
    store: PolicyStore,
    publisher: Option<PolicyPublisher>,
}

impl Default for SharedPolicies {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedPolicies {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        let store = PolicyStore::new();
        let set = store.policy_set().ok().map(Arc::new);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    store,
                    publisher: None,
                }),
                tx: watch::Sender::new(set),
                unsynced: watch::Sender::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update completes before anything that can panic, so a poisoned lock is usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Change the store with `f`, which says whether the policies in force changed; if they
    /// did, the new set goes to the evaluation and the agents.
    pub fn update<R>(&self, f: impl FnOnce(&mut PolicyStore) -> (R, bool)) -> R {
        let mut state = self.lock();
        let (result, changed) = f(&mut state.store);
        if changed {
            self.publish(&mut state);
        }
        result
    }

    /// Read the store.
    pub fn read<R>(&self, f: impl FnOnce(&PolicyStore) -> R) -> R {
        f(&self.lock().store)
    }

    /// Publish the enforce-mode policies to agents through `publisher`: now, and after every
    /// change from now on.
    pub fn set_publisher(&self, publisher: PolicyPublisher) {
        let mut state = self.lock();
        state.publisher = Some(publisher);
        publish_to_agents(&mut state, *self.inner.unsynced.borrow());
    }

    /// Publish nothing to agents until [`Self::source_synced`] was called `sources` times (once
    /// per source that loads asynchronously); then the policies in force at that moment.
    pub fn hold_publishing(&self, sources: usize) {
        self.inner.unsynced.send_modify(|n| *n += sources);
    }

    /// One held source completed its first load; the last one releases the agents' set.
    pub fn source_synced(&self) {
        let mut state = self.lock();
        let mut released = false;
        self.inner.unsynced.send_modify(|n| {
            if *n > 0 {
                *n -= 1;
                released = *n == 0;
            }
        });
        if released {
            publish_to_agents(&mut state, 0);
        }
    }

    /// Resolves once every held source has completed its first load.
    pub async fn synced(&self) {
        let mut unsynced = self.inner.unsynced.subscribe();
        // The sender lives as long as `self`, so this only ends when the count is 0.
        let _ = unsynced.wait_for(|n| *n == 0).await;
    }

    /// The policies in force, for the evaluation (None: none).
    #[must_use]
    pub fn subscribe(&self) -> Policies {
        self.inner.tx.subscribe()
    }

    /// Resolves once nobody follows the policies any more (every [`Self::subscribe`] receiver
    /// is gone).
    pub async fn closed(&self) {
        self.inner.tx.closed().await;
    }

    /// The policies in force, ready to evaluate. (The store refuses a second definition of a
    /// policy, so this is None only if that rule were broken; the error is logged.)
    #[must_use]
    pub fn policy_set(&self) -> Option<PolicySet> {
        self.read(PolicyStore::policy_set)
            .map_err(|error| tracing::error!(%error, "policy set not built"))
            .ok()
    }

    fn publish(&self, state: &mut State) {
        publish_to_agents(state, *self.inner.unsynced.borrow());
        match state.store.policy_set() {
            Ok(set) => {
                self.inner.tx.send_replace(Some(Arc::new(set)));
            }
            Err(error) => tracing::error!(%error, "policy set not built; the previous one stays"),
        }
    }
}

/// Publish unless `unsynced` sources still hold the agents' set back.
fn publish_to_agents(state: &mut State, unsynced: usize) {
    if unsynced > 0 {
        tracing::debug!(
            unsynced,
            "the agents' policy set waits for the first load of every source"
        );
        return;
    }
    if let Some(publisher) = &mut state.publisher {
        let policies: Vec<Policy> = state.store.policies().cloned().collect();
        if let Err(error) = publisher.publish(&policies) {
            tracing::error!(%error, "the enforce-mode policies were not published to agents");
        }
    }
}

#[cfg(test)]
mod tests;
