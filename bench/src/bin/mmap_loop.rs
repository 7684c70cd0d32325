//! The measured workload: `mmap-loop mmap N` maps and unmaps a 4 KiB anonymous page N times;
//! `mmap-loop getppid N` calls getppid N times (an unrelated syscall, for the tracing tax).
//! Prints the mean nanoseconds per iteration, after a warm-up of N/10 iterations.
#![expect(
    unsafe_code,
    reason = "raw mmap/munmap/getppid system calls are the workload"
)]

use std::time::Instant;

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

fn main() {
    let mut args = std::env::args().skip(1);
    let work: fn() = match args.next().as_deref() {
        Some("mmap") => mmap_munmap,
        Some("getppid") => getppid,
        other => panic!("usage: mmap-loop mmap|getppid N (got {other:?})"),
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
