#!/usr/bin/env bash
# Start a single-node Kubernetes cluster on this machine for tests, from the binaries
# e2e/kube/build-kube.sh pins and caches: etcd, kube-apiserver (RBAC, Node authorization,
# service-account tokens), kube-controller-manager, kube-scheduler, containerd + runc, kubelet,
# kube-proxy (iptables) and CoreDNS (cluster.local), with a bridge CNI network. Waits for the
# node to be Ready and prints the path of the admin kubeconfig.
#
# Usage: e2e/kube/start-node.sh STATE_DIR [IMAGE.tar...]
#   The image tarballs (docker-archive or OCI, see build-images.sh) are imported into containerd's
#   k8s.io namespace; a pause image for pod sandboxes is built and imported always.
#   Stop with e2e/kube/stop-node.sh STATE_DIR, which puts the machine back as it was.
#
# One node per machine: the kubelet's port 10250, the bridge cni0 and its network 10.88.0.0/16
# (the node's address is the bridge's, 10.88.0.1), the service network 10.96.0.0/16 and the cgroup
# directory kubepods are the machine's. This machine's cgroups are v1 in a hybrid layout (PID 1 is
# not systemd): the kubelet runs with the cgroupfs driver and failCgroupV1: false; see README.md.
#
# Files in STATE_DIR besides start-apiserver.sh's: node.env (NODE_NAME, NODE_IP, ...),
# host.env (what the machine had before, for stop-node.sh), one NAME.log and NAME.pid per
# component (etcd apiserver controller-manager scheduler containerd kubelet kube-proxy coredns),
# containerd/ (config, root, state, socket), kubelet/ (config, root dir, pod logs), cni/.
set -euo pipefail

STATE="${1:?usage: start-node.sh STATE_DIR [IMAGE.tar...]}"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'start-node: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

NODE_NAME=mapsentry-e2e-node
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
BRIDGE=cni0
PAUSE_IMAGE=localhost/mapsentry-e2e/pause:1

[[ "$(id -u)" == 0 ]] || fail "needs root (containerd, kubelet, cgroups, iptables)"
for tool in iptables ip openssl curl; do command -v "$tool" >/dev/null || fail "missing $tool (scripts/setup.sh installs it)"; done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
    || fail "no CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
if [[ -e "/sys/class/net/$BRIDGE" ]] && ! [[ -f "$STATE/host.env" ]]; then
    fail "$BRIDGE exists already: another node runs on this machine (stop it with stop-node.sh)"
fi
if ss -Htln 'sport = :10250' | grep -q .; then fail "port 10250 is taken: another kubelet runs on this machine"; fi

BIN="$("$HERE/build-kube.sh" | tail -n 1)"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
started=$SECONDS

# --- What the machine has now, once: stop-node.sh restores it.
if [[ ! -f "$STATE/host.env" ]]; then
    {
        for s in net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops \
            net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet; do
            v="$(sysctl -n "$s" 2>/dev/null || true)"
            [[ -n "$v" ]] && echo "SYSCTL_${s//[.-]/_}=$s=$v"
        done
        for d in /var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /var/lib/mapsentry \
            /run/containerd /etc/cni; do
            [[ -e "$d" ]] || echo "CREATED=$d"
        done
        # The chart's agent writes its state there: what the machine had goes back afterwards.
        if [[ -d /var/lib/mapsentry ]]; then
            tar -C /var/lib/mapsentry -cf "$STATE/saved-var-lib-mapsentry.tar" .
            echo "SAVED=/var/lib/mapsentry=$STATE/saved-var-lib-mapsentry.tar"
        fi
    } >"$STATE/host.env"
    iptables-save >"$STATE/iptables.before"
    ip6tables-save >"$STATE/ip6tables.before"
fi

