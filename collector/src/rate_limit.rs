//! Per-key token buckets: at most `rate` items a second for each key (bursts of up to `rate`),
//! for a bounded number of keys. The alert evaluation uses it to cap alert updates per pod.

use std::{collections::HashMap, hash::Hash};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct PerKeyLimiter<K> {
    rate: u32,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> PerKeyLimiter<K> {
    /// `rate` items a second per key (0: no limit); at most `max_keys` buckets are kept (full
    /// buckets are forgotten first: a forgotten key starts full again, which is what it was).
    #[must_use]
    pub fn new(rate: u32, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Whether one more item of `key` at `now_ns` is within the rate; takes a token if it is.
    pub fn allow(&mut self, key: &K, now_ns: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        if self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key) {
            self.buckets.retain(|_, b| refill(b, rate, now_ns) < rate);
            if self.buckets.len() >= self.max_keys {
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate,
            at_ns: now_ns,
        });
        if refill(bucket, rate, now_ns) >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Keys with a bucket now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Add the tokens earned since the bucket's last update (up to `rate`); returns the tokens.
fn refill(bucket: &mut Bucket, rate: f64, now_ns: u64) -> f64 {
    // Whole milliseconds are exact in an f64 for 285,000 years.
    let elapsed_ms =
        u32::try_from(now_ns.saturating_sub(bucket.at_ns) / 1_000_000).unwrap_or(u32::MAX);
    let elapsed = f64::from(elapsed_ms) / 1e3;
    bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
    bucket.at_ns = bucket.at_ns.max(now_ns);
    bucket.tokens
}

#[cfg(test)]
mod tests;
