//! Which events `run` prints: the userspace part of its filters (`--pid` runs in the kernel).

use anyhow::{Context, bail};
use mapsentry_policy::{MmapEvent, Syscall, names};

/// An event passes when it matches every filter given (an empty filter list passes all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub comms: Vec<String>,
    pub syscalls: Vec<Syscall>,
    /// Some `PROT_*` bit in common (0: no prot filter).
    pub prot_any: u64,
}

impl EventFilter {
    /// Build from the command line's words, naming any that is wrong.
    pub fn from_args(comms: &[String], syscalls: &[String], prot_any: &[String]) -> anyhow::Result<Self> {
        let syscalls = syscalls
            .iter()
            .map(|name| {
                Syscall::from_name(name)
                    .with_context(|| format!("--syscall {name:?}: expected mmap, mmap2 or old_mmap"))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut mask = 0;
        for name in prot_any.iter().flat_map(|list| list.split([',', '|'])).map(str::trim) {
            match names::parse_prot(name) {
                Some(0) => bail!("--prot-any {name:?}: PROT_NONE has no bits to match; use PROT_READ, PROT_WRITE or PROT_EXEC"),
                Some(bit) => mask |= bit,
                None => bail!("--prot-any {name:?}: unknown protection (expected PROT_READ, PROT_WRITE, PROT_EXEC, ...)"),
            }
        }
        Ok(Self { comms: comms.to_vec(), syscalls, prot_any: mask })
    }

    #[must_use]
    pub fn matches(&self, event: &MmapEvent) -> bool {
        (self.comms.is_empty() || self.comms.contains(&event.comm))
            && (self.syscalls.is_empty() || self.syscalls.contains(&event.syscall))
            && (self.prot_any == 0 || event.args.prot & self.prot_any != 0)
    }
}

#[cfg(test)]
mod tests;
