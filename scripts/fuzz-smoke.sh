#!/usr/bin/env bash
# A short run of every cargo-fuzz target (libFuzzer; needs a nightly toolchain and cargo-fuzz,
# installed here when missing): SECONDS each (default 10). Longer runs: see fuzz/Cargo.toml.
# Without a nightly toolchain that rustup can install, it says so and skips (the same inputs
# still run on stable as proptest loops in `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        echo "fuzz-smoke: SKIPPED: no nightly toolchain and rustup could not install one (cargo-fuzz needs nightly)" >&2
        exit 0
    fi
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
cargo +nightly fuzz build -O --fuzz-dir fuzz
for target in $targets; do
    echo "fuzz-smoke: $target for ${seconds}s"
    # Any crash, leak or timeout fails the run (libFuzzer exits non-zero, the input is kept
    # under fuzz/artifacts/$target/).
    cargo +nightly fuzz run -O --fuzz-dir fuzz "$target" -- -max_total_time="$seconds" 2>&1 | tail -1
done
