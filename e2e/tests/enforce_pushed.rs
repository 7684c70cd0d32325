//! Real kernel (tracepoint mode), real cgroups, real gRPC: an enforce-mode policy published by a
//! collector reaches the agent over the agent stream, is resolved to the cgroup of the pod it
//! selects and enforced in the kernel; it holds after an agent restart with the collector down
//! (from the persisted set); the same policy in Audit mode only alerts.
//!
//! The pod side of the scope is a fixture: the two test cgroups stand for two pods of namespace
//! `e2e` (what the agent's pod cache answers on a node), so the resolution from selector to
//! cgroup ids runs for real without a kubelet.

mod common;

use std::{net::SocketAddr, os::unix::process::ExitStatusExt, sync::Arc, time::Duration};

use common::{Helper, capture, drain_all, drain_pid, mmap_call};
use mapsentry_agent::{
    Capture, CaptureConfig,
    enforce::policies::{CgroupScope, Enforcer},
    shipper::{Shipper, ShipperConfig},
};
use mapsentry_collector::{Hub, HubConfig, PolicyPublisher, ServerConfig, serve};
use mapsentry_e2e::cgroup::TestCgroup;
use mapsentry_policy::{
    EnforceAction, EvalContext, PodContext, Policy, PolicySet, enforce::rule_id, load_str,
};
use mapsentry_proto::v1;
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};

const PRIVATE_ANON: u64 = 0x22;

fn policy(mode: &str) -> (Policy, mapsentry_policy::CompiledPolicy) {
    let text = format!(
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {{name: no-wx, namespace: e2e}}\n\
         spec:\n  mode: {mode}\n  podSelector: {{matchLabels: {{app: victim}}}}\n  rules:\n\
         \x20   - {{name: wx, match: {{protAll: [PROT_WRITE, PROT_EXEC]}}, action: Kill}}\n"
    );
    let loaded = load_str(&text).policies.remove(0);
    (loaded.policy, loaded.compiled)
}

fn pod(app: &str) -> PodContext {
    PodContext {
        namespace: "e2e".into(),
        pod: format!("{app}-0"),
        pod_labels: [("app".to_owned(), app.to_owned())].into(),
        ..PodContext::default()
    }
}

struct Collector {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn collector(publisher: &PolicyPublisher) -> Collector {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        policy_sets: Some(publisher.subscribe()),
        ..ServerConfig::default()
    };
    let hub: Arc<Hub> = Hub::new(HubConfig::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(hub, &config, listener, async { drop(stopped.await) })
            .await
            .expect("the collector serves");
    });
    Collector { addr, stop, task }
}

impl Collector {
    async fn stop(self) {
        drop(self.stop);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the collector stops")
            .unwrap();
    }
}

/// An agent's shipper connected to `collector`, and the policy set it received.
async fn receive_set(collector: &Collector) -> (Shipper, v1::PolicySet) {
    let (tx, mut rx) = watch::channel(None);
    let mut config = ShipperConfig::new(format!("http://{}", collector.addr), "e2e-node");
    config.policy_sets = Some(tx);
    let shipper = Shipper::start(config).expect("starting the shipper");
    let set = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
        .await
        .expect("a policy set within 10 s")
        .expect("the shipper is running")
        .clone()
        .unwrap();
    (shipper, set)
}

