//! `mapsentry policy` as a user runs it: the real binary on real files.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use mapsentry_policy::{EventLine, MmapArgs, MmapEvent, Syscall};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mapsentry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapsentry"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running mapsentry {args:?}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mapsentry-policy-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_accepts_the_example_library() {
    let output = mapsentry(&["policy", "check", "examples/policies"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.contains(
            "examples/policies/write-execute.yaml: document 2: ClusterMmapPolicy host-write-execute"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("ok: 8 policies, 11 rules in 6 file(s)\n"),
        "{text}"
    );
}

#[test]
fn check_reports_every_problem_with_file_document_and_path() {
    let dir = scratch("check");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: ok}\nspec: {rules: [{name: r, match: {protAny: [PROT_EXEC]}}]}\n---\n\
         apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: bad}\nspec:\n  rules:\n    - name: r\n      match: {protAll: [PROT_WRITE, PROT_WRIT]}\n      actoin: Kill\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("notes.txt"),
        "not a policy: ignored in directories",
    )
    .unwrap();
    let output = mapsentry(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let shown = file.display();
    assert_eq!(
        stdout(&output),
        format!(
            "{shown}: document 2 (MmapPolicy \"bad\"): spec.rules[0].actoin: unknown field \"actoin\"; did you mean \"action\"?\n\
             {shown}: document 2 (MmapPolicy \"bad\"): spec.rules[0].match.protAll[1]: unknown protection \"PROT_WRIT\"; did you mean \"PROT_WRITE\"?\n"
        )
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2 problem(s)"),
        "{output:?}"
    );

    let missing = mapsentry(&["policy", "check", "no/such/dir"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stdout(&missing).starts_with("no/such/dir: cannot read: "),
        "{missing:?}"
    );
    let twice = mapsentry(&[
        "policy",
        "check",
        "examples/policies/hugetlb.yaml",
        "examples/policies/hugetlb.yaml",
    ]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        stdout(&twice).contains("ClusterMmapPolicy \"hugetlb\" is also defined in"),
        "{twice:?}"
    );
}

/// `policy check DIR` reads what `--policy DIR` reads (its *.json files too), and `-o json`
/// prints one object a line: each policy, each problem, then the summary.
#[test]
fn check_reads_json_files_as_the_collector_does_and_prints_json() {
    let dir = scratch("check-json");
    std::fs::write(
        dir.join("wx.json"),
        r#"{"apiVersion": "mapsentry.dev/v1alpha1", "kind": "ClusterMmapPolicy",
            "metadata": {"name": "wx-json"},
            "spec": {"mode": "Enforce", "rules": [{"name": "wx", "match": {"protAll": ["PROT_WRITE", "PROT_EXEC"]}, "action": "Kill"}]}}"#,
    )
    .unwrap();
    let output = mapsentry(&["policy", "check", "-o", "json", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"kind": "policy", "file": dir.join("wx.json"), "document": 1,
                   "policy_kind": "ClusterMmapPolicy", "policy": "wx-json", "mode": "Enforce",
                   "rules": ["wx"]}),
            json!({"kind": "summary", "ok": true, "files": 1, "policies": 1, "rules": 1,
                   "problems": 0}),
        ]
    );

    std::fs::write(
        dir.join("bad.json"),
        r#"{"apiVersion": "mapsentry.dev/v1alpha1", "kind": "MmapPolicy", "metadata": {"name": "bad"},
            "spec": {"rules": [{"name": "r", "match": {"protAny": ["PROT_EXCE"]}}]}}"#,
    )
    .unwrap();
    let output = mapsentry(&["policy", "check", "--output", "json", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let problem = lines
        .iter()
        .find(|l| l["kind"] == "problem")
        .expect("a problem line");
    assert_eq!(problem["file"], json!(dir.join("bad.json")));
    assert_eq!(
        (
            &problem["document"],
            &problem["policy_kind"],
            &problem["name"],
            &problem["path"]
        ),
        (
            &json!(1),
            &json!("MmapPolicy"),
            &json!("bad"),
            &json!("spec.rules[0].match.protAny[0]")
        )
    );
    assert!(
        problem["reason"]
            .as_str()
            .unwrap()
            .starts_with("unknown protection \"PROT_EXCE\"; did you mean \"PROT_EXEC\"?"),
        "{problem}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &json!({"kind": "summary", "ok": false, "files": 2, "policies": 1, "rules": 1, "problems": 1})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording of `mapsentry run --output json --comm python3` on a real kernel while Python
/// mapped 8 KiB `PROT_READ|PROT_WRITE|PROT_EXEC` (trimmed to 17 events).
const RECORDING: &str = "cli/tests/fixtures/python-wx.jsonl";

#[test]
fn test_replays_a_real_recording() {
    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        "examples/policies",
        "--events",
        RECORDING,
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    let hits: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(hits.len(), 1, "{text}");
    assert!(hits[0].starts_with("line 16: ALERT (host) "), "{text}");
    assert!(
        hits[0].contains("prot=PROT_READ|PROT_WRITE|PROT_EXEC"),
        "{text}"
    );
    assert!(
        hits[0]
            .ends_with("<- host-write-execute rule write-and-execute: alert [audit: not enforced]"),
        "{text}"
    );
    assert!(text.contains("17 event(s) replayed (2 other line(s) skipped): 1 matched; would alert on 1, kill 0, deny 0"), "{text}");

    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        "examples/policies",
        "--events",
        RECORDING,
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one alert and the summary: {lines:?}");
    let alert = &lines[0];
    assert_eq!(alert["kind"], "alert");
    assert_eq!(alert["policy"], "host-write-execute");
    assert_eq!(alert["rule"], "write-and-execute");
    assert_eq!(
        (alert["action"].as_str(), alert["mode"].as_str()),
        (Some("alert"), Some("audit"))
    );
    assert!(alert["namespace"].is_null() && alert["pod"].is_null() && alert["container"].is_null());
    assert_eq!(alert["count"], 1);
    assert_eq!(alert["event"]["comm"], "python3");
    assert_eq!(alert["event"]["args"]["prot"], 7);
    assert_eq!(lines[1]["kind"], "summary");
    assert_eq!(lines[1]["events"], 17);
}

fn call(comm: &str, prot: u64, flags: u64, time_ns: u64) -> MmapEvent {
    MmapEvent {
        time_ns,
        syscall: Syscall::Mmap,
        pid: 40,
        tid: 40,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        comm: comm.into(),
        cgroup_id: 9,
        args: MmapArgs {
            addr: 0,
            length: 4096,
            prot,
            flags,
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

/// An event line as the pipeline prints it once pods are resolved.
fn in_pod(event: MmapEvent, namespace: &str, pod: &str, image: &str) -> String {
    let mut line = serde_json::to_value(EventLine::from(event)).unwrap();
    line["namespace"] = json!(namespace);
    line["pod"] = json!(pod);
    line["container"] = json!("app");
    line["k8s"] = json!({"image": image, "labels": {"app.kubernetes.io/part-of": "payments"}, "resolved": true});
    line.to_string()
}

#[test]
fn test_applies_scopes_exceptions_precedence_and_dedup() {
    let dir = scratch("replay");
    let events = dir.join("events.jsonl");
    let second = 1_000_000_000;
    let t0 = 1_764_236_101 * second;
    let lines = [
        // W+X in a pod: write-execute (audit Kill) and anonymous-exec (audit Kill), 3 times in a second.
        in_pod(
            call("app", 7, 0x22, t0),
            "shop",
            "web-1",
            "ghcr.io/acme/web:1",
        ),
        in_pod(
            call("app", 7, 0x22, t0 + 1),
            "shop",
            "web-1",
            "ghcr.io/acme/web:1",
        ),
        in_pod(
            call("app", 7, 0x22, t0 + 2),
            "shop",
            "web-1",
            "ghcr.io/acme/web:1",
        ),
        // java JIT memory in the payments Temurin image: exempt everywhere.
        in_pod(
            call("java", 5, 0x22, t0 + 3),
            "payments",
            "pay-1",
            "eclipse-temurin:21",
        ),
        // node in payments: exempt from the cluster policy by comm, killed by the enforcing payments policy.
        in_pod(
            call("node", 5, 0x22, t0 + 4),
            "payments",
            "pay-2",
            "node:22",
        ),
        // kube-system is outside write-execute's namespaceSelector; anonymous-exec still applies.
        in_pod(
            call("app", 6, 0x22, t0 + 5),
            "kube-system",
            "dns",
            "coredns:1",
        ),
        r#"{"kind":"totals","seen":6}"#.to_owned(),
    ];
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let events = events.to_str().unwrap();

    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        "examples/policies",
        "--events",
        events,
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    let hits: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(hits.len(), 5, "{text}");
    assert!(
        hits[0].starts_with("line 1: ALERT shop/web-1/app "),
        "{text}"
    );
    assert!(
        hits[0].ends_with("<- anonymous-exec rule anonymous-exec: kill [audit: not enforced]; write-execute rule write-and-execute: kill [audit: not enforced]"),
        "{text}"
    );
    assert!(
        hits[3].starts_with("line 5: KILL payments/pay-2/app "),
        "{text}"
    );
    assert!(
        hits[3].ends_with("<- payments/anonymous-exec rule anonymous-exec: kill"),
        "{text}"
    );
    assert!(
        hits[4].starts_with("line 6: ALERT kube-system/dns/app "),
        "{text}"
    );
    assert!(
        hits[4].ends_with("<- anonymous-exec rule anonymous-exec: kill [audit: not enforced]"),
        "{text}"
    );
    assert!(text.contains("6 event(s) replayed (1 other line(s) skipped): 5 matched; would alert on 4, kill 1, deny 0"), "{text}");

    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        "examples/policies",
        "--events",
        events,
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let alerts: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "alert")
        .collect();
    let summary: Vec<(String, String, String, u64)> = alerts
        .iter()
        .map(|a| {
            (
                a["policy"].as_str().unwrap().to_owned(),
                a["pod"].as_str().unwrap().to_owned(),
                a["mode"].as_str().unwrap().to_owned(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |policy: &str, pod: &str, mode: &str, count| {
        (policy.to_owned(), pod.to_owned(), mode.to_owned(), count)
    };
    assert_eq!(
        summary,
        [
            expect("anonymous-exec", "web-1", "audit", 1),
            expect("write-execute", "web-1", "audit", 1),
            expect("payments/anonymous-exec", "pay-2", "enforce", 1),
            expect("anonymous-exec", "dns", "audit", 1),
            // At the end of the replay, the storm in web-1 is reported with its count.
            expect("anonymous-exec", "web-1", "audit", 3),
            expect("write-execute", "web-1", "audit", 3),
        ]
    );
}

#[test]
fn test_refuses_invalid_policies_and_malformed_events() {
    let dir = scratch("refuse");
    let policy = dir.join("p.yaml");
    std::fs::write(&policy, "apiVersion: mapsentry.dev/v1alpha1\nkind: ClusterMmapPolicy\nmetadata: {name: p}\nspec: {rules: [{name: r, match: {protAny: [EXEC]}}]}\n").unwrap();
    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        policy.to_str().unwrap(),
        "--events",
        RECORDING,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.rules[0].match.protAny[0]: unknown protection \"EXEC\""),
        "{stderr}"
    );

    let events = dir.join("bad.jsonl");
    std::fs::write(
        &events,
        "{\"kind\":\"totals\"}\n{\"kind\":\"event\",\"pid\":1}\n",
    )
    .unwrap();
    let output = mapsentry(&[
        "policy",
        "test",
        "--policy",
        "examples/policies",
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.jsonl:2: not a valid event line"),
        "{stderr}"
    );
}

#[test]
fn crds_prints_the_committed_manifest() {
    let output = mapsentry(&["policy", "crds"]);
    assert!(output.status.success(), "{output:?}");
    let committed =
        std::fs::read_to_string(repo().join("manifests/crds/mapsentry.dev.yaml")).unwrap();
    assert_eq!(
        stdout(&output),
        committed,
        "refresh: cargo run -p mapsentry-cli -- policy crds > manifests/crds/mapsentry.dev.yaml"
    );
}

#[test]
fn check_refuses_a_file_beyond_the_limits_unread_with_the_limit_named() {
    let dir = scratch("limits");
    let file = dir.join("nested.yaml");
    let depth = 60_000;
    std::fs::write(
        &file,
        format!("a: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let output = mapsentry(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        stdout(&output),
        format!(
            "{}: nesting depth 65 at line 1 is more than the limit of 64; refused unread\n",
            file.display()
        )
    );
}
