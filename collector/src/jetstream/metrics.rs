//! The backbone's metrics, per replica: publish latency (to JetStream's ack), acks, duplicates,
//! compare-and-set conflicts, errors; messages evaluated again after a partition changed hands
//! (the backbone's redeliveries); consumer lag; partitions and leadership held; loss notices.
//! Served with the collector's other metrics (`crate::metrics`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The labels of a consumer lag gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// `eval-<partition>`, `ledger`, `kube-events` or `subscribers`.
    pub consumer: String,
}

#[derive(Debug)]
pub struct JetStreamMetrics {
    pub(crate) registry: Registry,
    pub publish_seconds: Histogram,
    pub acks: Counter,
    pub duplicates: Counter,
    pub conflicts: Counter,
    pub errors: Counter,
    pub restarts: Counter,
    pub replayed: Counter,
    pub alerts_published: Counter,
    pub pending: Family<ConsumerLabels, Gauge>,
    pub partitions_owned: Gauge,
    pub kube_leader: Gauge,
    pub retention_losses: Counter,
    pub inexact_losses: Counter,
}

impl Default for JetStreamMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let publish_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "mapsentry_jetstream_publish_seconds",
            "Time from publishing an agent batch to JetStream's ack",
            publish_seconds.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let acks = counter(
            "mapsentry_jetstream_publish_acks",
            "Messages JetStream acked as stored (batch parts, restart notices)",
        );
        let duplicates = counter(
            "mapsentry_jetstream_publish_duplicates",
            "Agent batches found stored already (message id or the node's chain), acked without storing again",
        );
        let conflicts = counter(
            "mapsentry_jetstream_publish_conflicts",
            "Publishes refused because another replica had written the node's subject meanwhile (reloaded and retried)",
        );
        let errors = counter(
            "mapsentry_jetstream_publish_errors",
            "Publishes that failed or timed out (the agent's batch stays unacked and is resent)",
        );
        let restarts = counter(
            "mapsentry_jetstream_restart_notices",
            "Agent restart notices this replica published",
        );
        let replayed = counter(
            "mapsentry_jetstream_redeliveries",
            "Event messages evaluated again after a partition changed hands (from its lease's floor up to where the previous holder had read)",
        );
        let alerts_published = counter(
            "mapsentry_jetstream_alerts_published",
            "Alert updates this replica stored in the alerts stream",
        );
        let retention_losses = counter(
            "mapsentry_jetstream_subscriber_retention_losses",
            "Events subscribers of this replica asked for that the stream no longer held (counted in their loss notices)",
        );
        let inexact_losses = counter(
            "mapsentry_jetstream_inexact_loss_notices",
            "Loss notices whose count the ledger could not make exact (it missed messages deleted before it read them)",
        );
        let pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "mapsentry_jetstream_consumer_pending",
            "Messages not yet read by this replica's consumers",
            pending.clone(),
        );
        let partitions_owned = Gauge::default();
        registry.register(
            "mapsentry_jetstream_partitions_owned",
            "Evaluation partitions whose lease this replica holds",
            partitions_owned.clone(),
        );
        let kube_leader = Gauge::default();
        registry.register(
            "mapsentry_kube_leader",
            "1 while this replica holds the Kubernetes Lease (it writes the Events and policy status)",
            kube_leader.clone(),
        );
        Self {
            registry,
            publish_seconds,
            acks,
            duplicates,
            conflicts,
            errors,
            restarts,
            replayed,
            alerts_published,
            pending,
            partitions_owned,
            kube_leader,
            retention_losses,
            inexact_losses,
        }
    }
}

impl JetStreamMetrics {
    /// Set the lag of `consumer`.
    pub fn set_pending(&self, consumer: &str, pending: u64) {
        self.pending
            .get_or_create(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Forget the lag of `consumer` (a partition given up).
    pub fn clear_pending(&self, consumer: &str) {
        self.pending.remove(&ConsumerLabels {
            consumer: consumer.to_owned(),
        });
    }

    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
