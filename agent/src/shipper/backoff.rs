//! Reconnect delays: exponential from `min` to `max`, with jitter so a fleet of agents does not
//! reconnect in lockstep after a collector restart.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (1 = after the first failure): a random point in the
    /// upper half of `min * 2^(attempt-1)`, capped at `max`.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .min
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        full / 2 + full.mul_f64(random_unit() / 2.0)
    }
}

/// A random number in [0, 1) from the standard library's randomly keyed hasher.
fn random_unit() -> f64 {
    // 32 random bits convert to f64 exactly.
    let bits = (RandomState::new().hash_one(std::time::Instant::now()) >> 32) as u32;
    f64::from(bits) / f64::from(u32::MAX) / (1.0 + f64::EPSILON)
}

#[cfg(test)]
mod tests;
