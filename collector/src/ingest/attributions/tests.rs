use mapsentry_proto::v1::{self, AttributionDefinition, Attributions, attribution_definition};

use super::*;

fn pod(name: &str) -> attribution_definition::Attribution {
    attribution_definition::Attribution::Pod(v1::PodAttribution {
        namespace: Some("team-a".into()),
        pod: Some(name.into()),
        labels: [("app".to_owned(), name.to_owned())].into(),
        resolved: true,
        ..v1::PodAttribution::default()
    })
}

fn define(definitions: &[(u64, &str)], released: &[u64]) -> Attributions {
    Attributions {
        definitions: definitions
            .iter()
            .map(|(id, name)| AttributionDefinition {
                id: *id,
                attribution: Some(pod(name)),
            })
            .collect(),
        released: released.to_vec(),
    }
}

fn referring(id: u64) -> v1::Event {
    v1::Event {
        attribution: Some(Attribution::AttributionRef(id)),
        ..v1::Event::default()
    }
}

fn v2() -> StreamAttributions {
    StreamAttributions::new(v1::ProtocolVersion::V2)
}

#[test]
fn references_resolve_to_the_one_attribution_defined_on_the_stream() {
    let mut stream = v2();
    stream.apply(define(&[(1, "web"), (2, "db")], &[])).unwrap();
    let events = vec![
        referring(2),
        referring(1),
        v1::Event::default(),
        referring(2),
    ];
    let resolved = stream.resolve(5, events, Vec::new()).unwrap();
    let expected = |name| Some(convert::defined_attribution(&pod(name)));
    let attribution = |i: usize| resolved[i].attribution().map(|a| a.get().clone());
    assert_eq!(attribution(0), expected("db"));
    assert_eq!(attribution(1), expected("web"));
    assert_eq!(attribution(2), None, "no attribution stays none");
    assert!(resolved.iter().all(|e| e.event().attribution.is_none()));
    assert!(
        std::ptr::eq(
            resolved[0].attribution().unwrap().get(),
            resolved[3].attribution().unwrap().get()
        ),
        "events naming one definition share it"
    );
}

#[test]
fn an_inline_attribution_is_checked_against_the_field_limits() {
    let stream = StreamAttributions::new(v1::ProtocolVersion::V1);
    let inline = |name: &str| v1::Event {
        attribution: Some(convert::defined_attribution(&pod(name))),
        ..v1::Event::default()
    };
    let resolved = stream.resolve(2, vec![inline("web")], Vec::new()).unwrap();
    assert_eq!(
        resolved[0].attribution().map(|a| a.get().clone()),
        Some(convert::defined_attribution(&pod("web")))
    );
    let error = stream
        .resolve(2, vec![inline("web"), inline(&"p".repeat(300))], Vec::new())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "EventBatch seq 2, event 1: pod.pod is 300 bytes, more than the limit of 253"
    );
}

#[test]
fn an_undefined_reference_is_refused_naming_the_batch_event_and_id() {
    let mut stream = v2();
    stream.apply(define(&[(1, "web")], &[])).unwrap();
    let error = stream
        .resolve(3, vec![referring(1), referring(9)], Vec::new())
        .unwrap_err();
    assert_eq!(
        error,
        IngestError::UndefinedRef {
            seq: 3,
            index: 1,
            id: 9
        }
    );
    assert_eq!(
        error.to_string(),
        "EventBatch seq 3, event 1: attribution_ref 9 is not defined on this stream"
    );
}

#[test]
fn a_definition_may_repeat_its_value_but_not_change_it() {
    let mut stream = v2();
    stream.apply(define(&[(1, "web")], &[])).unwrap();
    stream.apply(define(&[(1, "web")], &[])).unwrap();
    assert_eq!(
        stream.apply(define(&[(1, "db")], &[])),
        Err(IngestError::Redefined { id: 1 })
    );
}

#[test]
fn definitions_beyond_the_bound_are_refused_and_releases_make_room() {
    let mut stream = v2();
    stream.max = 2;
    stream.apply(define(&[(1, "a"), (2, "b")], &[])).unwrap();
    assert_eq!(
        stream.apply(define(&[(3, "c")], &[])),
        Err(IngestError::TooManyAttributions { id: 3, max: 2 })
    );
    stream.apply(define(&[(3, "c")], &[1])).unwrap();
    assert!(
        matches!(
            stream.resolve(1, vec![referring(1)], Vec::new()),
            Err(IngestError::UndefinedRef { id: 1, .. })
        ),
        "a released id is gone"
    );
}

#[test]
fn the_default_bound_is_the_protocol_constant() {
    let mut stream = v2();
    let flood: Vec<(u64, &str)> = (1..=MAX_STREAM_ATTRIBUTIONS as u64 + 1)
        .map(|id| (id, "x"))
        .collect();
    let error = stream.apply(define(&flood, &[])).unwrap_err();
    assert_eq!(
        error,
        IngestError::TooManyAttributions {
            id: MAX_STREAM_ATTRIBUTIONS as u64 + 1,
            max: MAX_STREAM_ATTRIBUTIONS
        }
    );
}

#[test]
fn a_definition_without_attribution_or_beyond_the_field_limits_is_refused() {
    let mut stream = v2();
    let empty = Attributions {
        definitions: vec![AttributionDefinition {
            id: 4,
            attribution: None,
        }],
        released: vec![],
    };
    assert_eq!(
        stream.apply(empty),
        Err(IngestError::EmptyDefinition { id: 4 })
    );
    let long = define(&[(5, &"p".repeat(300))], &[]);
    let error = stream.apply(long).unwrap_err();
    assert!(
        matches!(error, IngestError::DefinitionLimit { id: 5, .. }),
        "{error}"
    );
}

#[test]
fn a_v1_stream_may_not_define_nor_refer() {
    let mut stream = StreamAttributions::new(v1::ProtocolVersion::V1);
    assert_eq!(
        stream.apply(define(&[(1, "web")], &[])),
        Err(IngestError::AttributionsOnV1)
    );
    let events = vec![v1::Event::default(), referring(1)];
    let error = stream.resolve(1, events, Vec::new()).unwrap_err();
    assert_eq!(
        error,
        IngestError::Event {
            seq: 1,
            index: 1,
            source: convert::ConvertError::AttributionRef { id: 1 }
        }
    );
}
