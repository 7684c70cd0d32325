use std::convert::Infallible;

use http_body::Frame;
use http_body_util::StreamBody;
use prost::{
    Message as _,
    bytes::Bytes,
    encoding::{WireType, encode_key, encode_varint},
};
use tonic::{Streaming, codec::Codec as _};

use super::{ReceivedAgentMessage, ReceivedCodec};
use crate::v1::{
    self, AgentMessage, EventBatch, Hello, MmapArgs, PodAttribution, agent_message::Msg,
    event::Attribution,
};

fn event(i: u32, attribution: Option<Attribution>) -> v1::Event {
    v1::Event {
        time_ns: u64::from(i) << 40,
        syscall: v1::Syscall::Mmap.into(),
        pid: i,
        tid: i + 1,
        comm: format!("worker-{i}"),
        args: Some(MmapArgs {
            length: 4096 * u64::from(i + 1),
            prot: 5,
            flags: 0x22,
            fd: -1,
            ..Default::default()
        }),
        ret: -i64::from(i),
        file: i.is_multiple_of(2).then(|| v1::FileInfo {
            path: "/usr/lib/libc.so.6".into(),
            inode: 77,
            ..Default::default()
        }),
        attribution,
        ..Default::default()
    }
}

fn batch_of(events: Vec<v1::Event>) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Batch(EventBatch { seq: 7, events })),
    }
}

fn received(message: &AgentMessage) -> ReceivedAgentMessage {
    ReceivedAgentMessage::decode(&Bytes::from(message.encode_to_vec())).unwrap()
}

/// `event` without its attribution, as prost encodes it.
fn call_bytes(event: &v1::Event) -> Vec<u8> {
    v1::Event {
        attribution: None,
        ..event.clone()
    }
    .encode_to_vec()
}

#[test]
fn a_batch_as_prost_encodes_it_keeps_every_call_byte_for_byte() {
    // References of one and of several varint bytes, and an event without an attribution.
    let events = vec![
        event(0, Some(Attribution::AttributionRef(1))),
        event(1, Some(Attribution::AttributionRef(300))),
        event(2, Some(Attribution::AttributionRef(u64::MAX))),
        event(3, None),
    ];
    let message = batch_of(events.clone());
    let got = received(&message);
    assert_eq!(got.message, message, "decoded as prost decodes it");
    let (_, calls) = got.into_parts();
    assert_eq!(calls.len(), events.len());
    for (call, event) in calls.iter().zip(&events) {
        let call = call.as_ref().expect("kept");
        assert_eq!(call.as_ref(), call_bytes(event), "{event:?}");
        // What a log record is: the call's bytes, then another reference.
        let mut logged = call.to_vec();
        encode_key(103, WireType::Varint, &mut logged);
        encode_varint(9, &mut logged);
        let read = v1::Event::decode(logged.as_slice()).unwrap();
        assert_eq!(read.attribution, Some(Attribution::AttributionRef(9)));
        assert_eq!(read.encoded_len(), logged.len());
    }
}

#[test]
fn events_not_in_canonical_form_keep_no_bytes_and_decode_as_prost_decodes_them() {
    let plain = event(0, Some(Attribution::AttributionRef(1)));
    // The reference first, then the call: valid, not a prefix.
    let mut reordered = Vec::new();
    encode_key(103, WireType::Varint, &mut reordered);
    encode_varint(1, &mut reordered);
    reordered.extend(call_bytes(&plain));
    // An unknown field (99) between the call and the reference.
    let mut unknown = call_bytes(&plain);
    encode_key(99, WireType::Varint, &mut unknown);
    encode_varint(5, &mut unknown);
    encode_key(103, WireType::Varint, &mut unknown);
    encode_varint(1, &mut unknown);
    // A pid sent twice (the last wins).
    let mut repeated = Vec::new();
    encode_key(3, WireType::Varint, &mut repeated);
    encode_varint(12345, &mut repeated);
    repeated.extend(event(4, Some(Attribution::AttributionRef(1))).encode_to_vec());
    // Each field once, out of tag order (event 0's pid is 0, which prost leaves out): kept, and
    // what precedes the reference still decodes to the call.
    let mut out_of_order = Vec::new();
    encode_key(3, WireType::Varint, &mut out_of_order);
    encode_varint(12345, &mut out_of_order);
    out_of_order.extend(plain.encode_to_vec());
    // An inline attribution overridden by a reference (the oneof's last wins).
    let mut overridden = call_bytes(&plain);
    let pod = Attribution::Pod(Box::new(PodAttribution {
        pod: Some("web-0".into()),
        ..Default::default()
    }));
    pod.encode(&mut overridden);
    encode_key(103, WireType::Varint, &mut overridden);
    encode_varint(1, &mut overridden);
    // A whole attribution inline (protocol V1).
    let inline = event(1, Some(pod)).encode_to_vec();

    let mut batch = Vec::new();
    encode_key(1, WireType::Varint, &mut batch);
    encode_varint(7, &mut batch);
    for wire in [
        &plain.encode_to_vec(),
        &reordered,
        &unknown,
        &repeated,
        &out_of_order,
        &overridden,
        &inline,
    ] {
        prost::encoding::bytes::encode(2, wire, &mut batch);
    }
    let mut message = Vec::new();
    prost::encoding::bytes::encode(2, &batch, &mut message);

    let got = ReceivedAgentMessage::decode(&Bytes::from(message.clone())).unwrap();
    assert_eq!(
        got.message,
        AgentMessage::decode(message.as_slice()).unwrap()
    );
    let (message, calls) = got.into_parts();
    let kept: Vec<bool> = calls.iter().map(Option::is_some).collect();
    assert_eq!(kept, [true, false, false, false, true, false, false]);
    let Some(Msg::Batch(batch)) = message.msg else {
        panic!("a batch")
    };
    for (call, event) in calls.iter().zip(&batch.events) {
        if let Some(call) = call {
            let read = v1::Event::decode(call.as_ref()).unwrap();
            assert_eq!(read.attribution, None);
            assert_eq!(
                read,
                v1::Event {
                    attribution: None,
                    ..event.clone()
                }
            );
        }
    }
}

