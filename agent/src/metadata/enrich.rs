//! Attach an [`Attribution`] to each event: cgroup id -> cgroup path -> pod UID and container id
//! -> pod. An event whose pod is not known yet (a pod the API server has not published to this
//! node's watch, a watch catching up) is held, bounded in count and time ([`EnrichConfig`],
//! 10 s by default), and retried as metadata arrives; one whose pod never comes is emitted
//! unresolved and counted (`mapsentry_enrichment_missing_total`). Once the pod is known, its
//! events get the pod at once, or after a short wait for the container: the kubelet reports a
//! container's runtime id (init and ephemeral containers too) a moment after it starts, so an
//! event of a container not yet in the pod's status waits at most `container_hold_for` and is
//! then emitted with the pod and without the container (counted in
//! `mapsentry_enrichment_container_unknown_total`). No event waits longer than its bound.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use mapsentry_policy::{Attribution, K8sMeta, MmapEvent};

use super::{cgroup_index::CgroupIndex, cgroup_path::CgroupOwner, pods::PodCache};

/// Default longest hold of an event whose pod is not known.
pub const DEFAULT_HOLD_FOR: Duration = Duration::from_secs(10);
/// Default longest hold of an event whose pod is known but not its container.
pub const DEFAULT_CONTAINER_HOLD_FOR: Duration = Duration::from_secs(1);
/// Default most events held at once.
pub const DEFAULT_HOLD_MAX: usize = 16_384;
/// How often held events are retried while nothing else wakes the loop: a pod that arrives on a
/// quiet node attributes its held events within this.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct EnrichConfig {
    /// Longest time an event whose pod is not known is held.
    pub hold_for: Duration,
    /// Longest time an event whose pod is known, but not its container, is held (never longer
    /// than `hold_for`).
    pub container_hold_for: Duration,
    /// Most events held at once; past it the oldest is emitted as it stands.
    pub hold_max: usize,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            hold_for: DEFAULT_HOLD_FOR,
            container_hold_for: DEFAULT_CONTAINER_HOLD_FOR,
            hold_max: DEFAULT_HOLD_MAX,
        }
    }
}

/// Counters of the enricher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Events held right now.
    pub held: usize,
    /// Events that were held at some point.
    pub held_total: u64,
    /// Events emitted with their pod (or cgroup) unresolved: `mapsentry_enrichment_missing_total`.
    pub missing: u64,
    /// Events emitted with their pod but without their container (not in the pod's status
    /// within the container hold): `mapsentry_enrichment_container_unknown_total`.
    pub container_unknown: u64,
    /// Held events emitted early because the hold was full.
    pub evicted: u64,
}

/// An event and what it is attributed to (shared: every event of a container gets the same one).
pub type Enriched = (MmapEvent, Arc<Attribution>);

/// Most cgroups whose attribution is remembered; past it the memo starts over.
const MEMO_MAX: usize = 65_536;

#[derive(Debug)]
pub struct Enricher {
    cgroups: CgroupIndex,
    /// `None` outside Kubernetes: pod cgroups are then reported by UID only, unresolved.
    pods: Option<PodCache>,
    config: EnrichConfig,
    held: VecDeque<(Instant, MmapEvent)>,
    /// When the held events were last retried.
    polled: Option<Instant>,
    stats: EnrichStats,
    /// cgroup id -> complete attribution, valid while the pod cache's generation is the one
    /// stored. (cgroup ids are 64-bit kernfs ids, not reused, so a path never changes under one.)
    memo: HashMap<u64, (u64, Arc<Attribution>)>,
}

/// What one attempt to attribute gave.
enum Outcome {
    Done(Attribution),
    /// The pod is known, its container not yet: the pod-level attribution to emit when the
    /// container hold runs out.
    PodOnly(Attribution),
    /// Not complete yet; what to emit if it stays so.
    Wait(Attribution),
}

impl Enricher {
    #[must_use]
    pub fn new(cgroups: CgroupIndex, pods: Option<PodCache>, config: EnrichConfig) -> Self {
        Self {
            cgroups,
            pods,
            config,
            held: VecDeque::new(),
            polled: None,
            stats: EnrichStats::default(),
            memo: HashMap::new(),
        }
    }

    /// The complete attribution of this cgroup, if there is one now. The per-event path: a memo
    /// hit is one hash lookup and a reference count.
    pub fn attribution(&mut self, cgroup_id: u64) -> Option<Arc<Attribution>> {
        let generation = self.pods.as_ref().map_or(0, PodCache::generation);
        if let Some((at, attribution)) = self.memo.get(&cgroup_id)
            && *at == generation
        {
            return Some(Arc::clone(attribution));
        }
        match self.attribute(cgroup_id, false) {
            Outcome::Done(attribution) => {
                let attribution = Arc::new(attribution);
                if self.memo.len() >= MEMO_MAX {
                    self.memo.clear();
                }
                self.memo
                    .insert(cgroup_id, (generation, Arc::clone(&attribution)));
                Some(attribution)
            }
            Outcome::PodOnly(_) | Outcome::Wait(_) => None,
        }
    }

    /// The attribution of an event of `cgroup_id` when it is given at once, counted as
    /// [`Enricher::push`] counts it; `None` when the event would be held or attributed at its
    /// bound.
    pub fn attribution_now(&mut self, cgroup_id: u64) -> Option<Arc<Attribution>> {
        let attribution = self.attribution(cgroup_id)?;
        // Complete as far as it can be (outside Kubernetes a pod cgroup stays unresolved).
        if !attribution.resolved() {
            self.stats.missing += 1;
        }
        Some(attribution)
    }

