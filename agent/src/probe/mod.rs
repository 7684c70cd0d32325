//! Loading the capture object and attaching it in one of the attach modes.
//!
//! Every mode is decided by trying it: a mode is available when both of its programs load and
//! attach on this kernel. `auto` tries them cheapest first and keeps the first that works.

pub mod ia32;
pub mod kernel;

use std::{fmt, str::FromStr};

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Lsm, Program, RawTracePoint, TracePoint},
};

use ia32::Ia32Calls;

/// How the programs hook the kernel (DESIGN.md, "Attach modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// The cheapest mode this kernel supports.
    Auto,
    /// fentry/fexit trampolines on the kernel's mmap function: no cost to other syscalls.
    Fentry,
    /// kprobe/kretprobe on the same function.
    Kprobe,
    /// Raw `sys_enter`/`sys_exit` tracepoints: any BPF kernel, native and ia32 calls alike,
    /// but a small cost on every system call. Where the kernel runs no ia32 calls, the
    /// per-syscall tracepoints of the mapping calls instead, which cost other calls nothing
    /// beyond the kernel's own test ([`TracepointHooks`]).
    Tracepoint,
}

/// Which tracepoints tracepoint mode hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TracepointHooks {
    /// The per-syscall tracepoints of mmap, mprotect and pkey_mprotect where the kernel cannot
    /// run ia32 calls (which those never see: [`ia32`]), else the generic pair.
    #[default]
    Auto,
    /// Always the generic `sys_enter`/`sys_exit` pair.
    Generic,
    /// Always the per-syscall tracepoints, also where the kernel runs ia32 calls: blind to every
    /// ia32 call (any process can make one with `int $0x80`). For kernels the operator knows run
    /// none where mapsentry cannot tell (their build default hidden), and for measuring.
    PerSyscall,
}

impl TracepointHooks {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Generic => "generic",
            Self::PerSyscall => "per-syscall",
        }
    }
}

impl FromStr for TracepointHooks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Auto, Self::Generic, Self::PerSyscall]
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| {
                format!("unknown tracepoint hooks {s:?}: expected auto, generic or per-syscall")
            })
    }
}

/// The per-syscall tracepoints tracepoint mode attaches where the kernel runs no ia32 calls:
/// one entry and one exit program, each attached to the three calls.
const PER_SYSCALL: [&str; 3] = ["mmap", "mprotect", "pkey_mprotect"];
const PER_SYSCALL_PROGRAMS: (&str, &str) = ("ms_sc_enter", "ms_sc_exit");
/// How [`Attached::target`] names them.
pub const PER_SYSCALL_TARGET: &str = "syscalls/sys_{enter,exit}_{mmap,mprotect,pkey_mprotect}";

impl AttachMode {
    /// The concrete modes, cheapest first: the order `auto` tries them in.
    pub const CONCRETE: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }

    /// The (entry, exit) program pairs of this mode in capture.bpf.c, preferred first.
    fn program_pairs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Auto => &[],
            Self::Fentry => &[("ms_fentry_enter", "ms_fexit_exit")],
            Self::Kprobe => &[("ms_kprobe_enter", "ms_kprobe_exit")],
            Self::Tracepoint => &[
                ("ms_btf_enter", "ms_btf_exit"),
                ("ms_tp_enter", "ms_tp_exit"),
            ],
        }
    }
}

impl AttachMode {
    /// The (entry, exit) programs on the kernel's mprotect function, for the modes whose mmap
    /// hook does not see mprotect.
    fn mprotect_pair(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Fentry => Some(("ms_fentry_mprotect_enter", "ms_fexit_mprotect_exit")),
            Self::Kprobe => Some(("ms_kprobe_mprotect_enter", "ms_kprobe_mprotect_exit")),
            Self::Auto | Self::Tracepoint => None,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Auto, Self::Fentry, Self::Kprobe, Self::Tracepoint]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown attach mode {s:?}: expected auto, fentry, kprobe or tracepoint")
            })
    }
}

/// The mode in use, what it hooks, and why the cheaper modes were passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub mode: AttachMode,
    /// The hook: a kernel function, or `sys_enter/sys_exit`.
    pub target: String,
    /// Modes tried before this one, each with the reason it failed.
    pub rejected: Vec<(AttachMode, String)>,
    /// Why Deny rules cannot be enforced on this kernel (no BPF LSM); `None` when they can.
    pub deny_unavailable: Option<String>,
}

/// Why no mode could be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("attach mode {mode} is not available on this kernel: {reason}")]
    Unavailable { mode: AttachMode, reason: String },
    #[error("no attach mode works on this kernel: {}", list(.tried))]
    NoMode { tried: Vec<(AttachMode, String)> },
}

