use std::time::Duration;

use kube::runtime::utils::Backoff as _;

use super::{MAX, MIN, WatchBackoff};

#[test]
fn delays_double_up_to_the_cap_jittered_to_half_and_reset() {
    let mut backoff = WatchBackoff::default();
    let delays: Vec<Duration> = backoff.by_ref().take(12).collect();
    let mut base = MIN;
    for delay in &delays {
        assert!(
            *delay >= base / 2 && *delay <= base,
            "{delay:?} within half of {base:?} and it"
        );
        base = (base * 2).min(MAX);
    }
    assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
    assert!(delays[11] >= MAX / 2, "capped at {MAX:?}: {delays:?}");
    backoff.reset();
    assert!(backoff.next().unwrap() <= MIN, "reset starts over");
}
