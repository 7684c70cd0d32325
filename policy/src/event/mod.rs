//! One captured mapping call, and its JSON line form (the contract of `run --output json`):
//! the event model ([`MmapEvent`]), who made it ([`attribution`]) and how that is written on a
//! line ([`attribution_line`]), the names of its bits ([`names`]), and the direct line writer
//! that `run` uses ([`json`]).

pub mod attribution;
pub mod attribution_line;
pub mod json;
pub mod names;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::attribution::Attribution;

/// The system call that made the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    /// Native 64-bit `mmap`; `offset` is in bytes as passed.
    Mmap,
    /// ia32 compat `mmap2`; `pgoffset` is in 4096-byte pages as passed.
    Mmap2,
    /// ia32 compat `old_mmap` (i386 nr 90); arguments read from the caller's struct.
    OldMmap,
    /// `mprotect` (native or ia32): `addr`, `length` and `prot` as passed; `flags` 0, `fd` -1.
    Mprotect,
}

impl Syscall {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mmap => "mmap",
            Self::Mmap2 => "mmap2",
            Self::OldMmap => "old_mmap",
            Self::Mprotect => "mprotect",
        }
    }

    /// The syscall named `name` as in the JSON lines (`mmap`, `mmap2`, `old_mmap`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Mmap, Self::Mmap2, Self::OldMmap, Self::Mprotect]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// The six arguments as the caller passed them (`pgoffset` or `offset` derived from the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmapArgs {
    pub addr: u64,
    pub length: u64,
    pub prot: u64,
    pub flags: u64,
    pub fd: i32,
    /// Offset in 4096-byte pages: as passed for `mmap2`, `offset / 4096` for `mmap`.
    pub pgoffset: u64,
    /// Offset in bytes: as passed for `mmap`, `pgoffset * 4096` for `mmap2`.
    pub offset: u64,
}

/// The file behind a file-backed mapping, as the kernel saw it at the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about the file, each a JSON field"
)]
pub struct FileInfo {
    /// Absolute path in the caller's mount namespace; `/memfd:NAME` for a memfd.
    pub path: String,
    pub inode: u64,
    /// Device number as `stat(2)` reports it in `st_dev`.
    pub dev: u64,
    /// A memfd (`memfd_create`).
    pub memfd: bool,
    /// A POSIX shared memory object (a tmpfs file under `/dev/shm`).
    pub shm: bool,
    /// Unlinked from the file system (not counting memfds, which never had a name).
    pub deleted: bool,
    /// The in-kernel path walk hit its bound: `path` holds the last components only.
    pub path_truncated: bool,
    /// `statfs(2)` magic of the file system (`0x1021994` tmpfs, `0xef53` ext4, ...).
    pub fs_magic: u64,
}

/// One `mmap`/`mmap2` call: who made it, what it asked for, what it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmapEvent {
    /// Wall-clock time of the call (entry), nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub syscall: Syscall,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    pub args: MmapArgs,
    /// The mapped address, or `-errno`.
    pub ret: i64,
    /// The file for a file-backed mapping whose descriptor was open; null otherwise.
    pub file: Option<FileInfo>,
    /// `old_mmap` only: the caller's argument struct could not be read, so `args` are zero.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_unreadable: bool,
    /// `mprotect` only: the mapping at `addr` as it was before the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_mapping: Option<TargetMapping>,
    /// What the node's kernel rules did to this call, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<Enforcement>,
    /// The pod and container (or host unit) the call came from, attached by the agent's
    /// enricher; None when not enriched. In JSON: the top-level `namespace`, `pod`, `container`,
    /// `k8s` and `host` fields (see [`attribution_line`]).
    #[serde(flatten, with = "crate::event::attribution_line")]
    pub attribution: Option<Arc<Attribution>>,
}

/// The mapping an `mprotect` call changes, before the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMapping {
    /// Its `PROT_*` bits (0 when `addr` is in no mapping).
    pub prev_prot: u64,
    /// It maps a file (else it is anonymous memory).
    pub file_backed: bool,
}

/// An action taken in the kernel at the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceAction {
    /// SIGKILL at syscall entry: the caller never ran with the mapping.
    Kill,
    /// The call failed with EPERM (BPF LSM).
    Deny,
}

