//! The observer's path: decode a SubscribeRequest, build and scope the filter, match an event.
#![no_main]

use mapsentry_collector::{auth::Scope, filter::RecordFilter};
use mapsentry_proto::v1::{Event, SubscribeRequest};
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|input: (&[u8], &[u8])| {
    let Ok(request) = SubscribeRequest::decode(input.0) else {
        return;
    };
    let Ok(filter) = RecordFilter::new(request.filter.as_ref(), &request.kinds) else {
        return;
    };
    let event = Event::decode(input.1).unwrap_or_default();
    let _ = filter.matches("node", &event);
    if let Ok(scoped) = filter.within(Scope::Namespaces(vec!["a".into()])) {
        let _ = scoped.matches("node", &event);
    }
});
