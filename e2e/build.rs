//! Builds the C test helpers and tells the tests where they are: `helpers/mmap2_call.c`, a
//! 32-bit program (`gcc -m32 -static`, Debian's gcc-multilib), as `MMAP2_CALL`, and
//! `helpers/int80_call.c`, a 64-bit program that makes ia32 calls with `int $0x80`, as
//! `INT80_CALL`.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    build(
        "helpers/mmap2_call.c",
        &["-m32"],
        &out_dir.join("mmap2-call"),
        "MMAP2_CALL",
        "gcc -m32 failed (install Debian's gcc-multilib)",
    );
    // -mno-red-zone: the helper pushes rbp around `int $0x80` (see its int80()).
    build(
        "helpers/int80_call.c",
        &["-mno-red-zone"],
        &out_dir.join("int80-call"),
        "INT80_CALL",
        "gcc failed",
    );
}

fn build(source: &str, flags: &[&str], out: &PathBuf, var: &str, failed: &str) {
    println!("cargo::rerun-if-changed={source}");
    let output = Command::new("gcc")
        .args(flags)
        .args(["-static", "-O2", "-Wall", "-Werror", source, "-o"])
        .arg(out)
        .output()
        .expect("running gcc");
    assert!(
        output.status.success(),
        "{failed}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("cargo::rustc-env={var}={}", out.display());
}
