//! Policies from the API server: kube-rs watchers of `MmapPolicy` (all namespaces) and
//! `ClusterMmapPolicy` objects feed the same [`SharedPolicies`] store as the policy files (each
//! object is a source of its own, `KIND/NAMESPACE/NAME`), and every object seen gets a status
//! through the status subresource.
//!
//! - A new generation that validates replaces the previous one; one that does not is rejected,
//!   its problems logged and written to `status.errors` (field path and reason), and the previous
//!   good generation stays in force (`status.acceptedGeneration`).
//! - A policy a file defines already is rejected the same way (reason `Duplicate`).
//! - A deleted object's policy is removed; objects deleted while the watch was away are removed
//!   when the relist completes.
//! - For an `Enforce` policy, the status lists the rules the kernel will not enforce and why
//!   (`status.refusedRules`, from [`mapsentry_policy::enforce::kernel_set_plan`] on nodes with
//!   and without BPF LSM, Deny following `denyFallback`), and with the agents' reports
//!   ([`crate::NodeReports`]) the rules their kernels refuse beyond it and the nodes that enforce
//!   the set without having persisted it (`KernelEnforced`); the statuses are rewritten when a
//!   report changes.
//!
//! The watchers are [`kube::runtime::watcher`]s with the default backoff: they resume from the
//! last resourceVersion and relist after 410 Gone. Objects are read untyped (a typed read would
//! turn an object our types cannot read into a watch error instead of a status), and our own
//! status writes do not count as changes (the generation is what changes with the spec).
//! Status writes are JSON merge patches of the whole status (absent fields as null, so nothing
//! of an earlier status lingers); a failed write is retried every few seconds.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use mapsentry_policy::{
    ClusterMmapPolicy, MmapPolicy, PolicyId, Problem,
    crd::{API_VERSION, PolicyStatus},
    policy::DEFAULT_NAMESPACE,
    time,
};
use serde_json::Value;
use tracing::Instrument as _;

use crate::{NodeReports, policy::store::SharedPolicies};

/// How often failed status writes are retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// The longest a status write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespaced,
    Cluster,
}

impl Kind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespaced => "MmapPolicy",
            Self::Cluster => "ClusterMmapPolicy",
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Self::Namespaced => ApiResource::erase::<MmapPolicy>(&()),
            Self::Cluster => ApiResource::erase::<ClusterMmapPolicy>(&()),
        }
    }
}

/// One object, by kind and id.
type Key = (Kind, PolicyId);

/// What the watcher last made of one object.
#[derive(Debug, Clone)]
struct Seen {
    uid: Option<String>,
    generation: Option<i64>,
    /// The status the object should have.
    status: PolicyStatus,
    /// Whether `status` is known to be written.
    written: bool,
    /// The object, while it is rejected because a file defines its policy: it is applied again
    /// once that file's policy is gone.
    waiting: Option<DynamicObject>,
}

/// What happened to the objects of a kind since start, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrdStats {
    pub accepted: u64,
    pub rejected: u64,
    pub removed: u64,
    pub status_writes: u64,
    pub status_write_failures: u64,
    /// Completed (re)lists, over both kinds.
    pub lists: u64,
    /// Watch errors (including 410 Gone before a relist).
    pub watch_errors: u64,
}

/// The sources this watcher reports synced to the store ([`SharedPolicies::source_synced`]):
/// one per kind, at the end of its first list. Call [`SharedPolicies::hold_publishing`] with it
/// before the publisher is set, so agents get no set that lacks the objects.
pub const SOURCES: usize = 2;

/// Watch both kinds with `client` into `policies`, until every follower of the policies is
/// gone. The task holds the last good policies through API outages.
#[must_use]
pub fn start(client: Client, policies: SharedPolicies) -> tokio::task::JoinHandle<()> {
    start_with_reports(client, policies, None)
}

/// [`start`], folding the agents' enforcement reports into the statuses.
#[must_use]
pub fn start_with_reports(
    client: Client,
    policies: SharedPolicies,
    reports: Option<NodeReports>,
) -> tokio::task::JoinHandle<()> {
    let (stats_tx, _) = tokio::sync::watch::channel(CrdStats::default());
    spawn(client, policies, stats_tx, None, reports)
}

