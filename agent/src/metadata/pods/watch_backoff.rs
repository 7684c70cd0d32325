//! Retry delays of the pod and namespace watches: exponential from 250 ms, at most 8 s, each
//! delay jittered down to half so a fleet of agents does not retry in step. kube's default climbs
//! to 30 s, so after an API server outage of that length the cache caught up only 30-60 s after
//! the server was back (measured in e2e/tests/kube_faults.rs); with this it takes seconds.
//!
//! kube's own exponential backoff (backon underneath), with these bounds: backon adds up to
//! 100% jitter, so it is given half of both.

use std::time::Duration;

use kube::runtime::{utils::Backoff, watcher::ExponentialBackoff};

const MIN: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(8);

/// Capped exponential backoff with jitter; reset by the watch stream after each success.
pub struct WatchBackoff(ExponentialBackoff);

impl std::fmt::Debug for WatchBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchBackoff")
            .field("min", &MIN)
            .field("max", &MAX)
            .finish_non_exhaustive()
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self(ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(MIN / 2)
                .with_max_delay(MAX / 2)
                .with_jitter()
                .without_max_times(),
        ))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests;
