use mapsentry_proto::v1::{AgentMessage, EventBatch, Hello, LossReport, agent_message::Msg};

use super::*;

fn hello(version: i32, node: &str, boot_id: &str) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Hello(Hello {
            version,
            node: node.into(),
            boot_id: boot_id.into(),
            ..Hello::default()
        })),
    }
}

#[test]
fn hello_is_checked_field_by_field() {
    assert_eq!(hello_of(Some(hello(1, "n", "b"))).unwrap().0.node, "n");
    assert_eq!(hello_of(Some(hello(2, "n", "b"))).unwrap().0.node, "n");
    assert_eq!(
        hello_of(Some(hello(0, "n", "b"))),
        Err(IngestError::NoVersion)
    );
    assert_eq!(
        hello_of(Some(hello(7, "n", "b"))),
        Err(IngestError::Version { version: 7 })
    );
    assert_eq!(
        hello_of(Some(hello(1, "", "b"))),
        Err(IngestError::EmptyHelloField { field: "node" })
    );
    assert_eq!(
        hello_of(Some(hello(1, "n", ""))),
        Err(IngestError::EmptyHelloField { field: "boot_id" })
    );
    let batch = Some(AgentMessage {
        msg: Some(Msg::Batch(EventBatch::default())),
    });
    assert_eq!(
        hello_of(batch),
        Err(IngestError::NoHello { got: "EventBatch" })
    );
    let loss = Some(AgentMessage {
        msg: Some(Msg::Loss(LossReport::default())),
    });
    assert_eq!(
        hello_of(loss),
        Err(IngestError::NoHello { got: "LossReport" })
    );
    assert_eq!(
        hello_of(Some(AgentMessage { msg: None })),
        Err(IngestError::NoHello {
            got: "an empty message"
        })
    );
}

#[test]
fn versions_fail_the_precondition_other_mistakes_are_invalid_arguments() {
    assert_eq!(
        Status::from(IngestError::Version { version: 2 }).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        Status::from(IngestError::ZeroSeq).code(),
        tonic::Code::InvalidArgument
    );
}

/// A stored batch is timed from its arrival to its records offered to subscribers; a duplicate
/// (nothing offered) and a refused batch are not.
#[tokio::test]
async fn stored_batches_are_timed_into_the_ingest_latency_histogram() {
    let hub = Hub::new(crate::HubConfig::default());
    let ingest = Ingest::new(Arc::clone(&hub), 100);
    let agent = AgentInfo {
        node: "node-a".into(),
        boot_id: "boot".into(),
        ..AgentInfo::default()
    };
    let batch = |seq: u64, events: Vec<v1::Event>| AgentMessage {
        msg: Some(Msg::Batch(EventBatch { seq, events })),
    };
    let event = v1::Event::from(crate::testing::event(None, None, "mmap_call"));
    let count = || {
        let body = crate::metrics::Metrics::default().render(&hub);
        body.lines()
            .find_map(|l| l.strip_prefix("mapsentry_collector_ingest_publish_seconds_count "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(
        count().as_deref(),
        Some("0"),
        "the histogram is exposed before any batch"
    );
    for message in [
        batch(1, vec![event.clone()]),
        batch(1, vec![event.clone()]),
        batch(2, vec![v1::Event::default()]),
    ] {
        let _ = ingest
            .handle(
                &agent,
                &mut StreamAttributions::new(v1::ProtocolVersion::V1),
                message.into(),
            )
            .await;
    }
    assert_eq!(count().as_deref(), Some("1"), "one stored batch timed");
    let body = crate::metrics::Metrics::default().render(&hub);
    assert!(
        body.contains("# TYPE mapsentry_collector_ingest_publish_seconds histogram")
            && body.contains("mapsentry_collector_ingest_publish_seconds_bucket{le=\"+Inf\"} 1"),
        "{body}"
    );
}

#[test]
fn hello_strings_beyond_their_limits_are_refused_by_name() {
    let error = hello_of(Some(hello(1, &"n".repeat(7 << 20), "b"))).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "Hello.node is {} bytes, more than the limit of 253",
            7 << 20
        )
    );
    assert_eq!(Status::from(error).code(), tonic::Code::InvalidArgument);
    assert!(hello_of(Some(hello(1, "n", &"b".repeat(65)))).is_err());
}

#[test]
fn a_late_hello_and_a_full_node_table_have_their_own_codes() {
    assert_eq!(
        Status::from(IngestError::HelloDeadline).code(),
        tonic::Code::DeadlineExceeded
    );
    assert_eq!(
        Status::from(IngestError::NodesFull(NodesFull { max: 3 })).code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(
        IngestError::HelloDeadline.to_string(),
        "no Hello within 10 s of opening the stream"
    );
}