/// [`start_with_reports`], writing status only while `leading` says so (collector replicas: the
/// holder of the Kubernetes Lease writes, the others only read; `reports` are every replica's
/// agents', [`crate::jetstream::reports`]). Statuses left unwritten are written by the retry
/// tick once this replica leads, those not already as they should be.
#[must_use]
pub fn start_gated(
    client: Client,
    policies: SharedPolicies,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    reports: Option<NodeReports>,
) -> tokio::task::JoinHandle<()> {
    let (stats_tx, _) = tokio::sync::watch::channel(CrdStats::default());
    spawn(client, policies, stats_tx, leading, reports)
}

/// [`start`], reporting progress on `stats`.
#[must_use]
pub fn start_with_stats(
    client: Client,
    policies: SharedPolicies,
    stats: tokio::sync::watch::Sender<CrdStats>,
) -> tokio::task::JoinHandle<()> {
    spawn(client, policies, stats, None, None)
}

fn spawn(
    client: Client,
    policies: SharedPolicies,
    stats: tokio::sync::watch::Sender<CrdStats>,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    reports: Option<NodeReports>,
) -> tokio::task::JoinHandle<()> {
    let mut watcher = CrdWatcher {
        client,
        policies,
        seen: BTreeMap::new(),
        listing: BTreeMap::new(),
        synced: BTreeSet::new(),
        stats,
        leading,
        reports,
    };
    tokio::spawn(async move { watcher.run().await }.instrument(tracing::info_span!("policy_crds")))
}

struct CrdWatcher {
    client: Client,
    policies: SharedPolicies,
    seen: BTreeMap<Key, Seen>,
    /// The objects seen during a (re)list in progress, per kind.
    listing: BTreeMap<Kind, BTreeSet<PolicyId>>,
    /// Kinds whose first list is complete (each reported once to the store).
    synced: BTreeSet<Kind>,
    stats: tokio::sync::watch::Sender<CrdStats>,
    /// Write status only while this is true (None: always).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    reports: Option<NodeReports>,
}

impl CrdWatcher {
    /// The agents' reports as the statuses take them (none without a registry).
    fn node_reports(&self) -> Vec<mapsentry_policy::status::NodeReport> {
        self.reports
            .as_ref()
            .map(NodeReports::snapshot)
            .unwrap_or_default()
    }

    /// A node's report changed: rewrite the statuses of accepted policies it changes.
    async fn refresh_reports(&mut self) {
        let nodes = self.node_reports();
        let changed: Vec<Key> = self
            .seen
            .iter_mut()
            .filter_map(|(key, seen)| {
                if !seen.status.accepted || seen.waiting.is_some() {
                    return None;
                }
                let policy = self.policies.read(|store| store.get(&key.1).cloned())?;
                let mut status = PolicyStatus::accepted_policy_on(&policy, &nodes);
                if status.same_as(&seen.status) {
                    return None;
                }
                status.stamp(Some(&seen.status), &now_rfc3339());
                seen.status = status;
                seen.written = false;
                Some(key.clone())
            })
            .collect();
        for key in changed {
            self.write_status(&key).await;
        }
    }

