//! `mapsentry run`: capture on this host and print every call, until Ctrl-C or SIGTERM. The
//! events also go into a collector in this process (the hub, policies, alerts and gRPC services
//! of `mapsentry collector`), handed to it directly ([`embedded_agent`]) rather than over the
//! agent stream, so `mapsentry tail` works against the observer API on `--listen`.

mod embedded_agent;

use std::{
    io::{self, BufWriter, Write},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use futures_core::Stream as _;
use mapsentry_agent::{
    Capture,
    metadata::{Attributor, Kubernetes},
    node::{self, event_loop},
};
use mapsentry_collector::{
    Hub, PolicyPublisher,
    app::{self, Alerting},
    filter::RecordFilter,
    hub::Item,
    serve,
};
use mapsentry_policy::MmapEvent;
use mapsentry_proto::v1;
use serde_json::json;
use tokio::{net::TcpListener, sync::oneshot};
use tracing::Instrument as _;

use mapsentry_service::status;

use self::embedded_agent::EmbeddedAgent;
use crate::{
    alert_output,
    capture_args::CaptureArgs,
    collector::{CollectorLimits, PolicyArgs},
    filter::EventFilter,
    output::{self, Format},
    signals,
};

/// Where `run` serves the observer API when `--listen` is not given.
const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Only processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "COMM")]
    comms: Vec<String>,
    /// Only this system call: mmap, mmap2, old_mmap or mprotect (repeatable).
    #[arg(long = "syscall", value_name = "SYSCALL")]
    syscalls: Vec<String>,
    /// Only calls whose prot has any of these bits, e.g. PROT_WRITE,PROT_EXEC (repeatable;
    /// filtered in the kernel).
    #[arg(long = "prot-any", value_name = "PROT,...")]
    prot_any: Vec<String>,
    /// Serve the observer API (for `mapsentry tail`) here, in plaintext, so on a loopback
    /// address only [default: 127.0.0.1:50051, or a free port on 127.0.0.1 when that one is
    /// taken]. For a network, run `mapsentry collector` with TLS and ship to it with `agent`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Attribute pod processes with this node's pods from this kubeconfig (without it, `run`
    /// uses no Kubernetes: host processes get their unit, pod processes their pod UID only).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The node whose pods `--kubeconfig` watches [default: `$NODE_NAME`].
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    #[command(flatten)]
    capture: CaptureArgs,
    /// Serve Prometheus metrics on http://ADDR/metrics (default: off).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    limits: CollectorLimits,
}

/// What `run` did with the records it read.
#[derive(Debug, Default)]
struct Tally {
    emitted: u64,
    filtered: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = EventFilter::from_args(&args.comms, &args.syscalls, &args.prot_any)?;
    let shutdown = signals::requested()?;
    let listener = bind(args.listen).await?;
    let observer = listener
        .local_addr()
        .context("reading the observer address")?;
    let kubernetes = match &args.kubeconfig {
        Some(path) => Kubernetes::from_flags(Some(path.clone()), args.node.as_deref())?,
        None => Kubernetes::Off,
    };
    let mut attributor = Attributor::start(&kubernetes, args.capture.enrich())
        .await
        .context("cannot start attribution")?;
    let mut capture =
        Capture::start(&args.capture.config(filter.prot_any)).context("cannot start capturing")?;

    // The embedded collector: the same gRPC services as `mapsentry collector`.
    let hub = app::open_hub(args.limits.hub(), args.limits.retention_log())?;
    let publisher = PolicyPublisher::new();
    let policy_sets = publisher.subscribe();
    let alerting = Alerting::start(
        &hub,
        &args.policy.config()?,
        args.metrics_listen.map(|addr| (addr, true)),
        publisher,
        None,
    )
    .await?;
    let rejected = alerting.rejected_at_start().await;
    if rejected > 0 {
        anyhow::bail!(
            "--policy: {rejected} document(s) rejected (see above); nothing is enforced or alerted until they are fixed"
        );
    }
    // With `--alert-output -` the export prints the alert lines (as JSON, filtered).
    let alert_printer = if args.policy.export.to_stdout() {
        None
    } else {
        Some(print_alerts(&hub, args.output)?)
    };
    let (stop_collector, collector_stopped) = oneshot::channel::<()>();
    let mut server_config = args.limits.server();
    server_config.health = alerting.health.clone();
    let serving = Arc::clone(&hub);
    let collector = tokio::spawn(
        async move {
            serve(serving, &server_config, listener, async {
                drop(collector_stopped.await);
            })
            .await
        }
        .instrument(tracing::info_span!("collector")),
    );
    let mut enforcing = if args.policy.policies.is_empty() {
        None
    } else {
        Some(
            node::enforcing::local(
                policy_sets,
                &mut capture,
                attributor.pods().cloned(),
                args.capture.enforce_under.as_deref(),
            )
            .context("--policy: compiling the enforce-mode rules")?,
        )
    };
    let agent = EmbeddedAgent::start(&hub, &capture)?;

