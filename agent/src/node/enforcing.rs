//! Enforcement in `agent` and `run`: the enforce-mode policy set in force (pushed by the
//! collector, persisted under the state directory, or loaded from `--policy` files), resolved to
//! cgroups and written to the kernel's rule table; re-resolved every second as cgroups (pods)
//! come and go. Pod cgroups resolve through the agent's pod cache (namespace, pod labels,
//! namespace labels, container, image) when Kubernetes is configured; without it, or while a
//! pod is not known, they fail closed: every rule that could apply to a pod (counted as
//! unresolved). Every change of the pod cache (a pod added, changed or gone, the first list
//! completed) re-resolves at once, so a pod is judged by its own policies as soon as the agent
//! knows it; until the first list has been resolved the agent is not ready. `--enforce-under
//! CGROUP` confines all of it to one subtree of the hierarchy.

use std::{path::PathBuf, time::Duration};

use crate::{
    Capture,
    enforce::policies::{self, CgroupScope, EnforceStats, Enforcer, pod_context, scan_cgroups},
    metadata::{PodCache, cgroup_index::find_cgroup2_root},
};
use mapsentry_proto::v1;
use tokio::{sync::watch, time::MissedTickBehavior};

/// How often the cgroups are scanned for new and vanished ones.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// What woke the enforcement loop.
#[derive(Debug)]
pub enum Work {
    /// The collector pushed a set.
    Set(v1::PolicySet),
    /// Time to re-resolve scopes.
    Rescan,
    /// The pod cache changed: re-resolve scopes now.
    PodsChanged,
}

#[derive(Debug)]
pub struct Enforcing {
    enforcer: Enforcer,
    sets: Option<watch::Receiver<Option<v1::PolicySet>>>,
    cgroup_root: Option<PathBuf>,
    /// The subtree enforced (`--enforce-under`), relative to the hierarchy; empty: all of it.
    under: PathBuf,
    pods: Option<PodCache>,
    /// Wakes on every change of `pods`.
    pod_changes: Option<watch::Receiver<u64>>,
    /// Whether the last resolution ran before the pod cache's first list (pods held closed).
    awaiting_pods: bool,
    rescan: tokio::time::Interval,
    reported: EnforceStats,
}

