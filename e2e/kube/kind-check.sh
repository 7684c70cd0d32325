#!/usr/bin/env bash
# Check the cgroup path parser against a real kind cluster (documented; not run in CI: needs
# docker, kind, kubectl). Runs one pod per QoS class, reads each container's real cgroup v2 path
# inside the kind node (crictl -> pid -> /proc/PID/cgroup), and runs the ignored test
# `metadata::cgroup_path::tests::kind_cluster_paths`, which parses every path and checks the pod
# UID, QoS class and container id against what the API server says.
#
# Usage: e2e/kube/kind-check.sh   (KEEP_CLUSTER=1 keeps the cluster; CLUSTER=name to reuse one)
set -euo pipefail
CLUSTER="${CLUSTER:-mapsentry-check}"
NS=mapsentry-check
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
for tool in docker kind kubectl cargo; do
    command -v "$tool" >/dev/null || { echo "kind-check: needs $tool" >&2; exit 1; }
done

kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
CTX="kind-$CLUSTER"
cleanup() { [[ "${KEEP_CLUSTER:-}" == 1 ]] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

kubectl --context "$CTX" create namespace "$NS" --dry-run=client -o yaml | kubectl --context "$CTX" apply -f -
pod() { # NAME RESOURCES_JSON
    cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS}
spec:
  containers:
  - name: main
    image: registry.k8s.io/pause:3.9
    resources: $2
YAML
}
{
    pod guaranteed '{"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}}'
    echo ---
    pod burstable '{"requests": {"cpu": "10m"}}'
    echo ---
    pod besteffort '{}'
} | kubectl --context "$CTX" apply -f -
kubectl --context "$CTX" -n "$NS" wait --for=condition=Ready pod --all --timeout=180s

OUT="$(mktemp)"
for name in guaranteed burstable besteffort; do
    uid="$(kubectl --context "$CTX" -n "$NS" get pod "$name" -o jsonpath='{.metadata.uid}')"
    node="$(kubectl --context "$CTX" -n "$NS" get pod "$name" -o jsonpath='{.spec.nodeName}')"
    cid="$(kubectl --context "$CTX" -n "$NS" get pod "$name" -o jsonpath='{.status.containerStatuses[0].containerID}')"
    cid="${cid#*://}"
    qos="$(kubectl --context "$CTX" -n "$NS" get pod "$name" -o jsonpath='{.status.qosClass}')"
    pid="$(docker exec "$node" crictl inspect --output go-template --template '{{.info.pid}}' "$cid")"
    # The cgroup v2 path as the node sees it (kind nodes have their own cgroup namespace:
    # /kubelet.slice/kubelet-kubepods-...). A cgroup v1 host has no `0::` line: say so.
    path="$(docker exec "$node" sed -n 's/^0:://p' "/proc/$pid/cgroup")"
    [[ -n "$path" && "$path" != / ]] || { echo "kind-check: no cgroup v2 path for $name (cgroup v1 host?)" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\n' "$path" "$uid" "$cid" "$qos" >>"$OUT"
done
echo "kind-check: collected paths:" >&2; cat "$OUT" >&2
cd "$ROOT" && MAPSENTRY_KIND_PATHS="$OUT" nice -n 10 cargo test -p mapsentry-agent kind_cluster_paths -- --ignored
