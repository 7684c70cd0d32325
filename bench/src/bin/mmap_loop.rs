//! The measured workload: `mmap-loop mmap N` maps and unmaps a 4 KiB anonymous page N times;
//! `mmap-loop getppid N` calls getppid N times (an unrelated syscall, for the tracing tax).
//! Prints the mean nanoseconds per iteration, after a warm-up of N/10 iterations.
//!
//! For the pipeline benchmark: `mmap-loop paced RATE SECONDS` makes RATE mmap+munmap per second
//! (in 1 ms steps) for SECONDS; `mmap-loop storm THREADS SECONDS` has THREADS threads map and
//! unmap as fast as they can. Both speak `mapsentry_bench::workload`'s protocol.
#![expect(
    unsafe_code,
    reason = "raw mmap/munmap/getppid system calls are the workload"
)]

use std::time::Instant;

use mapsentry_bench::workload;

fn mmap_munmap() {
    // SAFETY: maps one fresh anonymous page and unmaps exactly that page.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED, "mmap failed");
        libc::munmap(page, 4096);
    }
}

fn getppid() {
    // SAFETY: getppid has no arguments and cannot fail; the raw call avoids any libc caching.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// `mmap-loop storm THREADS SECONDS`: `threads` threads map and unmap as fast as they can.
fn storm(threads: u64, seconds: u64) -> u64 {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..threads)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut made = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    mmap_munmap();
                    made += 1;
                }
                made
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .map(|t| t.join().expect("storm thread"))
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next();
    if let Some(timed_mode @ ("paced" | "storm")) = mode.as_deref() {
        let mut number = || -> u64 {
            args.next()
                .and_then(|n| n.parse().ok())
                .expect("usage: mmap-loop paced RATE SECONDS | storm THREADS SECONDS")
        };
        let (a, seconds) = (number(), number());
        if timed_mode == "paced" {
            workload::serve(|| workload::paced(a, seconds, mmap_munmap));
        } else {
            workload::serve(|| storm(a, seconds));
        }
        return;
    }
    let work: fn() = match mode.as_deref() {
        Some("mmap") => mmap_munmap,
        Some("getppid") => getppid,
        other => panic!(
            "usage: mmap-loop mmap|getppid N, or paced RATE SECONDS, or storm THREADS SECONDS (got {other:?})"
        ),
    };
    let n: u32 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("N: iterations");
    for _ in 0..n / 10 {
        work();
    }
    let start = Instant::now();
    for _ in 0..n {
        work();
    }
    println!("{:.1}", start.elapsed().as_secs_f64() * 1e9 / f64::from(n));
}
