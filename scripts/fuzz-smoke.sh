#!/usr/bin/env bash
# A short run of every cargo-fuzz target (libFuzzer): SECONDS each (default 10), starting from the
# committed seed corpus (fuzz/seeds/TARGET; new inputs go to a scratch directory, the seeds stay
# as committed). Longer runs: see fuzz/Cargo.toml.
#
# Toolchain: nightly when rustup has or can install it; otherwise the stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly-only flags such as -Zsanitizer). When neither can
# build the targets, this fails: CI never passes by skipping the fuzzers.
# A crash, leak or timeout fails the run and prints libFuzzer's report: the backtrace and the
# path of the input that caused it (kept under fuzz/artifacts/TARGET/).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1 \
    || rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    toolchain=(+nightly)
    echo "fuzz-smoke: toolchain $(rustup run nightly rustc --version)"
else
    export RUSTC_BOOTSTRAP=1
    echo "fuzz-smoke: no nightly toolchain; stable $(rustc --version) with RUSTC_BOOTSTRAP=1"
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

targets=$(cargo "${toolchain[@]}" fuzz list --fuzz-dir fuzz)
[ -n "$targets" ] || { echo "fuzz-smoke: FAILED: cargo fuzz lists no targets" >&2; exit 1; }
cargo "${toolchain[@]}" fuzz build -O --fuzz-dir fuzz

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $targets; do
    seeds="fuzz/seeds/$target"
    [ -d "$seeds" ] && [ -n "$(ls -A "$seeds")" ] \
        || { echo "fuzz-smoke: FAILED: no seed corpus at $seeds" >&2; exit 1; }
    mkdir -p "$scratch/$target"
    echo "fuzz-smoke: $target for ${seconds}s from $(ls "$seeds" | wc -l) seeds"
    # The first corpus directory receives new inputs; the seeds are only read.
    if RUST_BACKTRACE=1 cargo "${toolchain[@]}" fuzz run -O --fuzz-dir fuzz "$target" \
        "$scratch/$target" "$seeds" -- -max_total_time="$seconds" >"$scratch/$target.log" 2>&1; then
        tail -n 1 "$scratch/$target.log"
    else
        echo "fuzz-smoke: $target FAILED; libFuzzer's report:" >&2
        grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse|INITED)' "$scratch/$target.log" | tail -n 60 >&2
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: every target ran ${seconds}s without a crash: $(echo $targets)"