    async fn run(&mut self) {
        let stream = |kind: Kind| {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.resource());
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |event| (kind, event))
        };
        let mut events = futures_util::stream::select(
            stream(Kind::Namespaced).boxed(),
            stream(Kind::Cluster).boxed(),
        );
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let policies = self.policies.clone();
        let mut reports = self.reports.as_ref().map(NodeReports::subscribe);
        loop {
            tokio::select! {
                Ok(()) = async { reports.as_mut().expect("guarded").changed().await }, if reports.is_some() => {
                    self.refresh_reports().await;
                }
                event = events.next() => {
                    let Some((kind, event)) = event else { return };
                    match event {
                        Ok(event) => self.handle(kind, event).await,
                        Err(error) => {
                            self.stats.send_modify(|s| s.watch_errors += 1);
                            tracing::warn!(kind = kind.as_str(), %error, "policy watch error; the watch resumes (relisting after 410 Gone) and the policies in force stay");
                        }
                    }
                }
                _ = retry.tick() => self.retry_status().await,
                () = policies.closed() => return,
            }
        }
    }

    async fn handle(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => {
                self.listing.insert(kind, BTreeSet::new());
            }
            watcher::Event::InitApply(object) => {
                if let Some(id) = self.apply(kind, &object).await {
                    self.listing.entry(kind).or_default().insert(id);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                let gone: Vec<PolicyId> = self
                    .seen
                    .keys()
                    .filter(|(k, id)| *k == kind && !listed.contains(id))
                    .map(|(_, id)| id.clone())
                    .collect();
                for id in gone {
                    self.remove(kind, &id);
                }
                if self.synced.insert(kind) {
                    self.policies.source_synced();
                }
                self.stats.send_modify(|s| s.lists += 1);
            }
            watcher::Event::Apply(object) => {
                self.apply(kind, &object).await;
            }
            watcher::Event::Delete(object) => {
                if let Some(id) = object_id(kind, &object) {
                    self.remove(kind, &id);
                }
            }
        }
    }

    /// Accept or reject one object and write its status; its id.
    async fn apply(&mut self, kind: Kind, object: &DynamicObject) -> Option<PolicyId> {
        let Some(id) = object_id(kind, object) else {
            tracing::warn!(
                kind = kind.as_str(),
                "policy object without a name; skipped"
            );
            return None;
        };
        let key = (kind, id.clone());
        let uid = object.metadata.uid.clone();
        let generation = object.metadata.generation;
        let current: Option<PolicyStatus> = object
            .data
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        if let Some(seen) = self.seen.get_mut(&key)
            && seen.uid == uid
            && seen.generation == generation
        {
            // Nothing new (our own status write, or a relist): rewrite the status only if it
            // is not what we wrote.
            if current.as_ref().is_none_or(|c| !c.same_as(&seen.status)) {
                seen.written = false;
                self.write_status(&key).await;
            }
            return Some(id);
        }
        let value = policy_value(kind, object);
        let source = format!("{}/{id}", kind.as_str());
        let nodes = self.node_reports();
        let outcome = self.policies.update(|store| {
            let in_force = |store: &mapsentry_policy::PolicyStore| {
                (store.source_of(&id) == Some(source.as_str()))
                    .then(|| {
                        store
                            .get(&id)
                            .and_then(mapsentry_policy::Policy::generation)
                    })
                    .flatten()
            };
            let duplicate = store.source_of(&id).is_some_and(|s| s != source);
            match store.apply_object(&value) {
                Ok(_) => {
                    let status = store
                        .get(&id)
                        .map(|p| PolicyStatus::accepted_policy_on(p, &nodes))
                        .unwrap_or_default();
                    (Ok(status), true)
                }
                Err(problems) => {
                    let reason = if duplicate { "Duplicate" } else { "Invalid" };
                    (
                        Err((
                            PolicyStatus::rejected_generation(
                                generation,
                                &problems,
                                in_force(store),
                                reason,
                            ),
                            problems,
                        )),
                        false,
                    )
                }
            }
        });
        let mut status = match outcome {
            Ok(status) => {
                self.stats.send_modify(|s| s.accepted += 1);
                tracing::info!(kind = kind.as_str(), policy = %id, generation, refused_rules = status.refused_rules.len(), "policy accepted and in force");
                for refused in &status.refused_rules {
                    tracing::warn!(policy = %id, rule = %refused.rule, nodes = ?refused.nodes, reason = %refused.reason, "rule refused for kernel enforcement; it is alerted on");
                }
                status
            }
            Err((status, problems)) => {
                self.stats.send_modify(|s| s.rejected += 1);
                log_rejection(kind, &id, generation, &problems, status.accepted_generation);
                status
            }
        };
        status.stamp(current.as_ref(), &now_rfc3339());
        let written = current.as_ref().is_some_and(|c| c.same_as(&status));
        let waiting = status
            .condition(mapsentry_policy::status::ACCEPTED)
            .is_some_and(|c| c.reason == "Duplicate")
            .then(|| object.clone());
        self.seen.insert(
            key.clone(),
            Seen {
                uid,
                generation,
                status,
                written,
                waiting,
            },
        );
        if !written {
            self.write_status(&key).await;
        }
        Some(id)
    }

    fn remove(&mut self, kind: Kind, id: &PolicyId) {
        self.seen.remove(&(kind, id.clone()));
        let removed = self.policies.update(|store| {
            let removed = store.remove_object(kind.as_str(), id);
            (removed, removed)
        });
        if removed {
            self.stats.send_modify(|s| s.removed += 1);
            tracing::info!(kind = kind.as_str(), policy = %id, "policy object deleted; its policy is removed");
        }
    }

    async fn retry_status(&mut self) {
        // Objects refused as duplicates of a file's policy whose file no longer defines it.
        let freed: Vec<(Kind, DynamicObject)> = self
            .seen
            .iter()
            .filter_map(|((kind, id), s)| {
                let object = s.waiting.as_ref()?;
                let free = self.policies.read(|store| store.source_of(id).is_none());
                free.then(|| (*kind, object.clone()))
            })
            .collect();
        for (kind, object) in freed {
            if let Some(id) = object_id(kind, &object) {
                self.seen.remove(&(kind, id));
            }
            self.apply(kind, &object).await;
        }
        let pending: Vec<Key> = self
            .seen
            .iter()
            .filter(|(_, s)| !s.written)
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.write_status(&key).await;
        }
    }

    async fn write_status(&mut self, key: &Key) {
        if self.leading.as_ref().is_some_and(|l| !*l.borrow()) {
            // Another replica writes; this one writes what is left once it leads.
            return;
        }
        let Some(seen) = self.seen.get(key) else {
            return;
        };
        let (kind, id) = key;
        let api: Api<DynamicObject> = match &id.namespace {
            Some(ns) if *kind == Kind::Namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &kind.resource())
            }
            _ => Api::all_with(self.client.clone(), &kind.resource()),
        };
        let patch = serde_json::json!({ "status": status_patch(&seen.status) });
        let result = tokio::time::timeout(
            WRITE_TIMEOUT,
            api.patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        let ok = match result {
            Ok(Ok(_)) => true,
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                // Deleted meanwhile: the delete event follows.
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(kind = kind.as_str(), policy = %id, %error, "cannot write the policy status; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(kind = kind.as_str(), policy = %id, "writing the policy status timed out; retrying");
                false
            }
        };
        if let Some(seen) = self.seen.get_mut(key) {
            seen.written = ok;
        }
        self.stats.send_modify(|s| {
            if ok {
                s.status_writes += 1;
            } else {
                s.status_write_failures += 1;
            }
        });
    }
}

