//! `mapsentry tail --server URL`: follow a collector's (or `run`'s) event stream with server-side
//! filters, printing the same lines as `run` plus `cursor` and `node`; reconnects and resumes
//! after the last cursor by itself.

use std::io::{self, BufWriter, Write};

use anyhow::{Context, bail};
use mapsentry_collector::follow::{Followed, Follower};
use mapsentry_policy::{EventLine, MmapEvent, Syscall, names, selector};
use mapsentry_proto::v1::{self, EventRecord, LossReason, SubscribeRequest};
use serde_json::json;

use crate::{
    client_args::ClientArgs,
    output::{self, Format},
    signals::Shutdown,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Events,
    Alerts,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The collector (or `mapsentry run`) to follow: `https://...` (TLS, see --ca/--cert/--key)
    /// or `http://...` (plaintext).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    #[command(flatten)]
    client: ClientArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
    /// Only events from this node (repeatable).
    #[arg(long = "node", value_name = "NODE")]
    nodes: Vec<String>,
    /// Only events from this Kubernetes namespace (repeatable).
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Only events from this pod (repeatable).
    #[arg(long = "pod", value_name = "POD")]
    pods: Vec<String>,
    /// Only events from pods with these labels, a Kubernetes label selector: `key=value`,
    /// `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key` (repeatable,
    /// comma-separated; all must hold).
    #[arg(long = "label", value_name = "SELECTOR")]
    labels: Vec<String>,
    /// Only processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "COMM")]
    comms: Vec<String>,
    /// Only this system call: `mmap`, `mmap2` or `old_mmap` (repeatable).
    #[arg(long = "syscall", value_name = "SYSCALL")]
    syscalls: Vec<String>,
    /// Only calls whose prot has any of these bits, e.g. `PROT_WRITE,PROT_EXEC`.
    #[arg(long = "prot-any", value_name = "PROT,...")]
    prot_any: Vec<String>,
    /// Only calls whose prot has all of these bits.
    #[arg(long = "prot-all", value_name = "PROT,...")]
    prot_all: Vec<String>,
    /// Only calls whose flags have any of these bits, e.g. `MAP_SHARED,MAP_FIXED`.
    #[arg(long = "flags-any", value_name = "MAP,...")]
    flags_any: Vec<String>,
    /// Only calls whose flags have all of these bits.
    #[arg(long = "flags-all", value_name = "MAP,...")]
    flags_all: Vec<String>,
    /// What to receive (repeatable; default: events).
    #[arg(long = "kind", value_enum)]
    kinds: Vec<KindArg>,
    /// Start after this cursor (the last one seen) from retention; default: live events only.
    #[arg(long, value_name = "CURSOR")]
    since: Option<u64>,
    /// Print the collector's per-node counters and retention window, then exit.
    #[arg(long)]
    stats: bool,
}

/// Build the subscription from the command line, naming any word that is wrong.
pub fn request(args: &TailArgs) -> anyhow::Result<SubscribeRequest> {
    let syscalls = args
        .syscalls
        .iter()
        .map(|name| {
            Syscall::from_name(name)
                .map(|s| v1::Syscall::from(s) as i32)
                .with_context(|| format!("--syscall {name:?}: expected mmap, mmap2 or old_mmap"))
        })
        .collect::<anyhow::Result<_>>()?;
    let filter = v1::Filter {
        namespaces: args.namespaces.clone(),
        pods: args.pods.clone(),
        labels: args
            .labels
            .iter()
            .flat_map(|text| selector::text::split_requirements(text))
            .map(str::to_owned)
            .collect(),
        nodes: args.nodes.clone(),
        comms: args.comms.clone(),
        syscalls,
        prot_any: mask("--prot-any", &args.prot_any, names::parse_prot)?,
        prot_all: mask("--prot-all", &args.prot_all, names::parse_prot)?,
        flags_any: mask("--flags-any", &args.flags_any, names::parse_flag)?,
        flags_all: mask("--flags-all", &args.flags_all, names::parse_flag)?,
    };
    let kinds = args
        .kinds
        .iter()
        .map(|kind| match kind {
            KindArg::Events => v1::Kind::Events as i32,
            KindArg::Alerts => v1::Kind::Alerts as i32,
        })
        .collect();
    Ok(SubscribeRequest {
        filter: Some(filter),
        since: args.since,
        kinds,
    })
}

/// OR of the bits named in `lists` (`PROT_READ,PROT_WRITE`, `MAP_SHARED|0x40`).
fn mask(flag: &str, lists: &[String], parse: fn(&str) -> Option<u64>) -> anyhow::Result<u64> {
    let mut mask = 0;
    for word in lists
        .iter()
        .flat_map(|list| list.split([',', '|']))
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let bits = match word.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => parse(word),
        };
        match bits {
            Some(0) => bail!("{flag} {word:?}: has no bits to match"),
            Some(bits) => mask |= bits,
            None => bail!("{flag} {word:?}: not a known name or a 0x number"),
        }
    }
    Ok(mask)
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let request = request(&args)?;
    let mut follower = Follower::secured(&args.server, request, 16 << 20, &args.client.security())?;
    let mut out = BufWriter::new(io::stdout().lock());
    if args.stats {
        let stats = follower
            .stats()
            .await
            .with_context(|| format!("asking {} for its stats", args.server))?;
        write_stats(&mut out, args.output, &stats)?;
        return Ok(out.flush()?);
    }
    let mut shutdown = Shutdown::install()?;
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = shutdown.requested() => break,
        };
        let written = match next {
            Ok(Followed::Record(record)) => write_record(&mut out, args.output, &record),
            Ok(Followed::Alert(alert)) => {
                crate::alert_output::write_record(&mut out, args.output, &alert)
            }
            Ok(Followed::Loss(loss)) => write_loss(&mut out, args.output, &loss),
            Ok(Followed::AgentRestart(restart)) => write_restart(&mut out, args.output, &restart),
            Ok(Followed::Started(started)) => {
                tracing::debug!(?started, "subscribed");
                Ok(())
            }
            Ok(Followed::Disconnected { reason, retry_in }) => {
                let after = follower
                    .last_cursor()
                    .map_or_else(|| "live".to_owned(), |c| format!("after cursor {c}"));
                tracing::warn!(
                    target: mapsentry_service::STATUS_TARGET,
                    "{} unreachable ({reason}); resuming {after} in {retry_in:?}",
                    args.server
                );
                Ok(())
            }
            Err(error) => return Err(error.into()),
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
        }
    }
    Ok(())
}

