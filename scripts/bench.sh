#!/usr/bin/env bash
# Builds the release binaries and runs a benchmark, printing Markdown tables for BENCHMARKS.md:
#   scripts/bench.sh [overhead] [ARGS]   bare / mapsentry / bpftrace (the default)
#   scripts/bench.sh pipeline [ARGS]     latency, CPU and RSS through agent -> collector -> tail; storm
#   scripts/bench.sh idle [ARGS]         the agent's CPU and wake-ups on a quiet node (--compare BINARY)
# ARGS go to `mapsentry-bench overhead|pipeline|idle` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v bpftrace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace >/dev/null
# bpftrace attaches its tracepoints through tracefs, which a fresh machine may not have mounted.
if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs nodev /sys/kernel/tracing ||
        { echo "bench.sh: bpftrace needs tracefs at /sys/kernel/tracing, and mounting it failed" >&2; exit 1; }
fi
cargo build --release --locked -p mapsentry-cli -p mapsentry-bench
case "${1:-}" in
overhead | pipeline | idle) which="$1"; shift ;;
*) which=overhead ;;
esac
exec target/release/mapsentry-bench "$which" "$@"
