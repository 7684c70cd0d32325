//! What the running kernel offers: its BTF, the mmap function to hook, our privileges.

use std::{fs, io, path::Path};

use aya::{Btf, Endianness};

/// The kernel's own BTF, where the kernel publishes it.
pub const SYSFS_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "no kernel BTF at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF; \
         pass --btf FILE with a BTF description of this exact kernel"
    )]
    NoBtf { path: String },
    #[error("cannot read BTF from {path}: {reason}")]
    BadBtf { path: String, reason: String },
    #[error("cannot read /proc/kallsyms to find the kernel's mmap function: {source}")]
    Kallsyms {
        #[source]
        source: io::Error,
    },
    #[error("cannot read {LSM_LIST} to see whether BPF LSM is active: {source}")]
    LsmList {
        #[source]
        source: io::Error,
    },
    #[error("the kernel has no do_mprotect_pkey in /proc/kallsyms (inlined?)")]
    NoMprotectFunction,
    #[error("the kernel has neither do_mmap2 nor ksys_mmap_pgoff in /proc/kallsyms")]
    NoMmapFunction,
    #[error(
        "mapsentry needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8), \
         to load BPF programs; running as uid {uid} without {missing}"
    )]
    Privileges { uid: u32, missing: String },
}

/// Load BTF from `path`, or from the kernel (`/sys/kernel/btf/vmlinux`) if `None`.
pub fn load_btf(path: Option<&Path>) -> Result<Btf, KernelError> {
    let path = path.unwrap_or_else(|| Path::new(SYSFS_BTF));
    if !path.exists() {
        return Err(KernelError::NoBtf {
            path: path.display().to_string(),
        });
    }
    Btf::parse_file(path, Endianness::default()).map_err(|e| KernelError::BadBtf {
        path: path.display().to_string(),
        reason: super::chain(&e),
    })
}

/// The function every mmap-family call passes through: `do_mmap2` where the kernel has it
/// (some architectures), else `ksys_mmap_pgoff`.
pub fn mmap_function() -> Result<String, KernelError> {
    let symbols =
        fs::read_to_string("/proc/kallsyms").map_err(|source| KernelError::Kallsyms { source })?;
    let has = |name: &str| {
        symbols
            .lines()
            .any(|line| line.split_whitespace().nth(2) == Some(name))
    };
    ["do_mmap2", "ksys_mmap_pgoff"]
        .into_iter()
        .find(|name| has(name))
        .map(str::to_owned)
        .ok_or(KernelError::NoMmapFunction)
}

/// The function every mprotect-family call passes through (`do_mprotect_pkey`), hooked in the
/// kprobe and fentry modes beside the mmap function.
pub fn mprotect_function() -> Result<String, KernelError> {
    let symbols =
        fs::read_to_string("/proc/kallsyms").map_err(|source| KernelError::Kallsyms { source })?;
    symbols
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some(MPROTECT_FUNCTION))
        .then(|| MPROTECT_FUNCTION.to_owned())
        .ok_or(KernelError::NoMprotectFunction)
}

const MPROTECT_FUNCTION: &str = "do_mprotect_pkey";

/// The active Linux security modules, comma-separated, as securityfs lists them.
pub fn active_lsms() -> Result<String, KernelError> {
    fs::read_to_string(LSM_LIST)
        .map(|s| s.trim().to_owned())
        .map_err(|source| KernelError::LsmList { source })
}

const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The perf PMU through which kprobes attach; absent when the kernel lacks `CONFIG_KPROBES`.
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Whether this kernel can attach kprobes (aya attaches them through the kprobe PMU).
#[must_use]
pub fn has_kprobes() -> bool {
    Path::new(KPROBE_PMU).exists()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fail early, with a clear message, when this process cannot load BPF programs.
pub fn check_privileges() -> Result<(), KernelError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(KernelError::Privileges {
        uid: rustix::process::geteuid().as_raw(),
        missing: missing.join(" and "),
    })
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`; lift it where we may.
pub fn raise_memlock_limit() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    if let Err(error) = setrlimit(
        Resource::Memlock,
        Rlimit {
            current: None,
            maximum: None,
        },
    ) {
        tracing::debug!(%error, "could not lift RLIMIT_MEMLOCK (only kernels before 5.11 need it)");
    }
}
