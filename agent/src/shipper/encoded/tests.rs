use mapsentry_proto::v1::{self, agent_message::Msg};

use super::*;

fn batch(seq: u64, pids: std::ops::Range<u32>) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Batch(v1::EventBatch {
            seq,
            events: pids
                .map(|pid| v1::Event {
                    pid,
                    comm: format!("proc-{pid}"),
                    ..v1::Event::default()
                })
                .collect(),
        })),
    }
}

#[test]
fn an_encoded_message_is_the_prost_encoding_and_reads_back() {
    let message = batch(7, 100..140);
    let encoded = Encoded::from(&message);
    assert_eq!(encoded.as_bytes(), message.encode_to_vec().as_slice());
    assert_eq!(encoded.len(), message.encoded_len());
    assert!(!encoded.is_empty());
    assert_eq!(encoded.decode().unwrap(), message);
}

#[test]
fn clones_share_the_bytes() {
    let encoded = Encoded::from(batch(1, 0..10));
    let copy = encoded.clone();
    assert_eq!(copy.as_bytes().as_ptr(), encoded.as_bytes().as_ptr());
}
