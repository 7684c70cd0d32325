//! Test helper: makes exactly the mmap calls it is told to, with raw system calls (no libc
//! wrapper checks), and reports what it passed and what the kernel returned.
//!
//! Protocol: argv[1] is a JSON spec. The helper prints `{"pid":N}`, waits for a line on stdin
//! (so the test can start capturing for that pid), makes the calls, prints one JSON report line.
//!
//! Spec: `{"calls":[CALL...]}`, `{"rounds":[CALL...]}` or `{"threads":T,"per_thread":N}`.
//! Rounds: one call per line on stdin (the first line being the usual word to start), each
//! reported on its own line as `calls` reports, for tests of what a single call does.
//! CALL: `{"addr","length","prot","flags","offset"}` numbers, `"fd"` one of `"anon"` (-1),
//! `"bad"` (an unopened descriptor), `"file"` (a file under the temp dir), `"exe"` (this
//! program's own executable, opened read-only), `"shm"`, `"deleted"`, `"memfd:NAME"`, and
//! optional `"premap":true` (map anonymous memory first and pass its address: `MAP_FIXED` over
//! an existing mapping), or `"mprotect":PROT` (map `length` bytes as asked, then call
//! `mprotect(addr, length, PROT)`; the report is of the mprotect call).
//! A spec may also say `"comm":"NAME"`: the helper renames itself (`PR_SET_NAME`) before its
//! calls; and `"exec":PATH,"then":SPEC`: after its calls it execs PATH (a helper) with SPEC
//! instead of reporting, and that image makes its calls at once and reports.
//! Threads: T threads each make N anonymous 4 KiB mappings with address hint
//! `marker(thread, i)`, then unmap them; optional `"prot"` (default 3, RW) and `"pace_us"`
//! (sleep this long after each call: a steady flow rather than a storm).
#![expect(
    unsafe_code,
    reason = "issues raw mmap system calls with arbitrary arguments"
)]

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use mapsentry_e2e::marker;
use serde_json::{Value, json};

const PAGE: u64 = 4096;

fn main() {
    let spec: Value =
        serde_json::from_str(&std::env::args().nth(1).expect("usage: mmap-call SPEC"))
            .expect("SPEC is JSON");
    // An image exec'd by a helper (see "exec") starts at once: its caller already said go.
    if std::env::var_os(EXECED).is_none() {
        println!("{}", json!({ "pid": std::process::id() }));
        io::stdout().flush().expect("stdout");
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line).expect("stdin");
    }
    if let Some(comm) = spec["comm"].as_str() {
        let name = std::ffi::CString::new(comm).expect("comm");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        let ret = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        assert_eq!(ret, 0, "prctl(PR_SET_NAME): {}", io::Error::last_os_error());
    }

    if let Some(rounds) = spec["rounds"].as_array() {
        for (round, call) in rounds.iter().enumerate() {
            if round > 0 {
                let mut line = String::new();
                io::stdin().lock().read_line(&mut line).expect("stdin");
            }
            println!("{}", json!({ "results": [make_call(call)] }));
            io::stdout().flush().expect("stdout");
        }
        return;
    }
    let report = if let Some(calls) = spec["calls"].as_array() {
        json!({ "results": calls.iter().map(make_call).collect::<Vec<_>>() })
    } else {
        let threads = spec["threads"].as_u64().expect("threads");
        let per_thread = spec["per_thread"].as_u64().expect("per_thread");
        let prot = spec["prot"].as_u64().unwrap_or(3);
        let pace = std::time::Duration::from_micros(spec["pace_us"].as_u64().unwrap_or(0));
        json!({ "threads": run_threads(threads, per_thread, prot, pace) })
    };
    if let Some(program) = spec["exec"].as_str() {
        use std::os::unix::process::CommandExt as _;
        let error = std::process::Command::new(program)
            .arg(spec["then"].to_string())
            .env(EXECED, "1")
            .exec();
        panic!("exec {program}: {error}");
    }
    println!("{report}");
}

/// Set in the environment of an image a helper execs.
const EXECED: &str = "MAPSENTRY_HELPER_EXECED";

