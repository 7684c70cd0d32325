//! Hostile ring-buffer records, as a stable-toolchain fuzz loop (proptest): `events::wire::decode`
//! on arbitrary bytes (short, long, truncated real sizes) returns an error or an event, never
//! panics. `fuzz/` holds the same target for cargo-fuzz. PROPTEST_CASES raises the case count.

use mapsentry_agent::events::wire;
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), skew in any::<i64>()) {
        let _ = wire::decode(&bytes, i128::from(skew));
    }
}
