//! The peer: bpftrace's programs for the overhead tables' rows, and how many mmap calls a run of
//! each saw.

use std::process::Command;

use crate::tracer::{Ready, Tracer, TracerOutput};

/// A bpftrace program on the per-syscall mmap tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bpftrace {
    /// A counter on the entry: issue 19's floor.
    Floor,
    /// Counters on the entry and the exit: a tool that reports each call's result hooks both.
    EntryExit,
    /// Each call's arguments printed on the entry, every line read by the benchmark.
    Printed,
}

/// What bpftrace prints once its probes are attached.
pub const BPFTRACE_READY: Ready = Ready::Stdout("Attaching");

impl std::fmt::Display for Bpftrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Floor => "bpftrace-floor",
            Self::EntryExit => "bpftrace-entry-exit",
            Self::Printed => "bpftrace-printed",
        })
    }
}

impl Bpftrace {
    #[must_use]
    pub fn program(self) -> &'static str {
        match self {
            Self::Floor => "tracepoint:syscalls:sys_enter_mmap { @calls = count(); }",
            Self::EntryExit => {
                "tracepoint:syscalls:sys_enter_mmap { @calls = count(); } \
                 tracepoint:syscalls:sys_exit_mmap { @returns = count(); }"
            }
            Self::Printed => {
                r#"tracepoint:syscalls:sys_enter_mmap { printf("%s %d %d %lx %lu %lu %lu %ld %lu\n", comm, pid, tid, args->addr, args->len, args->prot, args->flags, (int64)args->fd, args->off); }"#
            }
        }
    }

    /// `bpftrace --version`, or why it cannot run.
    pub fn version() -> Result<String, String> {
        let output = Command::new("bpftrace")
            .arg("--version")
            .output()
            .map_err(|e| format!("running bpftrace: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "bpftrace --version: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// This program running, its probes attached.
    pub fn start(self) -> Result<Tracer, String> {
        let mut command = Command::new("bpftrace");
        command.args(["-e", self.program()]);
        Tracer::start(command, BPFTRACE_READY)
    }

    /// The mmap calls a run saw: its `@calls` count, or the lines it printed and the events it
    /// said it lost.
    pub fn seen(self, output: &TracerOutput) -> Result<u64, String> {
        match self {
            Self::Floor | Self::EntryExit => output
                .calls
                .ok_or_else(|| format!("{self} printed no @calls count")),
            Self::Printed => Ok(output.lines + output.lost),
        }
    }
}
