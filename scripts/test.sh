#!/usr/bin/env bash
# Runs every test: unit tests, real-kernel tests (real BPF, as root) on this kernel and on stock
# kernels in VMs. Set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --workspace --bins --tests
helm/test.sh   # the chart: lint, render, Kubernetes 1.33 schemas, flags of the built binary (~10 s)
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
scripts/fuzz-smoke.sh 10   # every cargo-fuzz target for 10 s (first run: ~10 min to build)
# The kernel matrix: the capture tests in every attach mode on Debian's 6.1 and 6.12 kernels in
# qemu (kernels fetched once into /var/cache/mapsentry/kernels). About 2-4 minutes each.
cargo xtask vm-test --kernel 6.1
cargo xtask vm-test --kernel 6.12
