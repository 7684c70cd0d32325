//! Alerts: one per (pod, policy, rule), with a count, first and last seen, and a sample call;
//! a dedup window so that a storm of matching calls is one alert whose count grows, not a flood.
//!
//! Time is the calls' own time (`time_ns`), so replaying a recording aggregates as live capture
//! did. For each key:
//! - the first match is reported at once (`count` 1);
//! - later matches within `window` of the last report only count;
//! - the first match after `window` has passed is reported with the count so far, and so is a
//!   key with unreported matches when [`Aggregator::flush`] finds its window over;
//! - a key with nothing unreported and no match for `window` is forgotten: the next match starts
//!   a new alert at 1.
//!
//! `count` is cumulative from `first_seen`; successive lines for one key are updates of one alert.
//! At most `max_keys` keys are tracked; beyond that, matches are reported one by one (count 1)
//! rather than dropped, and counted in [`Aggregator::untracked`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    EventLine, MmapEvent,
    context::EvalContext,
    crd::{Action, Mode},
    evaluate::Match,
    policy::PolicyId,
};

/// One alert JSON line (the contract):
/// `{"kind":"alert","policy":"NS/NAME","rule":..,"action":"kill","mode":"enforce","namespace":..,
/// "pod":..,"container":..,"count":N,"first_seen":..,"last_seen":..,"event":{the event line}}`.
///
/// `action` is the rule's action; with `mode` `audit` it was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "alert")]
pub struct AlertLine {
    /// `NAMESPACE/NAME` for an `MmapPolicy`, `NAME` for a `ClusterMmapPolicy`.
    pub policy: String,
    pub rule: String,
    #[serde(with = "lowercase_action")]
    pub action: Action,
    #[serde(with = "lowercase_mode")]
    pub mode: Mode,
    /// Null for a process outside any pod.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// Matching calls from `first_seen` to `last_seen`.
    pub count: u64,
    /// RFC 3339 times of the first and the latest matching call.
    pub first_seen: String,
    pub last_seen: String,
    /// The first matching call, as its event line.
    pub event: EventLine,
}

mod lowercase_action {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::crd::Action;

    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's serialize_with signature"
    )]
    pub fn serialize<S: Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(action.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        let text = String::deserialize(deserializer)?;
        [Action::Alert, Action::Kill, Action::Deny]
            .into_iter()
            .find(|a| a.as_str() == text)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown action {text:?} (expected alert, kill or deny)"
                ))
            })
    }
}

mod lowercase_mode {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::crd::Mode;

    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's serialize_with signature"
    )]
    pub fn serialize<S: Serializer>(mode: &Mode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(mode.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Mode, D::Error> {
        let text = String::deserialize(deserializer)?;
        [Mode::Audit, Mode::Enforce]
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                D::Error::custom(format!("unknown mode {text:?} (expected audit or enforce)"))
            })
    }
}

/// What alerts are aggregated by: the pod (None outside pods), the policy and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub policy: PolicyId,
    pub rule: String,
}

#[derive(Debug, Clone)]
struct Entry {
    action: Action,
    mode: Mode,
    container: Option<String>,
    sample: MmapEvent,
    first_seen: u64,
    last_seen: u64,
    count: u64,
    /// `count` at the last report.
    reported: u64,
    last_report: u64,
}

/// Default dedup window: one minute.
pub const DEFAULT_WINDOW_NS: u64 = 60_000_000_000;
/// Default bound on tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 65_536;

/// Per (pod, policy, rule) aggregation of matches into alert lines.
#[derive(Debug, Clone)]
pub struct Aggregator {
    window_ns: u64,
    max_keys: usize,
    entries: HashMap<AlertKey, Entry>,
    untracked: u64,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW_NS, DEFAULT_MAX_KEYS)
    }
}

impl Aggregator {
    /// `window_ns` 0 reports every match.
    #[must_use]
    pub fn new(window_ns: u64, max_keys: usize) -> Self {
        Self {
            window_ns,
            max_keys,
            entries: HashMap::new(),
            untracked: 0,
        }
    }

