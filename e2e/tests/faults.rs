//! Faults through the real binaries (`mapsentry collector`, `agent`, `tail`, `run`) and a real
//! process mapping memory under real BPF (tracepoint mode here): a collector killed -9 and
//! restarted, an agent killed -9 and restarted, a ring buffer forced to overflow, subscribers
//! that never read or come and go. Each test prints its figures (`FIGURES ...` lines; run with
//! `--nocapture` to see them).

mod common;
#[path = "faults/procs.rs"]
mod procs;

use std::{
    collections::{HashMap, HashSet},
    os::unix::process::ExitStatusExt as _,
    thread,
    time::{Duration, Instant},
};

use common::{Helper, mmap_call, recursion_misses};
use mapsentry_e2e::{cgroup::TestCgroup, unmark};
use procs::{
    TempDir, agent, collector, dropped, json_lines, port_of, start_collector, stats, tail,
};
use serde_json::{Value, json};

/// Each (thread, call) marker among `events` and how often it came.
fn markers(events: &[Value], pid: u32) -> HashMap<(u64, u64), u32> {
    let mut out = HashMap::new();
    for event in events {
        if event["kind"] != "event" || event["pid"] != pid {
            continue;
        }
        if let Some(marker) = event["args"]["addr"].as_u64().and_then(unmark) {
            *out.entry(marker).or_default() += 1;
        }
    }
    out
}

/// Event lines of `tail` (JSON) until `done` holds for the markers so far, or nothing came for
/// `quiet`.
fn follow_markers(
    tail: &procs::Proc,
    pid: u32,
    quiet: Duration,
    done: impl Fn(&HashMap<(u64, u64), u32>) -> bool,
) -> Vec<Value> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_mins(2);
    while Instant::now() < deadline {
        let lines = tail.out.until_quiet(quiet, Duration::from_millis(500));
        let quiet_now = lines.is_empty();
        all.extend(json_lines(&lines));
        if done(&markers(&all, pid)) || quiet_now {
            break;
        }
    }
    all
}