fn list(tried: &[(AttachMode, String)]) -> String {
    tried
        .iter()
        .map(|(mode, why)| format!("{mode}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Attach `requested` (or, for `auto`, the cheapest mode that works) in `ebpf`; `hooks` says
/// which tracepoints tracepoint mode may use.
pub fn attach(
    ebpf: &mut Ebpf,
    requested: AttachMode,
    hooks: TracepointHooks,
    btf: &Btf,
) -> Result<Attached, AttachError> {
    select(requested, |mode| attach_mode(ebpf, mode, None, hooks, btf))
}

/// Feature probe: whether `mode` works here, on `function` instead of the kernel's mmap function
/// if given (fentry and kprobe only), tried for real on a fresh copy of the capture object that
/// is unloaded again. Returns the hook. An extension point for enforcement: the LSM programs
/// will be probed the same way.
pub fn probe_mode(
    mode: AttachMode,
    function: Option<&str>,
    btf: &Btf,
) -> Result<String, AttachError> {
    let unavailable = |reason: String| AttachError::Unavailable { mode, reason };
    if mode == AttachMode::Auto {
        return Err(unavailable("probe a concrete mode, not auto".into()));
    }
    let mut ebpf = aya::EbpfLoader::new()
        .btf(Some(btf))
        .allow_unsupported_maps() // `pending` is task storage (see Capture::start)
        .load(mapsentry_ebpf::CAPTURE)
        .map_err(|e| unavailable(format!("loading the capture object: {}", chain(&e))))?;
    attach_mode(&mut ebpf, mode, function, TracepointHooks::Auto, btf).map_err(unavailable)
}

/// The BPF LSM programs that make Deny rules refuse calls with EPERM.
const LSM_PROGRAMS: [&str; 2] = ["ms_lsm_mmap_file", "ms_lsm_file_mprotect"];

/// Attach the Deny programs (BPF LSM), or say why this kernel cannot run them.
pub fn attach_deny(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let active = kernel::active_lsms().map_err(|e| e.to_string())?;
    if !active.split(',').any(|lsm| lsm == "bpf") {
        return Err(format!(
            "BPF LSM is not active (active LSMs: {active}); boot with lsm=...,bpf"
        ));
    }
    let result = LSM_PROGRAMS
        .iter()
        .try_for_each(|name| attach_program(ebpf, name, "", btf));
    if result.is_err() {
        unload_all(ebpf, &LSM_PROGRAMS);
    }
    result
}

/// Attach exec tracking, which keeps each thread's executable classes current for rules on
/// executables: `sched_process_exec` (BTF-typed, else raw) and, BTF-typed only,
/// `sched_process_fork`. Returns what was attached. Without the exec hook a thread that execs
/// would keep the classes of its old executable, so the capture does not start without it.
pub fn attach_exec_tracking(ebpf: &mut Ebpf, btf: &Btf) -> Result<String, String> {
    let exec = match attach_program(ebpf, "ms_btf_exec", "", btf) {
        Ok(()) => "tp_btf",
        Err(btf_reason) => {
            unload_all(ebpf, &["ms_btf_exec"]);
            attach_program(ebpf, "ms_tp_exec", "", btf).map_err(|raw_reason| {
                unload_all(ebpf, &["ms_tp_exec"]);
                format!("exec tracking: {btf_reason}; then {raw_reason}")
            })?;
            "raw_tp"
        }
    };
    match attach_program(ebpf, "ms_btf_fork", "", btf) {
        Ok(()) => Ok(format!(
            "{exec} sched_process_exec, tp_btf sched_process_fork"
        )),
        Err(reason) => {
            // Children then compute their executable's classes at their first judged call.
            tracing::debug!(%reason, "no fork hook");
            unload_all(ebpf, &["ms_btf_fork"]);
            Ok(format!("{exec} sched_process_exec"))
        }
    }
}

/// The mode-choosing rule, apart from the kernel: try the requested mode, or for `auto` every
/// concrete mode cheapest first, and keep the first for which `try_mode` returns its target.
fn select(
    requested: AttachMode,
    mut try_mode: impl FnMut(AttachMode) -> Result<String, String>,
) -> Result<Attached, AttachError> {
    let candidates: &[AttachMode] = match requested {
        AttachMode::Auto => &AttachMode::CONCRETE,
        ref one => std::slice::from_ref(one),
    };
    let mut rejected = Vec::new();
    for &mode in candidates {
        match try_mode(mode) {
            Ok(target) => {
                return Ok(Attached {
                    mode,
                    target,
                    rejected,
                    deny_unavailable: None,
                });
            }
            Err(reason) => {
                tracing::debug!(%mode, %reason, "attach mode unavailable");
                rejected.push((mode, reason));
            }
        }
    }
    match (requested, rejected.pop()) {
        (AttachMode::Auto, last) => {
            rejected.extend(last);
            Err(AttachError::NoMode { tried: rejected })
        }
        (_, Some((mode, reason))) => Err(AttachError::Unavailable { mode, reason }),
        (mode, None) => Err(AttachError::Unavailable {
            mode,
            reason: "not tried".into(),
        }),
    }
}

/// Load and attach both programs of `mode` (its preferred pair, else the next) on `function`,
/// else the kernel's mmap function; on failure unload what was loaded, so the next try starts
/// clean. Returns the hook's name.
fn attach_mode(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    function: Option<&str>,
    hooks: TracepointHooks,
    btf: &Btf,
) -> Result<String, String> {
    let function = match (mode, function) {
        (AttachMode::Tracepoint, None) => None,
        (AttachMode::Tracepoint, Some(f)) => {
            return Err(format!("tracepoint mode hooks sys_enter/sys_exit, not {f}"));
        }
        (_, Some(f)) => Some(f.to_owned()),
        _ => Some(kernel::mmap_function().map_err(|e| e.to_string())?),
    };
    let mut failures = Vec::new();
    if mode == AttachMode::Tracepoint && per_syscall_wanted(hooks) {
        match attach_per_syscall(ebpf) {
            Ok(()) => return Ok(format!("tracepoint {PER_SYSCALL_TARGET}")),
            Err(reason) if hooks == TracepointHooks::PerSyscall => return Err(reason),
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "per-syscall tracepoints unavailable: the generic sys_enter/sys_exit \
                     instead, which every system call pays for"
                );
                failures.push(reason);
            }
        }
    }
    for &(enter, exit) in mode.program_pairs() {
        let target = function
            .clone()
            .unwrap_or_else(|| "sys_enter/sys_exit".to_owned());
        let result = attach_program(ebpf, enter, &target, btf)
            .and_then(|()| attach_program(ebpf, exit, &target, btf));
        match result {
            Ok(()) if mode == AttachMode::Tracepoint => {
                let kind = if enter.starts_with("ms_btf") {
                    "tp_btf"
                } else {
                    "raw_tp"
                };
                return Ok(format!("{kind} {target}"));
            }
            Ok(()) => {
                // The mmap function never sees mprotect: hook its function too, or the mode
                // fails (a mode that let mprotect RW -> RX through would not enforce W+X).
                let Some((m_enter, m_exit)) = mode.mprotect_pair() else {
                    return Ok(target);
                };
                let attached = kernel::mprotect_function()
                    .map_err(|e| e.to_string())
                    .and_then(|function| {
                        attach_program(ebpf, m_enter, &function, btf)
                            .and_then(|()| attach_program(ebpf, m_exit, &function, btf))
                    });
                match attached {
                    Ok(()) => return Ok(target),
                    Err(reason) => {
                        unload_all(ebpf, &[enter, exit, m_enter, m_exit]);
                        failures.push(format!("mprotect: {reason}"));
                    }
                }
            }
            Err(reason) => {
                tracing::debug!(%mode, enter, exit, %reason, "program pair unavailable");
                unload_all(ebpf, &[enter, exit]);
                failures.push(reason);
            }
        }
    }
    Err(failures.join("; then "))
}

/// Whether tracepoint mode takes the per-syscall tracepoints as `hooks` says: `auto` where the
/// kernel runs no ia32 calls, `per-syscall` always (with a warning where it may run them).
fn per_syscall_wanted(hooks: TracepointHooks) -> bool {
    match (hooks, ia32::ia32_calls()) {
        (TracepointHooks::Generic, _) => false,
        (TracepointHooks::Auto, Ia32Calls::Refused(why)) => {
            tracing::info!(ia32 = %why, "no ia32 calls on this kernel: per-syscall tracepoints");
            true
        }
        (TracepointHooks::Auto, Ia32Calls::Run(why)) => {
            tracing::debug!(ia32 = %why, "ia32 calls possible: generic sys_enter/sys_exit");
            false
        }
        (TracepointHooks::PerSyscall, Ia32Calls::Run(why)) => {
            tracing::warn!(
                ia32 = %why,
                "per-syscall tracepoints as asked, on a kernel that may run ia32 calls: \
                 those (mmap2, old_mmap, ia32 mprotect, from any process) go unseen"
            );
            true
        }
        (TracepointHooks::PerSyscall, Ia32Calls::Refused(_)) => true,
    }
}

/// Load the per-syscall programs and attach each to the tracepoints of the three calls; on
/// failure unload them, so the generic pair can be tried next.
fn attach_per_syscall(ebpf: &mut Ebpf) -> Result<(), String> {
    let (enter, exit) = PER_SYSCALL_PROGRAMS;
    load_and_attach_per_syscall(ebpf).map_err(|reason| {
        unload_all(ebpf, &[enter, exit]);
        format!("per-syscall tracepoints: {reason}")
    })
}

fn load_and_attach_per_syscall(ebpf: &mut Ebpf) -> Result<(), String> {
    for (name, direction) in [
        (PER_SYSCALL_PROGRAMS.0, "enter"),
        (PER_SYSCALL_PROGRAMS.1, "exit"),
    ] {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("program {name}: {e}"))?;
        program
            .load()
            .map_err(|e| format!("loading {name}: {}", brief(&chain(&e))))?;
        for call in PER_SYSCALL {
            let event = format!("sys_{direction}_{call}");
            program
                .attach("syscalls", &event)
                .map_err(|e| format!("attaching {name} to syscalls/{event}: {}", chain(&e)))?;
        }
    }
    Ok(())
}

