//! Policy evaluation and alerts: every stored call is evaluated against the policies in force,
//! matches are aggregated per (pod, policy, rule) with a dedup window
//! ([`mapsentry_policy::Aggregator`]), counted in the metrics, and each alert update is published
//! to the subscribers that asked for alerts.
//!
//! This runs in its own task, fed by the hub's bounded evaluation queue after ingest has stored a
//! batch and released the hub: ingest never waits for evaluation (a full queue is counted as
//! `mapsentry_policy_evaluation_dropped_total`). Which policies apply to a caller (its
//! [`CallerScope`]) is computed once per cgroup and kept until the policy set changes.
//!
//! A call the node's kernel rules acted on (`enforced` set) raises its enforce-mode alerts with
//! the kernel's action (`kill` or `deny`).
//!
//! Alert updates are rate limited per pod (per node for host processes): at most
//! `per_pod_rate` a second. An update over the rate is deferred, not dropped: it waits (the
//! newest update of each alert, which carries the cumulative count) and is published at a later
//! flush tick when the pod has tokens again; deferrals and superseded updates are counted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use mapsentry_policy::{
    Action, Aggregator, AlertLine, CallerScope, EnforceAction, Match, Mode, PolicySet,
    alert::{DEFAULT_MAX_KEYS, DEFAULT_WINDOW_NS},
};
use mapsentry_policy::{eval_context, time::now_ns};
use mapsentry_proto::convert;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::{
    hub::{Hub, Record},
    metrics::{Metrics, ViolationLabels},
    rate_limit::PerKeyLimiter,
};

/// Settings of the evaluation task.
#[derive(Debug, Clone, Copy)]
pub struct AlertConfig {
    /// Dedup window: matches of one (pod, policy, rule) within it after a report only count.
    pub window: Duration,
    /// Most (pod, policy, rule) keys aggregated at once.
    pub max_keys: usize,
    /// Batches queued for evaluation.
    pub queue_batches: usize,
    /// How often keys whose window is over are reported.
    pub flush_interval: Duration,
    /// Most cached caller scopes (cleared when full).
    pub max_scopes: usize,
    /// Alert updates published per pod per second (bursts of as many); 0: no limit.
    pub per_pod_rate: u32,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_nanos(DEFAULT_WINDOW_NS),
            max_keys: DEFAULT_MAX_KEYS,
            queue_batches: 1024,
            flush_interval: Duration::from_secs(1),
            max_scopes: 65_536,
            per_pod_rate: 10,
        }
    }
}

/// The policies in force, as published by a policy source; None means none.
pub type Policies = watch::Receiver<Option<Arc<PolicySet>>>;

/// Start evaluating everything `hub` stores from now on against `policies`, once `loaded`
/// resolves (the policies were read for the first time: calls stored meanwhile wait in the
/// bounded queue). The task ends when the hub closes, after reporting what the aggregation still
/// holds (alerts pending in the dedup window) to the subscribers, whose streams the hub keeps
/// open until then.
pub fn start(
    hub: &Arc<Hub>,
    policies: Policies,
    metrics: Arc<Metrics>,
    config: AlertConfig,
    loaded: impl Future<Output = usize> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
    hub.set_tap(tx);
    // The alerts flushed at shutdown must still reach the subscribers.
    let hold = hub.hold_subscribers();
    let evaluator = Evaluator {
        hub: Arc::clone(hub),
        metrics,
        aggregator: Aggregator::new(
            u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            config.max_keys,
        ),
        scopes: HashMap::new(),
        max_scopes: config.max_scopes.max(1),
        nodes: HashMap::new(),
        limiter: PerKeyLimiter::new(config.per_pod_rate, config.max_keys.max(1)),
        deferred: HashMap::new(),
    };
    tokio::spawn(
        async move {
            evaluator
                .run(rx, policies, config.flush_interval, loaded)
                .await;
            drop(hold);
        }
        .instrument(tracing::info_span!("alerts")),
    )
}

/// (namespace, pod, policy, rule) of an alert.
type AlertKey = (Option<String>, Option<String>, String, String);

struct Evaluator {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    aggregator: Aggregator,
    /// Caller scopes by cgroup id, for the current policy set.
    scopes: HashMap<u64, CallerScope>,
    max_scopes: usize,
    /// The node of each aggregated (pod, policy, rule), by the alert line's key fields.
    nodes: HashMap<AlertKey, Arc<str>>,
    /// Alert updates per (node, namespace, pod).
    limiter: PerKeyLimiter<PodKey>,
    /// The newest deferred update of each alert (and its node), waiting for its pod's tokens.
    deferred: HashMap<AlertKey, (Arc<str>, AlertLine)>,
}

/// (node, namespace, pod) that alert updates are rate limited by.
type PodKey = (String, Option<String>, Option<String>);

