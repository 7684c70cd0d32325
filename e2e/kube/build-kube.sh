#!/usr/bin/env bash
# Build, once, the Kubernetes node the tests run: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl and etcd from the `k8s.io/kubernetes` Go module, and containerd
# (with its runc shim and ctr) and runc from theirs, into a cache directory keyed by the versions
# below, which later runs reuse. The CNI plugins come from Debian's containernetworking-plugins
# (/usr/lib/cni, installed by scripts/setup.sh).
#
# THE versions of the test cluster, pinned here and nowhere else:
KUBE_VERSION=v1.37.2      # Kubernetes (a supported release); its staging modules are v0.37.2
CONTAINERD_VERSION=v2.4.2 # kubelet 1.36+ supports containerd 2.x only; Debian 12 has 1.6.20
RUNC_VERSION=v1.5.3       # the runc containerd 2.4 is tested with; Debian 12 has 1.1.5
COREDNS_VERSION=v1.15.0   # cluster DNS (Services by name), built with only the plugins it needs
# etcd is the server release Kubernetes' own go.mod requires (go.etcd.io/etcd/server/v3 v3.7.0
# for 1.37); it, kube-proxy and CoreDNS are built in the same `go build` as the Kubernetes
# binaries, so the packages they share (client-go, grpc, ...) compile once.
#
# Usage: e2e/kube/build-kube.sh [CACHE_ROOT]   (default $MAPSENTRY_KUBE_CACHE or
#        /var/cache/mapsentry/kube). Prints the bin directory, last, on stdout:
#        CACHE_ROOT/k8s-$KUBE_VERSION-containerd-...-coredns-$COREDNS_VERSION/bin
# Cold (empty Go module and build caches) on 2 cores: see e2e/kube/README.md; instant after.
# Compiles under `nice -n 10`. Needs go (1.26, for Kubernetes 1.37), gcc, pkg-config and
# libseccomp-dev (runc is the one cgo build: its nsexec and seccomp need them).
set -euo pipefail

ROOT="${1:-${MAPSENTRY_KUBE_CACHE:-/var/cache/mapsentry/kube}}"
KEY="k8s-$KUBE_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-coredns-$COREDNS_VERSION"
CACHE="$ROOT/$KEY"
BIN="$CACHE/bin"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns)
CRI_BINARIES=(containerd containerd-shim-runc-v2 ctr runc)

