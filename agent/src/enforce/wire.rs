//! Rust mirrors of `struct ms_rule` and `struct ms_rule_set` (`ebpf/include/mapsentry_event.h`),
//! checked against the object's BTF by `e2e/tests/wire_layout.rs`.

use mapsentry_policy::Syscall;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::events::wire::{SYSCALL_MMAP, SYSCALL_MMAP2, SYSCALL_MPROTECT, SYSCALL_OLD_MMAP};

/// `MS_RULES_PER_SET`.
pub const RULES_PER_SET: usize = 8;

/// `enum ms_mapping`.
pub const MAPPING_ANY: u8 = 0;
pub const MAPPING_ANONYMOUS: u8 = 1;
pub const MAPPING_FILE: u8 = 2;

/// `enum ms_action` as a rule stores it.
pub const ACTION_KILL: u8 = 1;
pub const ACTION_DENY: u8 = 2;

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
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawRuleSet {
    pub count: u32,
    pub version: u32,
    pub rules: [RawRule; RULES_PER_SET],
}

/// `sizeof(struct ms_rule_set)`.
pub const RULE_SET_LEN: usize = size_of::<RawRuleSet>();

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
