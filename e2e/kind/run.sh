#!/usr/bin/env bash
# The whole system on a real kind cluster: create the cluster, build and load the image, install
# the chart, apply the write+execute policy (Audit), make a pod map memory W+X, and wait for the
# alert at `mapsentry tail` and the Kubernetes Event on the pod; then add an Enforce policy in a
# neighbouring namespace (no restarts) and check the same pod is killed there while the Audit one
# keeps running. Not run in CI (kind needs Docker); see e2e/kind/README.md.
#
#   e2e/kind/run.sh            everything, cluster kept afterwards (e2e/kind/down.sh removes it)
#   ENFORCE=0 e2e/kind/run.sh  stop after the Audit alert and Event
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

say "policy examples/policies/write-execute.yaml (Audit, every namespace but kube-system)"
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
  --namespace mapsentry-demo --namespace mapsentry-enforce >"$work/tail.jsonl" 2>"$work/tail.err" &
pids+=($!)
sleep 2

# wait_for SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
  local seconds="$1"
  shift
  for _ in $(seq "$seconds"); do
    "$@" && return 0
    sleep 1
  done
  return 1
}
diagnose() {
  echo "--- tail output:" >&2
  cat "$work/tail.jsonl" "$work/tail.err" >&2
  echo "--- agent logs:" >&2
  kubectl -n "$NAMESPACE" logs daemonset/mapsentry-agent --tail=50 >&2 || true
  echo "--- collector logs:" >&2
  kubectl -n "$NAMESPACE" logs deployment/mapsentry-collector --tail=50 >&2 || true
}
alert_for() { # NAMESPACE: the first alert line for pod wx-demo there
  grep '"kind":"alert"' "$work/tail.jsonl" | grep '"pod":"wx-demo"' | grep "\"namespace\":\"$1\"" | head -n 1
}
has_alert() { [ -n "$(alert_for "$1")" ]; }
exit_code() { # NAMESPACE: wx-demo's exit code, empty while it runs
  kubectl -n "$1" get pod wx-demo -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null
}
terminated() { [ -n "$(exit_code "$1")" ]; }
violation_event() { # NAMESPACE: a MmapPolicyViolation Event on pod wx-demo
  kubectl -n "$1" get events --field-selector involvedObject.kind=Pod,involvedObject.name=wx-demo,reason=MmapPolicyViolation \
    -o name 2>/dev/null | grep -q .
}
fresh_pod() { # NAMESPACE
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$1" delete pod wx-demo --ignore-not-found --wait=true >/dev/null
  kubectl -n "$1" apply -f e2e/kind/wx-pod.yaml
}

say "trigger: pod mapsentry-demo/wx-demo maps memory PROT_WRITE|PROT_EXEC (Audit)"
kubectl delete -f e2e/kind/enforce-policy.yaml --ignore-not-found >/dev/null 2>&1 || true
fresh_pod mapsentry-demo
wait_for "$TIMEOUT" has_alert mapsentry-demo || { diagnose; die "no alert for mapsentry-demo/wx-demo within ${TIMEOUT}s"; }
alert_for mapsentry-demo
echo "e2e/kind: alert received for mapsentry-demo/wx-demo" >&2
wait_for 60 violation_event mapsentry-demo || { diagnose; die "no MmapPolicyViolation Event on mapsentry-demo/wx-demo"; }
kubectl -n mapsentry-demo get events --field-selector involvedObject.name=wx-demo,reason=MmapPolicyViolation
terminated mapsentry-demo && die "mapsentry-demo/wx-demo stopped (exit $(exit_code mapsentry-demo)): Audit must not kill"

if [ "${ENFORCE:-1}" = 1 ]; then
  say "Enforce in the neighbouring namespace mapsentry-enforce, without restarting anything"
  agents_before="$(kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent \
    -o jsonpath='{range .items[*]}{.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}')"
  kubectl create namespace mapsentry-enforce --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f e2e/kind/enforce-policy.yaml
  sleep 5 # the collector compiles the policy and pushes the new rule set to every agent
  fresh_pod mapsentry-enforce
  wait_for "$TIMEOUT" terminated mapsentry-enforce || { diagnose; die "mapsentry-enforce/wx-demo was not killed"; }
  code="$(exit_code mapsentry-enforce)"
  [ "$code" = 137 ] || die "mapsentry-enforce/wx-demo exited $code, not 137 (SIGKILL)"
  if kubectl -n mapsentry-enforce logs wx-demo | grep -q "mapped 4096"; then
    die "mapsentry-enforce/wx-demo printed after its W+X mapping: the kill came too late"
  fi
  wait_for 30 has_alert mapsentry-enforce || { diagnose; die "no alert for the killed mapsentry-enforce/wx-demo"; }
  alert_for mapsentry-enforce
  terminated mapsentry-demo && die "the Audit neighbour mapsentry-demo/wx-demo was stopped"
  agents_after="$(kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent \
    -o jsonpath='{range .items[*]}{.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}')"
  [ "$agents_before" = "$agents_after" ] || die "agents restarted for the policy change: $agents_before -> $agents_after"
  echo "e2e/kind: Enforce killed mapsentry-enforce/wx-demo (exit 137) before it used the mapping;" \
    "mapsentry-demo/wx-demo (Audit) still runs; no agent restarted" >&2
fi
echo "e2e/kind: passed (cluster $CLUSTER kept; remove it with e2e/kind/down.sh)" >&2