impl Evaluator {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<Arc<Record>>>,
        mut policies: Policies,
        flush_interval: Duration,
        loaded: impl Future<Output = usize>,
    ) {
        let mut closed = self.hub.closed_watch();
        tokio::select! {
            _ = loaded => {}
            _ = closed.wait_for(|c| *c) => {}
        }
        let mut flush = tokio::time::interval(flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut set = policies.borrow_and_update().clone();
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    self.evaluate_batch(set.as_deref(), &batch);
                }
                changed = policies.changed() => {
                    if changed.is_err() {
                        // The source is gone: keep the last set in force.
                        policies = watch::channel(set.clone()).1;
                        continue;
                    }
                    set.clone_from(&policies.borrow_and_update());
                    self.scopes.clear();
                    tracing::info!(policies = set.as_ref().map_or(0, |s| s.policies().len()), "policy set in force");
                }
                _ = flush.tick() => {
                    let now = now_ns();
                    self.publish_deferred(now);
                    for line in self.aggregator.flush(now) {
                        self.publish(line);
                    }
                }
                _ = closed.wait_for(|c| *c) => break,
            }
        }
        while let Ok(batch) = rx.try_recv() {
            self.evaluate_batch(set.as_deref(), &batch);
        }
        for line in self.aggregator.drain() {
            self.publish(line);
        }
        // Stopping: what is still deferred goes out now rather than never.
        for (_, (node, alert)) in self.deferred.drain() {
            self.hub.publish_alert(&node, alert);
        }
    }

    fn evaluate_batch(&mut self, set: Option<&PolicySet>, batch: &[Arc<Record>]) {
        // Without a policy, or for a caller no policy applies to (its scope known from an
        // earlier event of its cgroup), nothing can match: the record is not converted back
        // into an event at all.
        let Some(set) = set.filter(|set| !set.is_empty()) else {
            self.metrics.evaluated(batch.len() as u64);
            return;
        };
        let mut matches = Vec::new();
        for record in batch {
            if self
                .scopes
                .get(&record.event.cgroup_id)
                .is_some_and(CallerScope::is_empty)
            {
                self.metrics.evaluated(1);
                continue;
            }
            self.evaluate(set, record, &mut matches);
        }
    }

    fn evaluate<'a>(&mut self, set: &'a PolicySet, record: &Record, matches: &mut Vec<Match<'a>>) {
        let event = match convert::event_attributed(&record.event, record.attribution()) {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(cursor = record.cursor, %error, "record not evaluated");
                self.metrics.undecodable();
                return;
            }
        };
        self.metrics.evaluated(1);
        let ctx = eval_context(&event);
        if self.scopes.len() >= self.max_scopes {
            self.scopes.clear();
        }
        let scope = self
            .scopes
            .entry(event.cgroup_id)
            .or_insert_with(|| set.scope(&ctx));
        matches.clear();
        set.evaluate_scoped(scope, &event, &ctx, matches);
        let enforced = event.enforced.map(|e| match e.action {
            EnforceAction::Kill => Action::Kill,
            EnforceAction::Deny => Action::Deny,
        });
        for m in matches.drain(..) {
            let m = match (enforced, m.mode) {
                (Some(action), Mode::Enforce) => Match { action, ..m },
                _ => m,
            };
            let workload = ctx.workload.as_ref();
            self.metrics.violation(ViolationLabels {
                namespace: workload.map(|w| w.namespace.clone()).unwrap_or_default(),
                pod: workload.map(|w| w.pod.clone()).unwrap_or_default(),
                policy: m.policy.to_string(),
                rule: m.rule.to_owned(),
                action: m.action.as_str().to_owned(),
                mode: m.mode.as_str().to_owned(),
            });
            let key = (
                workload.map(|w| w.namespace.clone()),
                workload.map(|w| w.pod.clone()),
                m.policy.to_string(),
                m.rule.to_owned(),
            );
            self.nodes
                .entry(key)
                .or_insert_with(|| Arc::clone(&record.node));
            if let Some(line) = self.aggregator.record(&m, &event, &ctx) {
                self.publish(line);
            }
        }
        if self.nodes.len() > self.aggregator.len().saturating_mul(2) + 1024 {
            self.nodes.clear();
        }
    }

    fn publish(&mut self, line: AlertLine) {
        let key = (
            line.namespace.clone(),
            line.pod.clone(),
            line.policy.clone(),
            line.rule.clone(),
        );
        let node = self
            .nodes
            .get(&key)
            .map_or_else(|| Arc::from(""), Arc::clone);
        let pod = (node.to_string(), line.namespace.clone(), line.pod.clone());
        if !self.deferred.contains_key(&key) && self.limiter.allow(&pod, now_ns()) {
            self.hub.publish_alert(&node, line);
            return;
        }
        self.metrics.alert_deferred();
        if self.deferred.insert(key, (node, line)).is_some() {
            self.metrics.alert_superseded();
        }
    }

    /// Publish the deferred updates whose pods have tokens again.
    fn publish_deferred(&mut self, now: u64) {
        let limiter = &mut self.limiter;
        let hub = &self.hub;
        self.deferred.retain(|_, (node, alert)| {
            let pod = (node.to_string(), alert.namespace.clone(), alert.pod.clone());
            if limiter.allow(&pod, now) {
                hub.publish_alert(node, alert.clone());
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests;