impl Enforcing {
    /// Enforce what `enforcer` holds, and the sets arriving on `sets`.
    #[must_use]
    pub fn new(enforcer: Enforcer, sets: Option<watch::Receiver<Option<v1::PolicySet>>>) -> Self {
        let cgroup_root = find_cgroup2_root()
            .inspect_err(|error| {
                tracing::error!(%error, "no cgroup v2 hierarchy: enforce-mode policies cannot be resolved to cgroups");
            })
            .ok();
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            enforcer,
            sets,
            cgroup_root,
            under: PathBuf::new(),
            pods: None,
            pod_changes: None,
            awaiting_pods: false,
            rescan,
            reported: EnforceStats::default(),
        }
    }

    /// Resolve pod cgroups through `pods` (the agent's pod cache; `None`: no Kubernetes).
    #[must_use]
    pub fn with_pods(mut self, pods: Option<PodCache>) -> Self {
        self.pod_changes = pods.as_ref().map(PodCache::changes);
        self.pods = pods;
        self
    }

    /// Enforce only in the cgroups under `under` (a cgroup path such as `/kubepods.slice`; `None`
    /// or `/`: every cgroup).
    #[must_use]
    pub fn under(mut self, under: Option<&str>) -> Self {
        self.under = PathBuf::from(under.unwrap_or("/").trim_start_matches('/'));
        self
    }

    /// Wait for the next thing to do.
    pub async fn next(&mut self) -> Work {
        let Self {
            sets,
            pod_changes,
            rescan,
            ..
        } = self;
        let set = async {
            match sets {
                Some(sets) => loop {
                    if sets.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    if let Some(set) = sets.borrow_and_update().clone() {
                        return set;
                    }
                },
                None => std::future::pending().await,
            }
        };
        let pods_changed = async {
            let alive = match pod_changes {
                Some(changes) => changes.changed().await.is_ok(),
                None => false,
            };
            if !alive {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            set = set => Work::Set(set),
            () = pods_changed => Work::PodsChanged,
            _ = rescan.tick() => Work::Rescan,
        }
    }

    pub fn handle(&mut self, work: Work, capture: &mut Capture) {
        if let Work::Set(set) = work
            && let Err(error) = self.enforcer.set_policies(set.version, set.policies_json)
        {
            tracing::error!(%error, in_force = self.enforcer.version(),
                "policy set refused; the previous set stays in force");
        }
        self.apply(capture);
    }

    /// Resolve the set in force against the cgroups now present and write the kernel's table.
    pub fn apply(&mut self, capture: &mut Capture) {
        let Some(root) = &self.cgroup_root else {
            return;
        };
        let pods = self.pods.as_ref();
        // Read before the scan: a list completing during it is resolved by the next change.
        self.awaiting_pods = pods.is_some_and(|p| !p.synced());
        let cgroups: Vec<(u64, CgroupScope)> =
            scan_cgroups(root, &root.join(&self.under), &|owner| {
                pods.and_then(|p| pod_context(p, owner))
            });
        self.enforcer.apply(capture.rules(), &cgroups);
        let stats = self.stats();
        if stats != self.reported {
            tracing::info!(
                version = stats.version,
                kernel_rules = stats.kernel_rules,
                refused = stats.refused,
                deny_fell_back = stats.deny_fell_back,
                cgroups = stats.cgroups,
                unresolved = stats.unresolved,
                write_errors = stats.write_errors,
                awaiting_pods = stats.awaiting_pods,
                "enforcement"
            );
            self.reported = stats;
        }
    }

    #[must_use]
    pub fn stats(&self) -> EnforceStats {
        EnforceStats {
            awaiting_pods: self.awaiting_pods,
            ..self.enforcer.stats()
        }
    }

    /// What the collector hears of this node's enforcement (the agent stream's report).
    #[must_use]
    pub fn report(&self) -> v1::EnforcementReport {
        let stats = self.enforcer.stats();
        v1::EnforcementReport {
            policy_set_version: stats.version,
            persist_error: stats.persist_error.unwrap_or_default(),
            refused: self
                .enforcer
                .refused()
                .iter()
                .map(v1::RefusedRule::from)
                .collect(),
        }
    }
}

/// The next work of `enforcing`, or never without one.
pub async fn next_work(enforcing: Option<&mut Enforcing>) -> Work {
    match enforcing {
        Some(enforcing) => enforcing.next().await,
        None => std::future::pending().await,
    }
}

/// `mapsentry run --policy PATH...`: the enforce-mode policies of the files, as the embedded
/// collector publishes them on `sets` (again after every change of the files), enforced on this
/// host through the agent's path (nothing persisted). Pod cgroups resolve through `pods` (with
/// `--kubeconfig`).
pub fn local(
    mut sets: watch::Receiver<Option<v1::PolicySet>>,
    capture: &mut Capture,
    pods: Option<PodCache>,
    under: Option<&str>,
) -> policies::Result<Enforcing> {
    let mut enforcer = Enforcer::new(None, capture.attached().deny_unavailable.as_deref());
    if let Some(set) = sets.borrow_and_update().clone() {
        enforcer.set_policies(set.version, set.policies_json)?;
    }
    for refusal in enforcer.refused() {
        mapsentry_service::status!(
            "policy {} rule {}: not enforced in the kernel: {}",
            refusal.policy,
            refusal.rule,
            refusal.reason
        );
    }
    let mut enforcing = Enforcing::new(enforcer, Some(sets))
        .with_pods(pods)
        .under(under);
    enforcing.apply(capture);
    let stats = enforcing.stats();
    mapsentry_service::status!(
        "enforcing {} kernel rule(s) on {} cgroup(s), {} refused",
        stats.kernel_rules,
        stats.cgroups,
        stats.refused
    );
    Ok(enforcing)
}
