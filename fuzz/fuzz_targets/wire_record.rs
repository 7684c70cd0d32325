//! The ring-buffer record decoder: any bytes give an event or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = mapsentry_agent::events::wire::decode(bytes, 0);
});
