#!/usr/bin/env bash
# Runs every test: unit tests, and real-kernel tests (real BPF, as root). Set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
helm/test.sh   # the chart: lint, render, Kubernetes 1.33 schemas, generated manifests (~15 s)
cargo build --locked --workspace --bins --tests
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