/// One record: `run`'s line plus `cursor` and `node`.
pub fn write_record(out: &mut impl Write, format: Format, record: &EventRecord) -> io::Result<()> {
    let Some(wire) = &record.event else {
        return Ok(());
    };
    let event = match MmapEvent::try_from(wire) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(target: mapsentry_service::STATUS_TARGET, "skipping record {}: {error}", record.cursor);
            return Ok(());
        }
    };
    match format {
        Format::Json => {
            let mut line =
                serde_json::to_value(EventLine::from(event)).map_err(io::Error::other)?;
            if let Some(object) = line.as_object_mut() {
                object.insert("cursor".into(), record.cursor.into());
                object.insert("node".into(), record.node.clone().into());
            }
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")
        }
        Format::Text => writeln!(
            out,
            "{} {} {}",
            record.cursor,
            record.node,
            output::text_line(&event)
        ),
    }
}

fn loss_reason(reason: i32) -> &'static str {
    match LossReason::try_from(reason) {
        Ok(LossReason::SubscriberBehind) => "subscriber_behind",
        Ok(LossReason::Retention) => "retention",
        Ok(LossReason::Unspecified) | Err(_) => "unknown",
    }
}

fn write_loss(out: &mut impl Write, format: Format, loss: &v1::LossNotice) -> io::Result<()> {
    let reason = loss_reason(loss.reason);
    match format {
        Format::Json => writeln!(
            out,
            "{}",
            json!({"kind": "loss", "count": loss.count, "reason": reason})
        ),
        Format::Text => writeln!(out, "-- lost {} events ({reason}) --", loss.count),
    }
}

/// An agent restart: the node's capture gap, `{"kind":"agent_restart",...}`.
fn write_restart(
    out: &mut impl Write,
    format: Format,
    restart: &v1::AgentRestart,
) -> io::Result<()> {
    let gap_ns = (restart.previous_last_event_ns > 0 && restart.started_unix_ns > 0).then(|| {
        restart
            .started_unix_ns
            .saturating_sub(restart.previous_last_event_ns)
    });
    let unacked = restart
        .previous_captured
        .saturating_sub(restart.previous_acked);
    match format {
        Format::Json => writeln!(
            out,
            "{}",
            json!({
                "kind": "agent_restart", "node": restart.node,
                "previous_boot_id": restart.previous_boot_id, "boot_id": restart.boot_id,
                "previous_last_event_ns": restart.previous_last_event_ns,
                "started_unix_ns": restart.started_unix_ns, "gap_ns": gap_ns,
                "previous_captured": restart.previous_captured,
                "previous_acked": restart.previous_acked, "previous_unacked": unacked,
            })
        ),
        Format::Text => writeln!(
            out,
            "-- agent on {} restarted (boot {} -> {}): capture gap of {}, {unacked} events \
             captured by the previous agent were not stored --",
            restart.node,
            restart.previous_boot_id,
            restart.boot_id,
            gap_ns.map_or_else(
                || "unknown length".to_owned(),
                |ns| format!(
                    "{}.{:03} s",
                    ns / 1_000_000_000,
                    ns % 1_000_000_000 / 1_000_000
                )
            ),
        ),
    }
}

fn write_stats(out: &mut impl Write, format: Format, stats: &v1::StatsResponse) -> io::Result<()> {
    let nodes: Vec<_> = stats
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node, "boot_id": n.boot_id, "kernel": n.kernel, "attach_mode": n.attach_mode,
                "connected": n.connected, "captured": n.captured, "shipped": n.shipped, "acked": n.acked,
                "dropped": n.dropped, "duplicate_batches": n.duplicate_batches,
                "agent_restarts": n.agent_restarts,
            })
        })
        .collect();
    let line = json!({
        "kind": "stats", "nodes": nodes, "oldest_cursor": stats.oldest_cursor, "next_cursor": stats.next_cursor,
        "retained": stats.retained, "subscribers": stats.subscribers, "subscriber_losses": stats.subscriber_losses,
    });
    match format {
        Format::Json => writeln!(out, "{line}"),
        Format::Text => {
            writeln!(
                out,
                "retained {} events (cursors {}..{}), {} subscribers, {} events skipped for slow subscribers",
                stats.retained,
                stats.oldest_cursor,
                stats.next_cursor,
                stats.subscribers,
                stats.subscriber_losses
            )?;
            for n in &stats.nodes {
                writeln!(
                    out,
                    "node {} ({}, {}, {}): captured {} shipped {} acked {} dropped {:?} duplicate batches {}",
                    n.node,
                    if n.connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    n.kernel,
                    n.attach_mode,
                    n.captured,
                    n.shipped,
                    n.acked,
                    n.dropped,
                    n.duplicate_batches
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