#[test]
fn other_messages_and_batches_split_over_fields_keep_nothing() {
    let hello = AgentMessage {
        msg: Some(Msg::Hello(Hello {
            node: "n".into(),
            ..Default::default()
        })),
    };
    assert_eq!(received(&hello).into_parts(), (hello, Vec::new()));
    // Two batch fields in one message: prost merges them into one batch; no ranges kept.
    let first = batch_of(vec![event(0, None)]).encode_to_vec();
    let second = batch_of(vec![event(1, None)]).encode_to_vec();
    let both = [first, second].concat();
    let got = ReceivedAgentMessage::decode(&Bytes::from(both.clone())).unwrap();
    let (message, calls) = got.into_parts();
    assert_eq!(message, AgentMessage::decode(both.as_slice()).unwrap());
    let Some(Msg::Batch(batch)) = message.msg else {
        panic!("a batch")
    };
    assert_eq!(batch.events.len(), 2);
    assert!(calls.is_empty());
}

#[test]
fn a_message_that_does_not_parse_is_refused_as_prost_refuses_it() {
    let truncated = [0x12, 0x20, 0x08];
    assert_eq!(
        ReceivedAgentMessage::decode(&Bytes::copy_from_slice(&truncated)).unwrap_err(),
        AgentMessage::decode(&truncated[..]).unwrap_err()
    );
}

#[test]
fn every_cut_and_every_flipped_byte_of_a_batch_decodes_as_prost_decodes_it() {
    let message = batch_of(
        (0..4)
            .map(|i| {
                event(
                    i,
                    (i > 0).then_some(Attribution::AttributionRef(u64::from(i))),
                )
            })
            .collect(),
    )
    .encode_to_vec();
    let mut inputs: Vec<Vec<u8>> = (0..message.len()).map(|n| message[..n].to_vec()).collect();
    for i in 0..message.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut flipped = message.clone();
            flipped[i] ^= flip;
            inputs.push(flipped);
        }
    }
    for input in inputs {
        let ours = ReceivedAgentMessage::decode(&Bytes::from(input.clone()));
        let prosts = AgentMessage::decode(input.as_slice());
        match (ours, prosts) {
            (Ok(ours), Ok(prosts)) => {
                assert_eq!(ours.message, prosts, "{input:?}");
                // What is kept decodes to the call it stands for.
                let (message, calls) = ours.into_parts();
                if let Some(Msg::Batch(batch)) = message.msg {
                    for (call, event) in calls.iter().zip(&batch.events) {
                        if let Some(call) = call {
                            let read = v1::Event::decode(call.as_ref()).unwrap();
                            assert_eq!(
                                read,
                                v1::Event {
                                    attribution: None,
                                    ..event.clone()
                                }
                            );
                        }
                    }
                }
            }
            (Err(ours), Err(prosts)) => assert_eq!(ours, prosts, "{input:?}"),
            (ours, prosts) => panic!("{input:?}: ours {ours:?}, prost's {prosts:?}"),
        }
    }
}

/// gRPC framing: uncompressed flag, big-endian length, the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

#[tokio::test]
async fn the_codec_keeps_calls_however_the_frames_arrive() {
    let message = batch_of(
        (0..50)
            .map(|i| event(i, Some(Attribution::AttributionRef(u64::from(i % 3) + 1))))
            .collect(),
    );
    let bytes = [
        frame(&message.encode_to_vec()),
        frame(&message.encode_to_vec()),
    ]
    .concat();
    for chunk in [bytes.len(), 1, 7, 1000] {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(tokio_stream::iter(chunks));
        let decoder = ReceivedCodec::<v1::CollectorMessage>::default().decoder();
        let mut stream = Streaming::new_request(decoder, body, None, None);
        let mut count = 0;
        while let Some(got) = stream.message().await.unwrap() {
            assert_eq!(got.message, message, "chunks of {chunk} bytes");
            let (_, calls) = got.into_parts();
            assert_eq!(calls.len(), 50);
            assert!(calls.iter().all(Option::is_some), "chunks of {chunk} bytes");
            count += 1;
        }
        assert_eq!(count, 2, "chunks of {chunk} bytes");
    }
}
