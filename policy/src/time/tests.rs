use super::{Precision, rfc3339};

#[test]
fn utc_with_the_precision_asked_for() {
    let ns = 1_795_772_647_570_592_123;
    assert_eq!(
        rfc3339(ns, Precision::Micros),
        "2026-11-27T09:44:07.570592Z"
    );
    assert_eq!(rfc3339(ns, Precision::Seconds), "2026-11-27T09:44:07Z");
    // Whole seconds keep their six digits, as the JSON line contract shows them.
    assert_eq!(
        rfc3339(1_795_772_647_000_000_000, Precision::Micros),
        "2026-11-27T09:44:07.000000Z"
    );
    assert_eq!(rfc3339(0, Precision::Micros), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        rfc3339(u64::MAX, Precision::Micros),
        "2554-07-21T23:34:33.709551Z"
    );
}
