//! The static binaries the VM runs: the e2e test executables, their helper programs and the
//! `mapsentry` binary (`cli_run` runs it), built with glibc linked in (`+crt-static`) so the
//! initramfs needs no shared libraries.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// Built for this triple explicitly, so RUSTFLAGS reach only the target binaries (build scripts
/// and proc macros stay dynamic) and the output lands in its own `target/<triple>` directory.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// Absolute paths of what was built. The tests find their helpers by paths compiled into them
/// (`CARGO_BIN_EXE_mmap_call`, `MMAP2_CALL`, `INT80_CALL`), so the initramfs keeps every file at its path.
#[derive(Debug)]
pub struct Built {
    /// Test executables by test target name (`capture`, `concurrency`, ...).
    pub tests: BTreeMap<String, PathBuf>,
    /// Programs the tests start: `mmap_call`, the 32-bit `mmap2-call`, `int80-call` and
    /// `mapsentry`.
    pub helpers: Vec<PathBuf>,
}

/// Release builds: what the agent ships as, and several times faster than debug builds under
/// software emulation (which more than pays for the longer compile).
pub fn build(root: &Path) -> anyhow::Result<Built> {
    // One invocation, so both packages share one feature resolution (a second `cargo build` of
    // the binary alone rebuilt most dependencies with other features). The `mapsentry` binary
    // lands beside the test executables, where `e2e/tests/common::mapsentry_bin` looks for it
    // (the cli's integration tests need it, so cargo builds it).
    let messages = cargo(
        root,
        &[
            "test",
            "--no-run",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            "mapsentry-e2e",
            "-p",
            "mapsentry-cli",
        ],
    )?;
    collect(messages.iter())
}

/// Variables cargo sets for the program it runs, which a nested cargo must not inherit: build
/// scripts read some of them (ring's reads `OUT_DIR`, `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`),
/// and cargo rebuilds a package whose build script saw another value. Under `cargo test` (the
/// real node's test builds its images with this build) `OUT_DIR` was the e2e package's: the same
/// build ran three times in CI, ~8 minutes each, where once was enough.
fn inherited_from_cargo(name: &str) -> bool {
    matches!(
        name,
        "OUT_DIR"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
    ) || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
}

/// Run cargo with JSON messages; returns the messages.
fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(inherited_from_cargo) {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .env("RUSTFLAGS", RUSTFLAGS)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "cargo {} failed ({}) with RUSTFLAGS={RUSTFLAGS:?}",
            args.join(" "),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The C helpers e2e's build script compiles into its `OUT_DIR` (`e2e/build.rs`).
const C_HELPERS: [&str; 2] = ["mmap2-call", "int80-call"];

/// Pick the test executables and helpers out of cargo's messages.
fn collect<'a>(messages: impl Iterator<Item = &'a Value>) -> anyhow::Result<Built> {
    let mut tests = BTreeMap::new();
    let mut helpers = Vec::new();
    for message in messages {
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                let Some(executable) = message["executable"].as_str() else {
                    continue;
                };
                let name = message["target"]["name"].as_str().unwrap_or_default();
                let kinds = &message["target"]["kind"];
                let is_test = message["profile"]["test"].as_bool() == Some(true);
                let e2e = message["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("mapsentry-e2e"));
                if kinds == &serde_json::json!(["test"]) && e2e {
                    tests.insert(name.to_owned(), PathBuf::from(executable));
                } else if kinds == &serde_json::json!(["bin"]) && !is_test {
                    helpers.push(PathBuf::from(executable));
                }
            }
            Some("build-script-executed")
                if message["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("mapsentry-e2e")) =>
            {
                let out = message["out_dir"].as_str().unwrap_or_default();
                for helper in C_HELPERS {
                    helpers.push(Path::new(out).join(helper));
                }
            }
            _ => {}
        }
    }
    for name in ["mmap_call", "mapsentry"].into_iter().chain(C_HELPERS) {
        if !helpers.iter().any(|h| h.file_name() == Some(name.as_ref())) {
            bail!("cargo built no {name}: cannot run the e2e tests without it");
        }
    }
    for path in tests.values().chain(&helpers) {
        if !path.is_file() {
            bail!("{} was reported built but does not exist", path.display());
        }
    }
    Ok(Built { tests, helpers })
}

#[cfg(test)]
mod tests;
