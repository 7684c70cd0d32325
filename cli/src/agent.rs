//! `mapsentry agent --collector URL [--node NAME]`: capture on this node and stream every call to
//! a collector, until Ctrl-C or SIGTERM.

use anyhow::Context;
use mapsentry_agent::{
    Capture,
    shipper::{Shipper, ShipperConfig},
};

use mapsentry_proto::client::ClientSecurity;

use crate::{
    capture_args::{CaptureArgs, hostname},
    client_args::ClientArgs,
    pump::pump,
    signals::Shutdown,
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The collector, e.g. `https://mapsentry-collector:50051` (TLS, see --ca/--cert/--key) or
    /// `http://...` (plaintext, logged as a warning).
    #[arg(long, value_name = "URL")]
    collector: String,
    /// This node's name in events and stats (default: `$NODE_NAME`, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Bytes of events held while the collector is slow or away; the oldest go beyond it.
    #[arg(long, default_value_t = 64 << 20)]
    buffer_bytes: usize,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    capture: CaptureArgs,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install()?;
    let mut capture = Capture::start(&args.capture.config(0)).context("cannot start capturing")?;
    let node = args.node.unwrap_or_else(hostname);
    let shipper = start_shipper(
        &args.collector,
        &node,
        args.buffer_bytes,
        &capture,
        args.client.security(),
    )?;
    eprintln!(
        "mapsentry: agent on node {node} capturing in {} mode, shipping to {} (boot id {})",
        capture.attached().mode,
        args.collector,
        shipper.boot_id()
    );
    let kernel = pump(&mut capture, &shipper, &mut shutdown, |_| Ok(true)).await?;
    let stats = shipper.finish().await;
    eprintln!(
        "mapsentry: detached; seen {}, captured {}, shipped {}, acked {}, dropped {:?}",
        kernel.seen, stats.captured, stats.shipped, stats.acked, stats.dropped
    );
    Ok(())
}

/// A shipper that tells the collector who this agent is.
pub fn start_shipper(
    collector: &str,
    node: &str,
    buffer_bytes: usize,
    capture: &Capture,
    security: ClientSecurity,
) -> anyhow::Result<Shipper> {
    let mut config = ShipperConfig::new(collector, node);
    config.security = security;
    config.buffer_bytes = buffer_bytes;
    capture
        .attached()
        .mode
        .as_str()
        .clone_into(&mut config.attach_mode);
    config.capabilities = vec![format!("attach:{}", capture.attached().mode)];
    Shipper::start(config).context("starting the shipper")
}
