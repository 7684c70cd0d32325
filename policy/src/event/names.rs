//! Names of `prot` and `flags` bits as in mmap(2), and of error numbers, for human output and
//! for parsing what users write (`PROT_WRITE`, `MAP_HUGETLB`).

use std::fmt::Write as _;

/// `PROT_*` bits (Linux, all architectures mapsentry runs on).
pub const PROT_NAMES: &[(&str, u64)] = &[
    ("PROT_READ", 0x1),
    ("PROT_WRITE", 0x2),
    ("PROT_EXEC", 0x4),
    ("PROT_SEM", 0x8),
    ("PROT_GROWSDOWN", 0x0100_0000),
    ("PROT_GROWSUP", 0x0200_0000),
];

/// The mapping type, the low four bits of `flags`: one value, not a set of bits.
const MAP_TYPE_MASK: u64 = 0x0f;
const MAP_TYPES: &[(&str, u64)] = &[
    ("MAP_SHARED", 0x01),
    ("MAP_PRIVATE", 0x02),
    ("MAP_SHARED_VALIDATE", 0x03),
    ("MAP_DROPPABLE", 0x08),
];

/// `MAP_*` bits above the type (x86).
pub const MAP_FLAG_NAMES: &[(&str, u64)] = &[
    ("MAP_FIXED", 0x10),
    ("MAP_ANONYMOUS", 0x20),
    ("MAP_32BIT", 0x40),
    ("MAP_GROWSDOWN", 0x100),
    ("MAP_DENYWRITE", 0x800),
    ("MAP_EXECUTABLE", 0x1000),
    ("MAP_LOCKED", 0x2000),
    ("MAP_NORESERVE", 0x4000),
    ("MAP_POPULATE", 0x8000),
    ("MAP_NONBLOCK", 0x1_0000),
    ("MAP_STACK", 0x2_0000),
    ("MAP_HUGETLB", 0x4_0000),
    ("MAP_SYNC", 0x8_0000),
    ("MAP_FIXED_NOREPLACE", 0x10_0000),
];

pub const MAP_ANONYMOUS: u64 = 0x20;
pub const MAP_HUGETLB: u64 = 0x4_0000;
const MAP_UNINITIALIZED: u64 = 0x400_0000;
/// With `MAP_HUGETLB`, bits 26..32 hold log2 of the huge page size (`MAP_HUGE_2MB` = 21 << 26).
const MAP_HUGE_SHIFT: u32 = 26;
const MAP_HUGE_MASK: u64 = 0x3f;

/// `PROT_READ|PROT_WRITE`; `PROT_NONE` for 0; unknown bits as hex.
#[must_use]
pub fn prot_names(prot: u64) -> String {
    if prot == 0 {
        return "PROT_NONE".to_owned();
    }
    join_bits(prot, PROT_NAMES, String::new())
}

/// `MAP_PRIVATE|MAP_ANONYMOUS`; huge page sizes as `MAP_HUGE_2MB`; unknown bits as hex.
#[must_use]
pub fn flags_names(flags: u64) -> String {
    let mut out = String::new();
    let map_type = flags & MAP_TYPE_MASK;
    match MAP_TYPES.iter().find(|(_, v)| *v == map_type) {
        Some((name, _)) => out.push_str(name),
        None if map_type != 0 => {
            let _ = write!(out, "{map_type:#x}");
        }
        None => {}
    }
    let mut rest = flags & !MAP_TYPE_MASK;
    let huge = (rest >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
    if flags & MAP_HUGETLB != 0 && huge != 0 {
        rest &= !(MAP_HUGE_MASK << MAP_HUGE_SHIFT);
        let extra = join_bits(rest, MAP_FLAG_NAMES, out);
        return format!("{extra}|MAP_HUGE_{}", huge_size(huge));
    }
    let uninitialized = rest & MAP_UNINITIALIZED != 0;
    rest &= !MAP_UNINITIALIZED;
    let mut out = join_bits(rest, MAP_FLAG_NAMES, out);
    if uninitialized {
        push_sep(&mut out);
        out.push_str("MAP_UNINITIALIZED");
    }
    if out.is_empty() { "0".to_owned() } else { out }
}

fn huge_size(log2: u64) -> String {
    match log2 {
        30.. => format!("{}GB", 1u64 << (log2 - 30)),
        20.. => format!("{}MB", 1u64 << (log2 - 20)),
        10.. => format!("{}KB", 1u64 << (log2 - 10)),
        _ => format!("{}B", 1u64 << log2),
    }
}

fn join_bits(mut bits: u64, table: &[(&str, u64)], mut out: String) -> String {
    for (name, bit) in table {
        if bits & bit != 0 {
            push_sep(&mut out);
            out.push_str(name);
            bits &= !bit;
        }
    }
    if bits != 0 {
        push_sep(&mut out);
        let _ = write!(out, "{bits:#x}");
    }
    out
}

fn push_sep(out: &mut String) {
    if !out.is_empty() {
        out.push('|');
    }
}

/// The bit of a `PROT_*` name (`PROT_NONE` is 0).
#[must_use]
pub fn parse_prot(name: &str) -> Option<u64> {
    if name == "PROT_NONE" {
        return Some(0);
    }
    PROT_NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The bits of a `MAP_*` name, type values included.
#[must_use]
pub fn parse_flag(name: &str) -> Option<u64> {
    MAP_TYPES
        .iter()
        .chain(MAP_FLAG_NAMES)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

const ERRNO_NAMES: &[(&str, i64)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("EINTR", 4),
    ("EBADF", 9),
    ("EAGAIN", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("ENODEV", 19),
    ("EINVAL", 22),
    ("ENFILE", 23),
    ("EMFILE", 24),
    ("ETXTBSY", 26),
    ("EFBIG", 27),
    ("EOVERFLOW", 75),
    ("EOPNOTSUPP", 95),
];

/// `EBADF` for -9: the name of a negative syscall return, if it is a known error.
#[must_use]
pub fn errno_name(ret: i64) -> Option<&'static str> {
    ERRNO_NAMES
        .iter()
        .find(|(_, n)| *n == -ret)
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests;
