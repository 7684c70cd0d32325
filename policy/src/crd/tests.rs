use std::path::PathBuf;

use super::*;

#[test]
fn crds_have_group_scope_status_and_printer_columns() {
    let namespaced = MmapPolicy::crd();
    assert_eq!(
        namespaced.metadata.name.as_deref(),
        Some("mmappolicies.mapsentry.dev")
    );
    assert_eq!(namespaced.spec.group, GROUP);
    assert_eq!(namespaced.spec.scope, "Namespaced");
    let cluster = ClusterMmapPolicy::crd();
    assert_eq!(
        cluster.metadata.name.as_deref(),
        Some("clustermmappolicies.mapsentry.dev")
    );
    assert_eq!(cluster.spec.scope, "Cluster");
    for crd in [&namespaced, &cluster] {
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Mode") && columns.contains(&"Accepted") && columns.contains(&"Age"),
            "{columns:?}"
        );
    }
}

#[test]
fn policies_round_trip_through_yaml() {
    let policy = MmapPolicy::new(
        "p",
        MmapPolicySpec {
            pod_selector: None,
            mode: Mode::Enforce,
            deny_fallback: DenyFallback::Refuse,
            rules: vec![Rule {
                name: "wx".into(),
                match_: MatchSpec {
                    prot_all: vec!["PROT_WRITE".into(), "PROT_EXEC".into()],
                    ..MatchSpec::default()
                },
                except: None,
                action: Action::Kill,
            }],
        },
    );
    let yaml = serde_yaml_ng::to_string(&policy).unwrap();
    assert!(yaml.contains("match:\n      protAll:"), "{yaml}");
    assert!(
        !yaml.contains("flagsAny"),
        "empty lists are left out: {yaml}"
    );
    assert_eq!(
        serde_yaml_ng::from_str::<MmapPolicy>(&yaml).unwrap(),
        policy
    );
}

/// `manifests/crds/mapsentry.dev.yaml` is generated from these types. Refresh it with
/// `cargo run -p mapsentry-cli -- policy crds > manifests/crds/mapsentry.dev.yaml`
/// or `MAPSENTRY_BLESS=1 cargo test -p mapsentry-policy committed_crds`.
#[test]
fn committed_crds_are_current() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds/mapsentry.dev.yaml");
    let generated = crds_yaml();
    if std::env::var_os("MAPSENTRY_BLESS").is_some() {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        committed == generated,
        "{} is stale: the CRD types changed. Refresh it with\n  cargo run -p mapsentry-cli -- policy crds > manifests/crds/mapsentry.dev.yaml\nor\n  MAPSENTRY_BLESS=1 cargo test -p mapsentry-policy committed_crds",
        path.display()
    );
}

#[test]
fn status_records_every_problem_of_a_rejected_generation() {
    let text = "apiVersion: mapsentry.dev/v1alpha1\nkind: MmapPolicy\nmetadata: {name: p, generation: 4}\nspec: {rules: [{name: r, match: {protAll: [PROT_WRIT], flagsAny: [MAP_HUGE]}}]}\n";
    let value: serde_json::Value = serde_yaml_ng::from_str(text).unwrap();
    let problems = crate::load::load_value(&value).unwrap_err();
    let status = PolicyStatus::rejected_generation(Some(4), &problems, Some(3), "Invalid");
    assert!(!status.accepted);
    assert_eq!(status.observed_generation, Some(4));
    let paths: Vec<&str> = status.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[0].match.protAll[0]",
            "spec.rules[0].match.flagsAny[0]"
        ]
    );
    assert!(
        status.errors[0]
            .reason
            .starts_with("unknown protection \"PROT_WRIT\""),
        "{status:?}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["observedGeneration"], 4);
    assert_eq!(json["acceptedGeneration"], 3);
    assert_eq!(json["conditions"][0]["type"], "Accepted");
    assert_eq!(json["conditions"][0]["status"], "False");
    assert_eq!(json["conditions"][0]["reason"], "Invalid");
}

#[test]
fn sizes_are_bytes_or_quantities() {
    for (size, bytes) in [
        (ByteSize::Bytes(4096), 4096),
        (ByteSize::Quantity("4096".into()), 4096),
        (ByteSize::Quantity("8Gi".into()), 8 << 30),
        (ByteSize::Quantity("512Mi".into()), 512 << 20),
        (ByteSize::Quantity("1G".into()), 1_000_000_000),
        (ByteSize::Quantity("2k".into()), 2000),
        (ByteSize::Quantity("16Pi".into()), 16 << 50),
    ] {
        assert_eq!(size.bytes(), Ok(bytes), "{size:?}");
    }
    for bad in ["8GB", "Gi", "1.5Gi", "-1", "99999999Pi", ""] {
        assert!(ByteSize::Quantity(bad.into()).bytes().is_err(), "{bad:?}");
    }
    let spec: MatchSpec = serde_yaml_ng::from_str("minLength: 8Gi").unwrap();
    assert_eq!(spec.min_length, Some(ByteSize::Quantity("8Gi".into())));
    let spec: MatchSpec = serde_yaml_ng::from_str("minLength: 4096").unwrap();
    assert_eq!(spec.min_length, Some(ByteSize::Bytes(4096)));
}

/// What the API server checks at admission (issue 21): the names of bits are enums, rules are a
/// list map keyed by name, conditions one keyed by type.
#[test]
fn crds_refuse_unknown_bit_names_and_duplicate_rules_at_admission() {
    let crd = serde_json::to_value(MmapPolicy::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = &spec["properties"]["rules"];
    assert_eq!(rules["x-kubernetes-list-type"], "map");
    assert_eq!(
        rules["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
    let rule = &rules["items"]["properties"];
    assert_eq!(rule["name"]["minLength"], 1);
    let matches = &rule["match"]["properties"];
    for field in ["protAll", "protAny"] {
        let names = matches[field]["items"]["enum"].as_array().unwrap();
        assert!(names.contains(&"PROT_EXEC".into()), "{field}: {names:?}");
        assert!(!names.contains(&"PROT_EXCE".into()) && !names.contains(&"PROT_NONE".into()));
    }
    for field in ["flagsAll", "flagsAny"] {
        let names = matches[field]["items"]["enum"].as_array().unwrap();
        assert!(
            names.contains(&"MAP_PRIVATE".into()) && names.contains(&"MAP_HUGETLB".into()),
            "{field}: {names:?}"
        );
        assert!(!names.contains(&"MAP_ANON".into()));
    }
    assert_eq!(
        matches["syscalls"]["items"]["enum"],
        serde_json::json!(["mmap", "mmap2", "old_mmap", "mprotect"])
    );
    let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
}
