//! Builds the 32-bit test helper (`helpers/mmap2_call.c`) with `gcc -m32 -static` and tells the
//! tests where it is (`MMAP2_CALL`). Needs Debian's gcc-multilib.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("mmap2-call");
    println!("cargo::rerun-if-changed=helpers/mmap2_call.c");
    let output = Command::new("gcc")
        .args([
            "-m32",
            "-static",
            "-O2",
            "-Wall",
            "-Werror",
            "helpers/mmap2_call.c",
            "-o",
        ])
        .arg(&out)
        .output()
        .expect("running gcc");
    assert!(
        output.status.success(),
        "gcc -m32 failed (install Debian's gcc-multilib):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("cargo::rustc-env=MMAP2_CALL={}", out.display());
}
