use super::*;

fn event() -> MmapEvent {
    MmapEvent {
        time_ns: 1_764_236_101_000_000_000,
        ppid: 1,
        cgroup_id: 1,
        ret: 0x7f00_0000_0000,
        ..MmapEvent::anonymous("java", 7, 4096, 7, 0x22)
    }
}

fn event_line(extra: &Value) -> String {
    let mut line = serde_json::to_value(EventLine::from(event())).unwrap();
    for (key, value) in extra.as_object().unwrap() {
        line[key] = value.clone();
    }
    line.to_string()
}

#[test]
fn event_lines_carry_their_context_and_other_kinds_are_skipped() {
    let line = event_line(&json!({
        "namespace": "shop", "pod": "web-1", "container": "app", "executable": "/opt/java/bin/java",
        "k8s": {"image": "eclipse-temurin:21", "labels": {"app": "web", "n": 1}, "namespace_labels": {"team": "a"}},
    }));
    let (parsed, ctx) = parse_line(&line).unwrap().unwrap();
    assert!(
        parsed.attribution.is_some(),
        "the line's attribution is read"
    );
    assert_eq!(
        MmapEvent {
            attribution: None,
            ..parsed
        },
        event()
    );
    assert_eq!(ctx.executable.as_deref(), Some("/opt/java/bin/java"));
    let workload = ctx.workload.unwrap();
    assert_eq!(
        (workload.namespace.as_str(), workload.pod.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(workload.container.as_deref(), Some("app"));
    assert_eq!(workload.image.as_deref(), Some("eclipse-temurin:21"));
    assert_eq!(
        workload.pod_labels,
        BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        "non-string labels are ignored"
    );
    assert_eq!(workload.namespace_labels["team"], "a");

    let (_, host) = parse_line(&event_line(&json!({"namespace": null, "pod": null})))
        .unwrap()
        .unwrap();
    assert_eq!(host, EvalContext::default(), "no namespace: a host process");
    assert!(
        parse_line(r#"{"kind":"totals","seen":1}"#)
            .unwrap()
            .is_none()
    );
    assert!(parse_line(r#"{"kind":"alert"}"#).unwrap().is_none());
}

#[test]
fn bad_lines_say_why() {
    let error = |line: &str| format!("{:#}", parse_line(line).unwrap_err());
    assert!(
        error("not json").starts_with("not a JSON object"),
        "{}",
        error("not json")
    );
    assert_eq!(
        error(r#"{"seen":1}"#),
        r#"no "kind": not a mapsentry JSON line"#
    );
    assert!(
        error(r#"{"kind":"event","pid":1}"#).starts_with("not a valid event line: missing field"),
        "{}",
        error(r#"{"kind":"event","pid":1}"#)
    );
}

#[test]
fn what_if_lines_name_the_outcome_the_caller_and_every_match() {
    let enforce = mapsentry_policy::PolicyId {
        namespace: Some("shop".into()),
        name: "no-wx".into(),
    };
    let audit = mapsentry_policy::PolicyId {
        namespace: None,
        name: "jit".into(),
    };
    let matches = [
        Match {
            policy: &enforce,
            rule: "wx",
            action: Action::Kill,
            mode: Mode::Enforce,
        },
        Match {
            policy: &audit,
            rule: "anon",
            action: Action::Deny,
            mode: Mode::Audit,
        },
    ];
    let (_, ctx) = parse_line(&event_line(
        &json!({"namespace": "shop", "pod": "web-1", "container": "app"}),
    ))
    .unwrap()
    .unwrap();
    let line = what_if_line(3, strongest(&matches).unwrap(), &matches, &event(), &ctx);
    assert!(line.starts_with("line 3: KILL shop/web-1/app "), "{line}");
    assert!(
        line.contains("java[7/7]") && line.contains("prot=PROT_READ|PROT_WRITE|PROT_EXEC"),
        "{line}"
    );
    assert!(
        line.ends_with("<- shop/no-wx rule wx: kill; jit rule anon: deny [audit: not enforced]"),
        "{line}"
    );
}