#[test]
fn a_collector_killed_and_restarted_under_a_steady_flow_loses_nothing_unaccounted() {
    const PER_THREAD: u64 = 2_500;
    const THREADS: u64 = 2;
    let dir = TempDir::new("collector-kill");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let (first, url) = start_collector(&["--data-dir", data]);
    let port = port_of(&url);
    let mut running = Some(first);
    let subscriber = tail(&url, &[]);
    // A steady flow: two threads, one 4 KiB mapping a millisecond or so each, ~3 s.
    let spec = json!({"threads": THREADS, "per_thread": PER_THREAD, "pace_us": 1000});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    let pid = helper.pid;
    let (shipping, boot_id) = agent(
        &url,
        "fault-node",
        &dir.join("state"),
        &["--pid", &pid.to_string()],
    );
    let flow = thread::spawn(move || helper.go());

    // Kill the collector twice mid-flow, each time restarting it on the same port and data
    // directory after 400 ms down.
    let mut kills = 0;
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(900));
        running.take().expect("running").kill9();
        kills += 1;
        thread::sleep(Duration::from_millis(400));
        running = Some(collector(port, &["--data-dir", data]));
    }
    let report = flow.join().expect("the helper thread");
    let calls: u64 = report["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["calls"].as_u64().unwrap() - t["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(
        calls,
        THREADS * PER_THREAD,
        "every call succeeded: {report}"
    );

    // Stop the agent cleanly: it flushes, waits for its acks and reports its final counters.
    let (code, _, agent_err) = shipping.terminate();
    assert_eq!(code, Some(0), "agent: {}", agent_err.everything());
    let exit_line = agent_err
        .everything()
        .lines()
        .find(|l| l.contains("mapsentry: detached;"))
        .map(str::to_owned)
        .expect("the agent's final counters");
    let events = follow_markers(&subscriber, pid, Duration::from_secs(3), |m| {
        m.len() as u64 >= calls
    });
    let stats = stats(&url);
    let node = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "fault-node")
        .cloned()
        .unwrap_or_else(|| panic!("no fault-node in {stats}"));
    assert_eq!(node["boot_id"], boot_id.as_str());
    let drops: u64 = dropped(&stats, "fault-node").values().sum();
    let found = markers(&events, pid);
    let twice: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
    let cursors: Vec<u64> = events.iter().filter_map(|e| e["cursor"].as_u64()).collect();
    let unique_cursors: HashSet<u64> = cursors.iter().copied().collect();
    let pid_events = events.iter().filter(|e| e["pid"] == pid).count() as u64;
    let received = found.len() as u64;
    let missing = calls - received;
    let disconnects = subscriber.err.everything().matches("unreachable").count();
    println!(
        "FIGURES collector-kill: calls {calls}, collector kills {kills}, received once {received}, \
         received twice {}, agent-counted drops {drops} ({:?}), unaccounted {}, subscriber \
         reconnects {disconnects}, events of the pid {pid_events}, agent: captured {} shipped {} \
         acked {} duplicate batches {}; {exit_line}",
        twice.len(),
        dropped(&stats, "fault-node"),
        missing.saturating_sub(drops),
        node["captured"],
        node["shipped"],
        node["acked"],
        node["duplicate_batches"],
    );
    assert!(twice.is_empty(), "records delivered twice: {twice:?}");
    assert_eq!(
        cursors.len(),
        unique_cursors.len(),
        "a cursor delivered twice"
    );
    assert!(
        missing <= drops,
        "{missing} calls neither received nor counted as dropped ({drops} dropped)"
    );
    let agent_drops: u64 = ["buffer_full", "unacked_at_exit"]
        .iter()
        .filter_map(|r| node["dropped"][r].as_u64())
        .sum();
    assert_eq!(
        node["captured"].as_u64().unwrap(),
        pid_events + agent_drops,
        "every event the agent captured was received or counted: {node}"
    );
    assert!(disconnects >= 1, "the subscriber saw the collector go");
    drop(running);
}

/// A W+X anonymous mapping of 3 GiB with `MAP_NORESERVE`: what the test policy kills. Nothing
/// else on a machine maps that, so the host-wide test rule touches no other process.
fn huge_wx_call() -> String {
    json!({"calls": [{"length": 3u64 << 30, "prot": 7, "flags": 0x4022, "fd": "anon"}]}).to_string()
}

/// Kill that call in every host cgroup.
fn kill_policy() -> Value {
    json!({
        "apiVersion": "mapsentry.dev/v1alpha1", "kind": "ClusterMmapPolicy",
        "metadata": {"name": "fault-huge-wx"},
        "spec": {
            "hostProcesses": true,
            "namespaceSelector": {"matchLabels": {"mapsentry.dev/never": "true"}},
            "mode": "Enforce",
            "rules": [{"name": "huge-wx", "action": "Kill", "match": {
                "protAll": ["PROT_WRITE", "PROT_EXEC"], "flagsAll": ["MAP_NORESERVE"],
                "mapping": "Anonymous", "minLength": "3Gi"}}],
        },
    })
}

/// The enforce-mode set the agent finds in its state directory: [`kill_policy`].
fn persist_kill_set(state: &std::path::Path) {
    use mapsentry_agent::enforce::policies::Enforcer;
    let mut enforcer = Enforcer::new(Some(state.to_owned()), None);
    enforcer
        .set_policies(1, vec![kill_policy().to_string()])
        .expect("the test policy is valid");
    let taken = enforcer.stats();
    assert_eq!(
        (taken.kernel_rules, taken.refused),
        (1, 0),
        "one kernel rule: {taken:?}"
    );
}

/// Run the huge W+X call in `cgroup`; returns (killed by SIGKILL, pid, ms from `since`).
fn victim_in(cgroup: &TestCgroup, since: Instant) -> (bool, u32, u128) {
    let helper = Helper::spawn(mmap_call(), &[&huge_wx_call()]);
    let pid = helper.pid;
    cgroup.add(pid).expect("moving the victim into its cgroup");
    let at = since.elapsed().as_millis();
    let (status, _) = helper.go_until_exit();
    (status.signal() == Some(9), pid, at)
}

