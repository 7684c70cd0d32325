//! `mapsentry collector --listen ADDR`: take agent streams, keep recent events, serve
//! subscribers (with gRPC health and reflection), until Ctrl-C or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use mapsentry_collector::{Hub, HubConfig, ServerConfig, log::LogConfig, serve};
use tokio::net::TcpListener;

use crate::{alerting::PolicyArgs, signals};

/// The collector's default Prometheus listener (the chart's `collector.metrics.port`).
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9090";

#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// Address to serve gRPC on (agents, subscribers, health, reflection).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: 0.0.0.0:9090, skipped with a
    /// warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    limits: CollectorLimits,
}

/// Bounds of a collector, shared with `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorLimits {
    /// Events kept for subscribers that resume by cursor.
    #[arg(long, default_value_t = HubConfig::default().retention_events)]
    retention_events: usize,
    /// Events queued per subscriber before it gets loss notices.
    #[arg(long, default_value_t = HubConfig::default().subscriber_queue)]
    subscriber_queue: usize,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Keep a retention log here: batches are written before they are acked, and a restarted
    /// collector reads them back (same cursors, no duplicates). Without it, retention is in
    /// memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bytes the retention log may hold on disk; the oldest segments go beyond it.
    #[arg(long, default_value_t = 1 << 30)]
    data_max_bytes: u64,
}

impl CollectorLimits {
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            retention_events: self.retention_events,
            subscriber_queue: self.subscriber_queue,
        }
    }

    /// The hub, reading back the retention log when there is one.
    pub fn open_hub(&self) -> anyhow::Result<Arc<Hub>> {
        match &self.data_dir {
            None => Ok(Hub::new(self.hub())),
            Some(dir) => {
                let log = LogConfig {
                    max_bytes: self.data_max_bytes,
                    ..LogConfig::new(dir)
                };
                Hub::open(self.hub(), log).with_context(|| format!("--data-dir {}", dir.display()))
            }
        }
    }

    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            max_message_bytes: self.max_message_bytes,
            ..ServerConfig::default()
        }
    }
}

pub async fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let shutdown = signals::requested()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    eprintln!(
        "mapsentry: collector serving on {}",
        listener.local_addr().context("reading the bound address")?
    );
    let hub = args.limits.open_hub()?;
    let metrics_listen = match args.metrics_listen {
        Some(addr) => (addr, true),
        None => (DEFAULT_METRICS_LISTEN.parse()?, false),
    };
    let alerting = args.policy.start(&hub, Some(metrics_listen)).await?;
    serve(hub, &args.limits.server(), listener, shutdown)
        .await
        .context("serving gRPC")?;
    alerting.stop().await;
    eprintln!("mapsentry: collector stopped");
    Ok(())
}
