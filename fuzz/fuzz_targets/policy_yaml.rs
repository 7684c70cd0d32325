//! The policy YAML loader: any text gives policies or problems, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = mapsentry_policy::load::load_str(text);
});
