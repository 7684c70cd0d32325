//! The pods on this node, from a kube-rs watcher on `spec.nodeName=<node>`: pod UID -> pod
//! (namespace, name, labels, owning workload) and its containers (runtime id from
//! `status.{,init,ephemeral}ContainerStatuses[].containerID`, name, image), plus namespace labels.
//!
//! The cache keeps serving while the API server is away; the watcher resumes from the last
//! resourceVersion and relists after 410 Gone. Deleted pods stay as tombstones, bounded in count
//! and age, so events that arrive after the pod is gone keep their pod.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use mapsentry_policy::{K8sMeta, Workload};
use tracing::Instrument;

/// Default bound on remembered deleted pods.
pub const DEFAULT_TOMBSTONES: usize = 4096;
/// Default time a deleted pod is remembered.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_mins(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node name is empty: pass --node or set NODE_NAME")]
    NoNode,
    #[error(transparent)]
    Client(#[from] mapsentry_service::kube::KubeClientError),
}

/// The node this agent watches: `--node` if given, else the `NODE_NAME` environment variable
/// (set from the downward API in the agent's `DaemonSet`).
pub fn node_name(flag: Option<&str>) -> Result<String> {
    choose_node(flag, std::env::var("NODE_NAME").ok().as_deref())
}

fn choose_node(flag: Option<&str>, env: Option<&str>) -> Result<String> {
    flag.or(env)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or(Error::NoNode)
}

/// A client from the standard resolution: in-cluster service account, else `KUBECONFIG`, else
/// `~/.kube/config` ([`mapsentry_service::kube::client`]).
pub async fn default_client() -> Result<Client> {
    Ok(mapsentry_service::kube::client(None).await?)
}

/// A client from this kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<Client> {
    Ok(mapsentry_service::kube::client(Some(path)).await?)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// Runtime id without the `containerd://` scheme; `None` until the kubelet reports it.
    pub id: Option<String>,
    pub image: Option<String>,
}

/// A pod as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub workload: Option<Workload>,
    pub containers: Vec<ContainerInfo>,
}

impl PodInfo {
    /// Read what the cache keeps from a pod object. `None` without a UID, name or namespace.
    #[must_use]
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let name = meta.name.clone()?;
        let namespace = meta.namespace.clone()?;
        let spec = pod.spec.as_ref();
        let spec_image = |name: &str| -> Option<String> {
            let spec = spec?;
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == name)
                .and_then(|c| c.image.clone())
                .or_else(|| {
                    spec.ephemeral_containers
                        .iter()
                        .flatten()
                        .find(|c| c.name == name)
                        .and_then(|c| c.image.clone())
                })
        };
        let mut containers: Vec<ContainerInfo> = Vec::new();
        if let Some(status) = &pod.status {
            let statuses = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .chain(status.ephemeral_container_statuses.iter().flatten());
            for s in statuses {
                let id = s
                    .container_id
                    .as_deref()
                    .map(strip_scheme)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned);
                let image =
                    spec_image(&s.name).or_else(|| Some(s.image.clone()).filter(|i| !i.is_empty()));
                containers.push(ContainerInfo {
                    name: s.name.clone(),
                    id,
                    image,
                });
            }
        }
        // Containers without a status yet are known by name and image only.
        if let Some(spec) = spec {
            let names = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .map(|c| (&c.name, &c.image))
                .chain(
                    spec.ephemeral_containers
                        .iter()
                        .flatten()
                        .map(|c| (&c.name, &c.image)),
                );
            for (name, image) in names {
                if !containers.iter().any(|c| &c.name == name) {
                    containers.push(ContainerInfo {
                        name: name.clone(),
                        id: None,
                        image: image.clone(),
                    });
                }
            }
        }
        Some(Self {
            uid,
            namespace,
            name,
            labels: meta.labels.clone().unwrap_or_default(),
            workload: direct_workload(pod),
            containers,
        })
    }

    /// The container with this runtime id.
    #[must_use]
    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.id.as_deref() == Some(id))
    }
}

