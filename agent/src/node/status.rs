//! The agent's HTTP endpoint (`--metrics-listen`, default 0.0.0.0:9091): Prometheus `/metrics`,
//! `/healthz` (liveness) and `/readyz` (readiness), from an [`AgentStatus`] the main loop keeps
//! current (see [`super::event_loop`]).
//!
//! - Live: the main loop turned within [`LOOP_STALE`] (it turns at least every second).
//! - Ready: the programs are attached, AND the ring buffer is being drained (within
//!   [`DRAIN_STALE`], records were read or the kernel wrote none), AND, when Kubernetes is
//!   configured, the pod cache has completed its first list. A ready agent whose Deny rules fell
//!   back to Kill (no BPF LSM) says so in the `/readyz` body, as `mapsentry_enforce_deny_fallback`
//!   counts them; one whose policy set in force could not be persisted says why (enforcing does
//!   not wait for persisting), as `mapsentry_enforce_persist_failures_total` counts them.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use mapsentry_service::{
    http::{self, Probes, Reply, Server},
    metrics::{self, Labels, Scrape},
};

use crate::{
    Capture, KernelCounters,
    enforce::policies::EnforceStats,
    metadata::{MissingCounter, PodCache},
    shipper::{self, ShipperStats},
};

/// Not live when the main loop has not turned for this long.
pub const LOOP_STALE: Duration = Duration::from_secs(30);
/// Not ready when records were written but none read for this long.
pub const DRAIN_STALE: Duration = Duration::from_secs(10);

/// What the agent is, fixed once it is attached.
#[derive(Debug, Clone)]
pub struct Info {
    pub node: String,
    pub attach_mode: String,
    pub hook: String,
    /// Why Deny rules cannot be enforced here (no BPF LSM), if they cannot.
    pub deny_unavailable: Option<String>,
}

/// Counters as of the main loop's last second.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    kernel: KernelCounters,
    records_read: u64,
    malformed: u64,
    shipper: ShipperStats,
    enforce: Option<EnforceStats>,
}

/// The agent's state as the HTTP endpoint reports it; shared with the main loop.
#[derive(Debug)]
pub struct AgentStatus {
    started: Instant,
    attached: AtomicBool,
    /// Milliseconds since `started` of the main loop's last turn.
    loop_at: AtomicU64,
    /// Milliseconds since `started` when the ring buffer was last known drained.
    drained_at: AtomicU64,
    info: OnceLock<Info>,
    pods: OnceLock<PodCache>,
    missing: OnceLock<MissingCounter>,
    snapshot: Mutex<Snapshot>,
    /// (records the kernel wrote, records read) at the last [`AgentStatus::observe`].
    last: Mutex<(u64, u64)>,
}

impl Default for AgentStatus {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            attached: AtomicBool::new(false),
            loop_at: AtomicU64::new(0),
            drained_at: AtomicU64::new(0),
            info: OnceLock::new(),
            pods: OnceLock::new(),
            missing: OnceLock::new(),
            snapshot: Mutex::default(),
            last: Mutex::default(),
        }
    }
}

impl AgentStatus {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn since(&self, mark: &AtomicU64, now: Instant) -> Duration {
        Duration::from_millis(self.millis(now).saturating_sub(mark.load(Relaxed)))
    }

    /// The programs are attached: `info` says how; `pods` is the pod cache when Kubernetes is
    /// configured (readiness then waits for its first list).
    pub fn attached(&self, info: Info, pods: Option<PodCache>, missing: MissingCounter) {
        let _ = self.info.set(info);
        if let Some(pods) = pods {
            let _ = self.pods.set(pods);
        }
        let _ = self.missing.set(missing);
        let now = self.millis(Instant::now());
        self.loop_at.store(now, Relaxed);
        self.drained_at.store(now, Relaxed);
        self.attached.store(true, Relaxed);
    }

    /// The programs are detached (shutting down).
    pub fn detached(&self) {
        self.attached.store(false, Relaxed);
    }

    /// The main loop turned.
    pub fn turned(&self, now: Instant) {
        self.loop_at.store(self.millis(now), Relaxed);
    }

    /// Records were just read from the ring buffer.
    pub fn read(&self, now: Instant) {
        self.drained_at.store(self.millis(now), Relaxed);
    }

