#!/usr/bin/env bash
# Build, once, the nats-server the JetStream tests run (a three-server JetStream cluster on
# loopback): `github.com/nats-io/nats-server/v2` from the Go module proxy with the machine's Go,
# into a cache directory keyed by the version below, which later runs reuse (like
# e2e/kube/build-kube.sh). Debian 12's nats-server is 2.9; the collector needs 2.10 or newer
# (multiple filter subjects per consumer, the 2.10 stream and KV features it uses).
#
# THE version of the test NATS server, pinned here and nowhere else:
NATS_SERVER_VERSION=v2.15.3
#
# Usage: e2e/nats/build-nats-server.sh [CACHE_ROOT]   (default $MAPSENTRY_NATS_CACHE or
#        /var/cache/mapsentry/nats). Prints the binary's path, last, on stdout:
#        CACHE_ROOT/nats-server-$NATS_SERVER_VERSION/nats-server
# Cold (empty module and build caches): ~1 CPU-min, ~3 min wall on 2 busy cores (191 s measured);
# instant after. Compiles under `nice -n 10`; the Go build cache is removed after a success.
set -euo pipefail

ROOT="${1:-${MAPSENTRY_NATS_CACHE:-/var/cache/mapsentry/nats}}"
KEY="nats-server-$NATS_SERVER_VERSION"
CACHE="$ROOT/$KEY"
BIN="$CACHE/nats-server"

log() { printf 'build-nats-server: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

mkdir -p "$CACHE"
# One build at a time per cache (tests and scripts may call this concurrently).
exec 9>"$ROOT/.build-nats.lock"
flock 9

if [[ -x "$BIN" && -f "$CACHE/.complete" ]]; then
    log "cached: $KEY"
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || fail "go is needed (scripts/setup.sh checks for Go 1.26)"
export GOMODCACHE="$ROOT/gomodcache" GOCACHE="$CACHE/gocache" GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPATH="$ROOT/gopath"
started=$SECONDS
src="$CACHE/src"
mkdir -p "$src"
# A throwaway module that requires the server; -mod=mod records the graph it resolves.
cat >"$src/go.mod" <<MOD
module mapsentry.invalid/nats-build

go 1.26

require github.com/nats-io/nats-server/v2 $NATS_SERVER_VERSION
MOD
: >"$src/go.sum"
log "building github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION (nice -n 10)"
(cd "$src" && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" \
    github.com/nats-io/nats-server/v2)
mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2
rm -rf "$GOCACHE"
touch "$CACHE/.complete"
log "built $KEY in $((SECONDS - started)) s"
echo "$BIN"
