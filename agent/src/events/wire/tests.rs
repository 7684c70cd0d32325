use zerocopy::{FromZeros, IntoBytes};

use super::*;

fn header(syscall: u16) -> RawEventHeader {
    let mut h = RawEventHeader::new_zeroed();
    h.ts_boot_ns = 1_000;
    h.addr = 0x1000;
    h.length = 8192;
    h.prot = 3;
    h.flags = 0x22;
    h.fd = -1;
    h.ret = 0x7f00_0000_0000;
    h.pid = 10;
    h.tid = 11;
    h.syscall = syscall;
    h.comm[..4].copy_from_slice(b"test");
    h
}

fn record(h: &RawEventHeader, path: &[u8]) -> Vec<u8> {
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(path);
    bytes
}

#[test]
fn header_is_the_c_offset_of_path() {
    assert_eq!(HEADER_LEN, 148);
}

#[test]
fn anonymous_record_decodes_exactly() {
    let event = decode(&record(&header(SYSCALL_MMAP), b""), 5_000).unwrap();
    assert_eq!(event.syscall, Syscall::Mmap);
    assert_eq!(event.time_ns, 6_000);
    assert_eq!(event.comm, "test");
    assert_eq!((event.pid, event.tid), (10, 11));
    assert_eq!(event.args.fd, -1);
    assert_eq!(event.args.length, 8192);
    assert_eq!(event.ret, 0x7f00_0000_0000);
    assert_eq!(event.file, None);
}

#[test]
fn memfd_shm_and_deleted_are_told_apart() {
    let mut h = header(SYSCALL_MMAP2);
    h.file_flags = FILE_PRESENT | FILE_UNLINKED;
    h.fs_magic = TMPFS_MAGIC;
    let path = b"/memfd:jit";
    h.path_len = path.len() as u16;
    let file = decode(&record(&h, path), 0).unwrap().file.unwrap();
    assert!(file.memfd && !file.deleted && !file.shm, "{file:?}");
    assert_eq!(file.path, "/memfd:jit");

    let path = b"/dev/shm/seg";
    h.path_len = path.len() as u16;
    h.file_flags = FILE_PRESENT;
    let file = decode(&record(&h, path), 0).unwrap().file.unwrap();
    assert!(file.shm && !file.memfd && !file.deleted, "{file:?}");

    let path = b"/tmp/gone";
    h.path_len = path.len() as u16;
    h.file_flags = FILE_PRESENT | FILE_UNLINKED;
    h.fs_magic = 0xef53;
    let file = decode(&record(&h, path), 0).unwrap().file.unwrap();
    assert!(file.deleted && !file.memfd && !file.shm, "{file:?}");
}

#[test]
fn kernel_dev_converts_to_stat_encoding() {
    // 8:1 (sda1) and 259:65536 (an NVMe partition with a large minor).
    assert_eq!(userspace_dev((8 << 20) | 1), 0x801);
    assert_eq!(userspace_dev((259 << 20) | 65_536), 0x0000_0000_1001_0300);
}

#[test]
fn truncated_records_are_errors() {
    let full = record(&header(SYSCALL_MMAP), b"");
    for len in 0..HEADER_LEN {
        assert_eq!(decode(&full[..len], 0), Err(DecodeError::Truncated { len }));
    }
}

#[test]
fn a_path_longer_than_the_record_is_an_error() {
    let mut h = header(SYSCALL_MMAP);
    h.file_flags = FILE_PRESENT;
    h.path_len = 20;
    assert_eq!(
        decode(&record(&h, b"/short"), 0),
        Err(DecodeError::PathOverrun {
            path_len: 20,
            available: 6
        })
    );
    h.path_len = u16::MAX;
    let err = decode(&record(&h, &[b'a'; 600]), 0).unwrap_err();
    assert!(err.to_string().contains("at most 511"), "{err}");
}

#[test]
fn an_unknown_syscall_is_an_error() {
    assert_eq!(
        decode(&record(&header(7), b""), 0),
        Err(DecodeError::UnknownSyscall { value: 7 })
    );
}

#[test]
fn enforcement_is_decoded_and_unknown_actions_are_errors() {
    let mut h = header(SYSCALL_MMAP);
    assert_eq!(decode(&record(&h, b""), 0).unwrap().enforced, None);
    h.action = ACTION_KILL;
    h.rule_id = 42;
    let enforced = decode(&record(&h, b""), 0).unwrap().enforced;
    assert_eq!(
        enforced,
        Some(Enforcement {
            action: EnforceAction::Kill,
            rule_id: 42
        })
    );
    h.action = ACTION_DENY;
    assert_eq!(
        decode(&record(&h, b""), 0)
            .unwrap()
            .enforced
            .unwrap()
            .action,
        EnforceAction::Deny
    );
    h.action = 9;
    assert_eq!(
        decode(&record(&h, b""), 0),
        Err(DecodeError::UnknownAction { value: 9 })
    );
}

#[test]
fn invalid_utf8_in_comm_and_path_is_replaced_not_fatal() {
    let mut h = header(SYSCALL_MMAP);
    h.comm = [0xff; COMM_LEN];
    h.file_flags = FILE_PRESENT;
    h.path_len = 3;
    let event = decode(&record(&h, &[b'/', 0xc3, 0x28]), 0).unwrap();
    assert!(event.comm.contains('\u{fffd}'));
    assert!(event.file.unwrap().path.contains('\u{fffd}'));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic generator: every length up to two headers, many byte patterns.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..20_000 {
        let len = round % (2 * HEADER_LEN + 40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = decode(&bytes, i128::from(state));
    }
}
