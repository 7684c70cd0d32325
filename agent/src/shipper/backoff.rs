//! Reconnect delays, from backon: exponential from `min` to `max`, with jitter so a fleet of
//! agents does not reconnect in lockstep after a collector restart. Each delay is a random point
//! in the upper half of `min * 2^(n-1)` (capped at `max`): backon adds up to 100% jitter, so it
//! is given half of both bounds.

use std::time::Duration;

use backon::BackoffBuilder as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delays after one failure, two, ...: endless; start a new sequence after a success.
    #[must_use]
    pub fn delays(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min / 2)
            .with_max_delay(self.max / 2)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

#[cfg(test)]
mod tests;
