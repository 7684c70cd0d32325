//! The agents' enforcement reports across replicas. An agent streams to one replica, and its
//! report (what set it enforces, whether it persisted it, which rules its kernel refuses) must
//! reach the policies' status, which the holder of the Kubernetes Lease writes: often another
//! replica. So each replica puts the reports its own agents send into the `mapsentry-reports`
//! bucket (one key per node, the latest wins, as [`NodeReports`] keeps them), and every replica
//! follows the bucket into the reports its status writer reads. A replica that takes the Lease
//! over has them all already.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt as _;
use mapsentry_policy::status::NodeReport;
use mapsentry_proto::v1;
use prost::Message as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{
    Backbone,
    wire::{self, StoredReport},
};
use crate::NodeReports;

/// Share `local` (what this replica's agents report) and follow every replica's into `cluster`,
/// until `stop` turns true.
pub fn start(
    backbone: Arc<Backbone>,
    local: NodeReports,
    cluster: NodeReports,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let streams = tokio::select! {
                streams = backbone.wait_set_up() => streams.clone(),
                () = super::stopped(&mut stop) => return,
            };
            tokio::join!(
                share(streams.reports.clone(), local, stop.clone()),
                follow(streams.reports, cluster, stop),
            );
        }
        .instrument(tracing::info_span!("enforcement_reports")),
    )
}

/// Put every report of `local` that differs from what was put last; a failed put is retried
/// each second until it goes through.
async fn share(bucket: kv::Store, local: NodeReports, mut stop: watch::Receiver<bool>) {
    let mut changes = local.subscribe();
    let mut shared: BTreeMap<String, NodeReport> = BTreeMap::new();
    loop {
        let mut failed = false;
        for report in local.snapshot() {
            if shared.get(&report.node) == Some(&report) {
                continue;
            }
            let stored = StoredReport {
                node: report.node.clone(),
                report: Some(to_wire(&report)),
            };
            match bucket
                .put(wire::report_key(&report.node), wire::encode(&stored))
                .await
            {
                Ok(_) => {
                    shared.insert(report.node.clone(), report);
                }
                Err(error) => {
                    tracing::warn!(node = %report.node, %error, "cannot share a node's enforcement report with the other replicas; retrying");
                    failed = true;
                }
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            next = changes.changed() => if next.is_err() { return },
            () = retry => {}
            () = super::stopped(&mut stop) => return,
        }
    }
}

/// Every node's latest report in the bucket into `cluster`, then each new one as it comes; the
/// watch is opened again (from each key's latest) after an error.
async fn follow(bucket: kv::Store, cluster: NodeReports, mut stop: watch::Receiver<bool>) {
    loop {
        match bucket.watch_with_history(">").await {
            Ok(mut entries) => loop {
                tokio::select! {
                    entry = entries.next() => match entry {
                        Some(Ok(entry)) => apply(&cluster, &entry),
                        Some(Err(error)) => {
                            tracing::warn!(%error, "following the enforcement reports; watching again");
                            break;
                        }
                        None => break,
                    },
                    () = super::stopped(&mut stop) => return,
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot follow the enforcement reports; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = super::stopped(&mut stop) => return,
        }
    }
}

/// One bucket entry into `cluster` (an entry that is not a report is said and skipped).
fn apply(cluster: &NodeReports, entry: &kv::Entry) {
    if entry.operation != Operation::Put {
        return;
    }
    match StoredReport::decode(entry.value.as_ref()) {
        Ok(StoredReport {
            node,
            report: Some(report),
        }) if !node.is_empty() => cluster.set(&node, &report),
        Ok(_) => {
            tracing::warn!(key = %entry.key, "an enforcement report without its node or report");
        }
        Err(error) => {
            tracing::warn!(key = %entry.key, %error, "an entry of the reports bucket that is not a report");
        }
    }
}

/// A report as the agent sent it.
fn to_wire(report: &NodeReport) -> v1::EnforcementReport {
    v1::EnforcementReport {
        policy_set_version: report.version,
        persist_error: report.persist_error.clone().unwrap_or_default(),
        refused: report.refused.iter().map(v1::RefusedRule::from).collect(),
    }
}

#[cfg(test)]
mod tests;
