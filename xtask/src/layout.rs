//! The workspace's layout rules (DESIGN.md, "Layout"), checked by `cargo xtask layout` and by
//! this module's tests in every `cargo test`:
//!
//! - the roles' crates stay apart: `mapsentry-agent` never depends on `mapsentry-collector`, nor
//!   the collector on the agent, directly or through any other crate (they meet only through
//!   the shared crates: policy, proto, service), in normal, dev and build dependencies alike;
//! - the binary stays thin: `cli/src` holds no module of the node loop, the enforcement loop,
//!   the agent's status endpoint or the collector's assembly, by file name or by the calls only
//!   such a module makes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Context as _;
use serde_json::Value;

/// Crates that must not reach each other, in both directions.
pub const APART: [(&str, &str); 1] = [("mapsentry-agent", "mapsentry-collector")];

/// Module files the binary must not hold again (their work lives in `agent` and `collector`).
pub const LIBRARY_MODULES: [&str; 9] = [
    "pump.rs",
    "event_loop.rs",
    "enforcing.rs",
    "agent_http.rs",
    "status.rs",
    "alerting.rs",
    "app.rs",
    "hub.rs",
    "http.rs",
];

/// Calls only a node loop, an enforcement loop or a collector assembly makes.
pub const LIBRARY_CALLS: [&str; 9] = [
    ".next_batch(",
    "Enforcer::new(",
    "Shipper::start(",
    "scan_cgroups(",
    "alerts::start(",
    "kube_events::start(",
    "PolicyFiles::open",
    "axum::",
    "prometheus_client::",
];

/// Every dependency (normal, dev, build) of each workspace package, by package name, from
/// `cargo metadata --format-version 1` output.
pub fn dependency_graph(metadata: &Value) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut graph = BTreeMap::new();
    for node in metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
    {
        let Some(name) = node["id"].as_str().and_then(|id| names.get(id)) else {
            continue;
        };
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| names.get(d["pkg"].as_str()?))
            .map(|n| (*n).to_owned())
            .collect();
        graph.insert((*name).to_owned(), deps);
    }
    Ok(graph)
}

/// Everything `from` reaches in `graph`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// The rules of [`APART`] that `graph` breaks, one line each.
#[must_use]
pub fn check_dependencies(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (a, b) in APART {
        for (from, to) in [(a, b), (b, a)] {
            if !graph.contains_key(from) {
                problems.push(format!("{from} is not in the workspace"));
            } else if reaches(graph, from).contains(to) {
                problems.push(format!(
                    "{from} depends on {to} (directly or through another crate): the roles meet only through policy, proto and service"
                ));
            }
        }
    }
    problems
}

/// The library modules and calls found under `src` (the binary's sources), one line each.
pub fn check_cli_sources(src: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if LIBRARY_MODULES.contains(&name) {
                problems.push(format!(
                    "{}: the binary holds a library module again (its place is agent/src/node or collector/src)",
                    path.display()
                ));
            }
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                for call in LIBRARY_CALLS {
                    if text.contains(call) {
                        problems.push(format!(
                            "{}: calls {call:?}, the work of a role's library, not of the binary",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    problems.sort();
    Ok(problems)
}

/// Check the workspace at `root`: `cargo metadata` and `root/cli/src`.
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's JSON")?;
    let mut problems = check_dependencies(&dependency_graph(&metadata)?);
    problems.extend(check_cli_sources(&root.join("cli/src"))?);
    Ok(problems)
}

#[cfg(test)]
mod tests;
