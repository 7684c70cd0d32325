//! The attribution dictionary of one agent stream (protocol V2): the definitions the agent sent
//! on this stream (`Attributions`), each checked once and held once, and the resolution of the
//! events' `attribution_ref` into the definition, at ingest, before anything is stored,
//! evaluated or published. Every event that names a definition shares it
//! ([`SharedAttribution`]); subscribers, the retention log and the backbone see each event
//! whole, as a V1 agent sends it.

use std::collections::HashMap;

use bytes::Bytes;
use mapsentry_proto::{
    MAX_STREAM_ATTRIBUTIONS, convert,
    v1::{self, event::Attribution},
};

use super::IngestError;
use crate::{
    budgets,
    retention::{Attributed, SharedAttribution},
};

#[derive(Debug, Clone, PartialEq)]
pub struct StreamAttributions {
    /// `None` on a V1 stream, which may not define attributions nor refer to them.
    defined: Option<HashMap<u64, SharedAttribution>>,
    max: usize,
}

impl StreamAttributions {
    /// The empty dictionary of a new stream of protocol `version`.
    #[must_use]
    pub fn new(version: v1::ProtocolVersion) -> Self {
        Self {
            defined: (version >= v1::ProtocolVersion::V2).then(HashMap::new),
            max: MAX_STREAM_ATTRIBUTIONS,
        }
    }

    /// Apply one `Attributions` message: its releases, then its definitions. A definition may be
    /// repeated with the same value; each is checked against the event field limits.
    pub fn apply(&mut self, message: v1::Attributions) -> Result<(), IngestError> {
        let Some(defined) = &mut self.defined else {
            return Err(IngestError::AttributionsOnV1);
        };
        for id in &message.released {
            defined.remove(id);
        }
        for definition in message.definitions {
            let id = definition.id;
            let attribution = definition
                .attribution
                .as_ref()
                .map(convert::defined_attribution)
                .ok_or(IngestError::EmptyDefinition { id })?;
            let carrier = v1::Event {
                attribution: Some(attribution),
                ..v1::Event::default()
            };
            budgets::check_event(&carrier)
                .map_err(|source| IngestError::DefinitionLimit { id, source })?;
            let Some(attribution) = carrier.attribution else {
                continue;
            };
            match defined.get(&id) {
                Some(known) if *known.get() == attribution => {}
                Some(_) => return Err(IngestError::Redefined { id }),
                None if defined.len() >= self.max => {
                    return Err(IngestError::TooManyAttributions { id, max: self.max });
                }
                None => {
                    defined.insert(id, SharedAttribution::new(attribution));
                }
            }
        }
        Ok(())
    }

    /// Batch `seq`'s events with their attributions held apart: each `attribution_ref` resolved
    /// to the definition it names (shared, checked when it was defined), an attribution sent
    /// inline checked against the field limits and held on its own. A reference on a V1 stream
    /// is refused (as by validation). `calls` are the events' calls as received, where kept
    /// ([`mapsentry_proto::received`]; empty: none).
    pub fn resolve(
        &self,
        seq: u64,
        events: Vec<v1::Event>,
        calls: Vec<Option<Bytes>>,
    ) -> Result<Vec<Attributed>, IngestError> {
        // Sized up front: collecting through `Result` would grow the vector from nothing,
        // moving every event at each doubling.
        let mut resolved = Vec::with_capacity(events.len());
        let mut calls = calls.into_iter();
        for (index, mut event) in events.into_iter().enumerate() {
            let call = calls.next().flatten();
            let attribution = match event.attribution.take() {
                Some(Attribution::AttributionRef(id)) => {
                    let Some(defined) = &self.defined else {
                        return Err(IngestError::Event {
                            seq,
                            index,
                            source: convert::ConvertError::AttributionRef { id },
                        });
                    };
                    let shared =
                        defined
                            .get(&id)
                            .ok_or(IngestError::UndefinedRef { seq, index, id })?;
                    Some(shared.clone())
                }
                Some(inline) => {
                    budgets::check_attribution(&inline)
                        .map_err(|source| IngestError::EventLimit { seq, index, source })?;
                    Some(SharedAttribution::new(inline))
                }
                None => None,
            };
            resolved.push(Attributed::received(event, attribution, call));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests;