fn calls(mprotect: bool) -> String {
    let wx = if mprotect {
        json!({"length": 8192, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon", "mprotect": 5})
    } else {
        json!({"length": 8192, "prot": 7, "flags": PRIVATE_ANON, "fd": "anon"})
    };
    json!({"calls": [
        {"length": 4096, "prot": 3, "flags": PRIVATE_ANON, "fd": "anon"},
        wx,
        {"length": 4096, "prot": 1, "flags": PRIVATE_ANON, "fd": "anon"},
    ]})
    .to_string()
}

/// Run the helper in `cgroup`; true when it was killed by SIGKILL, false when it finished.
fn killed_in(cgroup: &TestCgroup, spec: &str) -> (bool, u32) {
    let helper = Helper::spawn(mmap_call(), &[spec]);
    let pid = helper.pid;
    cgroup.add(pid).expect("moving the helper into its cgroup");
    let (status, report) = helper.go_until_exit();
    if status.signal() == Some(9) {
        assert!(
            report.is_none(),
            "killed before it could report: {report:?}"
        );
        (true, pid)
    } else {
        assert!(status.success(), "the helper failed: {status:?}");
        (false, pid)
    }
}

fn apply(capture: &mut Capture, enforcer: &mut Enforcer, cgroups: &[(u64, CgroupScope)]) {
    enforcer.apply(capture.rules(), cgroups);
    let stats = enforcer.stats();
    assert_eq!(stats.write_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_kill_policy_kills_in_its_pods_cgroup_holds_across_a_restart_and_audit_only_alerts()
 {
    let tag = std::process::id();
    let victim = TestCgroup::create(&format!("mapsentry-test-pushed-victim-{tag}"))
        .expect("creating a cgroup (needs root and cgroup v2)");
    let bystander = TestCgroup::create(&format!("mapsentry-test-pushed-bystander-{tag}"))
        .expect("creating a cgroup");
    let cgroups = [
        (victim.id().unwrap(), CgroupScope::Pod(pod("victim"))),
        (bystander.id().unwrap(), CgroupScope::Pod(pod("bystander"))),
    ];
    let state = std::env::temp_dir().join(format!("mapsentry-e2e-state-{tag}"));
    let _ = std::fs::remove_dir_all(&state);

    // The collector publishes the Enforce policy; the agent receives it over gRPC.
    let mut publisher = PolicyPublisher::new();
    let version = publisher.publish(&[policy("Enforce").0]).unwrap();
    let running = collector(&publisher).await;
    let mut capture = capture(&CaptureConfig::default());
    let deny_unavailable = capture.attached().deny_unavailable.clone();
    let (shipper, set) = receive_set(&running).await;
    assert_eq!(set.version, version);
    let mut enforcer = Enforcer::new(Some(state.clone()), deny_unavailable.as_deref());
    enforcer
        .set_policies(set.version, set.policies_json)
        .expect("the pushed set is valid");
    apply(&mut capture, &mut enforcer, &cgroups);
    assert_eq!(enforcer.stats().cgroups, 1, "only the victim pod's cgroup");

    let (killed, victim_pid) = killed_in(&victim, &calls(false));
    assert!(
        killed,
        "the W+X mmap in the selected pod's cgroup is killed"
    );
    let (killed, bystander_pid) = killed_in(&bystander, &calls(false));
    assert!(
        !killed,
        "the same calls in another pod's cgroup are untouched"
    );
    // One drain for both processes: a second drain would find the ring buffer empty.
    let mut events = drain_all(&mut capture);
    let bystander_events: Vec<_> = events
        .iter()
        .filter(|e| e.pid == bystander_pid)
        .cloned()
        .collect();
    events.retain(|e| e.pid == victim_pid);
    let rw = events
        .iter()
        .find(|e| e.args.prot == 3)
        .expect("RW captured");
    assert!(
        rw.ret > 0 && rw.enforced.is_none(),
        "the earlier mapping succeeded: {rw:?}"
    );
    let wx = events
        .iter()
        .find(|e| e.args.prot == 7)
        .expect("W+X captured");
    let decision = wx.enforced.expect("the W+X record says it was enforced");
    assert_eq!(decision.action, EnforceAction::Kill);
    let id = policy("Enforce").0.id();
    assert_eq!(
        decision.rule_id,
        rule_id(&id, "wx"),
        "the record names the rule"
    );
    let at = events.iter().position(|e| e.args.prot == 7).unwrap();
    assert_eq!(at, events.len() - 1, "nothing after the kill: {events:?}");
    let bystander_wx = bystander_events
        .iter()
        .find(|e| e.args.prot == 7)
        .unwrap_or_else(|| panic!("the bystander's W+X call captured: {bystander_events:?}"));
    assert!(
        bystander_wx.ret > 0 && bystander_events.iter().all(|e| e.enforced.is_none()),
        "the bystander's calls succeeded and none was enforced: {bystander_events:?}"
    );

    let (killed, _) = killed_in(&victim, &calls(true));
    assert!(killed, "RW mmap then mprotect to RX is killed");

    // Collector gone, agent restarted: the persisted set is enforced before any connection.
    shipper.finish().await;
    running.stop().await;
    drop(capture);
    let mut capture = common::capture(&CaptureConfig::default());
    let mut restarted = Enforcer::new(Some(state.clone()), deny_unavailable.as_deref());
    assert_eq!(restarted.load_persisted().unwrap(), Some(version));
    apply(&mut capture, &mut restarted, &cgroups);
    let (killed, _) = killed_in(&victim, &calls(false));
    assert!(
        killed,
        "the rule holds with the collector down after a restart"
    );
    let (killed, _) = killed_in(&bystander, &calls(false));
    assert!(!killed);

    // The same policy in Audit mode: no kernel rule, the process lives, and the evaluation the
    // collector runs alerts on the call.
    let (audit, audit_compiled) = policy("Audit");
    let audit_version = publisher.publish(&[audit]).unwrap();
    let running = collector(&publisher).await;
    let (shipper, set) = receive_set(&running).await;
    assert_eq!(set.version, audit_version);
    assert!(
        set.policies_json.is_empty(),
        "audit policies are not sent to agents"
    );
    restarted
        .set_policies(set.version, set.policies_json)
        .unwrap();
    apply(&mut capture, &mut restarted, &cgroups);
    assert_eq!(restarted.stats().cgroups, 0, "the kernel rules are gone");
    let (killed, pid) = killed_in(&victim, &calls(false));
    assert!(!killed, "Audit mode: the process lives");
    let events = drain_pid(&mut capture, pid);
    let wx = events
        .iter()
        .find(|e| e.args.prot == 7)
        .expect("W+X captured");
    assert!(wx.ret > 0 && wx.enforced.is_none());
    let set = PolicySet::new(vec![audit_compiled]).unwrap();
    let ctx = EvalContext {
        executable: None,
        workload: Some(pod("victim")),
    };
    let matches = set.evaluate(wx, &ctx);
    assert_eq!(matches.len(), 1, "the collector's evaluation alerts on it");
    assert_eq!(
        matches[0].effective_action(),
        mapsentry_policy::Action::Alert
    );

    shipper.finish().await;
    running.stop().await;
    std::fs::remove_dir_all(&state).unwrap();
}