/// `containerd://abc` -> `abc`.
fn strip_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// The pod's controller as its owner reference names it, with a `ReplicaSet` made by a
/// Deployment resolved by the naming convention (`<deployment>-<pod-template-hash>`, the hash
/// being the pod's `pod-template-hash` label). Jobs are resolved to their `CronJob` by a lookup.
#[must_use]
pub fn direct_workload(pod: &Pod) -> Option<Workload> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get("pod-template-hash")
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return Some(Workload {
            kind: "Deployment".into(),
            name: deployment.to_owned(),
        });
    }
    Some(Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

/// A lookup hit: the pod and, if matched, its container.
#[derive(Debug, Clone)]
pub struct PodMatch {
    pub pod: Arc<PodInfo>,
    pub container: Option<usize>,
    /// The pod was deleted; this is its tombstone.
    pub deleted: bool,
    pub namespace_labels: Option<Arc<BTreeMap<String, String>>>,
}

impl PodMatch {
    #[must_use]
    pub fn container(&self) -> Option<&ContainerInfo> {
        self.container.and_then(|i| self.pod.containers.get(i))
    }

    /// The attribution for an event whose cgroup named `container_id`.
    #[must_use]
    pub fn to_meta(&self, container_id: Option<&str>) -> K8sMeta {
        let container = self.container();
        K8sMeta {
            namespace: Some(self.pod.namespace.clone()),
            pod: Some(self.pod.name.clone()),
            container: container.map(|c| c.name.clone()),
            pod_uid: Some(self.pod.uid.clone()),
            container_id: container
                .and_then(|c| c.id.clone())
                .or_else(|| container_id.map(str::to_owned)),
            image: container.and_then(|c| c.image.clone()),
            labels: self.pod.labels.clone(),
            namespace_labels: self
                .namespace_labels
                .as_deref()
                .cloned()
                .unwrap_or_default(),
            workload: self.pod.workload.clone(),
            resolved: true,
        }
    }
}

/// Counters of the cache and its watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCacheStats {
    pub pods: usize,
    pub tombstones: usize,
    pub namespaces: usize,
    /// Completed (re)lists of pods: 1 after the first sync, +1 per relist (after 410 Gone...).
    pub lists: u64,
    /// Watch errors answered with 410 Gone.
    pub gone: u64,
    /// Other watch or list errors (the API server away, ...).
    pub errors: u64,
}

#[derive(Debug, Clone)]
pub struct PodCacheConfig {
    pub node: String,
    pub max_tombstones: usize,
    pub tombstone_ttl: Duration,
}

impl PodCacheConfig {
    pub fn new(node: impl Into<String>) -> Result<Self> {
        let node = node.into();
        if node.trim().is_empty() {
            return Err(Error::NoNode);
        }
        Ok(Self {
            node,
            max_tombstones: DEFAULT_TOMBSTONES,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
        })
    }
}

/// The pods of this node; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PodCache {
    config: Arc<PodCacheConfig>,
    state: Arc<RwLock<State>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Bumped on every change a lookup could see.
    generation: AtomicU64,
    /// The generation, for those who wait for changes ([`PodCache::changes`]).
    changes: tokio::sync::watch::Sender<u64>,
    lists: AtomicU64,
    gone: AtomicU64,
    errors: AtomicU64,
    synced: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<String, Arc<PodInfo>>,
    tombstones: HashMap<String, Arc<PodInfo>>,
    /// Deletion order: (when, uid), oldest first.
    deleted: VecDeque<(Instant, String)>,
    /// A relist in progress: the pods listed so far.
    relisting: Option<HashMap<String, Arc<PodInfo>>>,
    namespaces: HashMap<String, Arc<BTreeMap<String, String>>>,
}

