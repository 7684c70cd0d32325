//! A Subscribe call through the observer's handler (`mapsentry_collector::hostile`): a first
//! frame stored as an agent stream, then the `authorization` value and the SubscribeRequest: the
//! bearer token, the filter's validation and namespace scope, the cursor, catch-up and matching
//! of the stored records.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = mapsentry_collector::hostile::Handlers::new().stream_then_subscribe(bytes);
});
