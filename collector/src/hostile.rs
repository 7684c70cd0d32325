//! Hostile bytes through the collector's real request handlers, minus the transport: what the
//! stable-toolchain loops in `tests/hostile_input.rs` (every `cargo test`) and the cargo-fuzz
//! targets in `fuzz/` drive, so both reach the code a peer reaches over gRPC.
//!
//! - [`Handlers::agent_stream`]: an `AgentService.Connect` stream's messages through the ingest
//!   handler's own steps: `hello_of` (with Hello's field limits), then per message `handle`
//!   (attribution definitions and the resolution of references, batch limits, `convert::validate`
//!   and the field limits of every event, `Hub::store` -> `store_batch`, acks, loss reports).
//! - [`Handlers::subscribe`]: an `Observer.Subscribe` call through the handler itself: the bearer
//!   token in the `authorization` metadata (`Auth::subscriber`), the filter's validation and its
//!   namespace scope, the cursor (`Hub::subscribe`), then every response the subscription offers
//!   without waiting (catch-up and matching of the stored records).
//!
//! Inputs are length-delimited frames (a protobuf varint length, then that many bytes), the
//! framing `prost`'s `encode_length_delimited` writes, so seeds are made from real messages.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use futures_core::Stream;
use mapsentry_proto::{
    received::ReceivedAgentMessage,
    v1::{SubscribeRequest, observer_server::Observer as _},
};
use prost::Message as _;
use tonic::{Request, Status, metadata::MetadataValue};

use crate::{
    auth::{Auth, Tokens},
    hub::{Hub, HubConfig},
    ingest::{Ingest, IngestError},
    observer::Observer,
};

/// The tokens file every [`Handlers`] authenticates with: an agent token for all namespaces and
/// a subscriber token scoped to `team-a`.
pub const TOKENS: &str = r#"{"token":"agent-secret","namespaces":["*"],"agent":true}
{"token":"team-a","namespaces":["team-a"]}
"#;

/// Records a hub of [`Handlers`] retains (small: inputs are small, and eviction is exercised).
const RETENTION: usize = 256;

/// Events per batch the ingest handler accepts here (the server's default is 16 384).
const MAX_BATCH_EVENTS: usize = 64;

/// A fresh in-memory collector's handlers: one hub, its ingest and observer services.
#[derive(Debug)]
pub struct Handlers {
    runtime: tokio::runtime::Runtime,
    hub: Arc<Hub>,
    ingest: Arc<Ingest>,
    observer: Observer,
}

/// How an agent stream ended.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamOutcome {
    /// The sequence numbers acked, in order.
    pub acked: Vec<u64>,
    /// Why the handler ended the stream, if it did (the status the agent would get).
    pub refused: Option<IngestError>,
}

/// What a subscription offered.
#[derive(Debug)]
pub struct Subscribed {
    /// The responses available without waiting (`Started`, records, loss notices).
    pub responses: Vec<mapsentry_proto::v1::SubscribeResponse>,
}

impl Default for Handlers {
    fn default() -> Self {
        Self::new()
    }
}

impl Handlers {
    /// # Panics
    /// If a current-thread tokio runtime cannot be built or [`TOKENS`] does not parse: neither
    /// depends on input.
    #[must_use]
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let hub = Hub::with_first_cursor(
            HubConfig {
                retention_events: RETENTION,
                subscriber_queue: RETENTION * 2,
                ..HubConfig::default()
            },
            1,
        );
        let auth = Arc::new(Auth {
            tokens: Some(Tokens::parse("hostile::TOKENS", TOKENS).expect("TOKENS parse")),
            client_certs: false,
        });
        let ingest =
            Arc::new(Ingest::new(Arc::clone(&hub), MAX_BATCH_EVENTS).with_auth(Arc::clone(&auth)));
        let observer = Observer::new(Arc::clone(&hub)).with_auth(auth);
        Self {
            runtime,
            hub,
            ingest,
            observer,
        }
    }

    /// The hub behind the handlers.
    #[must_use]
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// `bytes` as one agent stream: length-delimited `AgentMessage`s, Hello first. Frames that
    /// do not decode end the stream the way tonic would (nothing after them is handled).
    #[must_use]
    pub fn agent_stream(&self, mut bytes: &[u8]) -> StreamOutcome {
        // Decoded as the collector's codec decodes them, a batch's calls kept where they can be.
        let mut next = || {
            take_frame(&mut bytes)
                .and_then(|f| ReceivedAgentMessage::decode(&Bytes::copy_from_slice(f)).ok())
        };
        let mut outcome = StreamOutcome {
            acked: Vec::new(),
            refused: None,
        };
        let (agent, mut attributions) = match crate::ingest::hello_of(next().map(|m| m.message)) {
            Ok(opened) => opened,
            Err(refused) => {
                outcome.refused = Some(refused);
                return outcome;
            }
        };
        let _restart = self.hub.agent_connected(&agent);
        self.runtime.block_on(async {
            while let Some(message) = next() {
                match self.ingest.handle(&agent, &mut attributions, message).await {
                    Ok(Some(seq)) => outcome.acked.push(seq),
                    Ok(None) => {}
                    Err(refused) => {
                        outcome.refused = Some(refused);
                        break;
                    }
                }
            }
        });
        self.hub.agent_disconnected(&agent.node);
        outcome
    }

    /// One `Subscribe` call: `bytes` holds a length-delimited `authorization` header value (raw
    /// bytes; not sent when it is not a valid header value), then a length-delimited
    /// `SubscribeRequest`.
    ///
    /// # Errors
    /// The status the handler answers with.
    pub fn subscribe(&self, mut bytes: &[u8]) -> Result<Subscribed, Status> {
        let authorization = take_frame(&mut bytes).unwrap_or_default();
        let request = take_frame(&mut bytes)
            .and_then(|f| SubscribeRequest::decode(f).ok())
            .unwrap_or_default();
        let mut request = Request::new(request);
        if let Ok(value) = MetadataValue::try_from(authorization) {
            request.metadata_mut().insert("authorization", value);
        }
        self.runtime.block_on(async {
            let mut stream = self.observer.subscribe(request).await?.into_inner();
            let mut responses = Vec::new();
            // Everything offered without waiting; the catch-up task runs whenever this yields.
            for _ in 0..RETENTION * 2 + 8 {
                tokio::task::yield_now().await;
                match Pin::new(&mut stream).poll_next(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(Some(response)) => responses.push(response?),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            Ok(Subscribed { responses })
        })
    }
}

impl Handlers {
    /// The first frame of `bytes` as an agent stream ([`Handlers::agent_stream`]), stored before
    /// the rest of `bytes` is a `Subscribe` call ([`Handlers::subscribe`]) that reads it back.
    ///
    /// # Errors
    /// The status the `Subscribe` handler answers with.
    pub fn stream_then_subscribe(&self, mut bytes: &[u8]) -> Result<Subscribed, Status> {
        let stream = take_frame(&mut bytes).unwrap_or_default();
        let _ = self.agent_stream(stream);
        self.subscribe(bytes)
    }
}

/// The next length-delimited frame of `bytes` (varint length, then the bytes), or `None` when
/// `bytes` ends or the length is malformed or runs past the end.
pub fn take_frame<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut rest = *bytes;
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    let frame = rest.get(..len)?;
    *bytes = &rest[len..];
    Some(frame)
}

/// `frames` in the framing [`take_frame`] reads.
#[must_use]
pub fn frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        prost::encoding::encode_varint(frame.len() as u64, &mut out);
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests;