    /// Take the counters of this second. The ring buffer counts as drained when records were
    /// read since the last call, or the kernel wrote none (records of calls still in flight, or
    /// whose exit never ran, do not make it look stuck: only new ones count).
    pub fn observe(
        &self,
        now: Instant,
        kernel: KernelCounters,
        capture: &Capture,
        shipper: ShipperStats,
        enforce: Option<EnforceStats>,
    ) {
        let records_read = capture.received();
        self.note_drain(
            now,
            kernel.reported.saturating_sub(kernel.dropped),
            records_read,
        );
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
            kernel,
            records_read,
            malformed: capture.malformed(),
            shipper,
            enforce,
        };
    }

    /// The kernel has written `written` records so far and the agent read `read`: drained now
    /// when some were read since the last note, or none were written.
    fn note_drain(&self, now: Instant, written: u64, read: u64) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if read > last.1 || written <= last.0 {
            self.drained_at.store(self.millis(now), Relaxed);
        }
        *last = (written, read);
    }

    /// `/healthz`.
    pub fn liveness(&self, now: Instant) -> Reply {
        let idle = self.since(&self.loop_at, now);
        if idle > LOOP_STALE {
            Reply::unavailable(format!(
                "not live: the main loop has not turned for {:.1} s\n",
                idle.as_secs_f64()
            ))
        } else {
            Reply::ok("ok\n")
        }
    }

    /// `/readyz`.
    pub fn readiness(&self, now: Instant) -> Reply {
        if !self.attached.load(Relaxed) {
            return Reply::unavailable("not ready: the capture programs are not attached\n");
        }
        let stale = self.since(&self.drained_at, now);
        if stale > DRAIN_STALE {
            return Reply::unavailable(format!(
                "not ready: the ring buffer has not been drained for {:.1} s\n",
                stale.as_secs_f64()
            ));
        }
        if let Some(pods) = self.pods.get()
            && !pods.synced()
        {
            return Reply::unavailable(
                "not ready: the pod cache has not completed its first list from the API server\n",
            );
        }
        let enforce = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enforce
            .clone()
            .unwrap_or_default();
        if enforce.awaiting_pods {
            return Reply::unavailable(
                "not ready: the enforce-mode policies are not yet resolved against the pod cache's first list (pod cgroups hold every rule that could apply to them)\n",
            );
        }
        let mut body = "ready".to_owned();
        // Ready, but a downgrade or a set that would not survive a restart is never silent:
        // health says it too.
        if let Some(reason) = self.info.get().and_then(|i| i.deny_unavailable.as_deref())
            && enforce.deny_fell_back > 0
        {
            let _ = write!(
                body,
                "; {} Deny rule(s) enforced as Kill (denyFallback) because this kernel cannot deny: {reason}",
                enforce.deny_fell_back
            );
        }
        if let Some(error) = &enforce.persist_error {
            let _ = write!(
                body,
                "; the policy set in force (version {}) is enforced but could not be persisted, so an agent restart before the collector is reachable would start without it: {error}",
                enforce.version
            );
        }
        body.push('\n');
        Reply::ok(body)
    }

    /// `/metrics`, in the OpenMetrics text format.
    #[must_use]
    pub fn render(&self, now: Instant) -> String {
        let s = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut scrape = Scrape::default();
        scrape
            .counter(
                "mapsentry_enrichment_missing_total",
                "Events emitted without their pod metadata (pod not known within the hold bound).",
                self.missing.get().map_or(0, MissingCounter::get),
            )
            .counter(
                "mapsentry_enrichment_container_unknown_total",
                "Events emitted with their pod but without their container (not in the pod's status within 1 s).",
                self.missing.get().map_or(0, MissingCounter::container_unknown),
            )
            .counter(
                "mapsentry_agent_kernel_seen_total",
                "mmap-family calls that entered the kernel while attached (the agent's own excluded).",
                s.kernel.seen,
            )
            .counter(
                "mapsentry_agent_kernel_reported_total",
                "Calls the in-kernel report filters kept: each became a record or a drop.",
                s.kernel.reported,
            )
            .counter(
                "mapsentry_agent_kernel_filtered_total",
                "Calls the in-kernel filters left out.",
                s.kernel.filtered,
            )
            .counter(
                "mapsentry_agent_kernel_dropped_total",
                "Records lost in the kernel because the ring buffer was full.",
                s.kernel.dropped,
            )
            .counter(
                "mapsentry_agent_records_read_total",
                "Records read from the ring buffer.",
                s.records_read,
            )
            .counter(
                "mapsentry_agent_records_malformed_total",
                "Records read but not decodable.",
                s.malformed,
            )
            .counter(
                "mapsentry_agent_events_received_total",
                "Events handed to the shipper.",
                s.shipper.captured,
            )
            .counter(
                "mapsentry_agent_events_shipped_total",
                "Events sent to the collector at least once.",
                s.shipper.shipped,
            )
            .counter(
                "mapsentry_agent_events_acked_total",
                "Events in batches the collector acked.",
                s.shipper.acked,
            )
            .counter(
                "mapsentry_agent_collector_connects_total",
                "Successful connections to the collector.",
                s.shipper.connects,
            )
            .counters(
                "mapsentry_agent_events_dropped_total",
                "Events lost on the node, by reason.",
                [
                    shipper::DROPPED_RING_BUFFER_FULL,
                    shipper::DROPPED_MALFORMED,
                    shipper::DROPPED_BUFFER_FULL,
                    shipper::DROPPED_UNACKED_AT_EXIT,
                ]
                .map(|reason| {
                    let count = s.shipper.dropped.get(reason).copied().unwrap_or(0);
                    (Labels(vec![("reason", reason.into())]), count)
                }),
            )
            .gauge(
                "mapsentry_agent_events_buffered",
                "Events held for the collector (not acked yet).",
                s.shipper.buffered_events,
            )
            .gauge(
                "mapsentry_agent_collector_connected",
                "1 while connected to the collector.",
                u64::from(s.shipper.connected),
            )
            .gauge(
                "mapsentry_agent_attached",
                "1 while the capture programs are attached.",
                u64::from(self.attached.load(Relaxed)),
            )
            .gauge(
                "mapsentry_agent_ready",
                "1 while /readyz answers 200.",
                u64::from(self.readiness(now).status == 200),
            );
        if let Some(pods) = self.pods.get() {
            let stats = pods.stats();
            scrape
                .gauge(
                    "mapsentry_agent_pod_cache_synced",
                    "1 once the pod cache has completed its first list.",
                    u64::from(pods.synced()),
                )
                .gauge(
                    "mapsentry_agent_pods",
                    "Pods of this node in the cache.",
                    stats.pods as u64,
                )
                .gauge(
                    "mapsentry_agent_pod_tombstones",
                    "Deleted pods kept for late events.",
                    stats.tombstones as u64,
                )
                .counter(
                    "mapsentry_agent_pod_watch_errors_total",
                    "Pod watch or list errors (the API server away, ...).",
                    stats.errors,
                );
        }
        if let Some(e) = &s.enforce {
            scrape
                .counter(
                    "mapsentry_enforce_persist_failures_total",
                    "Policy sets taken (and enforced) that could not be persisted to the state directory.",
                    e.persist_failures,
                )
                .gauge(
                    "mapsentry_enforce_policy_set_persisted",
                    "1 when the policy set in force is in the state directory (or there is none to keep), else 0.",
                    u64::from(e.persisted),
                )
                .gauge(
                    "mapsentry_enforce_policy_version",
                    "Version of the enforce-mode policy set in force (0: none).",
                    e.version,
                )
                .gauge(
                    "mapsentry_enforce_kernel_rules",
                    "Rules of the set in force the kernel enforces.",
                    e.kernel_rules,
                )
                .gauge(
                    "mapsentry_enforce_refused_rules",
                    "Rules of enforce-mode policies the kernel refused (see the log for why).",
                    e.refused,
                )
                .gauge(
                    "mapsentry_enforce_deny_fallback",
                    "Deny rules enforced as Kill (denyFallback: Kill) because this kernel cannot deny.",
                    e.deny_fell_back,
                )
                .gauge(
                    "mapsentry_enforce_cgroups",
                    "Cgroups with rules in the kernel.",
                    e.cgroups,
                )
                .gauge(
                    "mapsentry_enforce_unresolved_cgroups",
                    "Pod cgroups whose pod is not known (yet): they get every rule that could apply to a pod (fail closed).",
                    e.unresolved,
                )
                .gauge(
                    "mapsentry_enforce_write_errors",
                    "Cgroups whose rules could not be written at the last resolution.",
                    e.write_errors,
                );
        }
        if let Some(info) = self.info.get() {
            let deny = if info.deny_unavailable.is_some() {
                "unavailable"
            } else {
                "available"
            };
            scrape.gauges(
                "mapsentry_agent_info",
                "How this agent captures (attach mode, hook) and whether Deny rules can be enforced here.",
                [(
                    Labels(vec![
                        ("node", info.node.as_str().into()),
                        ("attach_mode", info.attach_mode.as_str().into()),
                        ("hook", info.hook.as_str().into()),
                        ("deny", deny.into()),
                        ("version", env!("CARGO_PKG_VERSION").into()),
                    ]),
                    1,
                )],
            );
        }
        metrics::encode(&[&scrape.into_registry(), &metrics::standard("agent")])
    }
}

impl Probes for AgentStatus {
    fn metrics(&self) -> String {
        self.render(Instant::now())
    }

    fn liveness(&self) -> Reply {
        AgentStatus::liveness(self, Instant::now())
    }

    fn readiness(&self) -> Reply {
        AgentStatus::readiness(self, Instant::now())
    }
}

/// The running endpoint; stop it with [`Endpoint::stop`].
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    server: Server,
}

/// Serve `status` on `addr` (`required`: fail when it cannot be bound; else warn and serve
/// nothing).
pub async fn start(
    status: &Arc<AgentStatus>,
    addr: SocketAddr,
    required: bool,
) -> http::Result<Option<Endpoint>> {
    let Some(listener) = http::bind(addr, required).await? else {
        return Ok(None);
    };
    let server = Server::start(listener, Arc::clone(status) as Arc<dyn Probes>)?;
    Ok(Some(Endpoint {
        addr: server.addr(),
        server,
    }))
}

impl Endpoint {
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

#[cfg(test)]
mod tests;
