#!/usr/bin/env bash
# Runs every test: unit tests, and real-kernel tests (real BPF, as root). Set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --workspace --bins --tests
helm/test.sh   # the chart: lint, render, Kubernetes 1.33 schemas, flags of the built binary (~10 s)
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
