use std::collections::BTreeMap;

use super::*;
use crate::plan::{Run, Skip};

/// (mode, rdevmajor, rdevminor, contents) by name, read back the way the kernel reads newc.
fn read_back(archive: &[u8]) -> BTreeMap<String, (u32, u32, u32, Vec<u8>)> {
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let mut entries = BTreeMap::new();
    let mut at = 0;
    loop {
        assert_eq!(at % 4, 0, "entries start 4-byte aligned");
        let header = &archive[at..at + 110];
        assert_eq!(&header[..6], b"070701");
        let field = |i: usize| hex(&header[6 + 8 * i..14 + 8 * i]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name_start = at + 110;
        let name = std::str::from_utf8(&archive[name_start..name_start + namesize - 1]).unwrap();
        assert_eq!(archive[name_start + namesize - 1], 0, "NUL-terminated name");
        let data = (name_start + namesize).next_multiple_of(4);
        if name == "TRAILER!!!" {
            assert_eq!(data, archive.len());
            return entries;
        }
        let contents = archive[data..data + size].to_vec();
        entries.insert(name.to_owned(), (mode, field(9), field(10), contents));
        at = (data + size).next_multiple_of(4);
    }
}

#[test]
fn the_archive_is_newc_with_parents_before_children() {
    let mut cpio = Cpio::default();
    cpio.file("/work/t/deps/capture-1", b"ELF...", 0o755);
    cpio.dir("/work/t");
    cpio.symlink("/bin/sh", "busybox");
    cpio.char_device("/dev/console", 5, 1);
    let archive = cpio.finish();
    let entries = read_back(&archive);
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/sh",
            "dev",
            "dev/console",
            "work",
            "work/t",
            "work/t/deps",
            "work/t/deps/capture-1"
        ]
    );
    assert_eq!(
        entries["work/t/deps/capture-1"],
        (0o100_755, 0, 0, b"ELF...".to_vec())
    );
    assert_eq!(entries["bin/sh"], (0o120_777, 0, 0, b"busybox".to_vec()));
    assert_eq!(entries["dev/console"], (0o020_600, 5, 1, Vec::new()));
    assert_eq!(entries["work/t"].0, 0o040_755);
    // Each directory once, although /work/t was named twice.
    let headers = archive.windows(6).filter(|w| w == b"070701").count();
    assert_eq!(headers, entries.len() + 1);
}

#[test]
fn the_init_script_runs_every_planned_suite_with_its_mode_and_reports_it() {
    let plan = Plan {
        runs: vec![
            Run {
                suite: "capture".into(),
                label: "kprobe".into(),
                env: vec![("MAPSENTRY_TEST_ATTACH", "kprobe".into())],
                binary: "/w/capture-1".into(),
                skip: Vec::new(),
            },
            Run {
                suite: "attach_modes".into(),
                label: "probe".into(),
                env: vec![
                    ("MAPSENTRY_TEST_PROBE_OK", "fentry,kprobe@do_mmap".into()),
                    ("MAPSENTRY_TEST_PROBE_REFUSED", String::new()),
                ],
                binary: "/w/attach_modes-2".into(),
                skip: vec![("a_test", "busybox's setpriv")],
            },
        ],
        skipped: vec![Skip {
            suite: "cli_run".into(),
            reason: "needs setpriv".into(),
        }],
        requires_bpf_lsm: true,
        host_programs: Vec::new(),
        host_files: Vec::new(),
    };
    let script = init_script(&plan, "n0nce");
    assert!(script.starts_with("#!/bin/sh\n"));
    // The shell parses it (a quote in a reason once made /init a syntax error).
    let check = std::process::Command::new("sh")
        .args(["-n", "-c", &script])
        .output()
        .expect("sh -n");
    assert!(
        check.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(script.contains(
        "\nrun capture kprobe env MAPSENTRY_TEST_ATTACH='kprobe' /w/capture-1 --test-threads=1 --show-output\n"
    ));
    assert!(script.contains(
        "\nrun attach_modes probe env MAPSENTRY_TEST_PROBE_OK='fentry,kprobe@do_mmap' \
         MAPSENTRY_TEST_PROBE_REFUSED='' /w/attach_modes-2 --test-threads=1 --show-output \
         --skip a_test\n"
    ));
    assert!(
        script.contains(r"echo 'not run in the VM: attach_modes::a_test: busybox'\''s setpriv'")
    );
    assert!(script.contains(
        "echo \"MAPSENTRY-VM-RESULT nonce=n0nce suite=$suite mode=$mode rc=$rc start=$start end=$end\""
    ));
    assert!(script.contains("echo 'not run in the VM: cli_run: needs setpriv'"));
    assert!(script.ends_with("echo \"MAPSENTRY-VM-DONE nonce=n0nce\"\npoweroff -f\n"));
}

/// The loader and every library ldd resolved, at their paths; the vDSO has no file.
#[test]
fn the_libraries_of_a_host_program_are_read_from_ldd() {
    let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
               \tlibLLVM-14.so.1 => /lib/x86_64-linux-gnu/libLLVM-14.so.1 (0x00007f00)\n\
               \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)\n\
               \t/lib64/ld-linux-x86-64.so.2 (0x00007f02)\n";
    assert_eq!(
        shared_libraries(ldd).unwrap(),
        [
            "/lib/x86_64-linux-gnu/libLLVM-14.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
    );
    let error = shared_libraries("\tlibbcc.so.0 => not found\n").unwrap_err();
    assert_eq!(error.to_string(), "ldd: libbcc.so.0 => not found");
}

/// A host program lands under /bin with each library at its own path.
#[test]
fn a_host_program_goes_in_with_its_libraries() {
    let mut archive = Cpio::default();
    add_host_program(&mut archive, Path::new("/bin/ls")).unwrap();
    let entries = read_back(&archive.finish());
    assert!(entries.contains_key("bin/ls"), "{:?}", entries.keys());
    assert!(
        entries.keys().any(|k| k.contains("libc.so")),
        "{:?}",
        entries.keys()
    );
    let missing = add_host_program(&mut Cpio::default(), Path::new("/nonexistent/peer"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/peer"), "{missing}");
}
