#!/usr/bin/env bash
# Build a real kube-apiserver (1.20.2, Debian bookworm's `kubernetes` source package) with Go 1.15
# (Debian bullseye's golang-1.15-go), and unpack Debian's etcd-server 3.4, into a cache directory
# that later runs reuse. Nothing is installed on the machine: apt runs with a private configuration
# (its own sources list, lists, caches) under the cache directory, packages are unpacked with
# `dpkg -x`, and the machine's apt sources and state are left untouched.
#
# Usage: e2e/kube/build-apiserver.sh [CACHE_DIR]   (default $MAPSENTRY_KUBE_CACHE or
#        /var/cache/mapsentry/kube). Prints the bin directory holding kube-apiserver and etcd.
# Takes ~3 minutes of compiling on 2 cores the first time (run under `nice -n 10`); instant after.
set -euo pipefail

CACHE="${1:-${MAPSENTRY_KUBE_CACHE:-/var/cache/mapsentry/kube}}"
BIN="$CACHE/bin"
MIRROR="${MAPSENTRY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'build-apiserver: %s\n' "$*" >&2; }

mkdir -p "$CACHE"
# One build at a time per cache (tests and scripts may call this concurrently).
exec 9>"$CACHE/.build.lock"
flock 9

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]] \
    && "$BIN/kube-apiserver" --version >/dev/null 2>&1 && "$BIN/etcd" --version >/dev/null 2>&1; then
    log "cached: $("$BIN/kube-apiserver" --version), etcd $("$BIN/etcd" --version | head -1)"
    echo "$BIN"
    exit 0
fi

for tool in apt-get dpkg dpkg-source make; do
    command -v "$tool" >/dev/null || { log "missing required tool: $tool"; exit 1; }
done
[[ -r "$KEYRING" ]] || { log "missing Debian archive keyring $KEYRING (package debian-archive-keyring)"; exit 1; }

mkdir -p "$CACHE" "$BIN"
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sourceparts" "$APT/debs" "$APT/src"
cat >"$APT/sources.list" <<SRC
deb-src [signed-by=$KEYRING] $MIRROR bookworm main
deb [signed-by=$KEYRING] $MIRROR bookworm main
deb [signed-by=$KEYRING] $MIRROR bullseye main
SRC
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT/sources.list"
    -o "Dir::Etc::sourceparts=$APT/sourceparts"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache=$APT/cache"
    -o "APT::Sandbox::User=root"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
)
log "updating the private apt lists in $APT"
apt-get "${APT_OPTS[@]}" -qq update

# download PACKAGE[=VERSION]... into $APT/debs and unpack each into $1
unpack() {
    local dest="$1"; shift
    mkdir -p "$dest"
    (cd "$APT/debs" && apt-get "${APT_OPTS[@]}" -qq download "$@")
    local pkg name
    for pkg in "$@"; do
        name="${pkg%%[=/]*}"
        for deb in "$APT/debs/${name}"_*.deb; do dpkg -x "$deb" "$dest"; done
    done
}

TOOLS="$CACHE/tools"
# Go 1.15 from bullseye: newer Go (1.19) builds a kube-apiserver 1.20 that crashes at the first
# custom resource (reflect2), so the version is pinned.
GOROOT="$TOOLS/usr/lib/go-1.15"
if [[ ! -x "$GOROOT/bin/go" ]]; then
    log "unpacking golang-1.15-go and golang-1.15-src (bullseye)"
    unpack "$TOOLS" golang-1.15-go golang-1.15-src
fi
"$GOROOT/bin/go" version >&2

# The kubernetes build calls rsync; bring a private one (with libpopt, which the base system
# lacks) when the machine has none.
RSYNC_DIR="$TOOLS/rsync"
if ! command -v rsync >/dev/null; then
    if [[ ! -x "$RSYNC_DIR/usr/bin/rsync" ]]; then
        log "unpacking rsync and libpopt0 (bookworm)"
        unpack "$RSYNC_DIR" rsync/bookworm libpopt0/bookworm
    fi
    mkdir -p "$TOOLS/bin"
    cat >"$TOOLS/bin/rsync" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$RSYNC_DIR/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$RSYNC_DIR/usr/bin/rsync" "\$@"
WRAP
    chmod +x "$TOOLS/bin/rsync"
fi

# etcd 3.4 from bookworm's etcd-server.
if [[ ! -x "$BIN/etcd" ]]; then
    log "unpacking etcd-server (bookworm)"
    unpack "$TOOLS/etcd" etcd-server/bookworm
    cp "$TOOLS/etcd/usr/bin/etcd" "$BIN/etcd"
fi

# kubernetes source.
SRCDIR="$(find "$APT/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)"
if [[ -z "$SRCDIR" || ! -f "$SRCDIR/cmd/kube-apiserver/apiserver.go" ]]; then
    log "fetching the kubernetes source package (bookworm, ~35 MB)"
    rm -rf "${APT:?}/src"; mkdir -p "$APT/src"
    (cd "$APT/src" && apt-get "${APT_OPTS[@]}" -qq source kubernetes/bookworm)
    SRCDIR="$(find "$APT/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)"
fi
[[ -f "$SRCDIR/vendor/modules.txt" ]] || { log "source tree $SRCDIR has no vendor/; cannot build offline"; exit 1; }

log "building kube-apiserver in $SRCDIR (make WHAT=cmd/kube-apiserver)"
export PATH="$GOROOT/bin:$TOOLS/bin:$PATH"
export GOROOT GOCACHE="$CACHE/gocache" GOPATH="$CACHE/gopath" GOFLAGS=-mod=vendor GO111MODULE=on
export GOPROXY=off GOTOOLCHAIN=local
# No .git in a source package: give the version the build stamps into the binary.
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian-bookworm
(cd "$SRCDIR" && nice -n 10 make WHAT=cmd/kube-apiserver)
built="$SRCDIR/_output/local/go/bin/kube-apiserver"
[[ -x "$built" ]] || built="$(find "$SRCDIR/_output" -type f -name kube-apiserver -perm -u+x | head -1)"
[[ -x "$built" ]] || { log "make finished but no kube-apiserver binary under $SRCDIR/_output"; exit 1; }
cp "$built" "$BIN/kube-apiserver.tmp" && mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
log "built: $("$BIN/kube-apiserver" --version)"
echo "$BIN"
