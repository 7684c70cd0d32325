//! The collector's --tokens file parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = mapsentry_collector::auth::Tokens::parse("fuzz", text);
});
