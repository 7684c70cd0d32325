#!/usr/bin/env bash
# Runs every test: unit tests, real-kernel tests (real BPF, as root) on this kernel and on stock
# kernels in VMs. Set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build per run: incremental compilation state would only cost disk (~5 GB) and time.
export CARGO_INCREMENTAL=0
scripts/setup.sh
# The test cluster (e2e/kube/build-kube.sh): Kubernetes 1.37, etcd, CoreDNS, containerd 2.4 and
# runc 1.5 from their Go modules, cached in /var/cache/mapsentry/kube (cold: 18 CPU-min, ~10 min;
# then instant). Used by every test that needs a kube-apiserver, and by real_node's node.
e2e/kube/build-kube.sh >/dev/null
# The JetStream tests' nats-server (e2e/nats/build-nats-server.sh): v2.15.3 from its Go module,
# cached in /var/cache/mapsentry/nats (cold: ~1 CPU-min, ~3 min wall on 2 busy cores; then
# instant). e2e/tests/jetstream.rs (~35 s) and replicas.rs (~1-2 min) fail, saying so, without it.
e2e/nats/build-nats-server.sh >/dev/null
cargo build --locked --workspace --bins --tests
# The real node's images (e2e/tests/real_node.rs): static release builds of mapsentry and
# mmap_call, made by `cargo xtask build-static`, the build `cargo xtask vm-test` reuses below
# (cold: up to ~18 CPU-min). real_node itself takes ~1.5 min (BENCHMARKS.md, "Test cluster").
e2e/kube/build-images.sh all target/tmp/kube-images >/dev/null
helm/test.sh   # the chart: lint, render, Kubernetes 1.33 schemas, flags of the built binary (~10 s)
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
scripts/fuzz-smoke.sh 10   # every cargo-fuzz target for 10 s (first run: ~10 min to build)
# The kernel matrix: the capture tests in every attach mode on Debian's 6.1 and 6.12 kernels in
# qemu (kernels fetched once into /var/cache/mapsentry/kernels). About 2-4 minutes each; the
# third boots 6.12 with ia32_emulation=false and runs tracepoint mode only (about a minute more).
cargo xtask vm-test --kernel 6.1
cargo xtask vm-test --kernel 6.12
cargo xtask vm-test --kernel 6.12-no-ia32
