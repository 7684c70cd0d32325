//! Whether this kernel can run ia32 system calls at all, which decides the hooks of tracepoint
//! mode.
//!
//! The per-syscall tracepoints (`syscalls/sys_enter_mmap`, ...) cost an unrelated system call
//! only the kernel's syscall-tracing test, but never fire for an ia32 call (`mmap2`, `old_mmap`,
//! ia32 `mprotect`), and any 64-bit process can make one with `int $0x80`. So tracepoint mode
//! uses them only where the kernel cannot run ia32 calls: built without `IA32_EMULATION`, or
//! (6.7 and later) with the emulation turned off at boot (`ia32_emulation=false`, or
//! `IA32_EMULATION_DEFAULT_DISABLED` left alone on the command line). Anything unsure counts as
//! "runs them": a wrong "no" would be a blind spot, a wrong "yes" only costs time.

use std::fs;

/// What the kernel says about ia32 calls, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ia32Calls {
    /// The kernel runs them, or nothing shows it cannot.
    Run(String),
    /// The kernel cannot run them.
    Refused(String),
}

impl Ia32Calls {
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Self::Run(why) | Self::Refused(why) => why,
        }
    }
}

/// What the running kernel says, read from `/proc` (the host's, also inside a pod) and its build
/// configuration under `/boot` where that is visible.
#[must_use]
pub fn ia32_calls() -> Ia32Calls {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let kallsyms = match fs::read_to_string("/proc/kallsyms") {
        Ok(text) => text,
        Err(e) => return Ia32Calls::Run(format!("assumed: cannot read /proc/kallsyms: {e}")),
    };
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = fs::read_to_string(format!("/boot/config-{release}")).ok();
    decide(&Facts {
        ia32_syscalls_built: kallsyms.lines().any(|line| {
            line.split_whitespace()
                .nth(2)
                .is_some_and(|s| s.starts_with(IA32_SYMBOL))
        }),
        release,
        cmdline: &cmdline,
        config: config.as_deref(),
    })
}

/// The prefix of the ia32 system-call wrappers (`__ia32_sys_mmap_pgoff`, ...), which a kernel
/// built with `IA32_EMULATION` has (4.17 and later).
const IA32_SYMBOL: &str = "__ia32_sys_";

/// The kernel facts the decision reads.
#[derive(Debug)]
struct Facts<'a> {
    ia32_syscalls_built: bool,
    release: &'a str,
    cmdline: &'a str,
    config: Option<&'a str>,
}

/// The first kernel with the `ia32_emulation=` boot parameter.
const SWITCH_SINCE: (u32, u32) = (6, 7);

fn decide(facts: &Facts<'_>) -> Ia32Calls {
    if !facts.ia32_syscalls_built {
        return Ia32Calls::Refused(format!(
            "built without ia32 emulation (no {IA32_SYMBOL}* in /proc/kallsyms)"
        ));
    }
    match version(facts.release) {
        Some(version) if version >= SWITCH_SINCE => {}
        Some(_) => {
            return Ia32Calls::Run(format!(
                "built with ia32 emulation, which {} cannot turn off",
                facts.release
            ));
        }
        None => {
            return Ia32Calls::Run(format!(
                "assumed: built with ia32 emulation, and the release {:?} is not a version",
                facts.release
            ));
        }
    }
    if let Some((value, on)) = boot_switch(facts.cmdline) {
        let setting = format!("booted with ia32_emulation={value}");
        return if on {
            Ia32Calls::Run(setting)
        } else {
            Ia32Calls::Refused(setting)
        };
    }
    match facts.config {
        Some(config)
            if config
                .lines()
                .any(|l| l.trim() == "CONFIG_IA32_EMULATION_DEFAULT_DISABLED=y") =>
        {
            Ia32Calls::Refused(
                "built with IA32_EMULATION_DEFAULT_DISABLED and not turned on at boot".into(),
            )
        }
        Some(_) => Ia32Calls::Run("built with ia32 emulation, on by default".into()),
        None => Ia32Calls::Run(
            "assumed: built with ia32 emulation, and its default (/boot/config-*) is not visible"
                .into(),
        ),
    }
}

/// `major.minor` of a release such as `6.12.48+deb13-cloud-amd64`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The last valid `ia32_emulation=` on the kernel's command line (the kernel reads them in
/// order; arguments after `--` are the init's), with its value as the kernel parses it
/// (`kstrtobool`: y/n, 1/0, t/f, on/off; anything else is ignored, as the kernel ignores it).
fn boot_switch(cmdline: &str) -> Option<(&str, bool)> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| word.strip_prefix("ia32_emulation="))
        .filter_map(|value| kstrtobool(value).map(|on| (value, on)))
        .last()
}

fn kstrtobool(value: &str) -> Option<bool> {
    let bytes = value.as_bytes();
    match bytes.first()? {
        b'y' | b'Y' | b't' | b'T' | b'1' => Some(true),
        b'n' | b'N' | b'f' | b'F' | b'0' => Some(false),
        b'o' | b'O' => match bytes.get(1)? {
            b'n' | b'N' => Some(true),
            b'f' | b'F' => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
