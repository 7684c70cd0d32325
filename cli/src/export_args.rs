//! The alert export flags of `collector` and `run` (`--alert-output`, `--alert-webhook`, their
//! filters), into [`mapsentry_collector::export::ExportConfig`].

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use mapsentry_collector::export::{
    ExportConfig, ExportFilter, OutputConfig, OutputTarget, WebhookConfig,
};
use mapsentry_policy::{Action, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionArg {
    Alert,
    Kill,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Audit,
    Enforce,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Alert export")]
pub struct ExportArgs {
    /// Write every alert update as a JSON line (the alert line of `tail -o json`, with `cursor`
    /// and `node`) to stdout (`-`) or to this file, rotated by size. On `run`, `-` replaces the
    /// alert lines `run` prints.
    #[arg(long, value_name = "-|PATH")]
    alert_output: Option<String>,
    /// Rotate the --alert-output file before it would exceed this many bytes: PATH becomes
    /// PATH.1, PATH.1 becomes PATH.2, ...
    #[arg(long, value_name = "BYTES", default_value_t = OutputConfig::DEFAULT_MAX_BYTES,
          value_parser = at_least_one::<u64>)]
    alert_output_max_bytes: u64,
    /// Rotated --alert-output files kept (PATH.1 .. PATH.N); the oldest beyond are deleted.
    #[arg(long, value_name = "N", default_value_t = OutputConfig::DEFAULT_FILES,
          value_parser = at_least_one::<usize>)]
    alert_output_files: usize,
    /// POST alert updates to this http:// or https:// URL, as a JSON array of alert lines per
    /// request (Content-Type: application/json); retried with backoff on 408, 429, 5xx and
    /// connection errors; any 2xx delivers.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
    /// Verify an https:// --alert-webhook against this PEM CA only [default: the system's
    /// root certificates].
    #[arg(long, value_name = "FILE", requires = "alert_webhook")]
    alert_webhook_ca: Option<PathBuf>,
    /// Most alerts in one webhook request.
    #[arg(long, value_name = "N", default_value_t = WebhookConfig::new("").batch,
          value_parser = at_least_one::<usize>)]
    alert_webhook_batch: usize,
    /// How long a webhook batch that is not full waits for more alerts (`500ms`, `2s`).
    #[arg(long, value_name = "DURATION", default_value = "1s",
          value_parser = crate::duration::parse)]
    alert_webhook_flush: Duration,
    /// The longest one webhook request may take, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = positive_duration)]
    alert_webhook_timeout: Duration,
    /// How long a batch the webhook does not accept is retried before it is dropped (counted
    /// in mapsentry_alert_export_dropped_total{reason="retries_exhausted"}).
    #[arg(long, value_name = "DURATION", default_value = "5m",
          value_parser = crate::duration::parse)]
    alert_webhook_retry_for: Duration,
    /// Alerts waiting for the webhook (while it is slow or down) before the oldest is dropped
    /// (counted in mapsentry_alert_export_dropped_total{reason="queue_full"}).
    #[arg(long, value_name = "N", default_value_t = WebhookConfig::new("").queue,
          value_parser = at_least_one::<usize>)]
    alert_webhook_queue: usize,
    /// Export only alerts from this namespace (repeatable; host processes have none).
    #[arg(long = "alert-export-namespace", value_name = "NAMESPACE")]
    export_namespaces: Vec<String>,
    /// Export only alerts of this policy: NAMESPACE/NAME for an MmapPolicy, NAME for a
    /// ClusterMmapPolicy (repeatable).
    #[arg(long = "alert-export-policy", value_name = "POLICY")]
    export_policies: Vec<String>,
    /// Export only alerts of rules with this action (repeatable).
    #[arg(long = "alert-export-action", value_enum, value_name = "ACTION")]
    export_actions: Vec<ActionArg>,
    /// Export only alerts of policies in this mode (repeatable).
    #[arg(long = "alert-export-mode", value_enum, value_name = "MODE")]
    export_modes: Vec<ModeArg>,
}

/// A number of at least 1.
fn at_least_one<T: std::str::FromStr + PartialEq + From<u8>>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match text.parse::<T>() {
        Ok(n) if n == T::from(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match crate::duration::parse(text)? {
        d if d.is_zero() => Err("must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

impl ExportArgs {
    /// The export asked for; filters without a sink are refused.
    pub fn config(&self) -> anyhow::Result<ExportConfig> {
        let output = self.alert_output.as_deref().map(|target| {
            let target = match target {
                "-" => OutputTarget::Stdout,
                path => OutputTarget::File(PathBuf::from(path)),
            };
            OutputConfig {
                max_bytes: self.alert_output_max_bytes,
                files: self.alert_output_files,
                ..OutputConfig::new(target)
            }
        });
        if let Some(output) = &output
            && output.target == OutputTarget::File(PathBuf::new())
        {
            bail!("--alert-output: give `-` for stdout or a file path");
        }
        let webhook = self.alert_webhook.as_ref().map(|url| WebhookConfig {
            batch: self.alert_webhook_batch,
            flush: self.alert_webhook_flush,
            queue: self.alert_webhook_queue,
            timeout: self.alert_webhook_timeout,
            retry_for: self.alert_webhook_retry_for,
            ca: self.alert_webhook_ca.clone(),
            ..WebhookConfig::new(url)
        });
        let filter = ExportFilter {
            namespaces: self.export_namespaces.clone(),
            policies: self.export_policies.clone(),
            actions: self
                .export_actions
                .iter()
                .map(|a| match a {
                    ActionArg::Alert => Action::Alert,
                    ActionArg::Kill => Action::Kill,
                    ActionArg::Deny => Action::Deny,
                })
                .collect(),
            modes: self
                .export_modes
                .iter()
                .map(|m| match m {
                    ModeArg::Audit => Mode::Audit,
                    ModeArg::Enforce => Mode::Enforce,
                })
                .collect(),
        };
        if output.is_none() && webhook.is_none() && filter != ExportFilter::default() {
            bail!(
                "--alert-export-namespace/-policy/-action/-mode filter the alert export: give \
                 --alert-output or --alert-webhook too"
            );
        }
        Ok(ExportConfig {
            output,
            webhook,
            filter,
        })
    }

    /// Whether alerts go to stdout as JSON lines (so `run` does not print them itself).
    pub fn to_stdout(&self) -> bool {
        self.alert_output.as_deref() == Some("-")
    }
}
