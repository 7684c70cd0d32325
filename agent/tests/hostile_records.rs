//! Hostile ring-buffer records, as a stable-toolchain fuzz loop (proptest): `events::wire::decode`
//! on arbitrary bytes (short, long, truncated real sizes) returns an error or an event, never
//! panics. `fuzz/` holds the same target for cargo-fuzz. PROPTEST_CASES raises the case count.

use std::path::Path;

use mapsentry_agent::events::wire::{
    self, ACTION_KILL, FILE_PRESENT, FILE_UNLINKED, RawEventHeader, SYSCALL_MMAP, SYSCALL_MMAP2,
    SYSCALL_MPROTECT,
};
use proptest::prelude::*;
use zerocopy::{FromZeros as _, IntoBytes as _};

proptest! {
    #[test]
    fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), skew in any::<i64>()) {
        let _ = wire::decode(&bytes, i128::from(skew));
    }
}

/// A record as the kernel program writes it: the header, then `path`.
fn record(header: &RawEventHeader, path: &[u8]) -> Vec<u8> {
    let mut header = *header;
    header.path_len = path.len() as u16;
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(path);
    bytes
}

/// The seed corpus of the `wire_record` fuzz target: an anonymous W+X mmap, a memfd mmap killed
/// in the kernel, an mprotect flip of a file-backed mapping, an ia32 mmap2 of a library.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut base = RawEventHeader::new_zeroed();
    base.ts_boot_ns = 5_000_000_000;
    base.cgroup_id = 9137;
    base.length = 8192;
    base.fd = -1;
    base.ret = 0x7f00_0000_0000;
    (base.pid, base.tid, base.ppid) = (4242, 4243, 1);
    base.comm[..4].copy_from_slice(b"java");

    let mut anonymous = base;
    (anonymous.syscall, anonymous.prot, anonymous.flags) = (SYSCALL_MMAP, 7, 0x22);

    let mut memfd = base;
    (memfd.syscall, memfd.prot, memfd.flags, memfd.fd) = (SYSCALL_MMAP, 5, 0x02, 3);
    memfd.file_flags = FILE_PRESENT | FILE_UNLINKED;
    memfd.fs_magic = 0x0102_1994;
    (memfd.action, memfd.rule_id) = (ACTION_KILL, 3);

    let mut flip = base;
    (flip.syscall, flip.prot, flip.prev_prot) = (SYSCALL_MPROTECT, 5, 3 | 0x100);

    let mut library = base;
    (library.syscall, library.prot, library.flags, library.fd) = (SYSCALL_MMAP2, 5, 0x02, 4);
    (library.pgoffset, library.offset, library.inode, library.dev) = (2, 8192, 77, 0x80_0001);
    library.file_flags = FILE_PRESENT;
    vec![
        ("anonymous-wx", record(&anonymous, b"")),
        ("memfd-killed", record(&memfd, b"/memfd:payload")),
        ("mprotect-flip", record(&flip, b"")),
        ("mmap2-library", record(&library, b"/usr/lib/libz.so.1")),
    ]
}

/// The committed seeds are exactly what `seeds()` makes from today's record layout, and each
/// decodes (so the fuzzer starts past the header checks). `MAPSENTRY_WRITE_FUZZ_SEEDS=1` rewrites
/// them.
#[test]
fn fuzz_seeds_are_current_and_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wire_record");
    let write = std::env::var_os("MAPSENTRY_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in seeds() {
        let event = wire::decode(&bytes, 0);
        assert!(event.is_ok(), "seed {name}: {event:?}");
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; MAPSENTRY_WRITE_FUZZ_SEEDS=1 writes it", path.display())
        });
        assert!(
            committed == bytes,
            "{} differs from what this test makes; MAPSENTRY_WRITE_FUZZ_SEEDS=1 rewrites it",
            path.display()
        );
    }
}
