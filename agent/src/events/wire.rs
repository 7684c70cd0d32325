//! The Rust mirror of `struct ms_event` (`ebpf/include/mapsentry_event.h`) and its decoder.
//!
//! A record is the fixed header, then `path_len` bytes of path. The header is declared packed so
//! that its size is exactly `offsetof(struct ms_event, path)`; `e2e/tests/wire_layout.rs` checks
//! every offset against the BTF of the built object.

use mapsentry_policy::{
    EnforceAction, Enforcement, FileInfo, MmapArgs, MmapEvent, Syscall, TargetMapping,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MS_PATH_MAX`: bytes reserved for a path in the kernel; paths keep at most one less.
pub const PATH_MAX: usize = 512;
/// `MS_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// `enum ms_syscall`.
pub const SYSCALL_MMAP: u16 = 1;
pub const SYSCALL_MMAP2: u16 = 2;
pub const SYSCALL_OLD_MMAP: u16 = 3;
pub const SYSCALL_MPROTECT: u16 = 4;
/// `MS_VMA_FILE`: in `prev_prot`, the mapping mprotect changes maps a file.
pub const VMA_FILE: u16 = 0x100;

/// `enum ms_file_flag`.
pub const FILE_PRESENT: u32 = 1;
pub const FILE_UNLINKED: u32 = 2;
pub const FILE_PATH_TRUNCATED: u32 = 4;
pub const ARGS_UNREADABLE: u32 = 8;

/// `enum ms_action`.
pub const ACTION_NONE: u16 = 0;
pub const ACTION_KILL: u16 = 1;
pub const ACTION_DENY: u16 = 2;

/// `enum ms_counter`: indexes of the per-CPU `counters` map.
pub const COUNTER_SEEN: u32 = 0;
pub const COUNTER_FILTERED: u32 = 1;
pub const COUNTER_DROPPED: u32 = 2;

const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// `struct ms_event` up to (not including) `path`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, packed)]
pub struct RawEventHeader {
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub addr: u64,
    pub length: u64,
    pub prot: u64,
    pub flags: u64,
    pub pgoffset: u64,
    pub offset: u64,
    pub ret: i64,
    pub inode: u64,
    pub fs_magic: u64,
    pub fd: i32,
    pub dev: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub file_flags: u32,
    pub syscall: u16,
    pub path_len: u16,
    pub rule_id: u32,
    pub action: u16,
    pub prev_prot: u16,
    pub comm: [u8; COMM_LEN],
}

/// Bytes of the fixed header (`offsetof(struct ms_event, path)`).
pub const HEADER_LEN: usize = size_of::<RawEventHeader>();

/// Why a record could not be decoded. Each is counted by the reader, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("record says its path has {path_len} bytes, but {available} follow the header (at most {max})", max = PATH_MAX - 1)]
    PathOverrun { path_len: usize, available: usize },
    #[error(
        "record names syscall {value}, which is none of mmap (1), mmap2 (2), old_mmap (3), mprotect (4)"
    )]
    UnknownSyscall { value: u16 },
    #[error(
        "record names enforcement action {value}, which is none of none (0), kill (1), deny (2)"
    )]
    UnknownAction { value: u16 },
}

/// Decode one ring-buffer record. `boot_to_wall_ns` converts the kernel's boot-time clock to
/// the Unix epoch (see `clock::BootClock`).
pub fn decode(record: &[u8], boot_to_wall_ns: i128) -> Result<MmapEvent, DecodeError> {
    let (header, rest) = RawEventHeader::read_from_prefix(record)
        .map_err(|_| DecodeError::Truncated { len: record.len() })?;
    let path_len = usize::from(header.path_len);
    if path_len >= PATH_MAX || path_len > rest.len() {
        return Err(DecodeError::PathOverrun {
            path_len,
            available: rest.len(),
        });
    }
    let syscall = match header.syscall {
        SYSCALL_MMAP => Syscall::Mmap,
        SYSCALL_MMAP2 => Syscall::Mmap2,
        SYSCALL_OLD_MMAP => Syscall::OldMmap,
        SYSCALL_MPROTECT => Syscall::Mprotect,
        value => return Err(DecodeError::UnknownSyscall { value }),
    };
    let enforced = match header.action {
        ACTION_NONE => None,
        ACTION_KILL => Some(Enforcement {
            action: EnforceAction::Kill,
            rule_id: header.rule_id,
        }),
        ACTION_DENY => Some(Enforcement {
            action: EnforceAction::Deny,
            rule_id: header.rule_id,
        }),
        value => return Err(DecodeError::UnknownAction { value }),
    };
    let file_flags = header.file_flags;
    let file = (file_flags & FILE_PRESENT != 0).then(|| file_info(&header, &rest[..path_len]));
    let time_ns = (i128::from(header.ts_boot_ns) + boot_to_wall_ns).clamp(0, i128::from(u64::MAX));
    Ok(MmapEvent {
        time_ns: time_ns as u64,
        syscall,
        pid: header.pid,
        tid: header.tid,
        ppid: header.ppid,
        uid: header.uid,
        gid: header.gid,
        comm: c_string(&header.comm),
        cgroup_id: header.cgroup_id,
        args: MmapArgs {
            addr: header.addr,
            length: header.length,
            prot: header.prot,
            flags: header.flags,
            fd: header.fd,
            pgoffset: header.pgoffset,
            offset: header.offset,
        },
        ret: header.ret,
        file,
        args_unreadable: file_flags & ARGS_UNREADABLE != 0,
        target_mapping: (syscall == Syscall::Mprotect).then(|| TargetMapping {
            prev_prot: u64::from(header.prev_prot & !VMA_FILE),
            file_backed: header.prev_prot & VMA_FILE != 0,
        }),
        enforced,
        attribution: None,
    })
}

fn file_info(header: &RawEventHeader, path: &[u8]) -> FileInfo {
    let path = String::from_utf8_lossy(path).into_owned();
    let fs_magic = header.fs_magic;
    let unlinked = header.file_flags & FILE_UNLINKED != 0;
    let memfd = unlinked
        && path.starts_with("/memfd:")
        && (fs_magic == TMPFS_MAGIC || fs_magic == HUGETLBFS_MAGIC);
    FileInfo {
        shm: fs_magic == TMPFS_MAGIC && path.starts_with("/dev/shm/"),
        deleted: unlinked && !memfd,
        memfd,
        path_truncated: header.file_flags & FILE_PATH_TRUNCATED != 0,
        inode: header.inode,
        dev: userspace_dev(header.dev),
        fs_magic,
        path,
    }
}

/// The kernel's internal `dev_t` (major << 20 | minor) in the encoding `stat(2)` returns.
#[must_use]
pub fn userspace_dev(kernel_dev: u32) -> u64 {
    let major = u64::from(kernel_dev >> 20);
    let minor = u64::from(kernel_dev & 0xf_ffff);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests;
