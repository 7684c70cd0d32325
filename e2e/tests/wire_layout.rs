//! The Rust mirror of the kernel record (`agent/src/events/wire.rs`) has the size and field
//! offsets of `struct ms_event` as compiled: read from the object's BTF (bpftool), not assumed.
//! Also the shared constants agree with the C header.

use std::{collections::HashMap, mem::offset_of, process::Command};

use mapsentry_agent::{
    enforce::wire::{self as rule_wire, RawEnforceState, RawPattern, RawRule, RawRuleSet},
    events::wire::{self, RawEventHeader},
};

/// Member name -> (byte offset, BTF type id) of `struct NAME`, and the struct's size.
fn btf_layout(name: &str) -> (HashMap<String, (usize, u32)>, usize, String) {
    let object =
        std::env::temp_dir().join(format!("mapsentry-capture-{}.bpf.o", std::process::id()));
    let object = object.with_extension(format!("{name}.o"));
    std::fs::write(&object, mapsentry_ebpf::CAPTURE).expect("writing the object");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&object)
        .args(["format", "raw"])
        .output()
        .expect("running bpftool (Debian package bpftool)");
    let _ = std::fs::remove_file(&object);
    assert!(
        output.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = String::from_utf8(output.stdout).expect("utf-8");

    let struct_line = format!("STRUCT '{name}' ");
    let mut lines = dump.lines().skip_while(|l| !l.contains(&struct_line));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("struct {name} in the object's BTF"));
    let size = field(header, "size=").parse().expect("size");
    let members = lines
        .take_while(|l| l.starts_with('\t'))
        .map(|l| {
            let name = l.trim().split('\'').nth(1).expect("member name").to_owned();
            let bits: usize = field(l, "bits_offset=").parse().expect("bits_offset");
            assert_eq!(bits % 8, 0, "{name} is a bitfield");
            (
                name,
                (bits / 8, field(l, "type_id=").parse().expect("type_id")),
            )
        })
        .collect();
    (members, size, dump)
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

macro_rules! rust_offsets {
    ($ty:ty; $($field:ident),* $(,)?) => {
        [$((stringify!($field), offset_of!($ty, $field))),*]
    };
}

#[test]
fn rust_mirror_matches_the_btf_of_struct_ms_event() {
    let (members, size, dump) = btf_layout("ms_event");
    let rust = rust_offsets!(RawEventHeader;
        ts_boot_ns, cgroup_id, addr, length, prot, flags, pgoffset, offset, ret, inode, fs_magic,
        fd, dev, pid, tid, ppid, uid, gid, file_flags, syscall, path_len, rule_id, action, prev_prot,
        comm,
    );
    assert_eq!(
        members.len(),
        rust.len() + 1,
        "C members {members:?}: the mirror must list all but `path`"
    );
    for (name, offset) in rust {
        let (c_offset, _) = members
            .get(name)
            .unwrap_or_else(|| panic!("C struct has no member {name}"));
        assert_eq!(offset, *c_offset, "offset of {name}");
    }
    let (path_offset, path_type) = members["path"];
    assert_eq!(
        wire::HEADER_LEN,
        path_offset,
        "the header ends where `path` starts"
    );
    let path_array = dump
        .lines()
        .find(|l| l.starts_with(&format!("[{path_type}] ARRAY")))
        .expect("path's array type");
    assert_eq!(
        field(path_array, "nr_elems=").parse::<usize>().unwrap(),
        wire::PATH_MAX,
        "MS_PATH_MAX"
    );
    assert_eq!(
        size,
        (wire::HEADER_LEN + wire::PATH_MAX).next_multiple_of(8),
        "sizeof(struct ms_event)"
    );
}

