//! `mapsentry`: the one binary. It parses the arguments and builds each role's configuration
//! before the runtime starts, starts the runtime the role needs, installs the signal handlers
//! and prints; the roles themselves are library functions (`mapsentry_agent::node::run`,
//! `mapsentry_collector::run`).
//!
//! The log (stderr) has one shape per `--log-format`: text lines, or one JSON object a line.
//! Status lines (what a role is doing, for an operator) are log lines with the target
//! `mapsentry` (`INFO mapsentry: collector serving on ...`); stdout carries records only.
#![forbid(unsafe_code)]

mod agent;
mod alert_output;
mod capture_args;
mod client_args;
mod collector;
mod filter;
mod output;
mod policy;
mod run;
mod signals;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Container-aware security agent for memory mappings: watches every mmap and mmap2 call.
#[derive(Debug, Parser)]
#[command(name = "mapsentry", version, about)]
struct Cli {
    /// How log lines (stderr) are written: text, or one JSON object per line.
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "text",
        env = "MAPSENTRY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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

/// What runs on the runtime, its configuration built before the runtime starts.
#[derive(Debug)]
enum Role {
    /// One thread: `run`, `tail` and the agent work one stream at a time.
    Run(run::RunArgs),
    Tail(tail::TailArgs),
    Agent(mapsentry_agent::node::Config),
    /// A worker per core: the collector serves many agent streams and subscribers at once.
    Collector(mapsentry_collector::Config),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let role = match cli.command {
        // No runtime: files in, lines out.
        Command::Policy(args) => return exit(policy::run(args)),
        Command::Run(args) => Role::Run(args),
        Command::Tail(args) => Role::Tail(args),
        Command::Agent(args) => Role::Agent(args.config()),
        Command::Collector(args) => match args.config() {
            Ok(config) => Role::Collector(config),
            Err(error) => return exit(Err(error)),
        },
    };
    let runtime = match role {
        Role::Collector(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            return exit(Err(
                anyhow::Error::new(error).context("starting the async runtime")
            ));
        }
    };
    exit(runtime.block_on(async {
        match role {
            Role::Run(args) => run::run(args).await,
            Role::Tail(args) => tail::run(args).await,
            Role::Agent(config) => {
                let shutdown = signals::requested()?;
                Ok(mapsentry_agent::node::run(config, shutdown).await?)
            }
            Role::Collector(config) => {
                let shutdown = signals::requested()?;
                Ok(mapsentry_collector::run(config, shutdown).await?)
            }
        }
    }))
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(target: mapsentry_service::STATUS_TARGET, "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (records go to stdout); `RUST_LOG` overrides the default `info`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
