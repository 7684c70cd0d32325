use std::collections::HashMap;

use mapsentry_proto::v1::{self, event::Attribution};
use prost::Message as _;

use super::*;

fn pod() -> Attribution {
    Attribution::Pod(Box::new(v1::PodAttribution {
        namespace: Some("shop".into()),
        pod: Some("web-7d9c".into()),
        container: Some("app".into()),
        labels: HashMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]),
        workload: Some(v1::Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        resolved: true,
        ..Default::default()
    }))
}

fn call(pid: u32) -> v1::Event {
    v1::Event {
        time_ns: 1_764_000_000_123_456_789,
        syscall: v1::Syscall::Mprotect.into(),
        pid,
        tid: pid + 1,
        comm: "worker".into(),
        cgroup_id: 77,
        args: Some(v1::MmapArgs {
            addr: 0x7f00_0000_0000,
            length: 8192,
            prot: 7,
            ..Default::default()
        }),
        ret: -13,
        file: Some(v1::FileInfo {
            path: "/usr/lib/libc.so.6".into(),
            inode: 9,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attributions() -> [Option<Attribution>; 4] {
    [
        None,
        Some(pod()),
        Some(Attribution::Host(v1::HostAttribution {
            cgroup: "/system.slice/sshd.service".into(),
            unit: Some("sshd.service".into()),
        })),
        Some(Attribution::Unknown(v1::UnknownCgroup {})),
    ]
}

#[test]
fn an_event_encodes_byte_for_byte_as_prost_encodes_it_whole() {
    for (pid, attribution) in attributions().into_iter().enumerate() {
        let whole = v1::Event {
            attribution,
            ..call(pid as u32)
        };
        let held = Attributed::from(whole.clone());
        assert!(held.event().attribution.is_none());
        assert_eq!(held.encoded_len(), whole.encoded_len());
        let mut prosts = Vec::new();
        prost::encoding::message::encode(5, &whole, &mut prosts);
        // Twice: the second writes the attribution's bytes kept from the first.
        for _ in 0..2 {
            let mut ours = Vec::new();
            held.encode_field(5, &mut ours);
            assert_eq!(ours, prosts, "{whole:?}");
        }
    }
}

#[test]
fn a_call_received_with_its_bytes_writes_them_as_encoding_it_would() {
    for (pid, attribution) in attributions().into_iter().enumerate() {
        let call = call(pid as u32);
        let attribution = attribution.map(SharedAttribution::new);
        let encoded = Attributed::new(call.clone(), attribution.clone());
        // The bytes as `mapsentry_proto::received` keeps them: the call's canonical encoding,
        // here in a buffer of its own with other bytes around it.
        let mut arrived = b"before".to_vec();
        arrived.extend(call.encode_to_vec());
        arrived.extend(b"after");
        let arrived = Bytes::from(arrived);
        let bytes = arrived.slice(6..arrived.len() - 5);
        let received = Attributed::received(call.clone(), attribution, Some(bytes));
        assert_eq!(received, encoded);
        assert_eq!(received.encoded_len(), encoded.encoded_len());
        for write in [
            |e: &Attributed, buf: &mut Vec<u8>| e.encode_field(5, buf),
            |e: &Attributed, buf: &mut Vec<u8>| e.encode_field_referring(6, 300, buf),
        ] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            write(&received, &mut ours);
            write(&encoded, &mut theirs);
            assert_eq!(ours, theirs, "{call:?}");
        }
    }
}

#[test]
fn events_sharing_one_attribution_are_each_whole_on_the_wire() {
    let shared = SharedAttribution::new(pod());
    let records: Vec<Record> = (1..=3)
        .map(|pid| Record {
            cursor: u64::from(pid),
            node: "node-a".into(),
            event: call(pid),
            attribution: Some(shared.clone()),
            bytes: 0,
        })
        .collect();
    for record in &records {
        let wire = record.to_wire();
        assert_eq!(wire.node, "node-a");
        assert_eq!(wire.cursor, record.cursor);
        assert_eq!(wire.event.unwrap().attribution, Some(pod()));
        assert_eq!(record.attribution(), Some(&pod()));
    }
    // One copy of the pod's names and labels for all three.
    assert!(
        records
            .iter()
            .all(|r| std::ptr::eq(r.attribution().unwrap(), shared.get()))
    );
}
