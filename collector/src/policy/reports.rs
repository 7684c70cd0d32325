//! What each node's agent reports about the enforce-mode policy set it enforces (the agent
//! stream's `EnforcementReport`, latest per node wins): the set version, whether it could be
//! persisted, the rules its kernel refuses. The policy status writer folds them into the
//! `KernelEnforced` condition ([`mapsentry_policy::crd::PolicyStatus::accepted_policy_on`]) and
//! rewrites the statuses whenever a node's report changes.
//!
//! A node's report stays until the node reports again (an agent that is away keeps what it last
//! enforced: its persisted set, or nothing if it could not persist it).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use mapsentry_policy::{PolicyId, enforce::Refusal, status::NodeReport};
use mapsentry_proto::v1;
use tokio::sync::watch;

/// The reports of every node that sent one; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct NodeReports {
    reports: Arc<Mutex<BTreeMap<String, NodeReport>>>,
    changed: watch::Sender<u64>,
}

impl Default for NodeReports {
    fn default() -> Self {
        Self {
            reports: Arc::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl NodeReports {
    /// Take `report` as `node`'s; followers hear of it when it differs from the last one.
    pub fn set(&self, node: &str, report: &v1::EnforcementReport) {
        let report = NodeReport {
            node: node.to_owned(),
            version: report.policy_set_version,
            persist_error: (!report.persist_error.is_empty()).then(|| report.persist_error.clone()),
            refused: report
                .refused
                .iter()
                .map(|r| Refusal {
                    policy: policy_id(&r.policy),
                    rule: r.rule.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
        };
        let changed = {
            let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
            reports.insert(node.to_owned(), report.clone()) != Some(report)
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Every node's latest report, by node name.
    #[must_use]
    pub fn snapshot(&self) -> Vec<NodeReport> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Changes whenever a node's report does.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// `NAMESPACE/NAME` or `NAME`, as [`PolicyId`] displays it.
fn policy_id(text: &str) -> PolicyId {
    match text.split_once('/') {
        Some((namespace, name)) => PolicyId {
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        },
        None => PolicyId {
            namespace: None,
            name: text.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests;
