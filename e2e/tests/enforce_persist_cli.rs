//! Persisting never blocks enforcing: `mapsentry agent` whose `--state-dir` is on a read-only
//! file system (as under a chart with `readOnlyRootFilesystem` and nothing mounted there) still
//! enforces the set the collector pushes, and says why it could not persist it: in its log, its
//! `/readyz` body and its metrics. Real collector and agent binaries, real BPF, a real read-only
//! mount; the rules are confined to one test cgroup (`--enforce-under`).

mod common;

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use common::{
    Helper,
    apiserver::{Running, eventually, http_get, metric},
    mmap_call,
};
use mapsentry_e2e::{cgroup::TestCgroup, mount::ReadOnlyDir};
use serde_json::json;

const POLICY: &str = "apiVersion: mapsentry.dev/v1alpha1
kind: ClusterMmapPolicy
metadata: {name: persist-wx}
spec:
  hostProcesses: true
  mode: Enforce
  rules:
    - {name: wx, match: {protAll: [PROT_WRITE, PROT_EXEC]}, action: Kill}
";

#[test]
fn an_agent_that_cannot_persist_still_enforces_and_says_why() {
    let tag = std::process::id();
    let cgroup = TestCgroup::create(&format!("mapsentry-test-persist-{tag}"))
        .expect("creating a cgroup (needs root and cgroup v2)");
    let state = ReadOnlyDir::mount(&format!("mapsentry-e2e-ro-agent-state-{tag}"));
    let policy = std::env::temp_dir().join(format!("mapsentry-e2e-persist-{tag}.yaml"));
    std::fs::write(&policy, POLICY).expect("writing the policy");

    let mut collector = Running::start(&[
        "collector",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let grpc = collector.printed_addr("collector serving on ");
    let under = format!("/mapsentry-test-persist-{tag}");
    let mut agent = Running::start(&[
        "agent",
        "--collector",
        &format!("http://{grpc}"),
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--enforce-under",
        &under,
    ]);
    let endpoint = agent.printed_addr("agent metrics on ");
    let logged = agent.stderr_until(
        "the persist failure in the log",
        Duration::from_secs(30),
        |line| {
            line.contains("cannot be persisted")
                .then(|| line.to_owned())
        },
    );
    assert!(logged.contains("Read-only file system"), "{logged}");

    let body = eventually("/readyz to say why", Duration::from_secs(30), || {
        let (status, body) = http_get(endpoint, "/readyz");
        (status == 200 && body.contains("could not be persisted")).then_some(body)
    });
    assert!(
        body.starts_with("ready;")
            && body.contains(&state.path().display().to_string())
            && body.contains("Read-only file system"),
        "{body}"
    );
    let metrics = eventually("the metrics", Duration::from_secs(30), || {
        let (_, body) = http_get(endpoint, "/metrics");
        (metric(&body, "mapsentry_enforce_cgroups")? == 1).then_some(body)
    });
    assert_eq!(
        metric(&metrics, "mapsentry_enforce_persist_failures_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mapsentry_enforce_policy_set_persisted"),
        Some(0)
    );
    assert_eq!(metric(&metrics, "mapsentry_enforce_kernel_rules"), Some(1));

    // Enforced all the same.
    let spec = json!({"calls": [{"length": 4096, "prot": 7, "flags": 0x22, "fd": "anon"}]});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    cgroup
        .add(helper.pid)
        .expect("moving the helper into the cgroup");
    let (status, report) = helper.go_until_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "the pushed set is enforced although it was not persisted: {report:?}"
    );

    agent.stop();
    collector.stop();
    let _ = std::fs::remove_file(&policy);
}
