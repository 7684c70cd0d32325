use serde_json::json;

use super::*;

fn messages(dir: &Path) -> Vec<Value> {
    let exe = |name: &str| dir.join(name).display().to_string();
    vec![
        json!({"reason": "compiler-artifact", "target": {"name": "capture", "kind": ["test"]},
               "package_id": "path+file:///w/e2e#mapsentry-e2e@0.1.0",
               "profile": {"test": true}, "executable": exe("capture-1")}),
        json!({"reason": "compiler-artifact", "target": {"name": "pipeline", "kind": ["test"]},
               "package_id": "path+file:///w/cli#mapsentry-cli@0.1.0",
               "profile": {"test": true}, "executable": exe("pipeline-1")}),
        json!({"reason": "compiler-artifact", "target": {"name": "mmap_call", "kind": ["bin"]},
               "profile": {"test": true}, "executable": exe("mmap_call-unit")}),
        json!({"reason": "compiler-artifact", "target": {"name": "mmap_call", "kind": ["bin"]},
               "profile": {"test": false}, "executable": exe("mmap_call")}),
        json!({"reason": "compiler-artifact", "target": {"name": "mapsentry_e2e", "kind": ["lib"]},
               "profile": {"test": false}, "executable": null}),
        json!({"reason": "build-script-executed",
               "package_id": "path+file:///w/e2e#mapsentry-e2e@0.1.0", "out_dir": exe("out")}),
        json!({"reason": "compiler-artifact", "target": {"name": "mapsentry", "kind": ["bin"]},
               "profile": {"test": false}, "executable": exe("mapsentry")}),
        json!({"reason": "build-finished", "success": true}),
    ]
}

#[test]
fn test_executables_and_helpers_are_picked_from_cargos_messages() {
    let dir = std::env::temp_dir().join(format!("xtask-binaries-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("out")).unwrap();
    for file in [
        "capture-1",
        "pipeline-1",
        "mmap_call",
        "mmap_call-unit",
        "mapsentry",
        "out/mmap2-call",
        "out/int80-call",
    ] {
        std::fs::write(dir.join(file), b"").unwrap();
    }
    let built = collect(messages(&dir).iter()).unwrap();
    assert_eq!(
        built.tests.into_iter().collect::<Vec<_>>(),
        [("capture".to_owned(), dir.join("capture-1"))]
    );
    assert_eq!(
        built.helpers,
        [
            dir.join("mmap_call"),
            dir.join("out/mmap2-call"),
            dir.join("out/int80-call"),
            dir.join("mapsentry")
        ]
    );

    std::fs::remove_file(dir.join("out/mmap2-call")).unwrap();
    let error = collect(messages(&dir).iter()).unwrap_err().to_string();
    assert!(
        error.ends_with("out/mmap2-call was reported built but does not exist"),
        "{error}"
    );

    let without_script: Vec<Value> = messages(&dir)
        .into_iter()
        .filter(|m| m["reason"] != "build-script-executed")
        .collect();
    let error = collect(without_script.iter()).unwrap_err().to_string();
    assert_eq!(
        error,
        "cargo built no mmap2-call: cannot run the e2e tests without it"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_nested_build_drops_what_cargo_set_for_its_caller_and_keeps_the_users_settings() {
    for set_by_cargo in [
        "OUT_DIR",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PKG_NAME",
        "CARGO_PKG_VERSION_MAJOR",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
    ] {
        assert!(inherited_from_cargo(set_by_cargo), "{set_by_cargo}");
    }
    for users in [
        "CARGO",
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "CARGO_INCREMENTAL",
        "CARGO_BUILD_JOBS",
        "RUSTFLAGS",
        "PATH",
    ] {
        assert!(!inherited_from_cargo(users), "{users}");
    }
}
