//! Alert updates <-> `v1::AlertRecord`, beside the event conversions: the collector keeps alerts
//! as [`AlertLine`]s and encodes one only where it leaves the process (the observer); a client
//! (`mapsentry tail`) decodes it once on arrival.

use mapsentry_policy::{Action, AlertLine, EventLine, MmapEvent, Mode};

use super::ConvertError;
use crate::v1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("alert field `action`: {value:?} is not a known action (expected alert, kill or deny)")]
    Action { value: String },
    #[error("alert field `mode`: {value:?} is not a known mode (expected audit or enforce)")]
    Mode { value: String },
    #[error("alert field `event` is missing")]
    MissingEvent,
    #[error("alert field `event`: {source}")]
    Event {
        #[source]
        source: ConvertError,
    },
}

/// `alert`, raised by a call on `node`, published under `cursor`, as the observer sends it.
#[must_use]
pub fn alert_record(alert: &AlertLine, node: &str, cursor: u64) -> v1::AlertRecord {
    let EventLine::Event { event, .. } = &alert.event;
    v1::AlertRecord {
        cursor,
        node: node.to_owned(),
        policy: alert.policy.clone(),
        rule: alert.rule.clone(),
        action: alert.action.as_str().to_owned(),
        mode: alert.mode.as_str().to_owned(),
        namespace: alert.namespace.clone(),
        pod: alert.pod.clone(),
        container: alert.container.clone(),
        count: alert.count,
        first_seen: alert.first_seen.clone(),
        last_seen: alert.last_seen.clone(),
        event: Some(v1::Event::from(event)),
    }
}

impl TryFrom<&v1::AlertRecord> for AlertLine {
    type Error = AlertError;

    fn try_from(record: &v1::AlertRecord) -> Result<Self, AlertError> {
        let action = [Action::Alert, Action::Kill, Action::Deny]
            .into_iter()
            .find(|a| a.as_str() == record.action)
            .ok_or_else(|| AlertError::Action {
                value: record.action.clone(),
            })?;
        let mode = [Mode::Audit, Mode::Enforce]
            .into_iter()
            .find(|m| m.as_str() == record.mode)
            .ok_or_else(|| AlertError::Mode {
                value: record.mode.clone(),
            })?;
        let wire = record.event.as_ref().ok_or(AlertError::MissingEvent)?;
        let event = MmapEvent::try_from(wire).map_err(|source| AlertError::Event { source })?;
        Ok(Self {
            policy: record.policy.clone(),
            rule: record.rule.clone(),
            action,
            mode,
            namespace: record.namespace.clone(),
            pod: record.pod.clone(),
            container: record.container.clone(),
            count: record.count,
            first_seen: record.first_seen.clone(),
            last_seen: record.last_seen.clone(),
            event: EventLine::from(event),
        })
    }
}

#[cfg(test)]
mod tests;
