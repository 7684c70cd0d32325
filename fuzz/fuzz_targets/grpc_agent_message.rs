//! An agent stream through the ingest handler's own steps (`mapsentry_collector::hostile`):
//! length-delimited AgentMessages, Hello first (V1 or V2), then attribution definitions and the
//! expansion of references (V2), batch limits, `convert::validate`,
//! `Hub::store_batch`, acks and loss reports, on a fresh in-memory collector.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = mapsentry_collector::hostile::Handlers::new().agent_stream(bytes);
});
