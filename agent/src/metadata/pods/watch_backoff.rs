//! Retry delays of the pod and namespace watches: exponential from 250 ms, at most 8 s, each
//! delay jittered down to half so a fleet of agents does not retry in step. kube's default climbs
//! to 30 s, so after an API server outage of that length the cache caught up only 30-60 s after
//! the server was back (measured in e2e/tests/kube_faults.rs); with this it takes seconds.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const MIN: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(8);

/// Capped exponential backoff with jitter; reset by the watch stream after each success.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    seed: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) | 1);
        Self { next: MIN, seed }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(MAX);
        // xorshift: a fraction of 1/2..1 of the delay.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let per_mille = 500 + u32::try_from(self.seed % 501).unwrap_or(500);
        Some(base * per_mille / 1000)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN;
    }
}

#[cfg(test)]
mod tests;
