//! The pipeline benchmark's workload processes (`mmap-loop paced|storm` on the host,
//! `syscall_tax --paced` in the VMs) speak one protocol: print the pid, wait for a line on stdin
//! (the tracer is attached by then), make the calls, print how many were made.

use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

/// Serve the protocol: the pid, the word to start, `work`, the number of calls it made.
///
/// # Panics
/// When stdout or stdin is closed: the benchmark that started the workload is gone.
pub fn serve(work: impl FnOnce() -> u64) {
    println!("{}", std::process::id());
    std::io::stdout().flush().expect("stdout");
    let mut go = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut go)
        .expect("reading the word to start");
    println!("{}", work());
}

/// `rate` calls of `call` a second for `seconds`, spread over 1 ms steps (a late step catches
/// up); returns the calls made.
pub fn paced(rate: u64, seconds: u64, call: fn()) -> u64 {
    let run_for = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut made = 0u64;
    while start.elapsed() < run_for {
        let due = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX) * rate / 1_000_000;
        while made < due {
            call();
            made += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    made
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn count() {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn paced_makes_the_rate_over_the_seconds_and_says_how_many() {
        let started = Instant::now();
        let made = paced(2_000, 1, count);
        let took = started.elapsed();
        assert_eq!(made, CALLS.load(Ordering::Relaxed));
        // Every 1 ms step catches up to the rate; the last step lands within a step or two
        // (or a late wake-up) of the second's end.
        assert!((1_800..=2_000).contains(&made), "{made} calls in {took:?}");
        assert!(took >= Duration::from_secs(1), "{took:?}");
    }
}
