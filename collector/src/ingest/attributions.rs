//! The attribution dictionary of one agent stream (protocol V2): the definitions the agent sent
//! on this stream (`Attributions`), and the expansion of the events' `attribution_ref` into the
//! attribution itself, at ingest, before anything is stored, evaluated or published. Everything
//! after ingest sees events as a V1 agent sends them.

use std::collections::HashMap;

use mapsentry_proto::{
    MAX_STREAM_ATTRIBUTIONS, convert,
    v1::{self, event::Attribution},
};

use super::IngestError;
use crate::budgets;

#[derive(Debug, Clone, PartialEq)]
pub struct StreamAttributions {
    /// `None` on a V1 stream, which may not define attributions nor refer to them.
    defined: Option<HashMap<u64, Attribution>>,
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
                Some(known) if *known == attribution => {}
                Some(_) => return Err(IngestError::Redefined { id }),
                None if defined.len() >= self.max => {
                    return Err(IngestError::TooManyAttributions { id, max: self.max });
                }
                None => {
                    defined.insert(id, attribution);
                }
            }
        }
        Ok(())
    }

    /// Replace every `attribution_ref` of batch `seq`'s events with the attribution it names.
    /// On a V1 stream nothing is replaced (a reference there is refused by validation).
    pub fn expand(&self, seq: u64, events: &mut [v1::Event]) -> Result<(), IngestError> {
        let Some(defined) = &self.defined else {
            return Ok(());
        };
        for (index, event) in events.iter_mut().enumerate() {
            if let Some(Attribution::AttributionRef(id)) = event.attribution {
                let attribution =
                    defined
                        .get(&id)
                        .ok_or(IngestError::UndefinedRef { seq, index, id })?;
                event.attribution = Some(attribution.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
