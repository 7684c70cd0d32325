#!/usr/bin/env bash
# Builds the release binaries and runs the overhead benchmark (bare / mapsentry / bpftrace),
# printing a Markdown table for BENCHMARKS.md. Arguments go to `mapsentry-bench overhead`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v bpftrace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace >/dev/null
cargo build --release --locked -p mapsentry-cli -p mapsentry-bench
exec target/release/mapsentry-bench overhead "$@"
