use super::PerKeyLimiter;

const SECOND: u64 = 1_000_000_000;

#[test]
fn each_key_gets_its_rate_in_a_burst_then_one_per_interval() {
    let mut limiter = PerKeyLimiter::new(5, 100);
    let allowed = (0..20).filter(|_| limiter.allow(&"a", 0)).count();
    assert_eq!(allowed, 5, "a burst of the rate");
    assert!(limiter.allow(&"b", 0), "another key has its own bucket");
    assert!(!limiter.allow(&"a", SECOND / 10), "0.5 tokens earned");
    assert!(limiter.allow(&"a", SECOND / 5), "one token after 1/rate s");
    assert!(!limiter.allow(&"a", SECOND / 5));
    let later = (0..20).filter(|_| limiter.allow(&"a", 10 * SECOND)).count();
    assert_eq!(later, 5, "a bucket never holds more than the rate");
}

#[test]
fn a_zero_rate_is_no_limit() {
    let mut limiter = PerKeyLimiter::new(0, 1);
    assert!((0..1000).all(|_| limiter.allow(&1, 0)));
    assert!(limiter.is_empty());
}

#[test]
fn keys_are_bounded_and_full_buckets_go_first() {
    let mut limiter = PerKeyLimiter::new(2, 3);
    assert!(limiter.allow(&1, 0) && limiter.allow(&1, 0));
    assert!(limiter.allow(&2, 0));
    assert!(limiter.allow(&3, 0));
    // Key 4 needs room: at t = 10 s every bucket is full again, so all are forgotten.
    assert!(limiter.allow(&4, 10 * SECOND));
    assert!(limiter.len() <= 3, "{}", limiter.len());
    // Key 4 has used one of its two tokens at t = 10 s.
    assert!(limiter.allow(&4, 10 * SECOND));
    assert!(!limiter.allow(&4, 10 * SECOND));
    for key in 5..8 {
        limiter.allow(&key, 10 * SECOND);
    }
    assert!(limiter.len() <= 3);
}