impl PodCache {
    #[must_use]
    pub fn new(config: PodCacheConfig) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::default(),
            counters: Arc::default(),
        }
    }

    #[must_use]
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The pod with this UID (live, or a tombstone), and the container with this runtime id.
    #[must_use]
    pub fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMatch> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let (pod, deleted) = match state.live.get(pod_uid) {
            Some(pod) => (pod, false),
            None => (state.tombstones.get(pod_uid)?, true),
        };
        let container = container_id.and_then(|id| {
            pod.containers
                .iter()
                .position(|c| c.id.as_deref() == Some(id))
        });
        Some(PodMatch {
            pod: Arc::clone(pod),
            container,
            deleted,
            namespace_labels: state.namespaces.get(&pod.namespace).cloned(),
        })
    }

    /// Whether the first list has completed.
    #[must_use]
    pub fn synced(&self) -> bool {
        self.counters.synced.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn stats(&self) -> PodCacheStats {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        PodCacheStats {
            pods: state.live.len(),
            tombstones: state.tombstones.len(),
            namespaces: state.namespaces.len(),
            lists: self.counters.lists.load(Ordering::Relaxed),
            gone: self.counters.gone.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }

    /// Add or replace a pod.
    pub fn apply(&self, pod: PodInfo) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(relist) = state.relisting.as_mut() {
            relist.insert(pod.uid.clone(), Arc::new(pod));
        } else if state.live.get(&pod.uid).is_none_or(|old| **old != pod) {
            // (Status heartbeats that change nothing kept here leave the generation alone.)
            state.tombstones.remove(&pod.uid);
            state.live.insert(pod.uid.clone(), Arc::new(pod));
            self.changed();
        }
    }

    /// A number that changes whenever what a lookup can return changes.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.counters.generation.load(Ordering::Acquire)
    }

    /// Wakes on every change a lookup could see (and on the first completed list); changes
    /// made while the receiver was busy are seen together, never lost.
    #[must_use]
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.counters.changes.subscribe()
    }

    fn changed(&self) {
        let generation = self.counters.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.counters.changes.send_replace(generation);
    }

    /// A pod is gone: keep it as a tombstone.
    pub fn delete(&self, pod: PodInfo) {
        let now = Instant::now();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let pod = state.live.remove(&pod.uid).unwrap_or_else(|| Arc::new(pod));
        self.bury(&mut state, pod, now);
        self.changed();
    }

    fn bury(&self, state: &mut State, pod: Arc<PodInfo>, now: Instant) {
        state.deleted.push_back((now, pod.uid.clone()));
        state.tombstones.insert(pod.uid.clone(), pod);
        self.prune(state, now);
    }

    fn prune(&self, state: &mut State, now: Instant) {
        while let Some((at, uid)) = state.deleted.front() {
            let expired = now.duration_since(*at) > self.config.tombstone_ttl;
            if !expired && state.tombstones.len() <= self.config.max_tombstones {
                break;
            }
            let uid = uid.clone();
            state.deleted.pop_front();
            // A uid buried twice: only its newest burial removes it.
            if !state.deleted.iter().any(|(_, u)| *u == uid) {
                state.tombstones.remove(&uid);
                self.changed();
            }
        }
    }

    /// Drop tombstones older than the TTL.
    pub fn prune_tombstones(&self) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut state, Instant::now());
    }

    fn start_list(&self) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .relisting = Some(HashMap::new());
    }

    /// A list completed: it replaces the live pods; pods gone from it become tombstones.
    fn finish_list(&self) {
        let now = Instant::now();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let Some(listed) = state.relisting.take() else {
            return;
        };
        let old = std::mem::replace(&mut state.live, listed);
        for (uid, pod) in old {
            if !state.live.contains_key(&uid) {
                self.bury(&mut state, pod, now);
            }
        }
        let live: Vec<String> = state.live.keys().cloned().collect();
        for uid in live {
            state.tombstones.remove(&uid);
        }
        drop(state);
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        // Synced before the change is announced: who wakes on it sees the cache complete.
        self.counters.synced.store(true, Ordering::Release);
        self.changed();
    }

    fn set_namespace(&self, name: String, labels: Option<BTreeMap<String, String>>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match labels {
            Some(labels) => state.namespaces.insert(name, Arc::new(labels)),
            None => state.namespaces.remove(&name),
        };
        self.changed();
    }

    fn count_error(&self, error: &watcher::Error) {
        let gone = matches!(error, watcher::Error::WatchError(status) if status.code == 410);
        if gone {
            self.counters.gone.fetch_add(1, Ordering::Relaxed);
            tracing::info!("pod watch answered 410 Gone; relisting");
        } else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "pod watch error; retrying with backoff");
        }
    }

    /// Start watching pods on this node and all namespaces; stops when the handle is dropped.
    /// Must run inside a tokio runtime.
    #[must_use]
    pub fn watch(&self, client: Client) -> Reflector {
        let pods = tokio::spawn(self.clone().watch_pods(client.clone()).in_current_span());
        let namespaces = tokio::spawn(self.clone().watch_namespaces(client).in_current_span());
        Reflector {
            tasks: vec![pods, namespaces],
        }
    }

    async fn watch_pods(self, client: Client) {
        let pods: Api<Pod> = Api::all(client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node));
        let mut owners = OwnerResolver::new(client);
        let mut stream = watcher(pods, config)
            .backoff(watch_backoff::WatchBackoff::default())
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => self.start_list(),
                Ok(watcher::Event::InitDone) => self.finish_list(),
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    if let Some(info) = owners.resolve(&pod).await {
                        self.apply(info);
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(info) = PodInfo::from_pod(&pod) {
                        self.delete(info);
                    }
                }
                Err(error) => self.count_error(&error),
            }
        }
    }

    async fn watch_namespaces(self, client: Client) {
        let namespaces: Api<Namespace> = Api::all(client);
        let stream = watcher(namespaces, watcher::Config::default())
            .backoff(watch_backoff::WatchBackoff::default());
        let _ = stream
            .try_for_each(|event| {
                match event {
                    watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                        let labels = ns.metadata.labels.clone().unwrap_or_default();
                        self.set_namespace(ns.name_any(), Some(labels));
                    }
                    watcher::Event::Delete(ns) => self.set_namespace(ns.name_any(), None),
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                futures_util::future::ready(Ok(()))
            })
            .await;
    }
}

