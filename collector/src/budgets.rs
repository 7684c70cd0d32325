//! What one agent may make the collector hold, in bytes: limits on every string an agent sends
//! (node name, comm, path, labels, ...), checked before anything is kept, the size of an event
//! as the collector counts it against the retention window and subscriber queues
//! ([`record_bytes`]), and each agent stream's ingest rate ([`IngestBudget`]).
//!
//! The limits are generous for what a real agent sends (the kernel's and Kubernetes' own limits,
//! or more) and small enough that no single message can make the collector keep megabytes for
//! a string: a field beyond its limit is refused with `INVALID_ARGUMENT` naming the field, its
//! size and the limit.

use std::time::{Duration, Instant};

use mapsentry_proto::v1::{self, event::Attribution};
use prost::Message as _;

use crate::retention::Attributed;

/// Largest encoded event accepted.
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// Memory an event costs the collector beyond its encoded size (the decoded message, its
/// record, the shared pointers): what [`record_bytes`] adds.
pub const RECORD_OVERHEAD: usize = 512;

/// Limits of the strings of `Hello`. A node name is a DNS subdomain in Kubernetes (253).
pub const HELLO_LIMITS: &[(&str, usize)] = &[
    ("node", 253),
    ("boot_id", 64),
    ("kernel", 256),
    ("attach_mode", 32),
];
/// Most capabilities in a `Hello`, and the longest one.
pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_BYTES: usize = 64;
/// Most reasons in a `LossReport`, and the longest one.
pub const MAX_LOSS_REASONS: usize = 32;
pub const MAX_LOSS_REASON_BYTES: usize = 64;

/// Limits of an event's strings: `comm` is 16 bytes in the kernel, a path at most PATH_MAX;
/// Kubernetes names are at most 63 (namespaces, label values) or 253 (objects) bytes, label
/// keys 253 + 1 + 63.
mod event_limits {
    pub const COMM: usize = 64;
    pub const PATH: usize = 4096;
    pub const NAMESPACE: usize = 63;
    pub const NAME: usize = 253;
    pub const UID: usize = 64;
    pub const CONTAINER_ID: usize = 128;
    pub const IMAGE: usize = 1024;
    pub const LABELS: usize = 256;
    pub const LABEL_KEY: usize = 317;
    pub const LABEL_VALUE: usize = 63;
    pub const UNIT: usize = 256;
}

/// A field beyond its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} is {bytes} bytes, more than the limit of {max}")]
    TooLong {
        field: String,
        bytes: usize,
        max: usize,
    },
    #[error("{field} has {count} entries, more than the limit of {max}")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
}

fn long(field: impl Into<String>, value: &str, max: usize) -> Result<(), LimitError> {
    if value.len() > max {
        return Err(LimitError::TooLong {
            field: field.into(),
            bytes: value.len(),
            max,
        });
    }
    Ok(())
}

fn many(field: &str, count: usize, max: usize) -> Result<(), LimitError> {
    if count > max {
        return Err(LimitError::TooMany {
            field: field.to_owned(),
            count,
            max,
        });
    }
    Ok(())
}

/// Check the strings of a `Hello`.
pub fn check_hello(hello: &v1::Hello) -> Result<(), LimitError> {
    for (field, max) in HELLO_LIMITS {
        let value = match *field {
            "node" => &hello.node,
            "boot_id" => &hello.boot_id,
            "kernel" => &hello.kernel,
            _ => &hello.attach_mode,
        };
        long(format!("Hello.{field}"), value, *max)?;
    }
    many(
        "Hello.capabilities",
        hello.capabilities.len(),
        MAX_CAPABILITIES,
    )?;
    for capability in &hello.capabilities {
        long("Hello.capabilities[]", capability, MAX_CAPABILITY_BYTES)?;
    }
    Ok(())
}

/// Check the node name and boot id of a batch read back from the retention log.
pub fn check_stored(node: &str, boot_id: &str) -> Result<(), LimitError> {
    long("node", node, HELLO_LIMITS[0].1)?;
    long("boot_id", boot_id, HELLO_LIMITS[1].1)
}

/// Check the reasons of a `LossReport`.
pub fn check_loss_report(report: &v1::LossReport) -> Result<(), LimitError> {
    many("LossReport.dropped", report.dropped.len(), MAX_LOSS_REASONS)?;
    for reason in report.dropped.keys() {
        long("LossReport.dropped key", reason, MAX_LOSS_REASON_BYTES)?;
    }
    Ok(())
}

