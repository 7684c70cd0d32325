//! `--alert-output -|PATH`: alert JSON lines on stdout or in a file rotated by size.
//!
//! Rotation renames: when the next line would take `PATH` past `max_bytes`, `PATH.{files-1}`
//! becomes `PATH.{files}` (the oldest, `PATH.{files}`, is replaced), ..., `PATH` becomes
//! `PATH.1`, and a new `PATH` is started. A line is never split: a line longer than
//! `max_bytes` gets a file of its own. Writes run on the blocking pool, one batch at a time.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tracing::Instrument as _;

use super::{DropReason, ExportMetrics, FailureLog, Line, queue::Queue};
use crate::fanout::PublishedAlert;

/// Most alerts written per batch.
const BATCH: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// `-`
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    pub target: OutputTarget,
    /// Rotate before the file would exceed this many bytes (at least 1).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (at least 1).
    pub files: usize,
    /// Alerts queued for writing before the oldest is dropped.
    pub queue: usize,
}

impl OutputConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
    pub const DEFAULT_FILES: usize = 5;
    pub const DEFAULT_QUEUE: usize = 10_000;

    #[must_use]
    pub fn new(target: OutputTarget) -> Self {
        Self {
            target,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            files: Self::DEFAULT_FILES,
            queue: Self::DEFAULT_QUEUE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("--alert-output {}: cannot open it for appending", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--alert-output {}: is a directory; give a file path", path.display())]
    Directory { path: PathBuf },
    #[error("--alert-output-max-bytes: must be at least 1")]
    ZeroMaxBytes,
    #[error("--alert-output-files: must be at least 1 (the rotated files kept)")]
    ZeroFiles,
}

/// Where lines go and how full the current file is.
#[derive(Debug)]
pub(crate) enum Writer {
    Stdout,
    File(Rotating),
}

#[derive(Debug)]
pub(crate) struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    files: usize,
    /// None after a failure: reopened at the next write.
    file: Option<File>,
    size: u64,
}

impl Writer {
    /// Check `config` and open its file now, so a bad path is refused at start.
    pub(crate) fn open(config: &OutputConfig) -> Result<Self, OutputError> {
        if config.max_bytes == 0 {
            return Err(OutputError::ZeroMaxBytes);
        }
        if config.files == 0 {
            return Err(OutputError::ZeroFiles);
        }
        match &config.target {
            OutputTarget::Stdout => Ok(Self::Stdout),
            OutputTarget::File(path) => {
                if path.is_dir() {
                    return Err(OutputError::Directory { path: path.clone() });
                }
                let mut rotating = Rotating {
                    path: path.clone(),
                    max_bytes: config.max_bytes,
                    files: config.files,
                    file: None,
                    size: 0,
                };
                rotating.reopen().map_err(|source| OutputError::Open {
                    path: path.clone(),
                    source,
                })?;
                Ok(Self::File(rotating))
            }
        }
    }

    pub(crate) fn sink(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
        }
    }

    /// Write `alerts`, one line each.
    fn write(&mut self, alerts: &[Arc<PublishedAlert>]) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut buf = Vec::with_capacity(alerts.len() * 1024);
                for alert in alerts {
                    serde_json::to_writer(&mut buf, &Line::of(alert))?;
                    buf.push(b'\n');
                }
                let mut out = io::stdout().lock();
                out.write_all(&buf)?;
                out.flush()
            }
            Self::File(rotating) => rotating.write(alerts),
        }
    }
}

impl Rotating {
    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `PATH` -> `PATH.1` -> ... -> `PATH.{files}`; a new `PATH`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        for n in (1..self.files).rev() {
            rename_if_there(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename_if_there(&self.path, &self.rotated(1))?;
        self.reopen()
    }

    fn write(&mut self, alerts: &[Arc<PublishedAlert>]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut buf = Vec::with_capacity(alerts.len() * 1024);
        let mut line = Vec::with_capacity(1024);
        for alert in alerts {
            line.clear();
            serde_json::to_writer(&mut line, &Line::of(alert))?;
            line.push(b'\n');
            let pending = self.size + buf.len() as u64;
            if pending > 0 && pending + line.len() as u64 > self.max_bytes {
                self.flush(&mut buf)?;
                self.rotate()?;
            }
            buf.extend_from_slice(&line);
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("the alert file is not open"))?;
        let written = file.write_all(buf);
        if written.is_err() {
            self.file = None;
        }
        written?;
        self.size += buf.len() as u64;
        buf.clear();
        Ok(())
    }
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Write the batches of `queue` until it is closed and empty.
pub(crate) fn start(
    writer: Writer,
    queue: Arc<Queue>,
    metrics: ExportMetrics,
) -> tokio::task::JoinHandle<()> {
    let sink = writer.sink();
    tokio::spawn(
        async move {
            let mut writer = Some(writer);
            let mut failures = FailureLog::new(sink);
            while let Some(batch) = queue.next_batch(BATCH, Duration::ZERO).await {
                let Some(mut w) = writer.take() else { break };
                let n = batch.len() as u64;
                let (w, result) = match tokio::task::spawn_blocking(move || {
                    let result = w.write(&batch);
                    (w, result)
                })
                .await
                {
                    Ok(done) => done,
                    Err(error) => {
                        tracing::error!(%error, "the alert writer panicked");
                        metrics.dropped(sink, DropReason::WriteFailed, n);
                        break;
                    }
                };
                writer = Some(w);
                match result {
                    Ok(()) => metrics.delivered(sink, n),
                    Err(error) => {
                        metrics.failure(sink);
                        metrics.dropped(sink, DropReason::WriteFailed, n);
                        failures.failed(&format_args!("writing alert lines: {error}"));
                    }
                }
            }
            metrics.dropped(sink, DropReason::Shutdown, queue.drain().len() as u64);
        }
        .instrument(tracing::info_span!("alert_output", sink)),
    )
}

#[cfg(test)]
impl Writer {
    pub(crate) fn write_for_tests(&mut self, alerts: &[Arc<PublishedAlert>]) -> io::Result<()> {
        self.write(alerts)
    }
}
