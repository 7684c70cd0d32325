#!/usr/bin/env bash
# Start a real etcd and kube-apiserver (the versions e2e/kube/build-kube.sh pins) for tests, on
# loopback by default. Prints the path of an admin kubeconfig.
#
# Usage: e2e/kube/start-apiserver.sh STATE_DIR [--apiserver-only]
#   STATE_DIR holds certificates, the token file, etcd data, logs, pid files and the kubeconfigs;
#   a second start with the same STATE_DIR reuses its certificates, ports, settings and etcd data.
#   --apiserver-only starts only the apiserver (after stop-apiserver.sh --apiserver-only), for
#   outage tests.
# Files in STATE_DIR: kubeconfig (admin, system:masters), kubeconfig-agent (user
# mapsentry-agent, RBAC: get/list/watch pods, namespaces, replicasets, jobs; without
# APISERVER_FOR_NODES), ports.env
# (ETCD_PORT, APISERVER_PORT, ...), apiserver.env (the settings below, as first started),
# etcd.log, apiserver.log, etcd.pid, apiserver.pid, pki/ (ca.crt/ca.key sign every certificate).
# Environment (read at the first start of a STATE_DIR):
#   MAPSENTRY_KUBE_CACHE  the build cache (see build-kube.sh)
#   APISERVER_ADDRESS     address to bind and advertise (default 127.0.0.1)
#   APISERVER_FOR_NODES=1 the settings a cluster with nodes needs (start-node.sh sets it): Node
#                         and RBAC authorization, the NodeRestriction and ServiceAccount admission
#                         plugins, a client certificate for calls to kubelets (InternalIP first)
#   APISERVER_EXTRA_ARGS  appended to the apiserver's flags
# Without APISERVER_FOR_NODES there is no kubelet and no controller-manager: deleted pods stay
# Terminating unless deleted with gracePeriodSeconds=0, and no ServiceAccounts are made, so the
# ServiceAccount admission plugin is off.
set -euo pipefail

STATE="${1:?usage: start-apiserver.sh STATE_DIR [--apiserver-only]}"
ONLY_APISERVER=false
[[ "${2:-}" == "--apiserver-only" ]] && ONLY_APISERVER=true
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'start-apiserver: %s\n' "$*" >&2; }

# The binaries (cached: instant; the first run on a machine builds them, see build-kube.sh).
BIN="$("$HERE/build-kube.sh" | tail -n 1)"
[[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]] || { log "build-kube.sh gave no kube-apiserver/etcd in '$BIN'"; exit 1; }
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

if [[ ! -f "$STATE/apiserver.env" ]]; then
    {
        echo "APISERVER_ADDRESS=${APISERVER_ADDRESS:-127.0.0.1}"
        echo "APISERVER_FOR_NODES=${APISERVER_FOR_NODES:-0}"
        printf 'APISERVER_EXTRA_ARGS=%q\n' "${APISERVER_EXTRA_ARGS:-}"
    } >"$STATE/apiserver.env"
fi
# shellcheck source=/dev/null
source "$STATE/apiserver.env"

# shellcheck source=ports.sh
source "$HERE/ports.sh"

if [[ ! -f "$STATE/ports.env" ]]; then
    {
        echo "ETCD_PORT=$(claim_port "$STATE")"
        echo "ETCD_PEER_PORT=$(claim_port "$STATE")"
        echo "APISERVER_PORT=$(claim_port "$STATE")"
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
subjectAltName=IP:127.0.0.1,IP:$APISERVER_ADDRESS,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1
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

# cert NAME CN [O]: a client certificate pki/NAME.{crt,key} signed by the CA.
cert() {
    [[ -f "$PKI/$1.crt" ]] && return
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$2${3:+/O=$3}" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$PKI/client.ext"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/client.ext" -out "$PKI/$1.crt" 2>/dev/null
}

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# On loopback nothing may reach the API server through the `kubernetes` Service, whose endpoint
# may not be a loopback address: no endpoint reconciler.
node_args=(--authorization-mode RBAC --disable-admission-plugins ServiceAccount --endpoint-reconciler-type none)
if [[ "$APISERVER_FOR_NODES" == 1 ]]; then
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    node_args=(
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
        --kubelet-preferred-address-types InternalIP,Hostname
    )
fi

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
        --bind-address "$APISERVER_ADDRESS" --advertise-address "$APISERVER_ADDRESS" --secure-port "$APISERVER_PORT" \
        --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged "${node_args[@]}" \
        --enable-priority-and-fairness=false --profiling=false --v 1 \
        ${APISERVER_EXTRA_ARGS:-} \
        >>"$STATE/apiserver.log" 2>&1 </dev/null &
    echo $! >"$STATE/apiserver.pid"
fi

API="https://$APISERVER_ADDRESS:$APISERVER_PORT"
for i in $(seq 300); do
    curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$API/readyz" >/dev/null 2>&1 && break
    running apiserver || { log "kube-apiserver exited; see $STATE/apiserver.log"; tail -30 "$STATE/apiserver.log" >&2; exit 1; }
    [[ $i == 300 ]] && { log "kube-apiserver not ready after 30 s; see $STATE/apiserver.log"; tail -30 "$STATE/apiserver.log" >&2; exit 1; }
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

# RBAC for the agent's identity (idempotent: 409 Conflict on a restart is fine). Not for nodes:
# there the chart brings its own roles, of the same names.
[[ "$APISERVER_FOR_NODES" == 1 ]] && { echo "$STATE/kubeconfig"; exit 0; }
apply() { # PATH JSON
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' -X POST --data "$2" "$API$1")"
    [[ "$code" == 201 || "$code" == 409 ]] || { log "POST $1 answered $code"; exit 1; }
}
apply /apis/rbac.authorization.k8s.io/v1/clusterroles '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"mapsentry-agent"},"rules":[{"apiGroups":[""],"resources":["pods","namespaces"],"verbs":["get","list","watch"]},{"apiGroups":["apps"],"resources":["replicasets"],"verbs":["get","list","watch"]},{"apiGroups":["batch"],"resources":["jobs"],"verbs":["get","list","watch"]}]}'
apply /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"mapsentry-agent"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"mapsentry-agent"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mapsentry-agent"}]}'

echo "$STATE/kubeconfig"