fn attach_program(ebpf: &mut Ebpf, name: &str, target: &str, btf: &Btf) -> Result<(), String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    let what =
        |step: &str, e: &dyn std::error::Error| format!("{step} {name}: {}", brief(&chain(e)));
    let tracepoint = if name.ends_with("_exec") {
        "sched_process_exec"
    } else if name.ends_with("_fork") {
        "sched_process_fork"
    } else if name.ends_with("enter") {
        "sys_enter"
    } else {
        "sys_exit"
    };
    match program {
        Program::RawTracePoint(p) => {
            p.load().map_err(|e| what("loading", &e))?;
            p.attach(tracepoint).map_err(|e| what("attaching", &e))?;
        }
        Program::BtfTracePoint(p) => {
            p.load(tracepoint, btf).map_err(|e| what("loading", &e))?;
            p.attach().map_err(|e| what("attaching", &e))?;
        }
        Program::Lsm(p) => {
            let hook = name.trim_start_matches("ms_lsm_");
            p.load(hook, btf).map_err(|e| what("loading", &e))?;
            p.attach().map_err(|e| what("attaching", &e))?;
        }
        Program::KProbe(p) => {
            if !kernel::has_kprobes() {
                return Err(format!(
                    "this kernel has no kprobes (no {})",
                    kernel::KPROBE_PMU
                ));
            }
            p.load().map_err(|e| what("loading", &e))?;
            p.attach(target, 0).map_err(|e| what("attaching", &e))?;
        }
        Program::FEntry(p) => {
            p.load(target, btf).map_err(|e| what("loading", &e))?;
            p.attach().map_err(|e| what("attaching", &e))?;
        }
        Program::FExit(p) => {
            p.load(target, btf).map_err(|e| what("loading", &e))?;
            p.attach().map_err(|e| what("attaching", &e))?;
        }
        _ => return Err(format!("program {name} has an unexpected type")),
    }
    Ok(())
}

