//! Real cgroups: directories made under this host's cgroup2 mount, shaped like the kubelet's, real
//! processes moved into them, and (for the id) a real BPF capture. Needs root and cgroup2.

use std::{
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use super::CgroupIndex;
use crate::metadata::{
    cgroup_path::{CgroupOwner, ContainerRef, QosClass, Runtime},
    testing::{TestTree, Waiter, wait_for},
};

const UID: &str = "6a2c9d4e-1b3f-4a5c-8d7e-9f0a1b2c3d4e";
const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The kubelet's two layouts, below the test's private directory.
fn kubelet_layouts() -> [(&'static str, String, CgroupOwner); 2] {
    let uid_ = UID.replace('-', "_");
    [
        (
            "systemd",
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            CgroupOwner::Pod {
                pod_uid: UID.to_owned(),
                qos: QosClass::Burstable,
                container: Some(ContainerRef {
                    runtime: Runtime::Containerd,
                    id: ID.to_owned(),
                }),
            },
        ),
        (
            "cgroupfs",
            format!("kubepods/besteffort/pod{UID}/{ID}"),
            CgroupOwner::Pod {
                pod_uid: UID.to_owned(),
                qos: QosClass::BestEffort,
                container: Some(ContainerRef {
                    runtime: Runtime::Unknown,
                    id: ID.to_owned(),
                }),
            },
        ),
    ]
}

#[test]
fn opening_indexes_existing_cgroups_with_their_inode_as_id() {
    let tree = TestTree::new("open");
    let made: Vec<_> = kubelet_layouts()
        .into_iter()
        .map(|(_, sub, owner)| (tree.mkdir(&sub), owner))
        .collect();
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("opening the index");
    for ((rel, ino), owner) in made {
        let found = index
            .get(ino)
            .unwrap_or_else(|| panic!("{rel} (inode {ino}) not indexed"));
        assert_eq!(found.path, rel);
        assert_eq!(found.owner, owner, "{rel}");
    }
    let root = index
        .get(std::fs::metadata(&tree.root).expect("stat root").ino())
        .expect("root indexed");
    assert_eq!(root.path, "/");
    assert_eq!(index.stats().rescans, 1);
}

/// The kernel's id for a process in a kubelet-shaped cgroup is the directory inode, and the
/// index resolves it to that path: checked against `/proc/PID/cgroup` and against the cgroup id
/// a real BPF capture reports for the process's mmap calls.
#[tokio::test]
async fn bpf_cgroup_id_of_a_process_in_a_pod_cgroup_resolves_to_its_path() {
    let tree = TestTree::new("bpf");
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("opening the index");
    let _watcher = index.watch().expect("watching the hierarchy");
    for (layout, sub, owner) in kubelet_layouts() {
        let (rel, ino) = tree.mkdir(&sub);
        let waiter = Waiter::spawn();
        let pid = waiter.pid();
        tree.move_into(&rel, pid);
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .expect("reading /proc/PID/cgroup");
        assert!(
            proc_cgroup.lines().any(|l| l == format!("0::{rel}")),
            "{layout}: /proc/{pid}/cgroup is {proc_cgroup:?}"
        );

        let mut capture = crate::Capture::start(&crate::CaptureConfig {
            pid: Some(pid),
            ..Default::default()
        })
        .expect("starting a capture");
        tokio::task::spawn_blocking(move || waiter.release_and_wait())
            .await
            .expect("waiter task");
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.is_empty() && Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(200), capture.next_batch(&mut events))
                    .await;
        }
        capture.detach();
        capture.drain(&mut events);
        assert!(
            !events.is_empty(),
            "{layout}: no mmap events captured from pid {pid}"
        );
        // The watcher task indexes the new directories when this (single-threaded) runtime lets it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while index.get(ino).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for event in &events {
            assert_eq!(event.pid, pid);
            assert_eq!(
                event.cgroup_id, ino,
                "{layout}: event cgroup id vs inode of {rel}"
            );
            let found = index
                .resolve(event.cgroup_id)
                .unwrap_or_else(|| panic!("{layout}: id {ino} not resolved"));
            assert_eq!(found.path, rel, "{layout}");
            assert_eq!(found.owner, owner, "{layout}");
        }
    }
}

