//! Alert lines, as `run` and `tail` print them: the contract's JSON line
//! (`{"kind":"alert","policy":..,"rule":..,"action":..,"mode":..,"namespace":..,"pod":..,
//! "container":..,"count":N,"first_seen":..,"last_seen":..,"event":{..}}` plus `cursor` and
//! `node`), or one text line.

use std::io::{self, Write};

use mapsentry_policy::{Action, AlertLine, EventLine, MmapEvent, Mode};
use mapsentry_proto::v1::AlertRecord;
use serde::Serialize;

use crate::output::{self, Format};

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    alert: &'a AlertLine,
    cursor: u64,
    node: &'a str,
}

/// The alert line of `record`, or why it has none.
pub fn alert_line(record: &AlertRecord) -> Result<AlertLine, String> {
    let action = [Action::Alert, Action::Kill, Action::Deny]
        .into_iter()
        .find(|a| a.as_str() == record.action)
        .ok_or_else(|| format!("unknown action {:?}", record.action))?;
    let mode = [Mode::Audit, Mode::Enforce]
        .into_iter()
        .find(|m| m.as_str() == record.mode)
        .ok_or_else(|| format!("unknown mode {:?}", record.mode))?;
    let wire = record.event.as_ref().ok_or("no event")?;
    let event = MmapEvent::try_from(wire).map_err(|e| e.to_string())?;
    Ok(AlertLine {
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

/// Print one alert update.
pub fn write_alert(out: &mut impl Write, format: Format, record: &AlertRecord) -> io::Result<()> {
    let alert = match alert_line(record) {
        Ok(alert) => alert,
        Err(error) => {
            tracing::warn!(target: mapsentry_service::STATUS_TARGET, "skipping alert {}: {error}", record.cursor);
            return Ok(());
        }
    };
    match format {
        Format::Json => {
            serde_json::to_writer(
                &mut *out,
                &Line {
                    alert: &alert,
                    cursor: record.cursor,
                    node: &record.node,
                },
            )?;
            out.write_all(b"\n")
        }
        Format::Text => {
            let EventLine::Event { event, .. } = &alert.event;
            let pod = match (&alert.namespace, &alert.pod) {
                (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                _ => "host".to_owned(),
            };
            writeln!(
                out,
                "ALERT {} rule {} {} ({}) {pod} count {}: {}",
                alert.policy,
                alert.rule,
                alert.action.as_str(),
                alert.mode.as_str(),
                alert.count,
                output::text_line(event)
            )
        }
    }
}
