use clap::Parser as _;

use super::*;

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    tail: TailArgs,
}

fn parse(args: &[&str]) -> anyhow::Result<SubscribeRequest> {
    let cli = Cli::try_parse_from(std::iter::once("tail").chain(args.iter().copied()))?;
    request(&cli.tail)
}

#[test]
fn flags_become_the_server_side_filter() {
    let request = parse(&[
        "--node",
        "n1",
        "--namespace",
        "prod",
        "--pod",
        "web-0",
        "--label",
        "app=web,tier!=db",
        "--label",
        "!canary",
        "--label",
        "env in (prod,staging),track notin (beta)",
        "--comm",
        "java",
        "--syscall",
        "mmap2",
        "--prot-any",
        "PROT_WRITE,PROT_EXEC",
        "--prot-all",
        "PROT_EXEC",
        "--flags-any",
        "MAP_SHARED|0x40",
        "--flags-all",
        "MAP_ANONYMOUS",
        "--kind",
        "events",
        "--since",
        "42",
    ])
    .unwrap();
    let filter = request.filter.unwrap();
    assert_eq!(
        (filter.nodes, filter.namespaces, filter.pods, filter.comms),
        (
            vec!["n1".to_owned()],
            vec!["prod".to_owned()],
            vec!["web-0".to_owned()],
            vec!["java".to_owned()]
        )
    );
    assert_eq!(
        filter.labels,
        [
            "app=web",
            "tier!=db",
            "!canary",
            "env in (prod,staging)",
            "track notin (beta)"
        ]
    );
    assert_eq!(filter.syscalls, vec![v1::Syscall::Mmap2 as i32]);
    assert_eq!(
        (
            filter.prot_any,
            filter.prot_all,
            filter.flags_any,
            filter.flags_all
        ),
        (0x6, 0x4, 0x41, 0x20)
    );
    assert_eq!(
        (request.since, request.kinds),
        (Some(42), vec![v1::Kind::Events as i32])
    );
    assert_eq!(parse(&[]).unwrap().since, None, "live by default");
}

#[test]
fn wrong_words_are_named() {
    let error = parse(&["--syscall", "mmap3"]).unwrap_err().to_string();
    assert!(error.contains("--syscall \"mmap3\""), "{error}");
    let error = parse(&["--prot-any", "PROT_BOGUS"])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--prot-any \"PROT_BOGUS\": not a known name"),
        "{error}"
    );
    let error = parse(&["--flags-all", "PROT_NONE"])
        .unwrap_err()
        .to_string();
    assert!(error.contains("--flags-all \"PROT_NONE\""), "{error}");
}

#[test]
fn json_lines_are_runs_lines_plus_cursor_and_node() {
    let event = MmapEvent {
        time_ns: 1_764_236_101_123_456_000,
        syscall: Syscall::Mmap,
        pid: 7,
        tid: 8,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: "cat".into(),
        cgroup_id: 1,
        args: mapsentry_policy::MmapArgs {
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
        attribution: Some(std::sync::Arc::new(mapsentry_policy::Attribution::Pod(
            mapsentry_policy::K8sMeta {
                namespace: Some("shop".into()),
                pod: Some("web-0".into()),
                container: Some("app".into()),
                pod_uid: Some("u".into()),
                container_id: Some("c".into()),
                image: Some("nginx:1.27".into()),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                namespace_labels: std::collections::BTreeMap::new(),
                workload: Some(mapsentry_policy::Workload {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                }),
                resolved: true,
            },
        ))),
    };
    let record = EventRecord {
        cursor: 99,
        node: "n1".into(),
        event: Some((&event).into()),
    };
    let mut tailed = Vec::new();
    write_record(&mut tailed, Format::Json, &record).unwrap();
    let mut ran = Vec::new();
    output::EventWriter::new(Format::Json).write(&mut ran, &event);
    let mut tailed: serde_json::Value = serde_json::from_slice(&tailed).unwrap();
    let ran: serde_json::Value = serde_json::from_slice(&ran).unwrap();
    let object = tailed.as_object_mut().unwrap();
    assert_eq!(object.remove("cursor"), Some(99.into()));
    assert_eq!(object.remove("node"), Some("n1".into()));
    assert_eq!(tailed, ran);
    assert_eq!(tailed["namespace"], "shop");
    assert_eq!(tailed["k8s"]["labels"]["app"], "web");
    assert_eq!(tailed["k8s"]["workload"]["kind"], "StatefulSet");
}

#[test]
fn an_agent_restart_is_a_line_with_its_gap() {
    let restart = v1::AgentRestart {
        node: "n1".into(),
        previous_boot_id: "b1".into(),
        boot_id: "b2".into(),
        previous_last_event_ns: 1_000_000_000,
        started_unix_ns: 3_500_000_000,
        previous_captured: 10,
        previous_acked: 7,
    };
    let mut out = Vec::new();
    write_restart(&mut out, Format::Json, &restart).unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["kind"], "agent_restart");
    assert_eq!(line["gap_ns"], 2_500_000_000_u64);
    assert_eq!(line["previous_unacked"], 3);
    assert_eq!(
        (&line["previous_boot_id"], &line["boot_id"]),
        (&"b1".into(), &"b2".into())
    );
    let mut text = Vec::new();
    write_restart(&mut text, Format::Text, &restart).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("agent on n1 restarted (boot b1 -> b2): capture gap of 2.500 s, 3 events"),
        "{text}"
    );
    let unknown = v1::AgentRestart {
        started_unix_ns: 0,
        ..restart
    };
    let mut out = Vec::new();
    write_restart(&mut out, Format::Json, &unknown).unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        line["gap_ns"].is_null(),
        "no start time, no gap length: {line}"
    );
}

#[test]
fn since_is_a_cursor_or_a_duration_ago() {
    let request = parse(&["--since", "42"]).unwrap();
    assert_eq!((request.since, request.since_unix_ns), (Some(42), None));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let request = parse(&["--since", "10m", "-o", "json"]).unwrap();
    let at = request.since_unix_ns.expect("a time");
    assert_eq!(request.since, None);
    let ago = before.saturating_sub(at);
    assert!(
        (599_000_000_000..=601_000_000_000).contains(&ago),
        "10 minutes ago: {ago} ns"
    );
    let error = parse(&["--since", "yesterday"]).unwrap_err().to_string();
    assert!(
        error.contains("not a duration") && error.contains("cursor"),
        "{error}"
    );
    let error = parse(&["--timeout", "5"]).unwrap_err().to_string();
    assert!(error.contains("not a duration"), "{error}");
}