fn log_rejection(
    kind: Kind,
    id: &PolicyId,
    generation: Option<i64>,
    problems: &[Problem],
    in_force: Option<i64>,
) {
    for problem in problems {
        tracing::error!(
            kind = kind.as_str(),
            policy = %id,
            generation,
            path = %problem.path,
            reason = %problem.reason,
            "policy rejected; the previous good generation (if any) stays in force"
        );
    }
    tracing::warn!(kind = kind.as_str(), policy = %id, generation, problems = problems.len(), in_force, "policy generation rejected");
}

/// The id of `object`: an `MmapPolicy` lives in its namespace.
fn object_id(kind: Kind, object: &DynamicObject) -> Option<PolicyId> {
    let name = object.metadata.name.clone()?;
    let namespace = match kind {
        Kind::Namespaced => Some(
            object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        ),
        Kind::Cluster => None,
    };
    Some(PolicyId { namespace, name })
}

/// The object as the policy loader reads it: `apiVersion` and `kind` set (list items may lack
/// them), without the status (ours, not the author's) and the managed fields (bookkeeping).
fn policy_value(kind: Kind, object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        map.insert("kind".into(), Value::String(kind.as_str().into()));
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
            metadata.retain(|_, v| !v.is_null());
        }
    }
    value
}

/// `status` as a merge patch that replaces the whole status: absent fields are null.
fn status_patch(status: &PolicyStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        for field in [
            "observedGeneration",
            "acceptedGeneration",
            "conditions",
            "errors",
            "refusedRules",
            "fallbackRules",
        ] {
            map.entry(field).or_insert(Value::Null);
        }
    }
    value
}

fn now_rfc3339() -> String {
    time::rfc3339(time::now_ns(), time::Precision::Seconds)
}

#[cfg(test)]
mod tests;
