//! Real BPF on the running kernel (needs root), in the mode `$MAPSENTRY_TEST_ATTACH` asks for
//! (tracepoint on the build machines; every mode in `cargo xtask vm-test`): a helper process
//! makes known mmap calls and each captured record must equal the call exactly.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::{
    Helper, capture, drain_pid, expected_mode, int80_call, mmap_call, records_for, the_record,
};
use mapsentry_agent::{AttachMode, Capture, CaptureConfig, TracepointHooks};
use mapsentry_e2e::kernel_modes::ia32_runs;
use mapsentry_policy::{MmapEvent, Syscall};
use serde_json::{Value, json};

/// What a case expects of the file fields beyond inode and device, which are always compared
/// with the helper's fstat.
#[derive(Debug, Clone, Copy)]
enum FileExpect {
    None,
    Path(&'static str),
    Memfd(&'static str),
    Shm,
    Deleted,
}

const PAGE: u64 = 4096;
/// The case the kernel-function modes cannot see (see `every_call_is_captured_exactly`).
const UNALIGNED: &str = "offset not page aligned";
const MPROTECT: &str = "mprotect RW to RX";
const PRIVATE_ANON: u64 = 0x22;

fn cases() -> Vec<(&'static str, Value, FileExpect)> {
    vec![
        (
            "anonymous rw",
            json!({"length": 2 * PAGE, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "file MAP_SHARED at a non-zero offset",
            json!({"length": PAGE, "prot": 1, "flags": 0x01, "fd": "file", "offset": 2 * PAGE}),
            FileExpect::Path("file"),
        ),
        (
            "MAP_FIXED over an existing mapping",
            json!({"premap": true, "length": 2 * PAGE, "prot": 3, "flags": PRIVATE_ANON | 0x10, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "PROT_EXEC",
            json!({"length": PAGE, "prot": 5, "flags": PRIVATE_ANON, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "PROT_WRITE|PROT_EXEC",
            json!({"length": PAGE, "prot": 6, "flags": PRIVATE_ANON, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "MAP_HUGETLB",
            json!({"length": 2 << 20, "prot": 3, "flags": PRIVATE_ANON | 0x4_0000, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "bad fd",
            json!({"length": PAGE, "prot": 1, "flags": 0x02, "fd": "bad"}),
            FileExpect::None,
        ),
        (
            "length 0",
            json!({"length": 0, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"}),
            FileExpect::None,
        ),
        (
            "memfd",
            json!({"length": PAGE, "prot": 3, "flags": 0x01, "fd": "memfd:mapsentry-jit"}),
            FileExpect::Memfd("/memfd:mapsentry-jit"),
        ),
        (
            "POSIX shm",
            json!({"length": PAGE, "prot": 3, "flags": 0x01, "fd": "shm"}),
            FileExpect::Shm,
        ),
        (
            "deleted file",
            json!({"length": PAGE, "prot": 1, "flags": 0x02, "fd": "deleted"}),
            FileExpect::Deleted,
        ),
        (
            MPROTECT,
            json!({"length": 2 * PAGE, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 5}),
            FileExpect::None,
        ),
        (
            UNALIGNED,
            json!({"length": PAGE, "prot": 1, "flags": 0x02, "fd": "file", "offset": 100}),
            FileExpect::Path("file"),
        ),
    ]
}

#[tokio::test]
async fn every_call_is_captured_exactly() {
    let cases = cases();
    let calls: Vec<Value> = cases.iter().map(|(_, call, _)| call.clone()).collect();
    let helper = Helper::spawn(mmap_call(), &[&json!({ "calls": calls }).to_string()]);
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let report = helper.go();
    let events = drain_pid(&mut capture, pid);

    let results = report["results"].as_array().expect("results");
    let mode = capture.attached().mode;
    for ((name, _, file), result) in cases.iter().zip(results) {
        if *name == UNALIGNED && matches!(mode, AttachMode::Fentry | AttachMode::Kprobe) {
            // x86's sys_mmap refuses an unaligned byte offset before it calls
            // ksys_mmap_pgoff, the function these modes hook: the call is not seen (README).
            let records = records_for(&events, result, name);
            assert!(records.is_empty(), "{name} in {mode} mode: {records:#?}");
            continue;
        }
        let record = the_record(&events, result, name);
        check_call(name, record, result, *file, pid);
    }
    // Failures the cases are about: the kernel's answer is in the record.
    let ret_of = |name: &str| {
        let i = cases.iter().position(|(n, ..)| *n == name).expect("case");
        results[i]["ret"].as_i64().expect("ret")
    };
    assert_eq!(ret_of("bad fd"), -9, "EBADF");
    assert_eq!(ret_of("length 0"), -22, "EINVAL");
    assert_eq!(ret_of(UNALIGNED), -22, "EINVAL");
    assert_eq!(
        ret_of("MAP_FIXED over an existing mapping"),
        results[2]["addr"].as_i64().unwrap()
    );
}

fn check_call(name: &str, record: &MmapEvent, result: &Value, file: FileExpect, pid: u32) {
    let n = |key: &str| {
        result[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {key}"))
    };
    let mprotect = name.starts_with("mprotect");
    assert_eq!(
        record.syscall,
        if mprotect {
            Syscall::Mprotect
        } else {
            Syscall::Mmap
        },
        "{name}"
    );
    let target = record.target_mapping;
    assert_eq!(
        target.map(|t| (t.prev_prot, t.file_backed)),
        mprotect.then_some((3, false)),
        "{name}: target"
    );
    assert_eq!(record.pid, pid, "{name}");
    assert_eq!(record.comm, "mmap_call", "{name}");
    assert_eq!(record.args.offset, n("offset"), "{name}: offset as passed");
    assert_eq!(
        record.args.pgoffset,
        n("offset") / PAGE,
        "{name}: pgoffset derived"
    );
    assert_eq!(
        record.ret,
        result["ret"].as_i64().unwrap(),
        "{name}: return value"
    );
    assert_eq!(record.uid, own_uid(), "{name}: uid");
    assert!(record.cgroup_id != 0, "{name}: cgroup id");
    assert!(
        record.time_ns > 1_700_000_000_000_000_000,
        "{name}: wall-clock time {}",
        record.time_ns
    );
    let expect_file = !matches!(file, FileExpect::None);
    assert_eq!(
        record.file.is_some(),
        expect_file,
        "{name}: file presence {:?}",
        record.file
    );
    let Some(info) = &record.file else { return };
    assert_eq!(info.inode, n("inode"), "{name}: inode");
    assert_eq!(info.dev, n("dev"), "{name}: device");
    assert!(!info.path_truncated, "{name}");
    match file {
        FileExpect::Path(kind) => {
            let want = std::env::temp_dir().join(format!("mapsentry-{kind}-{pid}"));
            assert_eq!(info.path, want.display().to_string(), "{name}: path");
            assert!(
                !info.memfd && !info.shm && !info.deleted,
                "{name}: {info:?}"
            );
        }
        FileExpect::Memfd(path) => {
            assert_eq!(info.path, path, "{name}: path");
            assert!(info.memfd && !info.deleted && !info.shm, "{name}: {info:?}");
        }
        FileExpect::Shm => {
            assert_eq!(
                info.path,
                format!("/dev/shm/mapsentry-shm-{pid}"),
                "{name}: path"
            );
            assert!(info.shm && !info.memfd && !info.deleted, "{name}: {info:?}");
        }
        FileExpect::Deleted => {
            assert!(
                info.path.ends_with(&format!("mapsentry-deleted-{pid}")),
                "{name}: path {}",
                info.path
            );
            assert!(info.deleted && !info.memfd && !info.shm, "{name}: {info:?}");
        }
        FileExpect::None => unreachable!("no file was expected"),
    }
}

/// Our effective uid, which the helper inherits.
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    uids.split_whitespace()
        .nth(1)
        .expect("effective uid")
        .parse()
        .expect("a number")
}

/// SIGSEGV: what `int $0x80` raises where the kernel runs no ia32 calls (no gate for it).
const SIGSEGV: i32 = 11;
/// ENOEXEC: what exec of a 32-bit program fails with there.
const ENOEXEC: i32 = 8;

#[tokio::test]
async fn ia32_mmap2_and_old_mmap_carry_their_page_offsets_and_fd() {
    if !ia32_runs() {
        // Nothing to capture: the kernel must refuse to start a 32-bit program at all.
        let error = std::process::Command::new(env!("MMAP2_CALL"))
            .spawn()
            .expect_err("a 32-bit program started on a kernel said to run no ia32 calls");
        assert_eq!(error.raw_os_error(), Some(ENOEXEC), "{error}");
        return;
    }
    let helper = Helper::spawn(env!("MMAP2_CALL"), &[]);
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let report = helper.go();
    let events = drain_pid(&mut capture, pid);
    let (inode, dev) = (
        report["inode"].as_u64().unwrap(),
        report["dev"].as_u64().unwrap(),
    );

    for call in report["calls"].as_array().expect("calls") {
        let mut call = call.clone();
        call["tid"] = report["tid"].clone();
        let name = format!("{} pgoffset {}", call["syscall"], call["pgoffset"]);
        let record = the_record(&events, &call, &name);
        let want_syscall = Syscall::from_name(call["syscall"].as_str().unwrap()).unwrap();
        assert_eq!(record.syscall, want_syscall, "{name}");
        assert_eq!(
            record.args.pgoffset,
            call["pgoffset"].as_u64().unwrap(),
            "{name}: pgoffset"
        );
        assert_eq!(
            record.args.offset,
            call["offset"].as_u64().unwrap(),
            "{name}: offset"
        );
        assert_eq!(record.ret, call["ret"].as_i64().unwrap(), "{name}: ret");
        assert!(
            record.ret > 0 && record.ret < 1 << 32,
            "{name}: a 32-bit address, got {:#x}",
            record.ret
        );
        assert!(!record.args_unreadable, "{name}");
        if record.args.fd >= 0 {
            let file = record
                .file
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no file"));
            assert_eq!(
                (file.inode, file.dev),
                (inode, dev),
                "{name}: inode and device"
            );
            assert_eq!(
                file.path,
                format!("/tmp/mapsentry-m32-{pid}"),
                "{name}: path"
            );
        } else {
            assert_eq!(record.file, None, "{name}");
        }
    }
}

/// Checks each ia32 call the int80 helper reported against its one record.
fn check_int80_calls(report: &serde_json::Value, events: &[MmapEvent], mode: AttachMode) {
    let calls = report["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 3, "{report}");
    for call in calls {
        let mut call = call.clone();
        call["tid"] = report["tid"].clone();
        let name = format!("int $0x80 {} in {mode} mode", call["syscall"]);
        assert!(
            call["ret"].as_i64().unwrap() >= 0,
            "{name}: the call failed: {call}"
        );
        let record = the_record(events, &call, &name);
        let want = Syscall::from_name(call["syscall"].as_str().unwrap()).unwrap();
        assert_eq!(record.syscall, want, "{name}");
        assert!(!record.args_unreadable, "{name}");
        assert_eq!(record.comm, "int80-call", "{name}");
    }
}

/// Any 64-bit process can make ia32 calls (`int $0x80`): a capture that misses them is blind to
/// a mapping made that way. Every mode must see them where the kernel runs them; where it runs
/// none, the call must fault instead (which is what lets tracepoint mode use the per-syscall
/// tracepoints there). Which of the two is required comes from `ia32_runs` (the VM plan's
/// `MAPSENTRY_TEST_IA32`, else "runs"), never from what the kernel did.
#[tokio::test]
async fn ia32_calls_from_a_64_bit_process_are_captured_where_the_kernel_runs_them() {
    let helper = Helper::spawn(int80_call(), &[]);
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });
    let mode = capture.attached().mode;
    if ia32_runs() {
        let report = helper.go();
        let events = drain_pid(&mut capture, pid);
        check_int80_calls(&report, &events, mode);
    } else {
        let (status, report) = helper.go_until_exit();
        assert_eq!(
            status.signal(),
            Some(SIGSEGV),
            "{status}; report {report:?}"
        );
        assert_eq!(report, None);
        let events = drain_pid(&mut capture, pid);
        assert!(events.is_empty(), "{events:#?}");
    }
}

/// Tracepoint mode with the per-syscall tracepoints, forced whatever the kernel: every native
/// call captured exactly (the unaligned offset too: the syscall events fire before x86's
/// sys_mmap refuses it), and, where the kernel runs ia32 calls, none of those: the blind spot
/// that keeps `auto` hooks on the generic pair there.
#[tokio::test]
async fn per_syscall_tracepoints_see_every_native_call_and_no_ia32_call() {
    if expected_mode() != AttachMode::Tracepoint {
        println!(
            "not run in {} mode: forces tracepoint mode, which the tracepoint run covers",
            expected_mode()
        );
        return;
    }
    let start = |pid: u32| {
        let config = CaptureConfig {
            attach: AttachMode::Tracepoint,
            tracepoint_hooks: TracepointHooks::PerSyscall,
            pid: Some(pid),
            ..CaptureConfig::default()
        };
        let capture = Capture::start(&config).expect("per-syscall tracepoints (needs tracefs)");
        assert_eq!(
            capture.attached().target,
            "tracepoint syscalls/sys_{enter,exit}_{mmap,mprotect,pkey_mprotect}"
        );
        capture
    };

    let cases = cases();
    let calls: Vec<Value> = cases.iter().map(|(_, call, _)| call.clone()).collect();
    let helper = Helper::spawn(mmap_call(), &[&json!({ "calls": calls }).to_string()]);
    let pid = helper.pid;
    let mut capture = start(pid);
    let report = helper.go();
    let events = drain_pid(&mut capture, pid);
    let results = report["results"].as_array().expect("results");
    for ((name, _, file), result) in cases.iter().zip(results) {
        check_call(name, the_record(&events, result, name), result, *file, pid);
    }
    drop(capture);

    let helper = Helper::spawn(int80_call(), &[]);
    let pid = helper.pid;
    let mut capture = start(pid);
    let (status, report) = helper.go_until_exit();
    let events = drain_pid(&mut capture, pid);
    if ia32_runs() {
        assert!(status.success(), "{status}");
        assert_eq!(
            report.expect("the helper's report")["calls"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert!(
            events.is_empty(),
            "the per-syscall events skip ia32 calls; if they now see them, auto can use them \
             everywhere: {events:#?}"
        );
    } else {
        assert_eq!(status.signal(), Some(SIGSEGV), "{status}");
        assert!(events.is_empty(), "{events:#?}");
    }
}

/// Wait `quiet` for records that must not come, reading as the agent does.
async fn expect_quiet(capture: &mut Capture, quiet: std::time::Duration) {
    let mut events = Vec::new();
    let read = tokio::time::timeout(quiet, capture.next_batch(&mut events)).await;
    assert!(read.is_err(), "records from a quiet process: {events:#?}");
}

#[tokio::test]
async fn a_quiet_reader_stops_its_timer_and_the_next_record_wakes_it() {
    use mapsentry_agent::events::{FLUSH_INTERVAL, IDLE_DRAIN_INTERVAL, QUIET_TICKS};
    use std::time::{Duration, Instant};

    // Anonymous records are written in place (reserve and submit), file-backed ones copied
    // (output): both must wake an idle reader.
    let anonymous = json!({"length": PAGE, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"});
    let file = json!({"length": PAGE, "prot": 1, "flags": 0x02, "fd": "file"});
    let rounds: Vec<Value> = (0..6)
        .map(|i| if i % 2 == 0 { &anonymous } else { &file }.clone())
        .collect();
    let mut helper = Helper::spawn(mmap_call(), &[&json!({ "rounds": rounds }).to_string()]);
    let pid = helper.pid;
    let mut capture = capture(&CaptureConfig {
        pid: Some(pid),
        ..CaptureConfig::default()
    });

    // Quiet: the timer stops after QUIET_TICKS empty drains instead of ticking 100 times a
    // second. Over 1.5 s: QUIET_TICKS before idling, a backstop drain, and QUIET_TICKS more after
    // it (the backstop restarts the timer); a third QUIET_TICKS of slack, should a late
    // wake-up restart it once more.
    let quiet = Duration::from_millis(1500);
    expect_quiet(&mut capture, quiet).await;
    let wakeups = capture.reader_wakeups();
    let ticking = quiet.as_millis() / FLUSH_INTERVAL.as_millis();
    assert!(
        wakeups.went_idle >= 1 && wakeups.timer <= u64::from(3 * QUIET_TICKS),
        "a quiet reader stops its timer: {} ticks in {quiet:?} (a running timer: {ticking}); \
         {wakeups:?}",
        wakeups.timer
    );

    for (round, call) in rounds.iter().enumerate() {
        expect_quiet(&mut capture, FLUSH_INTERVAL * (QUIET_TICKS + 20)).await;
        assert!(capture.reader_idle(), "round {round}: the reader is idle");
        let asked = Instant::now();
        let report = helper.next_round();
        let mut events = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), capture.next_batch(&mut events))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no record within 10 s"))
            .expect("reading the ring buffer");
        let latency = asked.elapsed();
        assert!(
            !capture.reader_idle(),
            "round {round}: woken, the timer runs"
        );
        assert!(
            latency < IDLE_DRAIN_INTERVAL / 2,
            "round {round} ({call}): read {latency:?} after the call; an idle reader is woken \
             at once, its backstop drains every {IDLE_DRAIN_INTERVAL:?}"
        );
        let result = &report["results"][0];
        check_call(
            &format!("round {round}"),
            the_record(&events, result, "the round's call"),
            result,
            if call["fd"] == "file" {
                FileExpect::Path("file")
            } else {
                FileExpect::None
            },
            pid,
        );
    }
    let wakeups = capture.reader_wakeups();
    assert_eq!(
        wakeups.backstop_records, 0,
        "no record waited for the backstop: {wakeups:?}"
    );
    assert_eq!(capture.kernel_counters().expect("counters").dropped, 0);
}
