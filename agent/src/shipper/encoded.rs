//! The agent stream with messages encoded once. A sealed batch is its protobuf bytes (its events
//! encoded as they were pushed, `buffer.rs`), kept until the collector acks it: every send (and
//! resend after a reconnect) hands tonic the same bytes, instead of a copy of the batch's events
//! that tonic then encodes. The `pipeline_stages` bench measured that copy, its encoding and
//! freeing both copies at ~90% of the agent's per-event CPU.

use mapsentry_proto::v1::{AgentMessage, CollectorMessage};
use prost::{
    Message as _,
    bytes::{BufMut as _, Bytes},
};
use tonic::{
    GrpcMethod, Status, Streaming,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

/// One `AgentMessage`, already encoded. Cloning it shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    /// `bytes`, which the caller encoded as an `AgentMessage` by hand (the buffer's batches).
    pub(crate) fn from_bytes(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The encoded message.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded message's length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The message back (tests, and the bench's check of what would be sent).
    ///
    /// # Errors
    /// When the bytes are not an `AgentMessage` (they always are when made by [`From`]).
    pub fn decode(&self) -> Result<AgentMessage, prost::DecodeError> {
        AgentMessage::decode(self.0.clone())
    }
}

impl From<&AgentMessage> for Encoded {
    fn from(message: &AgentMessage) -> Self {
        Self(Bytes::from(message.encode_to_vec()))
    }
}

impl From<AgentMessage> for Encoded {
    fn from(message: AgentMessage) -> Self {
        Self::from(&message)
    }
}

/// Writes [`Encoded`] messages as they are; reads `CollectorMessage`s with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Encoded;
    type Decode = CollectorMessage;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for EncodedCodec {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = CollectorMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CollectorMessage>, Status> {
        CollectorMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("a collector message does not decode: {e}")))
    }
}

/// `AgentService/Connect` (the agent stream) over `channel`, sending `request`'s messages as
/// they are: the generated client's call, with [`EncodedCodec`] instead of the prost codec.
///
/// # Errors
/// The collector's refusal, or the channel's failure, as a status.
pub async fn connect(
    channel: Channel,
    request: tonic::Request<impl tokio_stream::Stream<Item = Encoded> + Send + 'static>,
) -> Result<Streaming<CollectorMessage>, Status> {
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the collector channel is not ready: {e}")))?;
    let mut request = request;
    request
        .extensions_mut()
        .insert(GrpcMethod::new("mapsentry.v1.AgentService", "Connect"));
    let path = PathAndQuery::from_static("/mapsentry.v1.AgentService/Connect");
    Ok(grpc
        .streaming(request, path, EncodedCodec)
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests;
