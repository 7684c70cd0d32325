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
