#!/usr/bin/env bash
# Start a real etcd (3.4) and kube-apiserver (1.20.2) on loopback for tests, built/unpacked by
# build-apiserver.sh (run first if the cache is empty). Prints the path of an admin kubeconfig.
#
# Usage: e2e/kube/start-apiserver.sh STATE_DIR [--apiserver-only]
#   STATE_DIR holds certificates, the token file, etcd data, logs, pid files and the kubeconfigs;
#   a second start with the same STATE_DIR reuses its certificates, ports and etcd data.
#   --apiserver-only starts only the apiserver (after stop-apiserver.sh --apiserver-only), for
#   outage tests.
# Files in STATE_DIR: kubeconfig (admin, system:masters), kubeconfig-agent (user
# mapsentry-agent, RBAC: get/list/watch pods, namespaces, replicasets, jobs), ports.env
# (ETCD_PORT, APISERVER_PORT, ...), etcd.log, apiserver.log, etcd.pid, apiserver.pid.
# Environment: MAPSENTRY_KUBE_CACHE (the build cache, default /var/cache/mapsentry/kube),
#   APISERVER_EXTRA_ARGS (appended to the apiserver's flags).
# Without a kubelet, deleted pods stay Terminating unless deleted with gracePeriodSeconds=0;
# without a controller-manager no ServiceAccounts exist, so the ServiceAccount admission plugin
# is off.
set -euo pipefail

STATE="${1:?usage: start-apiserver.sh STATE_DIR [--apiserver-only]}"
ONLY_APISERVER=false
[[ "${2:-}" == "--apiserver-only" ]] && ONLY_APISERVER=true
CACHE="${MAPSENTRY_KUBE_CACHE:-/var/cache/mapsentry/kube}"
BIN="$CACHE/bin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'start-apiserver: %s\n' "$*" >&2; }

if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/etcd" ]]; then
    log "no kube-apiserver/etcd in $BIN; building (takes a few minutes once)"
    "$HERE/build-apiserver.sh" "$CACHE" >/dev/null
fi
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

# A port below the kernel's ephemeral range (so no outgoing connection can hold it between the
# choice and the bind, which made starts fail under parallel tests) that no socket uses now.
free_port() {
    local port low
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    ((low > 11000)) || low=32768
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        ss -Htan "sport = :$port" | grep -q . || { echo "$port"; return; }
    done
}

if [[ ! -f "$STATE/ports.env" ]]; then
    {
        echo "ETCD_PORT=$(free_port)"
        echo "ETCD_PEER_PORT=$(free_port)"
        echo "APISERVER_PORT=$(free_port)"
    } >"$STATE/ports.env"
fi
# shellcheck source=/dev/null
source "$STATE/ports.env"

# Certificates, service-account key, tokens.
PKI="$STATE/pki"
if [[ ! -f "$PKI/apiserver.crt" ]]; then
    mkdir -p "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=mapsentry-test-ca \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    cat >"$PKI/apiserver.ext" <<EXT
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1
extendedKeyUsage=serverAuth
EXT
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
        -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    ADMIN_TOKEN="$(openssl rand -hex 16)"
    AGENT_TOKEN="$(openssl rand -hex 16)"
    printf '%s,admin,admin,system:masters\n%s,mapsentry-agent,mapsentry-agent\n' \
        "$ADMIN_TOKEN" "$AGENT_TOKEN" >"$PKI/tokens.csv"
fi
ADMIN_TOKEN="$(sed -n '1s/,.*//p' "$PKI/tokens.csv")"
AGENT_TOKEN="$(sed -n '2s/,.*//p' "$PKI/tokens.csv")"

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

if ! $ONLY_APISERVER && ! running etcd; then
    setsid "$BIN/etcd" --name default --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --log-level warn \
        >>"$STATE/etcd.log" 2>&1 </dev/null &
    echo $! >"$STATE/etcd.pid"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
        running etcd || { log "etcd exited; see $STATE/etcd.log"; tail -20 "$STATE/etcd.log" >&2; exit 1; }
        sleep 0.1
    done
fi

if ! running apiserver; then
    # shellcheck disable=SC2086
    setsid "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" --insecure-port 0 \
        --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
        --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 --allow-privileged \
        --disable-admission-plugins ServiceAccount \
        --enable-priority-and-fairness=false --profiling=false --v 1 \
        ${APISERVER_EXTRA_ARGS:-} \
        >>"$STATE/apiserver.log" 2>&1 </dev/null &
    echo $! >"$STATE/apiserver.pid"
fi

API="https://127.0.0.1:$APISERVER_PORT"
for i in $(seq 300); do
    curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$API/readyz" >/dev/null 2>&1 && break
    running apiserver || { log "kube-apiserver exited; see $STATE/apiserver.log"; tail -30 "$STATE/apiserver.log" >&2; exit 1; }
    [[ $i == 300 ]] && { log "kube-apiserver not ready after 30 s; see $STATE/apiserver.log"; exit 1; }
    sleep 0.1
done

kubeconfig() { # FILE USER TOKEN
    cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mapsentry-test
  cluster:
    server: $API
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: mapsentry-test
  context: {cluster: mapsentry-test, user: $2}
current-context: mapsentry-test
KC
}
kubeconfig "$STATE/kubeconfig" admin "$ADMIN_TOKEN"
kubeconfig "$STATE/kubeconfig-agent" mapsentry-agent "$AGENT_TOKEN"

# RBAC for the agent's identity (idempotent: 409 Conflict on a restart is fine).
apply() { # PATH JSON
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' -X POST --data "$2" "$API$1")"
    [[ "$code" == 201 || "$code" == 409 ]] || { log "POST $1 answered $code"; exit 1; }
}
apply /apis/rbac.authorization.k8s.io/v1/clusterroles '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"mapsentry-agent"},"rules":[{"apiGroups":[""],"resources":["pods","namespaces"],"verbs":["get","list","watch"]},{"apiGroups":["apps"],"resources":["replicasets"],"verbs":["get","list","watch"]},{"apiGroups":["batch"],"resources":["jobs"],"verbs":["get","list","watch"]}]}'
apply /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"mapsentry-agent"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"mapsentry-agent"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mapsentry-agent"}]}'

echo "$STATE/kubeconfig"
