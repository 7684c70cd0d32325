//! The ingest handler's path: decode an AgentMessage, convert every batch event.
#![no_main]

use mapsentry_proto::v1::{AgentMessage, agent_message::Msg};
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(AgentMessage {
        msg: Some(Msg::Batch(batch)),
    }) = AgentMessage::decode(bytes)
    {
        for event in &batch.events {
            let _ = mapsentry_policy::MmapEvent::try_from(event);
        }
    }
});
