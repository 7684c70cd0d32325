#!/usr/bin/env bash
# Runs every test: unit tests, and real-kernel tests (real BPF, as root). Set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --workspace --bins --tests
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
