use std::path::PathBuf;

use serde_json::json;

use super::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

#[test]
fn this_workspace_keeps_the_roles_apart_and_the_binary_thin() {
    let problems = check(&workspace()).expect("checked");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `cargo metadata` output for packages with these dependencies.
fn metadata(edges: &[(&str, &[&str])]) -> Value {
    let packages: Vec<Value> = edges
        .iter()
        .map(|(name, _)| json!({"id": format!("{name} 0.1.0"), "name": name}))
        .collect();
    let nodes: Vec<Value> = edges
        .iter()
        .map(|(name, deps)| {
            json!({
                "id": format!("{name} 0.1.0"),
                "deps": deps.iter().map(|d| json!({"pkg": format!("{d} 0.1.0")})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"packages": packages, "resolve": {"nodes": nodes}})
}

#[test]
fn a_role_reaching_the_other_is_named_directly_or_through_a_crate() {
    let apart = metadata(&[
        (
            "mapsentry-agent",
            &["mapsentry-service", "mapsentry-policy"],
        ),
        ("mapsentry-collector", &["mapsentry-service"]),
        ("mapsentry-service", &[]),
        ("mapsentry-policy", &[]),
    ]);
    assert_eq!(
        check_dependencies(&dependency_graph(&apart).unwrap()),
        Vec::<String>::new()
    );

    let direct = metadata(&[
        ("mapsentry-agent", &["mapsentry-collector"]),
        ("mapsentry-collector", &[]),
    ]);
    let problems = check_dependencies(&dependency_graph(&direct).unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("mapsentry-agent depends on mapsentry-collector"),
        "{problems:?}"
    );

    // Through a shared crate that took on code of the agent.
    let through = metadata(&[
        ("mapsentry-agent", &[]),
        ("mapsentry-collector", &["mapsentry-service"]),
        ("mapsentry-service", &["mapsentry-agent"]),
    ]);
    let problems = check_dependencies(&dependency_graph(&through).unwrap());
    assert_eq!(
        problems,
        [
            "mapsentry-collector depends on mapsentry-agent (directly or through another crate): the roles meet only through policy, proto and service"
        ]
    );
}

#[test]
fn a_node_loop_module_in_the_binary_is_named() {
    let dir = std::env::temp_dir().join(format!("xtask-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("main.rs"), "fn main() {}\n").unwrap();
    assert_eq!(check_cli_sources(&dir).unwrap(), Vec::<String>::new());

    std::fs::write(dir.join("pump.rs"), "// empty\n").unwrap();
    std::fs::write(
        dir.join("sub/loop_again.rs"),
        "async fn f(c: &mut Capture) { c.next_batch(&mut v).await; }\n",
    )
    .unwrap();
    let problems = check_cli_sources(&dir).unwrap();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("pump.rs: the binary holds a library module"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("loop_again.rs: calls \".next_batch(\""),
        "{problems:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
