//! Ctrl-C and SIGTERM: how every long-running subcommand is asked to stop.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first Ctrl-C or SIGTERM.
#[derive(Debug)]
pub struct Shutdown {
    sigterm: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    pub async fn requested(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.sigterm.recv() => {}
        }
    }
}

/// A future that resolves on Ctrl-C or SIGTERM.
pub fn requested() -> anyhow::Result<impl Future<Output = ()> + Send> {
    let mut shutdown = Shutdown::install()?;
    Ok(async move { shutdown.requested().await })
}
