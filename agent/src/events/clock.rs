//! Converts the kernel's boot-time clock (`bpf_ktime_get_boot_ns`) to wall-clock time.

use rustix::time::{ClockId, DynamicClockId, clock_gettime, clock_gettime_dynamic};

/// `CLOCK_REALTIME - CLOCK_BOOTTIME`, measured once: add it to a boot-time stamp.
#[must_use]
pub fn boot_to_wall_offset_ns() -> i128 {
    // Take the tightest of a few samples so a preemption between the two reads does not skew it.
    (0..5)
        .map(|_| {
            let before = nanos(clock_gettime(ClockId::Realtime));
            let boot = clock_gettime_dynamic(DynamicClockId::Boottime).map_or(0, nanos);
            let after = nanos(clock_gettime(ClockId::Realtime));
            (after - before, i128::midpoint(before, after) - boot)
        })
        .min_by_key(|(spread, _)| *spread)
        .map_or(0, |(_, offset)| offset)
}

fn nanos(ts: rustix::time::Timespec) -> i128 {
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}