#[test]
fn an_agent_killed_and_restarted_enforces_its_persisted_set_first_and_the_gap_is_reported() {
    const PER_THREAD: u64 = 1_500;
    let tag = std::process::id();
    let dir = TempDir::new("agent-kill");
    let state = dir.join("state");
    persist_kill_set(&state);
    let cgroup = TestCgroup::create(&format!("mapsentry-test-fault-victim-{tag}"))
        .expect("creating a cgroup (needs root and cgroup v2)");
    // The collector holds the same policy, as in a deployment: it pushes it to every agent that
    // connects (an empty set from a collector without it would rightly withdraw the rule).
    let policy = dir.join("fault-huge-wx.json");
    std::fs::write(&policy, kill_policy().to_string()).expect("writing the policy file");
    let (server, url) = start_collector(&["--policy", policy.to_str().expect("UTF-8 path")]);
    let subscriber = tail(&url, &[]);
    let spec = json!({"threads": 1, "per_thread": PER_THREAD, "pace_us": 2000});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    let pid = helper.pid;
    let pid_arg = pid.to_string();
    let (first, first_boot) = agent(&url, "gap-node", &state, &["--pid", &pid_arg]);
    let flow = thread::spawn(move || helper.go());
    let (killed, first_victim, _) = victim_in(&cgroup, Instant::now());
    assert!(killed, "the persisted rule kills under the first agent");

    thread::sleep(Duration::from_millis(700));
    first.kill9();
    let killed_at = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let (second, second_boot) = agent(&url, "gap-node", &state, &["--pid", &pid_arg]);
    let started_ms = killed_at.elapsed().as_millis();
    // Right after the restart: the persisted set is in the kernel (applied before the agent
    // starts reading or connects; the log order below shows it), whatever the collector sends.
    let (killed, second_victim, victim_ms) = victim_in(&cgroup, killed_at);
    assert!(
        killed,
        "the W+X call {victim_ms} ms after the kill, right after the restart, is killed"
    );
    let log = second.err.everything();
    let persisted = log
        .find("enforcing the persisted policy set version 1")
        .unwrap_or_else(|| panic!("the restarted agent says it enforces the persisted set: {log}"));
    let started = log.find("mapsentry: agent on node").unwrap();
    assert!(
        persisted < started,
        "the set is applied before the agent starts reading: {log}"
    );
    let report = flow.join().expect("the flow helper");
    let calls = report["threads"][0]["calls"].as_u64().unwrap();
    thread::sleep(Duration::from_millis(500));
    let (code, _, err) = second.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());

    let events = follow_markers(&subscriber, pid, Duration::from_secs(2), |m| {
        m.len() as u64 >= calls
    });
    let restarts: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "agent_restart")
        .collect();
    assert_eq!(restarts.len(), 1, "one restart notice: {restarts:?}");
    let notice = restarts[0];
    assert_eq!(notice["node"], "gap-node");
    assert_eq!(notice["previous_boot_id"], first_boot.as_str());
    assert_eq!(notice["boot_id"], second_boot.as_str());
    let gap_ns = notice["gap_ns"].as_u64().expect("a gap length");
    assert!(
        gap_ns >= 300_000_000,
        "the gap covers at least the 300 ms the agent was down: {notice}"
    );
    let enforced: Vec<u64> = events
        .iter()
        .filter(|e| e["enforced"]["action"] == "kill")
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert!(
        enforced.contains(&u64::from(second_victim)),
        "the restarted agent reports the kill (enforced calls are always reported): {enforced:?}"
    );
    let received = markers(&events, pid).len() as u64;
    let counters = stats(&url);
    let node = &counters["nodes"][0];
    assert_eq!(node["agent_restarts"], 1, "{counters}");
    println!(
        "FIGURES agent-kill: flow calls {calls}, received {received}, not captured or lost in \
         the gap {}, reported gap {:.3} s (agent down 300 ms + restart {started_ms} ms), victim \
         killed {victim_ms} ms after the kill (pids {first_victim}, {second_victim}), previous \
         boot captured {} acked {} (unacked {}), agent_restarts {}",
        calls - received,
        Duration::from_nanos(gap_ns).as_secs_f64(),
        notice["previous_captured"],
        notice["previous_acked"],
        notice["previous_unacked"],
        node["agent_restarts"],
    );
    assert!(
        received < calls,
        "calls made while no agent ran were not captured: {received} of {calls}"
    );
    drop(server);
}

