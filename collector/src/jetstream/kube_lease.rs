//! One writer at a time for what collector replicas write to the API server (the Kubernetes
//! Events of alerts, the policy objects' status): the holder of a `coordination.k8s.io/v1`
//! Lease, with client-go's leader election protocol.
//!
//! kube 5 (kube-runtime) has no leader election, and the crates that add one
//! (kube-leader-election, kube-lease-manager) follow older kube releases; this is the protocol
//! in ~200 lines:
//!
//! - a candidate creates the Lease if there is none, or takes it over when its holder is empty
//!   (released) or when the Lease has not changed for `leaseDurationSeconds` as observed on
//!   this replica's monotonic clock (never by comparing `renewTime` with this clock);
//! - the holder renews every `retry` and stops leading when no renewal succeeded for
//!   `renew_deadline` (less than the duration), so it has stopped before anyone may take over;
//! - every write is an update with the Lease's `resourceVersion`: two candidates cannot both
//!   win;
//! - the holder writes its progress in an annotation at each renewal
//!   (`mapsentry.dev/alerts-through`, the last alert its Events account for), so the next holder
//!   continues from there; it releases the Lease (empty holder) when it stops.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::Instrument as _;

/// The annotation holding the holder's progress.
pub const PROGRESS_ANNOTATION: &str = "mapsentry.dev/alerts-through";

#[derive(Debug, Clone)]
pub struct KubeLeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in the Lease (unique per process).
    pub identity: String,
    /// `leaseDurationSeconds`: a Lease unchanged this long is taken over.
    pub duration: Duration,
    /// The holder stops leading when no renewal succeeded this long.
    pub renew_deadline: Duration,
    /// How often the holder renews and candidates look.
    pub retry: Duration,
}

impl KubeLeaseConfig {
    /// client-go's timings (15 s, 10 s, 2 s) for `namespace/name`.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }

    /// Timings scaled to `duration` (renew deadline 2/3 of it, retry 2/15).
    #[must_use]
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self.renew_deadline = duration * 2 / 3;
        self.retry = (duration * 2 / 15).max(Duration::from_millis(200));
        self
    }
}

/// What a replica knows of its leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    /// Counts this replica's terms: a new term is a new takeover.
    pub term: u64,
    /// The previous holder's progress annotation, when this term began.
    pub previous_progress: Option<String>,
}

