//! The agent's attribution stage, as the `agent` and `run` commands wire it: a [`CgroupIndex`]
//! kept current by inotify, the [`PodCache`] of this node when a Kubernetes client is configured,
//! and the [`Enricher`] between them. Events go in as captured and come out carrying their
//! [`Attribution`](mapsentry_policy::Attribution), at once or after the bounded hold; the caller
//! wakes at [`Attributor::next_deadline`] so that no event is held past the bound.
//!
//! `mapsentry_enrichment_missing_total` is read with [`MissingCounter::get`] (any thread).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use mapsentry_policy::MmapEvent;

use super::{
    cgroup_index::{self, CgroupIndex, Watcher},
    enrich::{EnrichConfig, EnrichStats, Enricher},
    pods::{self, PodCache, PodCacheConfig, Reflector},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot index the cgroup hierarchy: {source}")]
    Cgroups {
        #[source]
        source: cgroup_index::Error,
    },
    #[error("cannot watch this node's pods: {source}")]
    Pods {
        #[source]
        source: pods::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where pod metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kubernetes {
    /// No API server: pod processes are attributed by pod UID and container id only, unresolved.
    Off,
    /// The standard resolution: in-cluster service account, else `KUBECONFIG`, else
    /// `~/.kube/config`.
    Default { node: String },
    /// This kubeconfig file (its current context).
    Kubeconfig { path: PathBuf, node: String },
}

impl Kubernetes {
    /// What the flags and the environment ask for: `--kubeconfig` if given; else the standard
    /// resolution when running in a pod (`KUBERNETES_SERVICE_HOST`) or with `KUBECONFIG` set;
    /// else off. The node is `--node`, else `NODE_NAME`; required when Kubernetes is on.
    pub fn from_flags(kubeconfig: Option<PathBuf>, node: Option<&str>) -> Result<Self> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let env_kubeconfig = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
        let node = || pods::node_name(node).map_err(|source| Error::Pods { source });
        Ok(match kubeconfig {
            Some(path) => Self::Kubeconfig {
                path,
                node: node()?,
            },
            None if in_cluster || env_kubeconfig => Self::Default { node: node()? },
            None => Self::Off,
        })
    }
}

/// `mapsentry_enrichment_missing_total`: events emitted without their pod (or cgroup); and
/// `mapsentry_enrichment_container_unknown_total`: events emitted with their pod but without
/// their container.
#[derive(Debug, Clone, Default)]
pub struct MissingCounter(Arc<[AtomicU64; 2]>);

impl MissingCounter {
    /// Events emitted without their pod (or cgroup).
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }

    /// Events emitted with their pod but without their container.
    #[must_use]
    pub fn container_unknown(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }
}

/// The attribution stage; its watches stop when it is dropped. Must run inside a tokio runtime.
#[derive(Debug)]
pub struct Attributor {
    enricher: Enricher,
    pods: Option<PodCache>,
    missing: MissingCounter,
    ready: Vec<(MmapEvent, Arc<mapsentry_policy::Attribution>)>,
    _cgroup_watch: Watcher,
    _reflector: Option<Reflector>,
}

impl Attributor {
    /// Index the host's cgroup hierarchy and, with Kubernetes, start watching this node's pods.
    pub async fn start(kubernetes: &Kubernetes, config: EnrichConfig) -> Result<Self> {
        let cgroups = CgroupIndex::open_default().map_err(|source| Error::Cgroups { source })?;
        Self::with_index(cgroups, kubernetes, config).await
    }

