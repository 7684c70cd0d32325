use std::convert::Infallible;

use http_body::Frame;
use http_body_util::StreamBody;
use prost::{Message as _, bytes::Bytes};
use tonic::{Code, Streaming, codec::Codec as _};

use super::SliceCodec;
use crate::v1::{self, AgentMessage, EventBatch, agent_message::Msg};

fn batch(seq: u64, events: u32) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Batch(EventBatch {
            seq,
            events: (0..events)
                .map(|i| v1::Event {
                    time_ns: u64::from(i) << 40,
                    pid: i,
                    comm: format!("worker-{i}"),
                    ret: -i64::from(i),
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

/// gRPC framing: uncompressed flag, big-endian length, the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// What tonic's stream decodes with the services' codec from `bytes` delivered in chunks of
/// `chunk` bytes.
async fn decode(bytes: &[u8], chunk: usize) -> Vec<Result<AgentMessage, tonic::Status>> {
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(tokio_stream::iter(chunks));
    let decoder = SliceCodec::<v1::CollectorMessage, AgentMessage>::default().decoder();
    let mut stream = Streaming::new_request(decoder, body, None, None);
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => out.push(Ok(message)),
            Ok(None) => break,
            Err(status) => {
                out.push(Err(status));
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn messages_decode_as_prost_decodes_them_however_the_frames_arrive() {
    let messages = [batch(1, 3), batch(2, 0), batch(3, 200)];
    let bytes: Vec<u8> = messages
        .iter()
        .flat_map(|m| frame(&m.encode_to_vec()))
        .collect();
    // Whole, byte by byte, and in chunks that split frames and their headers.
    for chunk in [bytes.len(), 1, 7, 1000] {
        let decoded: Vec<AgentMessage> = decode(&bytes, chunk)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(decoded, messages, "chunks of {chunk} bytes");
    }
}

#[tokio::test]
async fn a_message_that_does_not_parse_is_an_internal_error_naming_the_reason() {
    let good = batch(1, 2).encode_to_vec();
    // Field 2 (the batch), length-delimited, claiming more bytes than follow.
    let truncated = [0x12, 0x20, 0x08];
    let mut bytes = frame(&good);
    bytes.extend(frame(&truncated));
    let decoded = decode(&bytes, bytes.len()).await;
    assert_eq!(decoded.len(), 2, "{decoded:?}");
    assert_eq!(decoded[0].as_ref().unwrap(), &batch(1, 2));
    let status = decoded[1].as_ref().unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        AgentMessage::decode(&truncated[..])
            .unwrap_err()
            .to_string()
    );
}
