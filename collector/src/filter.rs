//! Server-side subscription filters, checked once from the request and then matched per record.

use mapsentry_policy::{AlertLine, EventLine, selector::Selector};
use mapsentry_proto::v1::{self, Event, Kind, PodAttribution, event::Attribution};

use crate::auth::Scope;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "filter.syscalls: {value} is not a known syscall (expected SYSCALL_MMAP, SYSCALL_MMAP2 or SYSCALL_OLD_MMAP)"
    )]
    Syscall { value: i32 },
    #[error("kinds: {value} is not a known kind (expected KIND_EVENTS or KIND_ALERTS)")]
    Kind { value: i32 },
    #[error(
        "filter.labels: {term:?} is not a label selector (requirements such as key=value, key!=value, key in (a,b), key notin (a,b), key or !key, comma-separated)"
    )]
    Label { term: String },
    #[error("filter.namespaces: {namespace:?} is outside the namespaces this client may read")]
    OutOfScope { namespace: String },
}

/// What one subscriber asked for. A record passes when every given field matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    namespaces: Vec<String>,
    pods: Vec<String>,
    nodes: Vec<String>,
    comms: Vec<String>,
    syscalls: Vec<i32>,
    prot_any: u64,
    prot_all: u64,
    flags_any: u64,
    flags_all: u64,
    /// Each entry a label selector; all must hold.
    labels: Vec<Selector>,
    events: bool,
    alerts: bool,
    /// The namespaces the subscriber may read at all (from its credentials).
    scope: Scope,
}

impl RecordFilter {
    /// Check a request's filter and kinds, naming the first field that is wrong.
    pub fn new(filter: Option<&v1::Filter>, kinds: &[i32]) -> Result<Self, FilterError> {
        let default = v1::Filter::default();
        let filter = filter.unwrap_or(&default);
        for &value in &filter.syscalls {
            match v1::Syscall::try_from(value) {
                Ok(v1::Syscall::Unspecified) | Err(_) => {
                    return Err(FilterError::Syscall { value });
                }
                Ok(_) => {}
            }
        }
        let mut events = kinds.is_empty();
        let mut alerts = false;
        for &value in kinds {
            match Kind::try_from(value) {
                Ok(Kind::Events) => events = true,
                Ok(Kind::Alerts) => alerts = true,
                Ok(Kind::Unspecified) | Err(_) => return Err(FilterError::Kind { value }),
            }
        }
        let labels = filter
            .labels
            .iter()
            .map(|term| {
                Selector::parse(term).map_err(|_| FilterError::Label { term: term.clone() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            labels,
            namespaces: filter.namespaces.clone(),
            pods: filter.pods.clone(),
            nodes: filter.nodes.clone(),
            comms: filter.comms.clone(),
            syscalls: filter.syscalls.clone(),
            prot_any: filter.prot_any,
            prot_all: filter.prot_all,
            flags_any: filter.flags_any,
            flags_all: filter.flags_all,
            events,
            alerts,
            scope: Scope::All,
        })
    }

    /// Limit the filter to `scope`; asking for a namespace outside it is an error.
    pub fn within(mut self, scope: Scope) -> Result<Self, FilterError> {
        if let Some(namespace) = self.namespaces.iter().find(|n| !scope.allows(Some(n))) {
            return Err(FilterError::OutOfScope {
                namespace: namespace.clone(),
            });
        }
        self.scope = scope;
        Ok(self)
    }

    /// Whether `event` from `node`, attributed to `attribution`, passes (the collector holds an
    /// event's attribution apart from it: [`crate::retention::Record`]).
    #[must_use]
    pub fn matches(&self, node: &str, event: &Event, attribution: Option<&Attribution>) -> bool {
        let (prot, flags) = event.args.as_ref().map_or((0, 0), |a| (a.prot, a.flags));
        let pod = match attribution {
            Some(Attribution::Pod(pod)) => Some(&**pod),
            _ => None,
        };
        let namespace = pod.and_then(|pod| pod.namespace.as_ref());
        self.events
            && self.scope.allows(namespace.map(String::as_str))
            && (self.nodes.is_empty() || self.nodes.iter().any(|n| n == node))
            && any_of(&self.namespaces, namespace)
            && any_of(&self.pods, pod.and_then(|pod| pod.pod.as_ref()))
            && self.labels_match(pod)
            && any_of(&self.comms, Some(&event.comm))
            && (self.syscalls.is_empty() || self.syscalls.contains(&event.syscall))
            && (self.prot_any == 0 || prot & self.prot_any != 0)
            && prot & self.prot_all == self.prot_all
            && (self.flags_any == 0 || flags & self.flags_any != 0)
            && flags & self.flags_all == self.flags_all
    }
}

impl RecordFilter {
    /// Whether notices about `node` (agent restarts) pass: only the node filter narrows them.
    #[must_use]
    pub fn matches_node(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }

    /// Whether this subscriber asked for events at all.
    #[must_use]
    pub fn wants_events(&self) -> bool {
        self.events
    }

    /// Whether this subscriber asked for alerts at all.
    #[must_use]
    pub fn wants_alerts(&self) -> bool {
        self.alerts
    }

    /// Whether `alert` from `node` passes: the kind, the subscriber's namespace scope, and the node, namespace, pod and comm
    /// filters (the latter against the alert's sample call). Bit and syscall filters are for
    /// events and do not narrow alerts.
    #[must_use]
    pub fn matches_alert(&self, node: &str, alert: &AlertLine) -> bool {
        let EventLine::Event { event, .. } = &alert.event;
        self.alerts
            && self.scope.allows(alert.namespace.as_deref())
            && (self.nodes.is_empty() || self.nodes.iter().any(|n| n == node))
            && any_of(&self.namespaces, alert.namespace.as_ref())
            && any_of(&self.pods, alert.pod.as_ref())
            && any_of(&self.comms, Some(&event.comm))
    }

    fn labels_match(&self, pod: Option<&PodAttribution>) -> bool {
        self.labels.is_empty()
            || pod.map(|pod| &pod.labels).is_some_and(|labels| {
                self.labels.iter().all(|selector| {
                    selector.matches_lookup(|key| labels.get(key).map(String::as_str))
                })
            })
    }
}

fn any_of(wanted: &[String], value: Option<&String>) -> bool {
    wanted.is_empty() || value.is_some_and(|v| wanted.contains(v))
}

#[cfg(test)]
mod tests;