#[test]
fn constants_match_the_c_header() {
    let header = include_str!("../../ebpf/include/mapsentry_event.h");
    let value = |name: &str| -> u64 {
        let line = header
            .lines()
            .map(|l| l.trim().trim_start_matches("#define").trim_start())
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in mapsentry_event.h"));
        let text = line
            .split_once(name)
            .unwrap()
            .1
            .trim_start_matches([' ', '=', '\t']);
        let number = text.split([',', ' ', '\t']).next().unwrap();
        match number.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => number.parse(),
        }
        .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let rust: [(&str, u64); 36] = [
        (
            "MS_PATTERNS_PER_TABLE",
            rule_wire::PATTERNS_PER_TABLE as u64,
        ),
        ("MS_PATH_KEY_BYTES", rule_wire::PATH_KEY_BYTES as u64),
        ("MS_NEED_COMM", rule_wire::NEED_COMM.into()),
        ("MS_NEED_EXE", rule_wire::NEED_EXE.into()),
        ("MS_NEED_FILE", rule_wire::NEED_FILE.into()),
        ("MS_NEED_KINDS", rule_wire::NEED_KINDS.into()),
        ("MS_NEED_PATH", rule_wire::NEED_PATH.into()),
        ("MS_FK_MEMFD", rule_wire::FK_MEMFD.into()),
        ("MS_FK_SHM", rule_wire::FK_SHM.into()),
        ("MS_FK_DELETED", rule_wire::FK_DELETED.into()),
        ("MS_MIDDLE_EXACT", rule_wire::MIDDLE_EXACT.into()),
        ("MS_MIDDLE_COMPONENT", rule_wire::MIDDLE_COMPONENT.into()),
        ("MS_MIDDLE_ANY", rule_wire::MIDDLE_ANY.into()),
        ("MS_STATE_EXE", rule_wire::STATE_EXE.into()),
        ("MS_ACTION_DENY", rule_wire::ACTION_DENY.into()),
        ("MS_SYSCALL_MPROTECT", wire::SYSCALL_MPROTECT.into()),
        ("MS_VMA_FILE", wire::VMA_FILE.into()),
        ("MS_ACTION_NONE", wire::ACTION_NONE.into()),
        ("MS_ACTION_KILL", wire::ACTION_KILL.into()),
        ("MS_RULES_PER_SET", rule_wire::RULES_PER_SET as u64),
        ("MS_MAPPING_ANY", rule_wire::MAPPING_ANY.into()),
        ("MS_MAPPING_ANONYMOUS", rule_wire::MAPPING_ANONYMOUS.into()),
        ("MS_MAPPING_FILE", rule_wire::MAPPING_FILE.into()),
        ("MS_ACTION_KILL", rule_wire::ACTION_KILL.into()),
        ("MS_COMM_LEN", wire::COMM_LEN as u64),
        ("MS_PATH_MAX", wire::PATH_MAX as u64),
        ("MS_SYSCALL_MMAP", wire::SYSCALL_MMAP.into()),
        ("MS_SYSCALL_MMAP2", wire::SYSCALL_MMAP2.into()),
        ("MS_SYSCALL_OLD_MMAP", wire::SYSCALL_OLD_MMAP.into()),
        ("MS_FILE_PRESENT", wire::FILE_PRESENT.into()),
        ("MS_FILE_UNLINKED", wire::FILE_UNLINKED.into()),
        ("MS_FILE_PATH_TRUNCATED", wire::FILE_PATH_TRUNCATED.into()),
        ("MS_ARGS_UNREADABLE", wire::ARGS_UNREADABLE.into()),
        ("MS_COUNTER_SEEN", wire::COUNTER_SEEN.into()),
        ("MS_COUNTER_FILTERED", wire::COUNTER_FILTERED.into()),
        ("MS_COUNTER_DROPPED", wire::COUNTER_DROPPED.into()),
    ];
    for (name, rust_value) in rust {
        assert_eq!(value(name), rust_value, "{name}");
    }
}

/// Every member of the C struct `name` at the Rust mirror's offset, and the same size.
fn check_struct(name: &str, rust: &[(&str, usize)], rust_size: usize) {
    let (members, size, _) = btf_layout(name);
    assert_eq!(members.len(), rust.len(), "{name}: C members {members:?}");
    for (member, offset) in rust {
        assert_eq!(
            Some(*offset),
            members.get(*member).map(|m| m.0),
            "{name}.{member}"
        );
    }
    assert_eq!(size, rust_size, "sizeof(struct {name})");
}

#[test]
fn rust_mirrors_match_the_btf_of_the_rule_structs() {
    check_struct(
        "ms_rule",
        &rust_offsets!(RawRule;
            prot_all, prot_any, flags_all, flags_any, min_length, rule_id, syscalls, mapping,
            action, types_all, types_any, flags_any_given, needs, comm, exe, path, not_path,
            except_comm, except_exe, file_care, file_want, pad,
        ),
        size_of::<RawRule>(),
    );
    check_struct(
        "ms_rule_set",
        &rust_offsets!(RawRuleSet; count, version, generation, pad, rules),
        rule_wire::RULE_SET_LEN,
    );
    check_struct(
        "ms_pattern",
        &rust_offsets!(RawPattern; prefix_len, suffix_len, middle, slashes, pad, classes),
        rule_wire::PATTERN_LEN,
    );
    check_struct(
        "ms_enforce_state",
        &rust_offsets!(RawEnforceState; sets, generation, flags, pad),
        rule_wire::ENFORCE_STATE_LEN,
    );
    // The path trie key is written as aya's `lpm_trie::Key<[u8; PATH_KEY_BYTES]>`, a packed
    // u32 bit count followed by the bytes.
    check_struct(
        "ms_path_key",
        &[("prefixlen", 0), ("data", 4)],
        4 + rule_wire::PATH_KEY_BYTES,
    );
}
