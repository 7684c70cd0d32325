#!/usr/bin/env bash
# Builds mapsentry (release) and runs `mapsentry run` on this host: every mmap/mmap2 call.
# Arguments go to `mapsentry run`, e.g. `scripts/run.sh --output json --comm java`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p mapsentry-cli --bin mapsentry
exec target/release/mapsentry run "$@"