fn labels(
    field: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), LimitError> {
    use event_limits::{LABEL_KEY, LABEL_VALUE, LABELS};
    many(field, labels.len(), LABELS)?;
    // The field names are formatted only for an error: this runs for every label of every
    // event ingested.
    for (key, value) in labels {
        if key.len() > LABEL_KEY {
            long(format!("{field} key"), key, LABEL_KEY)?;
        }
        if value.len() > LABEL_VALUE {
            long(format!("{field}[{key:?}]"), value, LABEL_VALUE)?;
        }
    }
    Ok(())
}

fn optional(field: &str, value: Option<&String>, max: usize) -> Result<(), LimitError> {
    value.map_or(Ok(()), |value| long(field, value, max))
}

/// Check the strings of an event (its attribution's too) and its encoded size.
pub fn check_event(event: &v1::Event) -> Result<(), LimitError> {
    if let Some(attribution) = &event.attribution {
        check_attribution(attribution)?;
    }
    check_call(event, event.encoded_len())
}

/// Check the strings of an event held apart from its attribution, and the encoded size of the
/// whole. The attribution's strings are checked on their own ([`check_attribution`]): once per
/// definition on a V2 stream, not once per event that names it.
pub fn check_attributed(event: &Attributed) -> Result<(), LimitError> {
    check_call(event.event(), event.encoded_len())
}

/// Check the strings of an attribution.
pub fn check_attribution(attribution: &Attribution) -> Result<(), LimitError> {
    use event_limits::{CONTAINER_ID, IMAGE, NAME, NAMESPACE, PATH, UID, UNIT};
    match attribution {
        Attribution::Pod(pod) => {
            optional("pod.namespace", pod.namespace.as_ref(), NAMESPACE)?;
            optional("pod.pod", pod.pod.as_ref(), NAME)?;
            optional("pod.container", pod.container.as_ref(), NAME)?;
            optional("pod.pod_uid", pod.pod_uid.as_ref(), UID)?;
            optional("pod.container_id", pod.container_id.as_ref(), CONTAINER_ID)?;
            optional("pod.image", pod.image.as_ref(), IMAGE)?;
            labels("pod.labels", &pod.labels)?;
            labels("pod.namespace_labels", &pod.namespace_labels)?;
            if let Some(workload) = &pod.workload {
                long("pod.workload.kind", &workload.kind, NAMESPACE)?;
                long("pod.workload.name", &workload.name, NAME)?;
            }
        }
        Attribution::Host(host) => {
            long("host.cgroup", &host.cgroup, PATH)?;
            optional("host.unit", host.unit.as_ref(), UNIT)?;
        }
        Attribution::Unknown(_) | Attribution::AttributionRef(_) => {}
    }
    Ok(())
}

/// The event's own strings, and its encoded size `bytes`.
fn check_call(event: &v1::Event, bytes: usize) -> Result<(), LimitError> {
    use event_limits::{COMM, PATH};
    long("comm", &event.comm, COMM)?;
    if let Some(file) = &event.file {
        long("file.path", &file.path, PATH)?;
    }
    if bytes > MAX_EVENT_BYTES {
        return Err(LimitError::TooLong {
            field: "the event".into(),
            bytes,
            max: MAX_EVENT_BYTES,
        });
    }
    Ok(())
}

/// What keeping `event` costs, as the retention window and subscriber queues count it: its
/// encoded size (its attribution's included, though events share it) plus [`RECORD_OVERHEAD`].
#[must_use]
pub fn record_bytes(event: &Attributed) -> usize {
    event.encoded_len() + RECORD_OVERHEAD
}

/// One agent stream's ingest rate: at most `bytes_per_second` of batches (bursts of up to one
/// second's worth, at least one largest message), a token bucket. A stream over it waits before
/// its next batch is read (HTTP/2 flow control then holds the agent back); nothing is dropped.
#[derive(Debug)]
pub struct IngestBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

#[expect(
    clippy::cast_precision_loss,
    reason = "byte counts and rates far below 2^52; a rate needs no more precision"
)]
impl IngestBudget {
    /// `bytes_per_second` (0: no limit), bursts of `burst` bytes, starting full at `now`.
    #[must_use]
    pub fn new(bytes_per_second: u64, burst: u64, now: Instant) -> Option<Self> {
        if bytes_per_second == 0 {
            return None;
        }
        let rate = bytes_per_second as f64;
        let burst = (burst as f64).max(rate);
        Some(Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        })
    }

    /// How long to wait, from `now`, before a batch of `bytes` may be handled; takes it (the
    /// bucket may go negative: the wait pays it back).
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests;
