//! `mapsentry`: the one binary. Arguments are parsed before the runtime starts; each subcommand
//! lives in its own module.
#![forbid(unsafe_code)]

mod agent;
mod agent_http;
mod alert_output;
mod alerting;
mod capture_args;
mod client_args;
mod collector;
mod enforcing;
mod filter;
mod output;
mod policy;
mod pump;
mod run;
mod signals;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Container-aware security agent for memory mappings: watches every mmap and mmap2 call.
#[derive(Debug, Parser)]
#[command(name = "mapsentry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture on this host and print every mmap/mmap2 call (the standalone default).
    Run(run::RunArgs),
    /// Capture on this node and stream every call to a collector.
    Agent(agent::AgentArgs),
    /// Take agent streams, keep recent events, serve subscribers over gRPC.
    Collector(collector::CollectorArgs),
    /// Follow a collector's (or `run`'s) events, filtered, resuming after reconnects.
    Tail(tail::TailArgs),
    /// Check policy files, replay recorded events against policies, print the CRDs.
    Policy(policy::PolicyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("starting the async runtime"));
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Collector(args) => collector::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Policy(args) => policy::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("mapsentry: error: {error:#}");
    ExitCode::FAILURE
}

/// Logs go to stderr (records go to stdout); `RUST_LOG` overrides the default `info`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
