//! Compiles every `src/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`.
//!
//! clang is taken from `$CLANG` if set, else the first of `clang`, `clang-19`, `clang-14` found.
//! `-g` is required: aya reads the BTF it emits (CO-RE relocations, map and global layouts).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let clang = find_clang()?;
    println!("cargo::rerun-if-env-changed=CLANG");
    println!("cargo::rerun-if-changed=include");

    for entry in std::fs::read_dir(manifest.join("src"))? {
        let source = entry?.path();
        let Some(name) = source.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        println!("cargo::rerun-if-changed={}", source.display());
        compile(
            &clang,
            &manifest,
            &source,
            &out_dir.join(format!("{stem}.bpf.o")),
        )?;
    }
    Ok(())
}

fn find_clang() -> anyhow::Result<PathBuf> {
    if let Some(clang) = env::var_os("CLANG") {
        return Ok(clang.into());
    }
    for candidate in ["clang", "clang-19", "clang-14"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate.into());
        }
    }
    bail!("no clang found (tried $CLANG, clang, clang-19, clang-14): install Debian's `clang`")
}

fn compile(clang: &Path, manifest: &Path, source: &Path, object: &Path) -> anyhow::Result<()> {
    let output = Command::new(clang)
        .args([
            "-g",
            "-O2",
            "-Wall",
            "-Werror",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
        ])
        .arg("-I")
        .arg(manifest.join("include"))
        // <linux/types.h> pulls in <asm/types.h>, which Debian keeps under the multiarch path.
        .args(["-I", "/usr/include/x86_64-linux-gnu"])
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object)
        .output()
        .with_context(|| format!("running {} on {}", clang.display(), source.display()))?;
    if !output.status.success() {
        bail!(
            "clang failed on {}:\n{}\n(needs Debian's clang, libbpf-dev and linux-libc-dev)",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