/// Unload whichever of `names` are loaded, so a failed attempt leaves nothing behind.
fn unload_all(ebpf: &mut Ebpf, names: &[&str]) {
    for name in names {
        if let Some(program) = ebpf.program_mut(name) {
            let _ = unload(program);
        }
    }
}

fn unload(program: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match program {
        Program::RawTracePoint(p) => RawTracePoint::unload(p),
        Program::BtfTracePoint(p) => BtfTracePoint::unload(p),
        Program::Lsm(p) => Lsm::unload(p),
        Program::KProbe(p) => KProbe::unload(p),
        Program::FEntry(p) => FEntry::unload(p),
        Program::FExit(p) => FExit::unload(p),
        Program::TracePoint(p) => TracePoint::unload(p),
        _ => Ok(()),
    }
}

/// Lines of a verifier log worth showing in an error: its end says why it refused.
const VERIFIER_LOG_LINES: usize = 8;

/// Shorten aya's "... Verifier output: <log>" to the log's last lines (or drop an empty log).
fn brief(text: &str) -> String {
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text.to_owned();
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let head = head.trim_end().trim_end_matches('.');
    match lines.len() {
        0 => head.to_owned(),
        n if n <= VERIFIER_LOG_LINES => format!("{head}; verifier: {}", lines.join(" / ")),
        n => format!(
            "{head}; verifier (last {VERIFIER_LOG_LINES} of {n} lines): {}",
            lines[n - VERIFIER_LOG_LINES..].join(" / ")
        ),
    }
}

/// An error and its sources, `: `-separated (aya keeps the errno in the source).
pub(crate) use mapsentry_service::error::chain;

#[cfg(test)]
mod tests;