/// The kernel rule that acted on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    pub action: EnforceAction,
    /// The agent's id of the (policy, rule) the kernel rule came from.
    pub rule_id: u32,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(value: &bool) -> bool {
    !*value
}

impl MmapEvent {
    /// `mmap(NULL, length, prot, flags, -1, 0)` by the single-threaded process `pid` named
    /// `comm`, at time 0, returning 0, unattributed: the base that tests, examples and
    /// benchmarks vary with struct update syntax (`MmapEvent { ret: .., ..MmapEvent::anonymous(..) }`).
    #[must_use]
    pub fn anonymous(comm: &str, pid: u32, length: u64, prot: u64, flags: u64) -> Self {
        Self {
            time_ns: 0,
            syscall: Syscall::Mmap,
            pid,
            tid: pid,
            ppid: 0,
            uid: 0,
            gid: 0,
            comm: comm.to_owned(),
            cgroup_id: 0,
            args: MmapArgs {
                addr: 0,
                length,
                prot,
                flags,
                fd: -1,
                pgoffset: 0,
                offset: 0,
            },
            ret: 0,
            file: None,
            args_unreadable: false,
            target_mapping: None,
            enforced: None,
            attribution: None,
        }
    }

    /// Whether the call failed (`ret` is `-errno`, the kernel's range -4095..=-1).
    #[must_use]
    pub fn failed(&self) -> bool {
        (-4095..0).contains(&self.ret)
    }

    /// The name of the error a failed call returned (`EBADF`), when it is a known errno.
    #[must_use]
    pub fn error_name(&self) -> Option<&'static str> {
        self.failed().then(|| names::errno_name(self.ret)).flatten()
    }

    /// The protection policies judge: `prot` as passed, except that an `mprotect` granting
    /// execute to a writable mapping, or write to an executable one, counts as
    /// `PROT_WRITE|PROT_EXEC` (the kernel rules judge it the same way, `ebpf/include/enforce.h`).
    #[must_use]
    pub fn judged_prot(&self) -> u64 {
        const WRITE: u64 = 0x2;
        const EXEC: u64 = 0x4;
        let mut prot = self.args.prot;
        if let Some(target) = self.target_mapping {
            if prot & EXEC != 0 {
                prot |= target.prev_prot & WRITE;
            }
            if prot & WRITE != 0 {
                prot |= target.prev_prot & EXEC;
            }
        }
        prot
    }

    /// Whether the call concerns anonymous memory: by its flags for mmap, by the mapping it
    /// changes for mprotect.
    #[must_use]
    pub fn is_anonymous(&self) -> bool {
        match self.target_mapping {
            Some(target) => !target.file_backed,
            None => self.args.flags & names::MAP_ANONYMOUS != 0,
        }
    }

    /// RFC 3339 rendering of `time_ns`, UTC, microseconds.
    #[must_use]
    pub fn time_rfc3339(&self) -> String {
        crate::time::rfc3339(self.time_ns, crate::time::Precision::Micros)
    }
}

/// One JSON line of `run`/`tail`: `{"kind":"event", "time":..., <the event>, "prot_names":...}`.
///
/// Serializes the contract form; deserializes it back (derived fields are ignored on input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventLine {
    Event {
        #[serde(flatten)]
        event: MmapEvent,
        #[serde(flatten)]
        derived: Derived,
    },
}

/// Fields of an event line that are rendered from the event for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Derived {
    /// RFC 3339 time.
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub prot_names: String,
    #[serde(default)]
    pub flags_names: String,
    /// `EBADF` when `ret` is a known `-errno`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<MmapEvent> for EventLine {
    fn from(event: MmapEvent) -> Self {
        let derived = Derived::of(&event);
        Self::Event { event, derived }
    }
}

impl Derived {
    /// The rendered fields of `event`.
    #[must_use]
    pub fn of(event: &MmapEvent) -> Self {
        Self {
            time: event.time_rfc3339(),
            prot_names: names::prot_names(event.args.prot),
            flags_names: names::flags_names(event.args.flags),
            error: event.error_name().map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests;
