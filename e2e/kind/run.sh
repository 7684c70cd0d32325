#!/usr/bin/env bash
# The whole system on a real kind cluster: create the cluster, build and load the image, install
# the chart, apply the write+execute policy (Audit; its status must say Accepted), make a pod map
# memory W+X, and wait for the alert at `mapsentry tail`, the Kubernetes Event on the pod and the
# collector's violation metric for it; then add an Enforce policy in a neighbouring namespace (no
# restarts) and check the same pod is killed there while the Audit one keeps running; then give
# the Audit namespace its own policy and switch it from Audit to Enforce through the API: a new
# pod there is killed, and still nothing restarted. The same scenario as e2e/tests/system.rs.
# Not run in CI (kind needs Docker); see e2e/kind/README.md.
#
#   e2e/kind/run.sh            everything, cluster kept afterwards (e2e/kind/down.sh removes it)
#   ENFORCE=0 e2e/kind/run.sh  stop after the Audit alert, Event and metric
#   SWITCH=0 e2e/kind/run.sh   skip the Audit -> Enforce switch
#
# Settings (environment): CLUSTER (mapsentry), IMAGE (mapsentry:dev), NAMESPACE (mapsentry),
# TIMEOUT seconds to wait for the alert (120), SKIP_BUILD=1 to reuse an image already built,
# PORT (50051) and METRICS_PORT (9090) for the local port-forwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-mapsentry}"
IMAGE="${IMAGE:-mapsentry:dev}"
NAMESPACE="${NAMESPACE:-mapsentry}"
TIMEOUT="${TIMEOUT:-120}"
PORT="${PORT:-50051}"
METRICS_PORT="${METRICS_PORT:-9090}"
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

for tool in kind kubectl docker cargo curl; do
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
  --set agent.logLevel=debug --set collector.metrics.enabled=true --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status daemonset/mapsentry-agent --timeout=180s
kubectl -n "$NAMESPACE" rollout status deployment/mapsentry-collector --timeout=180s

say "policy examples/policies/write-execute.yaml (Audit, every namespace but kube-system)"
kubectl apply -f examples/policies/write-execute.yaml
# The collector validated it and put it in force (it writes the status as its ServiceAccount).
kubectl wait --for=condition=Accepted clustermmappolicy/write-execute --timeout=60s
kubectl get clustermmappolicies

say "tail the collector through a port-forward"
kubectl -n "$NAMESPACE" port-forward service/mapsentry-collector "$PORT:50051" >"$work/port-forward.log" 2>&1 &
pids+=($!)
kubectl -n "$NAMESPACE" port-forward service/mapsentry-collector "$METRICS_PORT:9090" >"$work/port-forward-metrics.log" 2>&1 &
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
violations() { # NAMESPACE: the collector's violation count for pod wx-demo there (empty: none)
  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" \
    | grep "^mapsentry_policy_violations_total{namespace=\"$1\",pod=\"wx-demo\"," | awk '{print $2}' | head -n 1
}
counted() { [ -n "$(violations "$1")" ]; }
agent_restarts() { # every agent pod's uid and restart count
  kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent \
    -o jsonpath='{range .items[*]}{.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}'
}
# policy_accepted KIND/NAME [NAMESPACE]: the collector accepted the object's current generation.
policy_accepted() {
  local generation accepted
  generation="$(kubectl get "$1" ${2:+-n "$2"} -o jsonpath='{.metadata.generation}')"
  accepted="$(kubectl get "$1" ${2:+-n "$2"} -o jsonpath='{.status.acceptedGeneration}')"
  [ -n "$generation" ] && [ "$generation" = "$accepted" ]
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
wait_for 30 counted mapsentry-demo || { diagnose; die "no mapsentry_policy_violations_total for mapsentry-demo/wx-demo"; }
echo "e2e/kind: collector metric: $(violations mapsentry-demo) violation(s) of mapsentry-demo/wx-demo" >&2

if [ "${ENFORCE:-1}" = 1 ]; then
  say "Enforce in the neighbouring namespace mapsentry-enforce, without restarting anything"
  agents_before="$(agent_restarts)"
  kubectl create namespace mapsentry-enforce --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f e2e/kind/enforce-policy.yaml
  wait_for 60 policy_accepted mmappolicy/no-write-execute mapsentry-enforce || die "the Enforce policy was not accepted"
  sleep 5 # the collector pushes the new rule set to every agent; each resolves it to pod cgroups
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
  agents_after="$(agent_restarts)"
  [ "$agents_before" = "$agents_after" ] || die "agents restarted for the policy change: $agents_before -> $agents_after"
  echo "e2e/kind: Enforce killed mapsentry-enforce/wx-demo (exit 137) before it used the mapping;" \
    "mapsentry-demo/wx-demo (Audit) still runs; no agent restarted" >&2

  if [ "${SWITCH:-1}" = 1 ]; then
    say "switch: mapsentry-demo gets its own policy in Audit, then Enforce, through the API (no restarts)"
    demo_policy() { # MODE: enforce-policy.yaml for namespace mapsentry-demo in MODE
      sed -e 's/namespace: mapsentry-enforce/namespace: mapsentry-demo/' -e "s/mode: Enforce/mode: $1/" \
        e2e/kind/enforce-policy.yaml
    }
    demo_policy Audit | kubectl apply -f -
    wait_for 60 policy_accepted mmappolicy/no-write-execute mapsentry-demo || die "the Audit policy was not accepted"
    terminated mapsentry-demo && die "mapsentry-demo/wx-demo stopped under an Audit policy"
    demo_policy Enforce | kubectl apply -f -
    wait_for 60 policy_accepted mmappolicy/no-write-execute mapsentry-demo || die "the switched policy was not accepted"
    kubectl -n mapsentry-demo get mmappolicy no-write-execute -o jsonpath='{.status.conditions}' && echo
    sleep 5 # pushed to the agents
    fresh_pod mapsentry-demo
    wait_for "$TIMEOUT" terminated mapsentry-demo || { diagnose; die "mapsentry-demo/wx-demo was not killed after the switch"; }
    code="$(exit_code mapsentry-demo)"
    [ "$code" = 137 ] || die "mapsentry-demo/wx-demo exited $code after the switch, not 137 (SIGKILL)"
    [ "$agents_before" = "$(agent_restarts)" ] || die "agents restarted for the switch"
    echo "e2e/kind: after the switch to Enforce, mapsentry-demo/wx-demo was killed (exit 137); no agent restarted" >&2
  fi
fi
echo "e2e/kind: passed (cluster $CLUSTER kept; remove it with e2e/kind/down.sh)" >&2
