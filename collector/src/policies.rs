//! The one policy store of a collector, fed by every source: policy files (each a source by its
//! path, [`crate::policy_files`]) and, in a cluster, the policy objects (each a source by
//! `KIND/NAMESPACE/NAME`, [`crate::policy_crds`]). After every change the policies in force go to
//! the evaluation (a `watch` of the [`PolicySet`]) and their enforce-mode part to the agents
//! (the [`PolicyPublisher`], when set).

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
        publish_to_agents(&mut state);
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
        publish_to_agents(state);
        match state.store.policy_set() {
            Ok(set) => {
                self.inner.tx.send_replace(Some(Arc::new(set)));
            }
            Err(error) => tracing::error!(%error, "policy set not built; the previous one stays"),
        }
    }
}

fn publish_to_agents(state: &mut State) {
    if let Some(publisher) = &mut state.publisher {
        let policies: Vec<Policy> = state.store.policies().cloned().collect();
        if let Err(error) = publisher.publish(&policies) {
            tracing::error!(%error, "the enforce-mode policies were not published to agents");
        }
    }
}
