#!/usr/bin/env bash
# Build the container images the test node runs, as docker-archive tarballs that
# `ctr -n k8s.io images import` takes (no registry and no Docker engine needed):
#   pause      localhost/mapsentry-e2e/pause:1     the pod sandbox (images/pause.c, static)
#   workload   localhost/mapsentry-e2e/workload:1  busybox (static) and the e2e helper mmap_call
#   mapsentry  localhost/mapsentry:e2e             what the repository's Dockerfile builds: the
#              mapsentry binary at /usr/local/bin/mapsentry, user 65532, entrypoint mapsentry;
#              the binary is linked statically here, so the image needs no shared libraries
#              (the Dockerfile's distroless base carries glibc instead)
# The Rust binaries are release builds with glibc linked in (+crt-static): the very build
# `cargo xtask vm-test` makes (`cargo xtask build-static`), so CI compiles it once for both.
#
# Usage: e2e/kube/build-images.sh pause|workload|mapsentry|all OUT_DIR
#   Writes OUT_DIR/NAME.tar for each and prints their paths. Needs gcc (static glibc), tar,
#   sha256sum, busybox-static (workload) and cargo (workload, mapsentry).
set -euo pipefail

WHAT="${1:?usage: build-images.sh pause|workload|mapsentry|all OUT_DIR}"
OUT="${2:?usage: build-images.sh pause|workload|mapsentry|all OUT_DIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
log() { printf 'build-images: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# image NAME TAG ROOTFS CONFIG_JSON: OUT/NAME.tar, one layer made of ROOTFS. CONFIG_JSON is the
# image's runtime config ({"Entrypoint": [...], ...}).
image() {
    local name="$1" tag="$2" rootfs="$3" config="$4" dir="$work/$1-archive" diff config_sha
    mkdir -p "$dir"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$dir/layer.tar" .
    diff="$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)"
    mkdir -p "$dir/$diff"
    mv "$dir/layer.tar" "$dir/$diff/layer.tar"
    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$config" "$diff" >"$dir/config.json"
    config_sha="$(sha256sum "$dir/config.json" | cut -d' ' -f1)"
    mv "$dir/config.json" "$dir/$config_sha.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
        "$config_sha" "$tag" "$diff" >"$dir/manifest.json"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir" -cf "$OUT/$name.tar.tmp" .
    mv "$OUT/$name.tar.tmp" "$OUT/$name.tar"
    echo "$OUT/$name.tar"
}

# The static release builds of the images' Rust binaries (mapsentry, mmap_call): exactly the
# build `cargo xtask vm-test` makes (`cargo xtask build-static`: one cargo invocation, one set of
# features), so CI compiles it once for both; prints the path of BIN.
static_binary() {
    local bin="$1" dir
    command -v cargo >/dev/null || fail "cargo is needed to build $bin"
    dir="$(cd "$REPO" && nice -n 10 cargo xtask build-static)" \
        || fail "cargo xtask build-static (the static release build of mapsentry and mmap_call) failed"
    [ -x "$dir/$bin" ] || fail "cargo xtask build-static built no $dir/$bin"
    echo "$dir/$bin"
}

base_files() { # ROOTFS: /etc/passwd and group with root and nonroot (65532), /tmp
    mkdir -p "$1/etc" "$1/tmp" "$1/home/nonroot"
    chmod 1777 "$1/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
    printf 'hosts: files dns\n' >"$1/etc/nsswitch.conf"
}

build_pause() {
    local rootfs="$work/pause"
    mkdir -p "$rootfs"
    gcc -static -O2 -Wall -Werror -o "$rootfs/pause" "$HERE/images/pause.c" \
        || fail "gcc -static failed on images/pause.c (static glibc: Debian's libc6-dev)"
    image pause localhost/mapsentry-e2e/pause:1 "$rootfs" '{"Entrypoint":["/pause"],"User":"65535:65535"}'
}

build_workload() {
    local rootfs="$work/workload" mmap_call applet
    [[ -x /bin/busybox ]] || fail "no /bin/busybox (apt-get install busybox-static)"
    ldd /bin/busybox >/dev/null 2>&1 && fail "/bin/busybox is not static (install busybox-static)"
    mmap_call="$(static_binary mmap_call)"
    mkdir -p "$rootfs/bin" "$rootfs/usr/local/bin"
    base_files "$rootfs"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in sh sleep cat echo true false ls env ps kill grep head date; do
        ln -s busybox "$rootfs/bin/$applet"
    done
    cp "$mmap_call" "$rootfs/usr/local/bin/mmap_call"
    image workload localhost/mapsentry-e2e/workload:1 "$rootfs" \
        '{"Cmd":["/bin/sh"],"Env":["PATH=/usr/local/bin:/bin"],"WorkingDir":"/"}'
}

build_mapsentry() {
    local rootfs="$work/mapsentry" binary
    binary="$(static_binary mapsentry)"
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
    base_files "$rootfs"
    cp "$binary" "$rootfs/usr/local/bin/mapsentry"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    # As the Dockerfile's runtime stage: USER 65532:65532, ENTRYPOINT mapsentry, CMD --help.
    image mapsentry localhost/mapsentry:e2e "$rootfs" \
        '{"Entrypoint":["/usr/local/bin/mapsentry"],"Cmd":["--help"],"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin"]}'
}

case "$WHAT" in
    pause) build_pause ;;
    workload) build_workload ;;
    mapsentry) build_mapsentry ;;
    all) build_pause; build_workload; build_mapsentry ;;
    *) fail "unknown image '$WHAT' (pause, workload, mapsentry or all)" ;;
esac
