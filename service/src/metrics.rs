//! Prometheus metrics through prometheus-client: the exposition is the library's OpenMetrics
//! text encoder over one or more [`Registry`]s. Two glue pieces the library leaves to us:
//!
//! - [`Scrape`]: values read at scrape time from a role's own state (the agent's kernel and
//!   shipper counters, the collector's per-node stats), registered as a prometheus-client
//!   [`Collector`] of const counters and gauges;
//! - [`LabelValue`]: a label value escaped as the text format needs (`\`, `"`, newline), which
//!   prometheus-client writes as given.
//!
//! Counter names are given as exposed (`..._total`); the encoder adds the suffix itself, so the
//! descriptor carries the name without it. `Registry::register` ends help texts with a period
//! itself; [`Scrape`] takes them whole.

use std::fmt::Write as _;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelSetEncoder,
        LabelValueEncoder, text,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text of `registries`, in order, with one `# EOF`.
#[must_use]
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for registry in registries {
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, registry);
    }
    let _ = text::encode_eof(&mut out);
    out
}

/// A label value, escaped when encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelValue(pub String);

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Named labels of one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(pub Vec<(&'static str, LabelValue)>);

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Unlabelled: one sample with no labels.
    samples: Vec<(Option<Labels>, u64)>,
}

/// Metrics valued at scrape time: fill one with the role's current numbers and register it (a
/// prometheus-client [`Collector`]) in a [`Registry`] to encode.
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        samples: impl IntoIterator<Item = (Option<Labels>, u64)>,
    ) -> &mut Self {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: samples.into_iter().collect(),
        });
        self
    }

    /// A counter without labels (`name` ends in `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) -> &mut Self {
        self.push(name, help, Kind::Counter, [(None, value)])
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) -> &mut Self {
        self.push(name, help, Kind::Gauge, [(None, value)])
    }

    /// A counter with one sample per label set (`name` ends in `_total`).
    pub fn counters(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> &mut Self {
        self.labelled(name, help, Kind::Counter, samples)
    }

    /// A gauge with one sample per label set.
    pub fn gauges(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> &mut Self {
        self.labelled(name, help, Kind::Gauge, samples)
    }

    fn labelled(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> &mut Self {
        self.push(
            name,
            help,
            kind,
            samples.into_iter().map(|(l, v)| (Some(l), v)),
        )
    }

    /// These metrics alone, as a registry to encode.
    #[must_use]
    pub fn into_registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let (name, metric_type) = match family.kind {
                Kind::Counter => (
                    family.name.strip_suffix("_total").unwrap_or(family.name),
                    ConstCounter::new(0u64).metric_type(),
                ),
                Kind::Gauge => (family.name, ConstGauge::new(0u64).metric_type()),
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, metric_type)?;
            if let [(None, value)] = family.samples.as_slice() {
                match family.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(metric)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(metric)?,
                }
                continue;
            }
            for (labels, value) in &family.samples {
                let Some(labels) = labels else { continue };
                let sample = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(sample)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
