use std::path::PathBuf;

use super::*;

pub(crate) const GOOD_V1: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata:
  name: wx
spec:
  hostProcesses: true
  mode: Audit
  rules:
    - name: write-and-execute
      match:
        protAll: [PROT_WRITE, PROT_EXEC]
      action: Alert
";

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapsentry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// A host process's `mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS)`.
pub(crate) fn wx_event(time_ns: u64) -> mapsentry_policy::MmapEvent {
    use mapsentry_policy::{MmapArgs, MmapEvent, Syscall};
    MmapEvent {
        time_ns,
        syscall: Syscall::Mmap,
        pid: 42,
        tid: 42,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "mmap_call".into(),
        cgroup_id: 7,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot: 0x7,
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

/// The rules that match a host W+X call under the policies in force.
fn rule_names(files: &PolicyFiles) -> Vec<String> {
    let set = files.policy_set().expect("a policy set");
    let event = wx_event(1);
    let ctx = mapsentry_policy::eval_context(&event);
    set.evaluate(&event, &ctx)
        .iter()
        .map(|m| m.rule.to_owned())
        .collect()
}

#[test]
fn good_then_bad_then_good_keeps_the_last_good_version() {
    let dir = temp_dir("reload");
    let file = dir.join("wx.yaml");
    std::fs::write(&file, GOOD_V1).expect("write v1");
    let (mut files, scan) = PolicyFiles::open(vec![dir.clone()]).expect("open");
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!(rule_names(&files), ["write-and-execute"]);

    // A bad version: a misspelled protection. Seen once: debounced, nothing changes yet.
    let bad = GOOD_V1.replace("PROT_EXEC]", "PROT_EXECUTE]");
    std::fs::write(&file, &bad).expect("write bad");
    let scan = files.scan();
    assert!(!scan.changed && scan.errors.is_empty());
    // Seen again unchanged: reloaded, rejected with the field path, v1 stays.
    let scan = files.scan();
    assert!(!scan.changed);
    let errors: Vec<String> = scan.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.rules[0].match.protAll[1]") && errors[0].contains("PROT_EXECUTE"),
        "{errors:?}"
    );
    assert_eq!(rule_names(&files), ["write-and-execute"]);
    assert_eq!(files.policy_set().expect("set").policies().len(), 1);

    // A good version again, with the rule renamed: accepted.
    let good2 = GOOD_V1.replace("name: write-and-execute", "name: wx-renamed");
    std::fs::write(&file, &good2).expect("write v2");
    assert!(!files.scan().changed);
    let scan = files.scan();
    assert!(scan.changed && scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!(rule_names(&files), ["wx-renamed"]);

    // The file deleted: its policy goes.
    std::fs::remove_file(&file).expect("remove");
    assert!(files.scan().changed);
    assert!(
        files
            .policies()
            .read(mapsentry_policy::PolicyStore::ids)
            .is_empty()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let error = PolicyFiles::open(vec!["/nonexistent/mapsentry-policies".into()])
        .expect_err("missing path");
    assert!(
        error
            .to_string()
            .contains("--policy /nonexistent/mapsentry-policies"),
        "{error}"
    );
}

#[tokio::test]
async fn the_watch_publishes_a_changed_set() {
    let dir = temp_dir("watch");
    let file = dir.join("wx.yaml");
    std::fs::write(&file, "").expect("write empty");
    let (files, _) = PolicyFiles::open(vec![file.clone()]).expect("open");
    let mut rx = files.watch(Duration::from_millis(20));
    assert_eq!(
        rx.borrow_and_update().as_ref().map(|s| s.policies().len()),
        Some(0)
    );
    std::fs::write(&file, GOOD_V1).expect("write v1");
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a new set within 5 s")
        .expect("watch open");
    assert_eq!(rx.borrow().as_ref().map(|s| s.policies().len()), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn enforce_mode_policies_of_the_files_are_published_to_agents_and_follow_changes() {
    let dir = temp_dir("publish");
    let file = dir.join("wx.yaml");
    std::fs::write(&file, GOOD_V1).expect("write v1");
    let (files, _) = PolicyFiles::open(vec![file.clone()]).expect("open");
    let publisher = PolicyPublisher::new();
    let mut sets = publisher.subscribe();
    let _evaluation = files
        .with_publisher(publisher)
        .watch(Duration::from_millis(20));
    let first = sets.borrow_and_update().clone().expect("a set at start");
    assert!(
        first.policies_json.is_empty(),
        "an Audit policy is not sent to agents: {first:?}"
    );

    let enforce = GOOD_V1.replace("mode: Audit", "mode: Enforce");
    std::fs::write(&file, &enforce).expect("write enforce");
    tokio::time::timeout(Duration::from_secs(5), sets.changed())
        .await
        .expect("a new set within 5 s")
        .expect("publisher alive");
    let second = sets.borrow_and_update().clone().expect("set");
    assert!(second.version > first.version, "{second:?} after {first:?}");
    assert_eq!(second.policies_json.len(), 1);
    assert!(
        second.policies_json[0].contains("\"Enforce\""),
        "{second:?}"
    );

    // A broken new version is rejected: the Enforce policy in force stays, nothing is published.
    std::fs::write(&file, enforce.replace("PROT_EXEC", "PROT_EXCE")).expect("write bad");
    assert!(
        tokio::time::timeout(Duration::from_millis(400), sets.changed())
            .await
            .is_err(),
        "a rejected version publishes nothing: {:?}",
        sets.borrow()
    );
    assert_eq!(
        sets.borrow().as_ref().map(|s| s.version),
        Some(second.version)
    );

    std::fs::remove_file(&file).expect("remove");
    tokio::time::timeout(Duration::from_secs(5), sets.changed())
        .await
        .expect("removal publishes within 5 s")
        .expect("publisher alive");
    assert_eq!(
        sets.borrow().as_ref().map(|s| s.policies_json.len()),
        Some(0),
        "a deleted file's policy is no longer enforced"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
