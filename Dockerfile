# syntax=docker/dockerfile:1
# The single mapsentry image: `mapsentry agent`, `mapsentry collector`, `mapsentry tail`, ...
#   docker build -t mapsentry:0.1.0 .
# The chart runs the agent as root with BPF capabilities (it overrides the user below) and the
# collector as the non-root user 65532. e2e/kube/build-images.sh makes the same runtime layout for
# the test node (no Docker there), with the binary linked statically; helm/test.sh checks both.

# --- build: Rust, and clang + libbpf headers for the BPF programs that ebpf/build.rs compiles and
# embeds in the binary (gcc-multilib and bpftool are for the tests only, not needed here).
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mapsentry-cli \
 && install -D -m 0755 target/release/mapsentry /out/mapsentry

# --- runtime: glibc and libgcc_s (what the binary links), nothing else: no shell, no package
# manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mapsentry" \
      org.opencontainers.image.description="Container-aware security agent for memory mappings (eBPF)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/mapsentry /usr/local/bin/mapsentry
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mapsentry"]
CMD ["--help"]
