//! Ctrl-C and SIGTERM: how every long-running subcommand is asked to stop.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves on the first Ctrl-C or SIGTERM. Both handlers are installed by [`Shutdown::install`],
/// not at the first poll: a signal that arrives before the caller first waits is still a request
/// to stop, never the default action (termination without the totals). `tokio::signal::ctrl_c`,
/// used here before, installs its handler only when first polled; `run`'s event loop polls the
/// shutdown future only when no branch before it in that turn's order is ready, and a SIGINT sent
/// soon after the first event killed `mapsentry run` in a VM test (`cli_run`, 6.12).
#[derive(Debug)]
pub struct Shutdown {
    sigint: Signal,
    sigterm: Signal,
}

impl Shutdown {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.sigint.recv() => {}
            _ = self.sigterm.recv() => {}
        }
    }
}

/// A future that resolves on Ctrl-C or SIGTERM.
pub fn requested() -> anyhow::Result<impl Future<Output = ()> + Send> {
    let mut shutdown = Shutdown::install()?;
    Ok(async move { shutdown.requested().await })
}

#[cfg(test)]
mod tests;