    announce(
        &mut BufWriter::new(io::stdout().lock()),
        args.output,
        &capture,
        observer,
    )?;
    let mut tally = Tally::default();
    let mut reader_gone = false;
    let mut lines = Vec::with_capacity(1 << 16);
    let mut writer = output::EventWriter::new(args.output);
    let counters = event_loop(
        &mut capture,
        &mut attributor,
        &agent,
        std::pin::pin!(shutdown),
        enforcing.as_mut(),
        None,
        |batch| {
            // A batch's lines are formatted into one buffer and written with one lock of stdout
            // (alert lines are printed between batches by their own task), in as few write
            // calls as the reader's pipe allows.
            lines.clear();
            print(&mut lines, &mut writer, &filter, batch, &mut tally);
            let open = write_lines(&lines)?;
            reader_gone |= !open;
            Ok(open)
        },
    )
    .await?;
    let shipping = agent.finish().await;
    drop(stop_collector);
    match tokio::time::timeout(Duration::from_secs(5), collector).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(error = %anyhow::Error::new(error), "the embedded collector failed");
        }
        Ok(Err(error)) => tracing::warn!(%error, "the embedded collector task failed"),
        Err(_) => tracing::warn!("the embedded collector did not stop within 5 s"),
    }
    alerting.stop().await;
    if let Some(alert_printer) = alert_printer {
        let _ = tokio::time::timeout(Duration::from_secs(1), alert_printer).await;
    }
    let mut out = BufWriter::new(io::stdout().lock());

    let totals = json!({
        "kind": "totals",
        "mode": capture.attached().mode.as_str(),
        "seen": counters.seen,
        "emitted": tally.emitted,
        "filtered": counters.filtered + tally.filtered,
        "dropped": counters.dropped,
        "malformed": capture.malformed(),
        "acked": shipping.acked,
        "enrichment_missing": attributor.missing_counter().get(),
    });
    if args.output == Format::Json && !reader_gone {
        let _ = writeln!(out, "{totals}").and_then(|()| out.flush());
    }
    status!(
        "detached; seen {}, emitted {}, filtered {}, dropped {} (ring buffer full), malformed {}; \
         collector stored {} of {} captured",
        counters.seen,
        tally.emitted,
        counters.filtered + tally.filtered,
        counters.dropped,
        capture.malformed(),
        shipping.acked,
        shipping.captured,
    );
    Ok(())
}

/// Print the alert updates of `hub` as they are published, until the hub closes.
fn print_alerts(hub: &Arc<Hub>, format: Format) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let filter = RecordFilter::new(None, &[v1::Kind::Alerts as i32])
        .context("building the alert subscription")?;
    let mut alerts = hub
        .subscribe(filter, None)
        .context("subscribing to alerts")?
        .items();
    Ok(tokio::spawn(
        async move {
            while let Some(item) =
                std::future::poll_fn(|cx| Pin::new(&mut alerts).poll_next(cx)).await
            {
                let Item::Alert(published) = item else {
                    continue;
                };
                let mut out = io::stdout().lock();
                if alert_output::write_alert(
                    &mut out,
                    format,
                    &published.alert,
                    published.cursor,
                    &published.node,
                )
                .and_then(|()| out.flush())
                .is_err()
                {
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("alert_printer")),
    ))
}

/// The observer listener: `--listen` as given, else the default port, else any free port.
async fn bind(listen: Option<SocketAddr>) -> anyhow::Result<TcpListener> {
    if let Some(addr) = listen {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--listen {addr}: `run` serves plaintext gRPC, so only on a loopback address; for a \
             network, run `mapsentry collector` with --tls-cert/--tls-key and `mapsentry agent`"
        );
        return TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {addr}: cannot bind"));
    }
    match TcpListener::bind(DEFAULT_LISTEN).await {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            tracing::warn!(
                "{DEFAULT_LISTEN} is taken; serving the observer API on a free port instead"
            );
            TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a free port on 127.0.0.1")
        }
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("cannot bind {DEFAULT_LISTEN}")))
        }
    }
}

/// The first line: which mode is in use, why cheaper ones were passed over, where to tail.
fn announce(
    out: &mut impl Write,
    format: Format,
    capture: &Capture,
    observer: SocketAddr,
) -> anyhow::Result<()> {
    let attached = capture.attached();
    if format == Format::Json {
        let rejected: serde_json::Map<_, _> = attached
            .rejected
            .iter()
            .map(|(mode, why)| (mode.to_string(), why.clone().into()))
            .collect();
        let line = json!({
            "kind": "attached", "mode": attached.mode.as_str(), "target": attached.target,
            "rejected": rejected, "observer": format!("http://{observer}"),
            "deny": attached.deny_unavailable.is_none(), "deny_unavailable": attached.deny_unavailable,
        });
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    status!(
        "capturing mmap and mmap2 in {} mode ({}); observer API on http://{observer}",
        attached.mode,
        attached.target
    );
    Ok(())
}

/// Format the events of `batch` that pass `filter` into `lines`.
fn print(
    lines: &mut Vec<u8>,
    writer: &mut output::EventWriter,
    filter: &EventFilter,
    batch: &[MmapEvent],
    tally: &mut Tally,
) {
    for event in batch {
        if filter.matches(event) || event.enforced.is_some() {
            tally.emitted += 1;
            writer.write(lines, event);
        } else {
            tally.filtered += 1;
        }
    }
}

/// Write `lines` to stdout. Returns false when stdout is closed (the reader went away), which
/// ends the run without an error.
fn write_lines(lines: &[u8]) -> io::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(lines).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}
