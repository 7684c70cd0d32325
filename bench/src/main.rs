//! `mapsentry-bench`: what mapsentry costs a node, side by side with bpftrace (the peer) and an
//! in-kernel counter (the floor), interleaved in one run and reported as medians and ratios.
//!
//! Run it through `scripts/bench.sh`, which builds the release binaries it drives.
#![forbid(unsafe_code)]

mod overhead;

use clap::{Parser, Subcommand};
use mapsentry_bench::{idle, pipeline};

#[derive(Debug, Parser)]
#[command(name = "mapsentry-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// mmap+munmap loop and getppid loop under each tracer (bare, mapsentry, bpftrace).
    Overhead(overhead::Args),
    /// Latency syscall -> subscriber and CPU/RSS of agent and collector at a paced rate, then a
    /// storm whose calls must equal events received plus counted drops.
    Pipeline(pipeline::Args),
    /// The agent's CPU and wake-ups a second while the process it watches maps nothing or a
    /// few pages a second, beside another build's (`--compare`).
    Idle(idle::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Overhead(args) => overhead::run(&args),
        Command::Pipeline(args) => pipeline::run(&args),
        Command::Idle(args) => idle::run(&args),
    }
}
