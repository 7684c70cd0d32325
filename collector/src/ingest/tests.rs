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
    assert_eq!(hello_of(Some(hello(1, "n", "b"))).unwrap().node, "n");
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