log() { printf 'build-kube: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

mkdir -p "$CACHE"
# One build at a time per cache (tests and scripts may call this concurrently).
exec 9>"$ROOT/.build-kube.lock"
flock 9

have_all() {
    local b
    for b in "${KUBE_BINARIES[@]}" "${CRI_BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
    [[ -f "$CACHE/.complete" ]]
}
if have_all; then
    log "cached: $KEY"
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || fail "go is needed (Go 1.26 or newer, for Kubernetes 1.37)"
for tool in gcc pkg-config; do command -v "$tool" >/dev/null || fail "missing required tool: $tool (scripts/setup.sh installs it)"; done
pkg-config --exists libseccomp || fail "libseccomp-dev is needed for runc's seccomp support (scripts/setup.sh installs it)"

# Private Go caches: modules stay (shared by versions), the build cache goes after a success.
export GOMODCACHE="$ROOT/gomodcache" GOCACHE="$CACHE/gocache" GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPATH="$ROOT/gopath"
mkdir -p "$BIN" "$CACHE/src"
started=$SECONDS

# throwaway_module DIR REQUIRES [REPLACES]: a go.mod in DIR with these require and replace lines;
# -mod=mod lets the build record the module graph it resolves in DIR/go.mod and go.sum.
throwaway_module() {
    local dir="$1"
    mkdir -p "$dir"
    {
        echo "module mapsentry.invalid/kube-build"
        echo
        echo "go 1.26"
        printf '\nrequire (\n%s\n)\n' "$2"
        [[ -n "${3:-}" ]] && printf '\nreplace (\n%s\n)\n' "$3"
    } >"$dir/go.mod"
    : >"$dir/go.sum"
}

# --- Kubernetes, etcd and CoreDNS: one `go build` so the compiled packages are shared.
kube_built() { local b; for b in "${KUBE_BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done; }
if ! kube_built; then
    log "fetching k8s.io/kubernetes@$KUBE_VERSION"
    kdir="$(cd "$CACHE/src" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [[ -f "$kdir/go.mod" ]] || fail "go mod download k8s.io/kubernetes@$KUBE_VERSION gave no module directory"
    # Every staging module (k8s.io/api, apimachinery, client-go, ...) replaced by its published
    # release: the kubernetes module's own `=> ./staging/...` replaces do not apply to a dependent.
    replaces="$(sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$kdir/go.mod")"
    [[ $(wc -l <<<"$replaces") -ge 20 ]] || fail "found only $(wc -l <<<"$replaces") staging modules in $kdir/go.mod"
    throwaway_module "$CACHE/src/kubernetes" "	k8s.io/kubernetes $KUBE_VERSION
	github.com/coredns/coredns $COREDNS_VERSION" "$replaces"
    # CoreDNS with the plugins a test cluster needs (its own main imports every plugin): Services
    # and pods of cluster.local from the API server, on one address (bind), health and readiness; no
    # forwarding, so no query leaves the machine.
    mkdir -p "$CACHE/src/kubernetes/coredns"
    cat >"$CACHE/src/kubernetes/coredns/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order of CoreDNS's plugin.cfg.
func init() { dnsserver.Directives = []string{"bind", "ready", "health", "errors", "kubernetes"} }

func main() { coremain.Run() }
GO
    ldflags="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
        ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    log "building ${KUBE_BINARIES[*]} (go build -tags providerless, nice -n 10)"
    t0=$SECONDS
    (cd "$CACHE/src/kubernetes" && CGO_ENABLED=0 nice -n 10 go build -trimpath -tags providerless \
        -ldflags "$ldflags" -o "$CACHE/src/out-kube/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
        k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 ./coredns)
    # (go names the etcd main package go.etcd.io/etcd/server/v3 after its directory: server)
    mv "$CACHE/src/out-kube/server" "$CACHE/src/out-kube/etcd"
    for b in "${KUBE_BINARIES[@]}"; do mv "$CACHE/src/out-kube/$b" "$BIN/$b"; done
    log "kubernetes, etcd and coredns built in $((SECONDS - t0)) s"
fi

# --- containerd (static, no cgo) and runc (cgo: nsexec, libseccomp).
if ! [[ -x "$BIN/containerd" && -x "$BIN/containerd-shim-runc-v2" && -x "$BIN/ctr" ]]; then
    throwaway_module "$CACHE/src/containerd" "	github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
    log "building containerd $CONTAINERD_VERSION (containerd, containerd-shim-runc-v2, ctr)"
    t0=$SECONDS
    cpkg=github.com/containerd/containerd/v2
    (cd "$CACHE/src/containerd" && CGO_ENABLED=0 nice -n 10 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -w -X $cpkg/version.Version=$CONTAINERD_VERSION -X $cpkg/version.Revision=go-module" \
        -o "$CACHE/src/out-containerd/" \
        $cpkg/cmd/containerd $cpkg/cmd/containerd-shim-runc-v2 $cpkg/cmd/ctr)
    for b in containerd containerd-shim-runc-v2 ctr; do mv "$CACHE/src/out-containerd/$b" "$BIN/$b"; done
    log "containerd built in $((SECONDS - t0)) s"
fi
if ! [[ -x "$BIN/runc" ]]; then
    throwaway_module "$CACHE/src/runc" "	github.com/opencontainers/runc $RUNC_VERSION"
    log "building runc $RUNC_VERSION (cgo, seccomp)"
    t0=$SECONDS
    (cd "$CACHE/src/runc" && CGO_ENABLED=1 nice -n 10 go build -trimpath -tags seccomp \
        -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$BIN/runc" github.com/opencontainers/runc)
    log "runc built in $((SECONDS - t0)) s"
fi

for b in "${KUBE_BINARIES[@]}" "${CRI_BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || fail "no $b in $BIN after the build"; done
"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -1 >&2
"$BIN/containerd" --version >&2
"$BIN/coredns" -version | head -1 >&2
"$BIN/runc" --version | head -1 >&2
rm -rf "$GOCACHE"
touch "$CACHE/.complete"
log "built $KEY in $((SECONDS - started)) s"
echo "$BIN"
