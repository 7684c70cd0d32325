//! Kubernetes Events for alerts on the backbone: written by one replica at a time, the holder of
//! the Kubernetes Lease ([`super::kube_lease`]), from the alerts stream (so an alert evaluated on
//! any replica gets its Event, once).
//!
//! The series logic is the single collector's ([`crate::kube_events`]'s planner and poster: one
//! Event per (pod, policy, rule) whose `series.count` is the number of matching calls). What a
//! new holder needs to continue the previous one's series without a second Event:
//! - it reads the alerts of the last series ttl (10 minutes) back, and replays those up to the
//!   previous holder's progress (the Lease's `mapsentry.dev/alerts-through` annotation) without
//!   writing, which rebuilds every open series as the previous holder had it;
//! - Event names do not depend on who writes them: `POD.<alert cursor, hex>` of the alert that
//!   created the series, so a create the previous holder made is found (409) and patched;
//! - then it writes each open series' count once (a write sets the count: idempotent) and
//!   carries on with the alerts after the progress.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use kube::Client;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{
    Backbone,
    kube_lease::{Elector, Leadership},
    subscribe::{decode_alert, next},
};
use crate::{
    kube_events::{EventsConfig, Poster},
    metrics::Metrics,
};

/// How often series with unwritten counts are retried.
const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// Post the Events of the alerts stream while `elector` says this replica leads, until `stop`.
pub fn start(
    backbone: Arc<Backbone>,
    client: Client,
    elector: &Elector,
    metrics: Arc<Metrics>,
    config: EventsConfig,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let leadership = elector.leadership.clone();
    let progress = elector.progress.clone();
    tokio::spawn(
        async move {
            Box::pin(run(
                backbone, client, leadership, progress, metrics, config, stop,
            ))
            .await;
        }
        .instrument(tracing::info_span!("kube_events")),
    )
}

async fn run(
    backbone: Arc<Backbone>,
    client: Client,
    mut leadership: watch::Receiver<Leadership>,
    progress: watch::Sender<String>,
    metrics: Arc<Metrics>,
    config: EventsConfig,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait to lead.
        let term = tokio::select! {
            term = leadership.wait_for(|l| l.leading) => match term {
                Ok(term) => term.clone(),
                Err(_) => return,
            },
            () = super::stopped(&mut stop) => return,
        };
        backbone.metrics.kube_leader.set(1);
        let streams = tokio::select! {
            streams = backbone.wait_set_up() => streams.clone(),
            () = super::stopped(&mut stop) => return,
        };
        let through = term
            .previous_progress
            .as_deref()
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let mut poster = Poster::new(client.clone(), config.clone(), Arc::clone(&metrics));
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(config.series_ttl);
        let Ok(start_time) = async_nats::datetime::from_nanos(since.as_nanos() as i128) else {
            return;
        };
        let consumer = streams
            .alerts
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartTime { start_time },
                max_expires: Duration::from_secs(5),
                ..pull::OrderedConfig::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the alerts stream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot read the alerts stream");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(
            replay_through = through,
            "writing the Kubernetes Events of alerts"
        );
        let mut replaying = through > 0;
        // Messages not yet read, as of the last one read (0 before any: nothing to replay).
        let mut behind = 0;
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = next(Some(&mut messages)) => {
                    let Some(message) = message else { break };
                    let Ok(info) = message.info() else { continue };
                    let (sequence, pending, published) = (info.stream_sequence, info.pending, info.published);
                    backbone.metrics.set_pending("kube-events", pending);
                    behind = pending;
                    let now = instant_of(published.unix_timestamp_nanos());
                    poster.name_series(format!("{sequence:x}"));
                    if replaying && sequence > through {
                        replaying = false;
                        poster.rewrite_all();
                    }
                    if let Some((_, alert)) = decode_alert(&message.payload) {
                        if sequence <= through {
                            poster.replayed(&alert, now);
                        } else {
                            poster.alert_at(&alert, now).await;
                        }
                    }
                    if sequence > through {
                        progress.send_replace(sequence.to_string());
                    }
                }
                _ = flush.tick() => {
                    if replaying && behind == 0 {
                        // Everything the window holds is read and none is past the progress.
                        replaying = false;
                        poster.rewrite_all();
                    }
                    poster.flush_at(Instant::now()).await;
                }
                changed = leadership.changed() => {
                    if changed.is_err() || !leadership.borrow().leading {
                        break;
                    }
                }
                () = super::stopped(&mut stop) => {
                    poster.flush_at(Instant::now()).await;
                    backbone.metrics.kube_leader.set(0);
                    return;
                }
            }
        }
        backbone.metrics.kube_leader.set(0);
        backbone.metrics.clear_pending("kube-events");
    }
}

/// The monotonic instant of a wall-clock time in ns (now, if it is in the future or too old).
fn instant_of(unix_ns: i128) -> Instant {
    let now_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let ago = Duration::from_nanos(u64::try_from((now_ns - unix_ns).max(0)).unwrap_or(0));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