/// Resolves Job owners to their `CronJob` with a lookup (cached per Job).
struct OwnerResolver {
    client: Client,
    jobs: HashMap<(String, String), Option<Workload>>,
}

impl OwnerResolver {
    fn new(client: Client) -> Self {
        Self {
            client,
            jobs: HashMap::new(),
        }
    }

    async fn resolve(&mut self, pod: &Pod) -> Option<PodInfo> {
        let mut info = PodInfo::from_pod(pod)?;
        if let Some(Workload { kind, name }) = &info.workload
            && kind == "Job"
        {
            let key = (info.namespace.clone(), name.clone());
            if !self.jobs.contains_key(&key) {
                let jobs: Api<Job> = Api::namespaced(self.client.clone(), &info.namespace);
                match jobs.get_opt(name).await {
                    Ok(job) => {
                        let owner = job
                            .and_then(|job| {
                                job.metadata
                                    .owner_references?
                                    .into_iter()
                                    .find(|o| o.kind == "CronJob")
                            })
                            .map(|o| Workload {
                                kind: o.kind,
                                name: o.name,
                            });
                        if self.jobs.len() >= 4096 {
                            self.jobs.clear();
                        }
                        self.jobs.insert(key.clone(), owner);
                    }
                    // Not cached: the next update of the pod asks again.
                    Err(error) => tracing::debug!(%error, job = %name, "looking up a pod's Job"),
                }
            }
            if let Some(Some(cronjob)) = self.jobs.get(&key) {
                info.workload = Some(cronjob.clone());
            }
        }
        Some(info)
    }
}

/// The watch tasks; dropping it stops them.
#[derive(Debug)]
pub struct Reflector {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

mod watch_backoff;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod apiserver_tests;
