//! `mapsentry run`: capture on this host and print every call, until Ctrl-C or SIGTERM.

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use anyhow::Context;
use mapsentry_agent::{
    AttachMode, Capture, CaptureConfig,
    capture::{DEFAULT_RING_BUFFER_BYTES, DEFAULT_WAKEUP_BYTES},
};
use mapsentry_policy::MmapEvent;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    filter::EventFilter,
    output::{self, Format},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How to hook the kernel: auto picks the cheapest mode this kernel supports.
    #[arg(long, default_value = "auto", value_parser = parse_attach)]
    attach: AttachMode,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
    /// Only this process (filtered in the kernel).
    #[arg(long)]
    pid: Option<u32>,
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
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    ring_buffer_bytes: u32,
    /// Bytes of records the kernel lets wait before waking mapsentry (0: wake at every record;
    /// a quiet stream is still read every 10 ms).
    #[arg(long, default_value_t = DEFAULT_WAKEUP_BYTES)]
    wakeup_bytes: u64,
    /// BTF of the running kernel, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    btf: Option<PathBuf>,
}

fn parse_attach(s: &str) -> Result<AttachMode, String> {
    s.parse()
}

/// What `run` did with the records it read.
#[derive(Debug, Default)]
struct Tally {
    emitted: u64,
    filtered: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = EventFilter::from_args(&args.comms, &args.syscalls, &args.prot_any)?;
    let config = CaptureConfig {
        attach: args.attach,
        pid: args.pid,
        prot_any: filter.prot_any,
        ring_buffer_bytes: args.ring_buffer_bytes,
        wakeup_bytes: args.wakeup_bytes,
        btf: args.btf,
    };
    let mut capture = Capture::start(&config).context("cannot start capturing")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut out = BufWriter::new(io::stdout().lock());
    announce(&mut out, args.output, &capture)?;

    let mut tally = Tally::default();
    let mut batch = Vec::with_capacity(1024);
    let mut reader_gone = false;
    loop {
        tokio::select! {
            read = capture.next_batch(&mut batch) => { read?; }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        if !print(&mut out, args.output, &filter, &mut batch, &mut tally)? {
            reader_gone = true;
            break;
        }
    }

    capture.detach();
    capture.drain(&mut batch);
    if !reader_gone {
        print(&mut out, args.output, &filter, &mut batch, &mut tally)?;
    }
    let counters = capture.kernel_counters()?;
    let totals = json!({
        "kind": "totals",
        "mode": capture.attached().mode.as_str(),
        "seen": counters.seen,
        "emitted": tally.emitted,
        "filtered": counters.filtered + tally.filtered,
        "dropped": counters.dropped,
        "malformed": capture.malformed(),
    });
    if args.output == Format::Json && !reader_gone {
        let _ = writeln!(out, "{totals}").and_then(|()| out.flush());
    }
    eprintln!(
        "mapsentry: detached; seen {}, emitted {}, filtered {}, dropped {} (ring buffer full), malformed {}",
        counters.seen,
        tally.emitted,
        counters.filtered + tally.filtered,
        counters.dropped,
        capture.malformed()
    );
    Ok(())
}

/// The first line: which mode is in use and why cheaper ones were passed over.
fn announce(out: &mut impl Write, format: Format, capture: &Capture) -> anyhow::Result<()> {
    let attached = capture.attached();
    if format == Format::Json {
        let rejected: serde_json::Map<_, _> = attached
            .rejected
            .iter()
            .map(|(mode, why)| (mode.to_string(), why.clone().into()))
            .collect();
        let line = json!({"kind": "attached", "mode": attached.mode.as_str(), "target": attached.target, "rejected": rejected, "deny": attached.deny_unavailable.is_none(), "deny_unavailable": attached.deny_unavailable});
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    eprintln!(
        "mapsentry: capturing mmap and mmap2 in {} mode ({})",
        attached.mode, attached.target
    );
    Ok(())
}

/// Print the events of `batch` that pass `filter`, then clear it. Returns false when stdout is
/// closed (the reader went away), which ends the run without an error.
fn print(
    out: &mut impl Write,
    format: Format,
    filter: &EventFilter,
    batch: &mut Vec<MmapEvent>,
    tally: &mut Tally,
) -> anyhow::Result<bool> {
    let result = batch.iter().try_for_each(|event| {
        if filter.matches(event) {
            tally.emitted += 1;
            output::write_event(out, format, event)
        } else {
            tally.filtered += 1;
            Ok(())
        }
    });
    batch.clear();
    match result.and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}