/// A running elector.
#[derive(Debug)]
pub struct Elector {
    pub leadership: watch::Receiver<Leadership>,
    /// The progress to write at the next renewal.
    pub progress: watch::Sender<String>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Run the election for `config` until `stop` turns true (then release the Lease if held).
#[must_use]
pub fn start(client: Client, config: KubeLeaseConfig, stop: watch::Receiver<bool>) -> Elector {
    let (leadership_tx, leadership) = watch::channel(Leadership::default());
    let (progress, progress_rx) = watch::channel(String::new());
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let task = tokio::spawn(
        run(api, config, leadership_tx, progress_rx, stop)
            .instrument(tracing::info_span!("kube_lease")),
    );
    Elector {
        leadership,
        progress,
        task,
    }
}

async fn run(
    api: Api<Lease>,
    config: KubeLeaseConfig,
    leadership: watch::Sender<Leadership>,
    progress: watch::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    // The Lease as last seen and since when (this replica's clock).
    let mut observed: Option<(String, Instant)> = None;
    // Start of the last successful write while leading.
    let mut renewed: Option<Instant> = None;
    let mut tick = tokio::time::interval(config.retry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = super::stopped(&mut stop) => break,
        }
        let started = Instant::now();
        let leading = leadership.borrow().leading;
        let lease = match api.get_opt(&config.name).await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(%error, lease = %config.name, "cannot read the Lease");
                step_down_if_late(&leadership, renewed, &config);
                continue;
            }
        };
        let Some(mut lease) = lease else {
            // Nobody holds it yet.
            let lease = new_lease(&config, &progress.borrow());
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    renewed = Some(started);
                    lead(&leadership, None, &config);
                }
                Err(error) => {
                    tracing::debug!(%error, "creating the Lease (another replica may have)");
                }
            }
            continue;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if holder == config.identity && leading {
            // Renew, with the progress.
            set_holder(&mut lease, &config, &progress.borrow(), false);
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => renewed = Some(started),
                Err(error) => {
                    tracing::warn!(%error, "cannot renew the Lease");
                    step_down_if_late(&leadership, renewed, &config);
                }
            }
            continue;
        }
        if leading {
            // Someone else holds it now.
            step_down(&leadership, "another replica holds the Lease");
            renewed = None;
        }
        let unchanged_for = match &observed {
            Some((seen, since)) if *seen == version => since.elapsed(),
            _ => {
                observed = Some((version.clone(), started));
                Duration::ZERO
            }
        };
        let duration = spec.lease_duration_seconds.map_or(config.duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(15))
        });
        if holder.is_empty() || holder == config.identity || unchanged_for >= duration {
            let previous = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROGRESS_ANNOTATION).cloned());
            set_holder(&mut lease, &config, previous.as_deref().unwrap_or(""), true);
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    if !holder.is_empty() && holder != config.identity {
                        tracing::info!(previous = %holder, "took the Lease over: its holder stopped renewing it");
                    }
                    renewed = Some(started);
                    observed = None;
                    lead(&leadership, previous, &config);
                }
                Err(error) => {
                    tracing::debug!(%error, "taking the Lease over (another replica may have)");
                }
            }
        }
    }
    // Stopping: release, so another replica takes over at once.
    if leadership.borrow().leading
        && let Ok(Some(mut lease)) = api.get_opt(&config.name).await
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(config.identity.as_str())
    {
        set_holder(&mut lease, &config, &progress.borrow(), false);
        if let Some(spec) = &mut lease.spec {
            spec.holder_identity = None;
        }
        if let Err(error) = api
            .replace(&config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "cannot release the Lease (it expires instead)");
        }
        step_down(&leadership, "stopping");
    }
}

fn new_lease(config: &KubeLeaseConfig, progress: &str) -> Lease {
    let mut lease = Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    };
    set_holder(&mut lease, config, progress, true);
    lease
}

/// Make `lease` held by this replica, renewed now, with `progress`.
fn set_holder(lease: &mut Lease, config: &KubeLeaseConfig, progress: &str, acquire: bool) {
    let now = MicroTime(Timestamp::now());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if acquire {
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            spec.lease_transitions = Some(
                spec.lease_transitions.unwrap_or(0) + i32::from(spec.holder_identity.is_some()),
            );
        }
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds =
        Some(i32::try_from(config.duration.as_secs().max(1)).unwrap_or(15));
    spec.renew_time = Some(now);
    if !progress.is_empty() {
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(PROGRESS_ANNOTATION.into(), progress.to_owned());
    }
}

fn lead(
    leadership: &watch::Sender<Leadership>,
    previous_progress: Option<String>,
    config: &KubeLeaseConfig,
) {
    tracing::info!(lease = %config.name, identity = %config.identity, "leading: this replica writes the Kubernetes Events and policy status");
    leadership.send_modify(|l| {
        l.leading = true;
        l.term += 1;
        l.previous_progress = previous_progress;
    });
}

fn step_down(leadership: &watch::Sender<Leadership>, why: &str) {
    if leadership.borrow().leading {
        tracing::warn!(
            why,
            "no longer leading: another replica writes the Kubernetes Events and policy status"
        );
        leadership.send_modify(|l| l.leading = false);
    }
}

/// A leader whose last renewal is older than the renew deadline stops leading.
fn step_down_if_late(
    leadership: &watch::Sender<Leadership>,
    renewed: Option<Instant>,
    config: &KubeLeaseConfig,
) {
    if renewed.is_none_or(|r| r.elapsed() >= config.renew_deadline) {
        step_down(leadership, "the Lease was not renewed within its deadline");
    }
}
