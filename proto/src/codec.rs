//! The codec of every generated service: prost's encoder, and a decoder that reads a message
//! from one contiguous slice.
//!
//! tonic hands a decoder the message's bytes as a `DecodeBuf` over the connection's buffer, and
//! prost's own decoder ([`tonic_prost::ProstCodec`]) reads it through that `Buf`: every varint
//! and every field key advances the `BytesMut` under it, with its checks. A collector decodes
//! some twenty fields per event of every agent batch, and the ingest benchmark's profile had
//! ~25% of the collector's samples there. The bytes of one message are contiguous (tonic
//! gathers a whole frame before decoding it), so this decoder reads them as a `&[u8]`, which
//! prost decodes without those calls; should a frame ever arrive in pieces, it reads the `Buf`.

use std::marker::PhantomData;

use prost::{Message, bytes::Buf as _};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// prost's encoder and [`SliceDecoder`]; `tonic_prost_build` names it as the services' codec.
#[derive(Debug, Clone, Copy)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a `U` from its bytes as one slice (see the module's docs).
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = U::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            U::decode(buf)
        };
        // As prost's decoder maps it (gRPC's status codes: a message that does not parse is
        // INTERNAL).
        decoded
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

#[cfg(test)]
mod tests;
