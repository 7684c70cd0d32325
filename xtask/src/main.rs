//! `cargo xtask`: developer and CI tasks that are programs rather than shell scripts.
//!
//! `cargo xtask vm-test --kernel 6.1|6.12` runs the real-kernel tests on a stock Debian kernel in
//! qemu (software emulation): static test binaries, the kernel fetched once into a cache, a
//! busybox initramfs, one boot, the results read back from the serial console.
//!
//! `cargo xtask layout` checks the workspace's layout rules (the agent and collector crates
//! apart, the binary thin); its tests run the same check in every `cargo test`.
#![forbid(unsafe_code)]

mod binaries;
mod console;
mod initramfs;
mod kernel;
mod layout;
mod plan;
mod qemu;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "mapsentry developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the capture tests in every attach mode on a stock kernel, in a qemu VM.
    VmTest(VmTestArgs),
    /// Measure each attach mode's tax on unrelated syscalls, on filtered mmaps and with every
    /// event streamed, beside bpftrace, on a stock kernel in a qemu VM: ratios inside one boot
    /// (e2e/src/bin/syscall_tax.rs).
    VmBench(VmTestArgs),
    /// Check the layout rules: agent and collector crates never depend on each other, and the
    /// binary holds no module of a role's library.
    Layout,
    /// Build the static release binaries the VMs and the test cluster's images run (the e2e tests,
    /// their helpers and `mapsentry`, in one cargo invocation) and print the directory that holds
    /// `mapsentry` and `mmap_call`.
    BuildStatic,
}

#[derive(Debug, clap::Args)]
struct VmTestArgs {
    /// Which kernel: 6.1 (Debian 12) or 6.12 (Debian 12 backports), cloud flavour, or
    /// 6.12-no-ia32 (6.12 booted with ia32_emulation=false, tracepoint mode only).
    #[arg(long)]
    kernel: String,
    /// Where fetched kernels are kept (fetched once, then reused).
    #[arg(long, env = "MAPSENTRY_KERNEL_CACHE", default_value = kernel::DEFAULT_CACHE)]
    cache_dir: PathBuf,
    /// Give up on the VM after this many seconds (software emulation is slow). Default: 600 for
    /// the tests, 2400 for the benchmark (its rounds start bpftrace and `mapsentry run` dozens
    /// of times; 11 rounds, the storms and the pipeline runs took ~20 minutes in the VM on a
    /// 2-core build machine).
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Also keep the whole serial console here (it is always echoed to stdout).
    #[arg(long)]
    console_log: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::VmTest(args) => match vm_test(&args, false) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("xtask vm-test: error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Layout => match workspace_root().and_then(|root| layout::check(&root)) {
            Ok(problems) if problems.is_empty() => {
                println!("xtask layout: agent and collector apart, the binary thin");
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for problem in problems {
                    println!("xtask layout: {problem}");
                }
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("xtask layout: error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::BuildStatic => match workspace_root().and_then(|root| binaries::build(&root)) {
            Ok(built) => {
                let mapsentry = built
                    .helpers
                    .iter()
                    .find(|h| h.file_name() == Some("mapsentry".as_ref()))
                    .and_then(|h| h.parent());
                match mapsentry {
                    Some(dir) => {
                        println!("{}", dir.display());
                        ExitCode::SUCCESS
                    }
                    None => ExitCode::FAILURE,
                }
            }
            Err(error) => {
                eprintln!("xtask build-static: error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::VmBench(args) => match vm_test(&args, true) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("xtask vm-bench: error: {error:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Boots per run when the VM dies before /init starts.
const BOOT_ATTEMPTS: u32 = 2;

/// Build, fetch, boot, report (the tests, or with `bench` the benchmark). `Ok(false)`: the VM
/// ran but a test failed or never reported.
fn vm_test(args: &VmTestArgs, bench: bool) -> anyhow::Result<bool> {
    let kernel = kernel::Kernel::named(&args.kernel)?;
    let root = workspace_root()?;
    let started = std::time::Instant::now();

    eprintln!("xtask vm-test: building static test binaries");
    let built = binaries::build(&root)?;
    let build_time = started.elapsed();

    let vmlinuz = kernel::fetch(kernel, &args.cache_dir)?;
    let plan = if bench {
        plan::Plan::bench(&built, &root)?
    } else {
        plan::Plan::for_kernel(kernel, &built)?
    };
    for skip in &plan.skipped {
        eprintln!(
            "xtask vm-test: not run in the VM: {}: {}",
            skip.suite, skip.reason
        );
    }
    let nonce = console::nonce();
    let work = std::env::temp_dir().join(format!("mapsentry-vm-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initrd.gz");
    initramfs::build(&plan, &built, &nonce, &initrd)?;

    // A VM that dies before /init starts is the emulator or the kernel's early boot, not our
    // tests (the 6.12 kernel did so about one boot in three before `-cx16`): boot once more.
    let mut attempt = 1;
    let boot = loop {
        eprintln!(
            "xtask vm-test: booting {} ({}), attempt {attempt}",
            kernel.name,
            vmlinuz.display()
        );
        let boot = qemu::boot(
            &vmlinuz,
            &initrd,
            kernel.boot_args,
            Duration::from_secs(args.timeout_secs.unwrap_or(if bench { 2400 } else { 600 })),
            args.console_log.as_deref(),
        );
        let booted = boot
            .as_ref()
            .is_ok_and(|b| console::Report::parse(&b.console, &nonce).booted.is_some());
        if booted || attempt == BOOT_ATTEMPTS {
            break boot;
        }
        eprintln!("xtask vm-test: the VM stopped before /init ran: booting again");
        attempt += 1;
    };
    let _ = std::fs::remove_dir_all(&work);
    let boot = boot?;
    let report = console::Report::parse(&boot.console, &nonce);
    println!("{}", report.summary(&plan, kernel.name, &boot, build_time));
    Ok(report.passed(&plan))
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask's manifest directory has no parent")
}
