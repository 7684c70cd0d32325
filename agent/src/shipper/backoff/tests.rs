use super::*;

#[test]
fn delays_double_from_min_stay_under_max_and_vary() {
    let backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    for _ in 0..50 {
        let delays: Vec<Duration> = backoff.delays().take(60).collect();
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (7, 5000), (60, 5000)] {
            let full = Duration::from_millis(full);
            let delay = delays[attempt - 1];
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?} outside {:?}..={full:?}",
                full / 2
            );
        }
    }
    let fourth: std::collections::HashSet<_> =
        (0..20).map(|_| backoff.delays().nth(3).unwrap()).collect();
    assert!(fourth.len() > 1, "jitter: 20 delays were all equal");
}