#[tokio::test]
async fn new_and_removed_cgroups_are_tracked_without_rescans() {
    let tree = TestTree::new("watch");
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("opening the index");
    let _watcher = index.watch().expect("watching the hierarchy");
    // A whole pod subtree made at once: levels created before their parent's watch exists are
    // found by the walk that follows each IN_CREATE.
    for (_, sub, owner) in kubelet_layouts() {
        let (rel, ino) = tree.mkdir(&sub);
        let poll = index.clone();
        let what = format!("{rel} to be indexed");
        tokio::task::spawn_blocking(move || wait_for(&what, || poll.get(ino).is_some()))
            .await
            .expect("poll task");
        assert_eq!(index.get(ino).expect("indexed").owner, owner);
        std::fs::remove_dir(tree.abs(&rel)).expect("rmdir");
        let poll = index.clone();
        tokio::task::spawn_blocking(move || wait_for("removal", || poll.get(ino).is_none()))
            .await
            .expect("poll task");
    }
    let stats = index.stats();
    assert_eq!(stats.rescans, 1, "only the opening walk: {stats:?}");
    assert!(stats.added >= 8 && stats.removed >= 2, "{stats:?}");
}

#[test]
fn a_miss_rescans_at_most_once_per_interval() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let tree = TestTree::new("miss");
    let opened = Instant::now();
    let index = CgroupIndex::open(&tree.root, INTERVAL).expect("opening the index");
    let (rel, ino) = tree.mkdir("late");
    // Misses within the interval after the opening walk are not allowed a rescan; the first
    // miss after it is. Polled, so a loaded machine only makes the loop longer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let asked = Instant::now();
        let found = index.resolve(ino);
        let rescans = index.stats().rescans;
        if asked.duration_since(opened) < INTERVAL {
            assert!(found.is_none(), "found without a rescan");
            assert_eq!(rescans, 1, "a rescan within the interval");
        }
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "never found: {:?}",
            index.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        opened.elapsed() >= INTERVAL,
        "found before the interval passed"
    );
    assert_eq!(found.path, rel);
    assert_eq!(index.stats().rescans, 2, "one rescan for all the misses");
    // A second unknown id right after: no new walk.
    assert!(index.resolve(u64::MAX).is_none());
    assert_eq!(index.stats().rescans, 2);
    // A rescan drops what is gone.
    std::fs::remove_dir(tree.abs(&rel)).expect("rmdir");
    index.rescan().expect("rescan");
    assert!(index.get(ino).is_none());
}

#[test]
fn a_directory_that_is_not_cgroup2_is_refused() {
    let err = CgroupIndex::open("/tmp", Duration::ZERO).expect_err("/tmp is not cgroup2");
    assert!(err.to_string().contains("/tmp"), "{err}");
}

/// A container that ran for milliseconds: its cgroup is gone before its events are attributed.
/// The index still knows its path for a while, whether the removal came from inotify or a rescan.
#[tokio::test]
async fn a_removed_cgroup_is_remembered_for_late_events() {
    let tree = TestTree::new("removed");
    let index = CgroupIndex::open(&tree.root, Duration::from_hours(1)).expect("opening the index");
    let _watcher = index.watch().expect("watching the hierarchy");
    let [(_, systemd, systemd_owner), (_, cgroupfs, cgroupfs_owner)] = kubelet_layouts();
    let (rel, ino) = tree.mkdir(&systemd);
    let poll = index.clone();
    tokio::task::spawn_blocking(move || wait_for("indexing", || poll.get(ino).is_some()))
        .await
        .expect("poll task");
    assert!(
        index.recently_removed(ino).is_none(),
        "a live cgroup is not removed"
    );
    std::fs::remove_dir(tree.abs(&rel)).expect("rmdir");
    let poll = index.clone();
    tokio::task::spawn_blocking(move || wait_for("removal", || poll.get(ino).is_none()))
        .await
        .expect("poll task");
    let found = index
        .recently_removed(ino)
        .expect("remembered after IN_DELETE");
    assert_eq!(
        (found.path.as_str(), &found.owner),
        (rel.as_str(), &systemd_owner)
    );

    let rescanned = CgroupIndex::open(&tree.root, Duration::ZERO).expect("opening the index");
    let (rel, ino) = tree.mkdir(&cgroupfs);
    rescanned.rescan().expect("rescan");
    std::fs::remove_dir(tree.abs(&rel)).expect("rmdir");
    rescanned.rescan().expect("rescan");
    assert!(rescanned.get(ino).is_none());
    let found = rescanned
        .recently_removed(ino)
        .expect("remembered after a rescan");
    assert_eq!(
        (found.path.as_str(), &found.owner),
        (rel.as_str(), &cgroupfs_owner)
    );
}