    /// As [`Attributor::start`], on this cgroup index.
    pub async fn with_index(
        cgroups: CgroupIndex,
        kubernetes: &Kubernetes,
        config: EnrichConfig,
    ) -> Result<Self> {
        let watcher = cgroups
            .watch()
            .map_err(|source| Error::Cgroups { source })?;
        let pods_error = |source| Error::Pods { source };
        let (pods, reflector) = match kubernetes {
            Kubernetes::Off => (None, None),
            Kubernetes::Default { node } | Kubernetes::Kubeconfig { node, .. } => {
                let client = match kubernetes {
                    Kubernetes::Kubeconfig { path, .. } => pods::client_from_kubeconfig(path).await,
                    _ => pods::default_client().await,
                }
                .map_err(pods_error)?;
                let cache = PodCache::new(PodCacheConfig::new(node.clone()).map_err(pods_error)?);
                let reflector = cache.watch(client);
                (Some(cache), Some(reflector))
            }
        };
        Ok(Self::assemble(cgroups, watcher, pods, reflector, config))
    }

    /// As [`Attributor::with_index`], with a pod cache the caller keeps current instead of a
    /// watch of the API server (`None`: as [`Kubernetes::Off`]). For benchmarks and tests that
    /// apply pods themselves; the per-event path is the agent's.
    pub fn with_pod_cache(
        cgroups: CgroupIndex,
        pods: Option<PodCache>,
        config: EnrichConfig,
    ) -> Result<Self> {
        let watcher = cgroups
            .watch()
            .map_err(|source| Error::Cgroups { source })?;
        Ok(Self::assemble(cgroups, watcher, pods, None, config))
    }

    fn assemble(
        cgroups: CgroupIndex,
        watcher: Watcher,
        pods: Option<PodCache>,
        reflector: Option<Reflector>,
        config: EnrichConfig,
    ) -> Self {
        Self {
            enricher: Enricher::new(cgroups, pods.clone(), config),
            pods,
            missing: MissingCounter::default(),
            ready: Vec::new(),
            _cgroup_watch: watcher,
            _reflector: reflector,
        }
    }

    /// The pod cache, when Kubernetes is on.
    #[must_use]
    pub fn pods(&self) -> Option<&PodCache> {
        self.pods.as_ref()
    }

    /// Attribute the captured `batch` in place: afterwards it holds the events ready now (this
    /// batch's and earlier held ones, each with its attribution); the others are held.
    pub fn attribute(&mut self, batch: &mut Vec<MmapEvent>, now: Instant) {
        // While nothing is held, the events whose attribution is given at once are attributed
        // where they are instead of being moved through the queue of ready events (each is
        // ~300 bytes); from the first that is not, the rest go through the enricher in order.
        let mut known = 0;
        if !self.enricher.holds() {
            for event in batch.iter_mut() {
                let Some(attribution) = self.enricher.attribution_now(event.cgroup_id) else {
                    break;
                };
                event.attribution = Some(attribution);
                known += 1;
            }
        }
        for event in batch.drain(known..) {
            self.enricher.push(event, now, &mut self.ready);
        }
        self.enricher.poll(now, &mut self.ready);
        self.take_ready(batch);
    }

    /// Emit into `out` the held events now resolved or past the bound.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<MmapEvent>) {
        self.enricher.poll(now, &mut self.ready);
        self.take_ready(out);
    }

    /// Emit every held event as it stands (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<MmapEvent>) {
        self.enricher.flush(&mut self.ready);
        self.take_ready(out);
    }

    /// When the oldest held event must be emitted, if any is held.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.enricher.next_deadline()
    }

    #[must_use]
    pub fn stats(&self) -> EnrichStats {
        self.enricher.stats()
    }

    /// A handle on `mapsentry_enrichment_missing_total`, readable from any thread.
    #[must_use]
    pub fn missing_counter(&self) -> MissingCounter {
        self.missing.clone()
    }

    fn take_ready(&mut self, out: &mut Vec<MmapEvent>) {
        out.extend(self.ready.drain(..).map(|(mut event, attribution)| {
            event.attribution = Some(attribution);
            event
        }));
        let stats = self.enricher.stats();
        self.missing.0[0].store(stats.missing, Ordering::Relaxed);
        self.missing.0[1].store(stats.container_unknown, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