#[test]
fn an_overflowing_ring_buffer_drops_exactly_what_run_did_not_print() {
    const PER_THREAD: u64 = 20_000;
    // PROT_READ|PROT_EXEC: `--prot-any PROT_EXEC` (in the kernel) then leaves exactly the storm's
    // calls of this process; its thread stacks and heap are read-write.
    let spec = json!({"threads": 2, "per_thread": PER_THREAD, "prot": 5});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    let pid = helper.pid.to_string();
    let misses_before = recursion_misses();
    let run = procs::Proc::start(
        "run",
        &[
            "run",
            "--output",
            "json",
            "--pid",
            &pid,
            "--prot-any",
            "PROT_EXEC",
            "--ring-buffer-bytes",
            "4096",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    run.wait_err("mapsentry: capturing");
    let report = helper.go();
    let failed: u64 = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(failed, 0, "{report}");
    let calls = 2 * PER_THREAD;
    thread::sleep(Duration::from_millis(300));
    let (code, out, err) = run.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    let lines = json_lines(&out.until_quiet(Duration::from_secs(1), Duration::from_mins(1)));
    let misses = recursion_misses() - misses_before;
    let totals = lines.last().expect("a totals line");
    assert_eq!(totals["kind"], "totals", "{totals}");
    let events: Vec<Value> = lines
        .iter()
        .filter(|l| l["kind"] == "event")
        .cloned()
        .collect();
    let found = markers(&events, pid.parse().unwrap());
    let received = found.len() as u64;
    let (seen, emitted, dropped) = (
        totals["seen"].as_u64().unwrap(),
        totals["emitted"].as_u64().unwrap(),
        totals["dropped"].as_u64().unwrap(),
    );
    println!(
        "FIGURES ring-overflow: calls {calls} (2 threads), printed {received}, dropped {dropped}, \
         calls - printed - dropped = {}, kernel seen {seen}, emitted {emitted}, recursion misses \
         {misses}",
        i128::from(calls) - i128::from(received) - i128::from(dropped),
    );
    assert!(found.values().all(|n| *n == 1), "a call printed twice");
    assert_eq!(
        events.len() as u64,
        emitted,
        "every event line is counted as emitted"
    );
    assert!(
        dropped > 0,
        "a one-page ring buffer under a storm overflows"
    );
    assert!(
        received + dropped <= calls && calls - received - dropped <= misses,
        "dropped = calls made - events received, exactly (up to {misses} BPF program runs the \
         kernel skipped while another capture's program ran on the CPU)"
    );
    let filtered = totals["filtered"].as_u64().unwrap();
    assert!(
        seen >= filtered + emitted + dropped && seen - filtered - emitted - dropped <= misses,
        "at rest seen = filtered + emitted + dropped: {totals}"
    );
}

/// Subscribe and leave again, over and over, until `stop`; returns how many times.
fn churn(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use mapsentry_collector::follow::{Followed, Follower};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let mut rounds = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut follower = Follower::new(
                &url,
                mapsentry_proto::v1::SubscribeRequest::default(),
                16 << 20,
            )
            .expect("a follower");
            match tokio::time::timeout(Duration::from_secs(5), follower.next()).await {
                Ok(Ok(Followed::Started(_))) => {}
                other => panic!("subscribing: {other:?}"),
            }
            // Take a few records (or none), then hang up.
            let _ = tokio::time::timeout(Duration::from_millis(5), follower.next()).await;
            drop(follower);
            rounds += 1;
        }
        rounds
    })
}