    /// Keys being tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Matches reported without aggregation because `max_keys` keys were tracked.
    #[must_use]
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Count one match of `event` by `ctx`; the alert line to send now, if any. A match whose
    /// mode or action differs from the tracked one (the policy was switched) starts the key over:
    /// reported at once, count 1, this call as the sample.
    pub fn record(
        &mut self,
        matched: &Match<'_>,
        event: &MmapEvent,
        ctx: &EvalContext,
    ) -> Option<AlertLine> {
        let workload = ctx.workload.as_ref();
        let key = AlertKey {
            namespace: workload.map(|w| w.namespace.clone()),
            pod: workload.map(|w| w.pod.clone()),
            policy: matched.policy.clone(),
            rule: matched.rule.to_owned(),
        };
        let now = event.time_ns;
        // A policy switched mode (Audit -> Enforce) or the action changed: what the alert says
        // is no longer true, so the key starts over with this call, reported at once.
        let changed = self
            .entries
            .get(&key)
            .is_some_and(|e| e.mode != matched.mode || e.action != matched.action);
        if changed {
            self.entries.remove(&key);
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.count += 1;
            entry.last_seen = entry.last_seen.max(now);
            if now.saturating_sub(entry.last_report) >= self.window_ns {
                entry.reported = entry.count;
                entry.last_report = now;
                return Some(line(&key, entry));
            }
            return None;
        }
        let entry = Entry {
            action: matched.action,
            mode: matched.mode,
            container: workload.and_then(|w| w.container.clone()),
            sample: event.clone(),
            first_seen: now,
            last_seen: now,
            count: 1,
            reported: 1,
            last_report: now,
        };
        let alert = line(&key, &entry);
        if self.window_ns == 0 {
            return Some(alert);
        }
        if self.entries.len() >= self.max_keys {
            self.forget_idle(now);
        }
        if self.entries.len() >= self.max_keys {
            self.untracked += 1;
        } else {
            self.entries.insert(key, entry);
        }
        Some(alert)
    }

    /// Updates for keys whose window is over with matches unreported; forgets keys idle for a
    /// window. Call it periodically with the current time.
    pub fn flush(&mut self, now_ns: u64) -> Vec<AlertLine> {
        let mut out = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.count > entry.reported
                && now_ns.saturating_sub(entry.last_report) >= self.window_ns
            {
                entry.reported = entry.count;
                entry.last_report = now_ns;
                out.push(line(key, entry));
            }
        }
        self.forget_idle(now_ns);
        sort(&mut out);
        out
    }

    /// Updates for every key with matches unreported, regardless of windows (at shutdown or at
    /// the end of a replay).
    pub fn drain(&mut self) -> Vec<AlertLine> {
        let mut out: Vec<AlertLine> = self
            .entries
            .iter_mut()
            .filter(|(_, e)| e.count > e.reported)
            .map(|(key, entry)| {
                entry.reported = entry.count;
                line(key, entry)
            })
            .collect();
        sort(&mut out);
        out
    }

    fn forget_idle(&mut self, now_ns: u64) {
        let window = self.window_ns;
        self.entries
            .retain(|_, e| e.count > e.reported || now_ns.saturating_sub(e.last_seen) < window);
    }
}

fn sort(lines: &mut [AlertLine]) {
    lines.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.policy, &a.rule).cmp(&(&b.namespace, &b.pod, &b.policy, &b.rule))
    });
}

fn line(key: &AlertKey, entry: &Entry) -> AlertLine {
    AlertLine {
        policy: key.policy.to_string(),
        rule: key.rule.clone(),
        action: entry.action,
        mode: entry.mode,
        namespace: key.namespace.clone(),
        pod: key.pod.clone(),
        container: entry.container.clone(),
        count: entry.count,
        first_seen: rfc3339(entry.first_seen),
        last_seen: rfc3339(entry.last_seen),
        event: EventLine::from(entry.sample.clone()),
    }
}

fn rfc3339(time_ns: u64) -> String {
    crate::time::rfc3339(time_ns, crate::time::Precision::Micros)
}

#[cfg(test)]
mod tests;
