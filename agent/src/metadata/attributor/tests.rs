//! The attribution stage over real cgroups, without Kubernetes (as `run` uses it); with a real
//! API server in `pods::apiserver_tests`.

use std::time::{Duration, Instant};

use mapsentry_policy::{Attribution, MmapArgs, MmapEvent, Syscall};

use super::{Attributor, Kubernetes};
use crate::metadata::{cgroup_index::CgroupIndex, enrich::EnrichConfig, testing::TestTree};

const UID: &str = "7b3d0e5f-2c40-4b6d-9e8f-a0b1c2d3e4f5";

fn event(cgroup_id: u64) -> MmapEvent {
    MmapEvent {
        time_ns: 1,
        syscall: Syscall::Mmap,
        pid: 10,
        tid: 10,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "app".into(),
        cgroup_id,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 3,
            flags: 0x22,
            fd: -1,
            pgoffset: 0,
            offset: 0,
        },
        ret: 0x7f00_0000_0000,
        file: None,
        args_unreadable: false,
        target_mapping: None,
        enforced: None,
        attribution: None,
    }
}

#[tokio::test]
async fn without_kubernetes_host_processes_resolve_and_pods_are_counted_missing() {
    let tree = TestTree::new("attributor-off");
    let (_, pod_cgroup) = tree.mkdir(&format!("kubepods/burstable/pod{UID}/{}", "cd".repeat(32)));
    let (host_path, host_cgroup) = tree.mkdir("system.slice/cron.service");
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("index");
    let hold = EnrichConfig {
        hold_for: Duration::from_millis(200),
        hold_max: 16,
        ..EnrichConfig::default()
    };
    let mut stage = Attributor::with_index(index, &Kubernetes::Off, hold)
        .await
        .expect("attributor");
    let missing = stage.missing_counter();

    // A cgroup made after the index opened: seen through inotify, no rescan needed.
    let (_, late_cgroup) = tree.mkdir("system.slice/late.service");
    let mut batch = vec![event(host_cgroup), event(pod_cgroup)];
    stage.attribute(&mut batch, Instant::now());
    assert_eq!(batch.len(), 2, "nothing waits without Kubernetes");
    assert_eq!(
        batch[0].attribution.as_deref(),
        Some(&Attribution::Host {
            cgroup: host_path,
            unit: Some("cron.service".into())
        })
    );
    let Some(Attribution::Pod(meta)) = batch[1].attribution.as_deref() else {
        panic!("{:?}", batch[1].attribution)
    };
    assert_eq!(meta.pod_uid.as_deref(), Some(UID));
    assert!(!meta.resolved);
    assert_eq!(missing.get(), 1);

    // The late cgroup: attributed once inotify told the index, else held and emitted within
    // the bound.
    let start = Instant::now();
    let mut batch = vec![event(late_cgroup)];
    stage.attribute(&mut batch, start);
    while batch.is_empty() {
        let deadline = stage.next_deadline().expect("held");
        assert!(deadline <= start + hold.hold_for, "held past the bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
        stage.poll(Instant::now(), &mut batch);
    }
    assert!(
        matches!(batch[0].attribution.as_deref(), Some(Attribution::Host { unit: Some(u), .. }) if u == "late.service"),
        "{:?}",
        batch[0].attribution
    );

    // A cgroup that never existed: held to the bound, then emitted unresolved and counted.
    let start = Instant::now();
    let mut batch = vec![event(u64::MAX - 1)];
    stage.attribute(&mut batch, start);
    assert!(batch.is_empty(), "held");
    stage.poll(start + hold.hold_for, &mut batch);
    assert_eq!(
        batch[0].attribution.as_deref(),
        Some(&Attribution::Unknown {
            cgroup_id: u64::MAX - 1
        })
    );
    assert_eq!(missing.get(), 2);
    assert_eq!(stage.stats().missing, 2);
    stage.flush(&mut batch);
    assert_eq!(batch.len(), 1, "nothing left held");
}

#[test]
fn kubernetes_is_off_without_a_kubeconfig_and_needs_a_node_with_one() {
    // The test environment runs neither in a pod nor with KUBECONFIG (checked, not assumed).
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
        && std::env::var_os("KUBECONFIG").is_none()
    {
        assert_eq!(
            Kubernetes::from_flags(None, Some("n")).expect("off"),
            Kubernetes::Off
        );
    }
    assert_eq!(
        Kubernetes::from_flags(Some("/k".into()), Some("node-a")).expect("kubeconfig"),
        Kubernetes::Kubeconfig {
            path: "/k".into(),
            node: "node-a".into()
        }
    );
    if std::env::var_os("NODE_NAME").is_none() {
        let error = Kubernetes::from_flags(Some("/k".into()), None).expect_err("no node");
        assert!(error.to_string().contains("--node"), "{error}");
    }
}