#[test]
fn a_stuck_subscriber_and_a_churning_one_leave_collector_memory_bounded_and_others_whole() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    const PER_THREAD: u64 = 25_000;
    let dir = TempDir::new("subscribers");
    let (server, url) =
        start_collector(&["--retention-events", "20000", "--subscriber-queue", "1024"]);
    let server_pid = server.pid();
    let whole = tail(&url, &[]);
    // Subscribed, and never read: its stdout pipe fills, then its gRPC stream, then its queue.
    let (stuck, _stuck_stdout) = procs::Proc::start_unread(
        "stuck tail",
        &["tail", "--server", &url, "--output", "json"],
    );
    let spec = json!({"threads": 2, "per_thread": PER_THREAD, "pace_us": 400});
    let helper = Helper::spawn(mmap_call(), &[&spec.to_string()]);
    let pid = helper.pid;
    let (shipping, _) = agent(
        &url,
        "busy-node",
        &dir.join("state"),
        &["--pid", &pid.to_string()],
    );
    thread::sleep(Duration::from_millis(500));
    let baseline = procs::rss_kib(server_pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let rss = procs::rss_kib(server_pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                samples.push(rss);
                thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let churner = {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        thread::spawn(move || churn(url, stop))
    };
    let started = Instant::now();
    let report = helper.go();
    let flow_secs = started.elapsed().as_secs_f64();
    let calls: u64 = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["calls"].as_u64().unwrap() - t["failed"].as_u64().unwrap())
        .sum();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let rounds = churner.join().expect("the churning subscriber");
    let rss_samples = sampler.join().expect("the sampler");
    let (code, _, err) = shipping.terminate();
    assert_eq!(code, Some(0), "{}", err.everything());
    let events = follow_markers(&whole, pid, Duration::from_secs(3), |m| {
        m.len() as u64 >= calls
    });
    let stats = stats(&url);
    let drops: u64 = dropped(&stats, "busy-node").values().sum();
    let found = markers(&events, pid);
    let losses: Vec<&Value> = events.iter().filter(|e| e["kind"] == "loss").collect();
    let peak = peak.load(Ordering::Relaxed);
    let end = procs::rss_kib(server_pid);
    println!(
        "FIGURES subscribers: calls {calls} in {flow_secs:.1} s, whole subscriber got {} \
         (agent-counted drops {drops}, loss notices {}), churn rounds {rounds}, collector RSS \
         baseline {baseline} KiB, peak {peak} KiB, end {end} KiB ({} samples), subscribers at \
         the end {}, records skipped for slow subscribers {}",
        found.len(),
        losses.len(),
        rss_samples.len(),
        stats["subscribers"],
        stats["subscriber_losses"],
    );
    assert!(
        losses.is_empty(),
        "the reading subscriber lost nothing: {losses:?}"
    );
    assert!(found.values().all(|n| *n == 1), "a record twice");
    assert_eq!(
        found.len() as u64 + drops,
        calls,
        "the reading subscriber got every call the agent did not count as dropped"
    );
    assert!(
        stats["subscriber_losses"].as_u64().unwrap() > 0,
        "the stuck subscriber really was stuck (its records were skipped, counted): {stats}"
    );
    assert!(
        rounds >= 20,
        "the churning subscriber came and went {rounds} times"
    );
    assert_eq!(
        stats["subscribers"], 2,
        "the churned subscriptions are gone; the whole and the stuck one remain"
    );
    // Retention is 20,000 events (a few MiB); the stuck subscriber's queue is bounded (1024) and
    // its HTTP/2 window too; churned subscriptions are freed.
    assert!(
        peak < baseline + 64 * 1024,
        "collector RSS grew from {baseline} KiB to {peak} KiB"
    );
    drop(stuck);
    drop(server);
}
