//! Rust mirrors of the enforcement structs of `ebpf/include/mapsentry_event.h` (`struct ms_rule`,
//! `ms_rule_set`, `ms_pattern`, `ms_enforce_state`) and their constants, checked against the
//! object's BTF by `e2e/tests/wire_layout.rs`.

use mapsentry_policy::Syscall;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::events::wire::{SYSCALL_MMAP, SYSCALL_MMAP2, SYSCALL_MPROTECT, SYSCALL_OLD_MMAP};

/// `MS_RULES_PER_SET`.
pub const RULES_PER_SET: usize = 32;
/// `MS_PATTERNS_PER_TABLE`.
pub const PATTERNS_PER_TABLE: usize = 64;
/// `MS_PATH_KEY_BYTES`.
pub const PATH_KEY_BYTES: usize = 256;
/// `MS_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// `enum ms_mapping`.
pub const MAPPING_ANY: u8 = 0;
pub const MAPPING_ANONYMOUS: u8 = 1;
pub const MAPPING_FILE: u8 = 2;

/// `enum ms_action` as a rule stores it.
pub const ACTION_KILL: u8 = 1;
pub const ACTION_DENY: u8 = 2;

/// `enum ms_need`.
pub const NEED_COMM: u8 = 1;
pub const NEED_EXE: u8 = 2;
pub const NEED_FILE: u8 = 4;
pub const NEED_KINDS: u8 = 8;
pub const NEED_PATH: u8 = 16;

/// `enum ms_file_kind`.
pub const FK_MEMFD: u8 = 1;
pub const FK_SHM: u8 = 2;
pub const FK_DELETED: u8 = 4;

/// `enum ms_middle`.
pub const MIDDLE_EXACT: u8 = 0;
pub const MIDDLE_COMPONENT: u8 = 1;
pub const MIDDLE_ANY: u8 = 2;

/// `MS_STATE_EXE`.
pub const STATE_EXE: u32 = 1;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawRule {
    pub prot_all: u64,
    pub prot_any: u64,
    pub flags_all: u64,
    pub flags_any: u64,
    pub min_length: u64,
    pub rule_id: u32,
    pub syscalls: u16,
    pub mapping: u8,
    pub action: u8,
    pub types_all: u16,
    pub types_any: u16,
    pub flags_any_given: u8,
    pub needs: u8,
    pub comm: u8,
    pub exe: u8,
    pub path: u8,
    pub not_path: u8,
    pub except_comm: u8,
    pub except_exe: u8,
    pub file_care: u8,
    pub file_want: u8,
    pub pad: [u8; 2],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawRuleSet {
    pub count: u32,
    pub version: u32,
    pub generation: u32,
    pub pad: u32,
    pub rules: [RawRule; RULES_PER_SET],
}

/// `sizeof(struct ms_rule_set)`.
pub const RULE_SET_LEN: usize = size_of::<RawRuleSet>();

#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawPattern {
    pub prefix_len: u16,
    pub suffix_len: u16,
    pub middle: u8,
    pub slashes: u8,
    pub pad: u16,
    pub classes: u64,
}

/// `sizeof(struct ms_pattern)`.
pub const PATTERN_LEN: usize = size_of::<RawPattern>();

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawEnforceState {
    pub sets: u32,
    pub generation: u32,
    pub flags: u32,
    pub pad: u32,
}

/// `sizeof(struct ms_enforce_state)`.
pub const ENFORCE_STATE_LEN: usize = size_of::<RawEnforceState>();

/// `enum ms_syscall` value of `syscall`.
#[must_use]
pub fn syscall_value(syscall: Syscall) -> u16 {
    match syscall {
        Syscall::Mmap => SYSCALL_MMAP,
        Syscall::Mmap2 => SYSCALL_MMAP2,
        Syscall::OldMmap => SYSCALL_OLD_MMAP,
        Syscall::Mprotect => SYSCALL_MPROTECT,
    }
}