    /// Whether events are held for their metadata.
    #[must_use]
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Attribute `event`: pushes it to `out` now, or holds it.
    pub fn push(&mut self, event: MmapEvent, now: Instant, out: &mut Vec<Enriched>) {
        match self.attribution_now(event.cgroup_id) {
            Some(attribution) => out.push((event, attribution)),
            None if self.config.hold_for.is_zero() || self.config.hold_max == 0 => {
                let attribution = self.attribute_final(&event);
                out.push((event, attribution));
            }
            None => {
                if self.held.len() >= self.config.hold_max
                    && let Some((_, oldest)) = self.held.pop_front()
                {
                    self.stats.evicted += 1;
                    let attribution = self.attribute_final(&oldest);
                    out.push((oldest, attribution));
                }
                if self.config.container_hold_for.is_zero()
                    && let Outcome::PodOnly(pod) = self.attribute(event.cgroup_id, false)
                {
                    self.stats.container_unknown += 1;
                    out.push((event, Arc::new(pod)));
                } else {
                    self.stats.held_total += 1;
                    self.held.push_back((now, event));
                }
            }
        }
        self.stats.held = self.held.len();
    }

    /// Retry the held events: emit those now resolved, those whose pod is known and whose
    /// container hold ran out (with the pod), and those held past the bound.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Enriched>) {
        self.polled = Some(now);
        let mut keep = VecDeque::with_capacity(self.held.len());
        while let Some((since, event)) = self.held.pop_front() {
            let waited = now.duration_since(since);
            if waited >= self.config.hold_for {
                let attribution = self.attribute_final(&event);
                out.push((event, attribution));
                continue;
            }
            if let Some(attribution) = self.attribution(event.cgroup_id) {
                out.push((event, attribution));
                continue;
            }
            match self.attribute(event.cgroup_id, false) {
                Outcome::PodOnly(pod) if waited >= self.config.container_hold_for => {
                    self.stats.container_unknown += 1;
                    out.push((event, Arc::new(pod)));
                }
                _ => keep.push_back((since, event)),
            }
        }
        self.held = keep;
        self.stats.held = self.held.len();
    }

    /// Emit every held event as it stands (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<Enriched>) {
        while let Some((_, event)) = self.held.pop_front() {
            let attribution = self.attribute_final(&event);
            out.push((event, attribution));
        }
        self.stats.held = 0;
    }

    /// When the held events must be looked at again, if any is held: the oldest one's bound, or
    /// a retry (every [`RETRY_INTERVAL`]: a pod, or a container's id, may have arrived; the
    /// container hold is checked then too).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let (since, _) = self.held.front()?;
        let bound = *since + self.config.hold_for;
        let retry = self.polled.map_or(*since, |at| at.max(*since)) + RETRY_INTERVAL;
        Some(bound.min(retry))
    }

    #[must_use]
    pub fn stats(&self) -> EnrichStats {
        self.stats
    }

    /// The attribution to emit now, whatever is missing; counts what is.
    fn attribute_final(&mut self, event: &MmapEvent) -> Arc<Attribution> {
        let attribution = match self.attribute(event.cgroup_id, true) {
            Outcome::Done(a) | Outcome::Wait(a) => a,
            Outcome::PodOnly(a) => {
                self.stats.container_unknown += 1;
                a
            }
        };
        if !attribution.resolved() {
            self.stats.missing += 1;
        }
        Arc::new(attribution)
    }

    fn attribute(&self, cgroup_id: u64, last_try: bool) -> Outcome {
        // The cgroup may be new and its inotify event not handled yet: a miss may rescan
        // (rate-limited) on the last try only. It may also be gone already (a container that
        // ran for milliseconds): the index remembers removed cgroups for a while.
        let cgroup = if last_try {
            self.cgroups.resolve(cgroup_id)
        } else {
            self.cgroups.get(cgroup_id)
        }
        .or_else(|| self.cgroups.recently_removed(cgroup_id));
        let Some(cgroup) = cgroup else {
            return Outcome::Wait(Attribution::Unknown { cgroup_id });
        };
        let (pod_uid, container_id) = match &cgroup.owner {
            CgroupOwner::Host { unit } => {
                return Outcome::Done(Attribution::Host {
                    cgroup: cgroup.path.clone(),
                    unit: unit.clone(),
                });
            }
            CgroupOwner::Pod {
                pod_uid, container, ..
            } => (pod_uid, container.as_ref().map(|c| c.id.as_str())),
        };
        let unresolved = || {
            Attribution::Pod(K8sMeta {
                pod_uid: Some(pod_uid.clone()),
                container_id: container_id.map(str::to_owned),
                ..K8sMeta::default()
            })
        };
        let Some(pods) = &self.pods else {
            return Outcome::Done(unresolved());
        };
        match pods.lookup(pod_uid, container_id) {
            // The kubelet reports a container's id a moment after it starts: wait for it.
            Some(hit) if hit.container.is_none() && container_id.is_some() => {
                Outcome::PodOnly(Attribution::Pod(hit.to_meta(container_id)))
            }
            Some(hit) => Outcome::Done(Attribution::Pod(hit.to_meta(container_id))),
            None => Outcome::Wait(unresolved()),
        }
    }
}

#[cfg(test)]
mod tests;