echo "NODE_NAME=$NODE_NAME NODE_IP=$NODE_IP POD_CIDR=$POD_CIDR SERVICE_CIDR=$SERVICE_CIDR BRIDGE=$BRIDGE" \
    | tr ' ' '\n' >"$STATE/node.env"

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
# start NAME CMD...: CMD in its own session, output to NAME.log.
start() {
    local name="$1"; shift
    running "$name" && return
    setsid "$@" >>"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}
# wait_for NAME SECONDS CHECK...: until CHECK succeeds; fails with NAME's log tail.
wait_for() {
    local name="$1" limit="$2" i; shift 2
    for ((i = 0; i < limit * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        running "$name" || { log "$name exited; the end of $STATE/$name.log:"; tail -n 30 "$STATE/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    log "$name not ready after $limit s; the end of $STATE/$name.log:"
    tail -n 30 "$STATE/$name.log" >&2
    exit 1
}
# shellcheck source=ports.sh
source "$HERE/ports.sh"

# --- The network: the bridge carries the node's address; nothing from the pods or to the
# service network leaves the machine (pods reach each other and the host only).
if [[ ! -e "/sys/class/net/$BRIDGE" ]]; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/16" dev "$BRIDGE"
    ip link set "$BRIDGE" up
fi
# Service addresses are translated by kube-proxy; one it does not know goes onto the bridge (never
# out of the machine). (A blackhole route would fail the host's own connections before NAT.)
ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
iptables -C FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e 2>/dev/null \
    || iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e
iptables -C FORWARD -o "$BRIDGE" ! -i "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e 2>/dev/null \
    || iptables -I FORWARD -o "$BRIDGE" ! -i "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

# --- etcd and kube-apiserver, with what nodes need, on the node's address.
export APISERVER_ADDRESS="$NODE_IP" APISERVER_FOR_NODES=1
KUBECONFIG_ADMIN="$("$HERE/start-apiserver.sh" "$STATE" | tail -n 1)"
# shellcheck source=/dev/null
source "$STATE/ports.env"
PKI="$STATE/pki"
API="https://$NODE_IP:$APISERVER_PORT"

# cert NAME CN [O]: a client certificate signed by the cluster CA.
cert() {
    [[ -f "$PKI/$1.crt" ]] && return
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$2${3:+/O=$3}" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$PKI/client.ext"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/client.ext" -out "$PKI/$1.crt" 2>/dev/null
}
# cert_kubeconfig NAME CN [O]: STATE/kubeconfig-NAME with a client certificate.
cert_kubeconfig() {
    cert "$1" "$2" "${3:-}"
    cat >"$STATE/kubeconfig-$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mapsentry-e2e
  cluster: {server: "$API", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key"}
contexts:
- name: mapsentry-e2e
  context: {cluster: mapsentry-e2e, user: "$2"}
current-context: mapsentry-e2e
KC
}
cert_kubeconfig kubelet "system:node:$NODE_NAME" system:nodes
cert_kubeconfig controller-manager system:kube-controller-manager
cert_kubeconfig scheduler system:kube-scheduler
cert_kubeconfig kube-proxy system:kube-proxy
cert_kubeconfig coredns system:coredns
[[ -f "$PKI/kubelet-serving.crt" ]] || {
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_NAME" -keyout "$PKI/kubelet-serving.key" \
        -out "$PKI/kubelet-serving.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >"$PKI/serving.ext"
    openssl x509 -req -in "$PKI/kubelet-serving.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/serving.ext" -out "$PKI/kubelet-serving.crt" 2>/dev/null
}
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
# CoreDNS reads Services, EndpointSlices, pods and namespaces (kubeadm's system:coredns role).
kubectl apply -f - >/dev/null <<'RBAC'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
RBAC

if [[ ! -f "$STATE/node-ports.env" ]]; then
    {
        echo "CONTROLLER_MANAGER_PORT=$(claim_port "$STATE")"
        echo "SCHEDULER_PORT=$(claim_port "$STATE")"
        echo "KUBELET_HEALTHZ_PORT=$(claim_port "$STATE")"
        echo "KUBE_PROXY_HEALTHZ_PORT=$(claim_port "$STATE")"
        echo "KUBE_PROXY_METRICS_PORT=$(claim_port "$STATE")"
        echo "COREDNS_READY_PORT=$(claim_port "$STATE")"
        echo "COREDNS_HEALTH_PORT=$(claim_port "$STATE")"
    } >"$STATE/node-ports.env"
fi
# shellcheck source=/dev/null
source "$STATE/node-ports.env"

# --- kube-controller-manager (ServiceAccounts, kube-root-ca.crt, DaemonSets, Deployments, GC)
# and kube-scheduler.
start controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig-controller-manager" \
    --authentication-kubeconfig "$STATE/kubeconfig-controller-manager" \
    --authorization-kubeconfig "$STATE/kubeconfig-controller-manager" \
    --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --use-service-account-credentials --leader-elect=false \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" --v 1
start scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kubeconfig-scheduler" \
    --authentication-kubeconfig "$STATE/kubeconfig-scheduler" \
    --authorization-kubeconfig "$STATE/kubeconfig-scheduler" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --v 1

# --- containerd 2.x with runc, everything under STATE (root, state, socket, network
# namespaces), CNI from /usr/lib/cni with this node's network in STATE/cni/net.d.
CTRD="$STATE/containerd"
mkdir -p "$CTRD" "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/cni/cache"
cat >"$STATE/cni/net.d/10-mapsentry-e2e.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "mapsentry-e2e",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
CNI
cat >"$CTRD/config.toml" <<TOML
version = 4
imports = []
root = "$CTRD/root"
state = "$CTRD/state"

# (Config version 4, containerd 2.4's: its servers are plugins, each with its address.)
[plugins.'io.containerd.server.v1.grpc']
  address = "$CTRD/containerd.sock"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$CTRD/containerd.sock.ttrpc"
[plugins.'io.containerd.server.v1.debug']
  address = "$CTRD/debug.sock"
[plugins.'io.containerd.server.v1.metrics']
  address = ""

[plugins.'io.containerd.cri.v1.runtime']
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj without this.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$BIN/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
# The shim is found on PATH. (libcni keeps its cache in /var/lib/cni: stop-node.sh removes it
# when this script made it.)
PATH="$BIN:$PATH" start containerd "$BIN/containerd" --config "$CTRD/config.toml"
ctr() { "$BIN/ctr" --address "$CTRD/containerd.sock" -n k8s.io "$@"; }
wait_for containerd 20 ctr version

# --- Images: the sandbox's pause, and what the caller brings.
images="$STATE/images"
mkdir -p "$images"
"$HERE/build-images.sh" pause "$images" >/dev/null
for tarball in "$images/pause.tar" "$@"; do
    ctr images import "$tarball" >/dev/null 2>"$STATE/import.err" \
        || { cat "$STATE/import.err" >&2; fail "importing $tarball into containerd"; }
done

# --- kubelet: cgroupfs driver on cgroup v1 (hybrid), its own root dir, pod logs under STATE.
KUBELET="$STATE/kubelet"
mkdir -p "$KUBELET/root" "$KUBELET/pod-logs"
cat >"$KUBELET/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CTRD/containerd.sock
cgroupDriver: cgroupfs
# This machine has cgroup v1 (hybrid layout); Kubernetes 1.35+ refuses v1 unless told.
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: /etc/resolv.conf
podLogsDir: $KUBELET/pod-logs
# A build machine's disk and memory are shared: evict nothing, collect no images.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 50
YAML
start kubelet "$BIN/kubelet" --config "$KUBELET/config.yaml" --kubeconfig "$STATE/kubeconfig-kubelet" \
    --root-dir "$KUBELET/root" --cert-dir "$KUBELET/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --v 1

# --- kube-proxy (iptables; it leaves the conntrack sysctls alone) and CoreDNS on the node's address.
start kube-proxy "$BIN/kube-proxy" --kubeconfig "$STATE/kubeconfig-kube-proxy" \
    --hostname-override "$NODE_NAME" --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --bind-address "$NODE_IP" --nodeport-addresses "$NODE_IP/32" \
    --healthz-bind-address "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT" \
    --metrics-bind-address "127.0.0.1:$KUBE_PROXY_METRICS_PORT" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --v 1
cat >"$STATE/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $STATE/kubeconfig-coredns
        pods insecure
    }
}
COREFILE
start coredns "$BIN/coredns" -conf "$STATE/Corefile"

# --- Ready: the node registered and Ready, CoreDNS answering, kube-proxy synced.
wait_for kubelet 90 bash -c "\"$BIN/kubectl\" --kubeconfig \"$KUBECONFIG_ADMIN\" get node \"$NODE_NAME\" -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for coredns 30 curl -sf "http://127.0.0.1:$COREDNS_READY_PORT/ready"
wait_for kube-proxy 30 curl -sf "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
wait_for controller-manager 30 bash -c "\"$BIN/kubectl\" --kubeconfig \"$KUBECONFIG_ADMIN\" get serviceaccount default -n default"
running scheduler || { tail -n 30 "$STATE/scheduler.log" >&2; fail "kube-scheduler exited"; }
log "node $NODE_NAME Ready after $((SECONDS - started)) s"
echo "$KUBECONFIG_ADMIN"