fn raw_mmap(addr: u64, length: u64, prot: u64, flags: u64, fd: i64, offset: u64) -> i64 {
    // SAFETY: the arguments go to the kernel as they are; a mapping we never touch is harmless,
    // and MAP_FIXED is only used over a mapping this helper made for the purpose.
    let ret = unsafe { libc::syscall(libc::SYS_mmap, addr, length, prot, flags, fd, offset) };
    if ret == -1 {
        -i64::from(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        ret
    }
}

fn temp_path(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mapsentry-{kind}-{}", std::process::id()))
}

fn sized_file(path: &PathBuf) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create file");
    file.set_len(4 * PAGE).expect("size file");
    file
}

/// An open file for `spec`, and the path to remove afterwards.
fn open_fd(spec: &str) -> (Option<File>, Option<PathBuf>, i64) {
    match spec {
        "anon" => (None, None, -1),
        "bad" => (None, None, 1000),
        "file" => {
            let path = temp_path("file");
            let file = sized_file(&path);
            let fd = file.as_raw_fd().into();
            (Some(file), Some(path), fd)
        }
        "exe" => {
            let file = File::open(std::env::current_exe().expect("own path")).expect("open exe");
            let fd = file.as_raw_fd().into();
            (Some(file), None, fd)
        }
        "shm" => {
            let path = PathBuf::from(format!("/dev/shm/mapsentry-shm-{}", std::process::id()));
            let file = sized_file(&path);
            let fd = file.as_raw_fd().into();
            (Some(file), Some(path), fd)
        }
        "deleted" => {
            let path = temp_path("deleted");
            let file = sized_file(&path);
            fs::remove_file(&path).expect("unlink");
            let fd = file.as_raw_fd().into();
            (Some(file), None, fd)
        }
        memfd if memfd.starts_with("memfd:") => {
            let name = std::ffi::CString::new(&memfd["memfd:".len()..]).expect("name");
            // SAFETY: a valid C string; the descriptor is owned by the File below.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
            assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            file.set_len(4 * PAGE).expect("size memfd");
            (Some(file), None, fd.into())
        }
        other => panic!("unknown fd spec {other:?}"),
    }
}

fn make_call(call: &Value) -> Value {
    let num = |key: &str| call[key].as_u64().unwrap_or(0);
    let (file, cleanup, fd) = open_fd(call["fd"].as_str().unwrap_or("anon"));
    let mut addr = num("addr");
    if call["premap"].as_bool().unwrap_or(false) {
        addr = raw_mmap(0, 2 * PAGE, 3, 0x22, -1, 0) as u64;
    }
    let (length, prot, flags, offset) = (num("length"), num("prot"), num("flags"), num("offset"));
    let ret = raw_mmap(addr, length, prot, flags, fd, offset);
    if let Some(new_prot) = call["mprotect"].as_u64() {
        // SAFETY: changes the protection of the mapping just made, which nothing uses.
        let result = unsafe { libc::syscall(libc::SYS_mprotect, ret, length, new_prot) };
        let result = if result == -1 {
            -i64::from(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            result
        };
        return json!({
            "tid": gettid(), "addr": ret, "length": length, "prot": new_prot, "flags": 0,
            "fd": -1, "offset": 0, "ret": result, "inode": 0, "dev": 0,
        });
    }
    let (inode, dev) = file.as_ref().map_or((0, 0), |f| {
        let meta = f.metadata().expect("fstat");
        (meta.ino(), meta.dev())
    });
    if let Some(path) = cleanup {
        let _ = fs::remove_file(path);
    }
    json!({
        "tid": gettid(), "addr": addr, "length": length, "prot": prot, "flags": flags,
        "fd": fd, "offset": offset, "ret": ret, "inode": inode, "dev": dev,
    })
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn run_threads(threads: u64, per_thread: u64, prot: u64, pace: std::time::Duration) -> Vec<Value> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failed = 0;
                for i in 0..per_thread {
                    let ret = raw_mmap(marker(t, i), PAGE, prot, 0x22, -1, 0);
                    if ret < 0 {
                        failed += 1;
                    } else {
                        // SAFETY: unmapping the page this loop just mapped.
                        unsafe { libc::munmap(ret as usize as *mut libc::c_void, PAGE as usize) };
                    }
                    if !pace.is_zero() {
                        std::thread::sleep(pace);
                    }
                }
                json!({ "index": t, "tid": gettid(), "calls": per_thread, "failed": failed })
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}
