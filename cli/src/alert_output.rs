//! Alert lines, as `run` and `tail` print them: the contract's JSON line
//! (`{"kind":"alert","policy":..,"rule":..,"action":..,"mode":..,"namespace":..,"pod":..,
//! "container":..,"count":N,"first_seen":..,"last_seen":..,"event":{..}}` plus `cursor` and
//! `node`), or one text line.

use std::io::{self, Write};

use mapsentry_policy::{AlertLine, EventLine};
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

/// Print one alert update as it arrived from a collector (decoded once, here at the edge).
pub fn write_record(out: &mut impl Write, format: Format, record: &AlertRecord) -> io::Result<()> {
    match AlertLine::try_from(record) {
        Ok(alert) => write_alert(out, format, &alert, record.cursor, &record.node),
        Err(error) => {
            tracing::warn!(target: mapsentry_service::STATUS_TARGET, "skipping alert {}: {error}", record.cursor);
            Ok(())
        }
    }
}

/// Print one alert update (`node`'s, published under `cursor`).
pub fn write_alert(
    out: &mut impl Write,
    format: Format,
    alert: &AlertLine,
    cursor: u64,
    node: &str,
) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(
                &mut *out,
                &Line {
                    alert,
                    cursor,
                    node,
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
