#!/usr/bin/env bash
# The chart against a real kube-apiserver (+ etcd on loopback, e2e/kube/start-apiserver.sh, the
# versions e2e/kube/build-kube.sh pins):
#  - the chart's CRDs are accepted and established; every example policy (examples/policies/) is
#    accepted; invalid policies are refused by the CRD schema, naming the field;
#  - the chart's ServiceAccounts, ClusterRoles and bindings grant each component what it needs and
#    nothing more (SubjectAccessReviews as the ServiceAccounts, through the real RBAC authorizer).
# Called by helm/test.sh when e2e/kube/start-apiserver.sh is present. Prints one line per check and
# `apiserver-test: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
source helm/tools.sh

state="$(mktemp -d)"
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  e2e/kube/stop-apiserver.sh "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT
passed=0
failed=0
ok() {
  passed=$((passed + 1))
  echo "ok   $1"
}
bad() {
  failed=$((failed + 1))
  echo "FAIL $1"
  [ -n "${2:-}" ] && sed 's/^/     /' "$2" | head -n 20
}

kubeconfig="$(e2e/kube/start-apiserver.sh "$state" 2>"$state/start.log" | tail -n 1)"
if [ ! -f "$kubeconfig" ]; then
  bad "start the kube-apiserver" "$state/start.log"
  echo "apiserver-test: $passed passed, $failed failed"
  exit 1
fi
k() { "$KUBECTL" --kubeconfig "$kubeconfig" "$@"; }

# 1. CRDs.
if k apply -f helm/mapsentry/crds/ >"$state/out" 2>&1 \
  && k wait --for condition=established --timeout=30s \
    crd/mmappolicies.mapsentry.dev crd/clustermmappolicies.mapsentry.dev >>"$state/out" 2>&1; then
  ok "chart CRDs applied and established"
else
  bad "chart CRDs applied and established" "$state/out"
fi
k create namespace policy-test >/dev/null 2>&1

# 2. Every example policy (and the kind scenario's) is accepted (validation by the API server only: --validate=false).
shopt -s nullglob
examples=(examples/policies/*.yaml e2e/kind/enforce-policy.yaml)
[ "${#examples[@]}" -gt 0 ] || bad "examples/policies/*.yaml exist"
# The namespaces the examples name.
for ns in $("$CHART_PY" -c 'import sys, yaml
print(" ".join(sorted({d["metadata"]["namespace"] for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))
                      if d and d["metadata"].get("namespace")})))' "${examples[@]}"); do
  k create namespace "$ns" >/dev/null 2>&1
done
for f in "${examples[@]}"; do
  if k apply --validate=false -f "$f" >"$state/out" 2>&1; then
    ok "accepted: $f"
  else
    bad "accepted: $f" "$state/out"
  fi
done

# 3. Invalid policies are refused, naming the field.
refuse() { # NAME EXPECTED-FIELD YAML; list items are matched with or without [index] (servers differ)
  local pattern
  pattern="$(printf '%s' "$2" | sed -e 's/\./\\./g' -e 's/\[0\]/(\\[0\\])?/g')"
  if printf '%s\n' "$3" | k create --validate=false -n policy-test -f - >"$state/out" 2>&1; then
    bad "refused: $1 (was accepted)" "$state/out"
  elif grep -qE -- "$pattern" "$state/out"; then
    ok "refused: $1 ($2)"
  else
    bad "refused: $1 (without naming $2)" "$state/out"
  fi
}
policy() { # KIND NAME SPEC-YAML (indented by 2)
  printf 'apiVersion: mapsentry.dev/v1alpha1\nkind: %s\nmetadata:\n  name: %s\nspec:\n%s\n' "$1" "$2" "$3"
}
rule='  rules:
    - name: wx
      match: {protAll: [PROT_WRITE, PROT_EXEC]}'
refuse "mode Sometimes" "spec.mode" "$(policy MmapPolicy bad-mode "  mode: Sometimes
$rule")"
refuse "no rules" "spec.rules" "$(policy MmapPolicy no-rules "  mode: Audit")"
refuse "rule without a name" "spec.rules[0].name" "$(policy MmapPolicy no-name '  rules:
    - match: {protAll: [PROT_EXEC]}')"
refuse "rule without match" "spec.rules[0].match" "$(policy ClusterMmapPolicy no-match '  rules:
    - name: r')"
refuse "action Explode" "spec.rules[0].action" "$(policy MmapPolicy bad-action '  rules:
    - name: r
      match: {protAll: [PROT_EXEC]}
      action: Explode')"
refuse "syscall mmap3" "spec.rules[0].match.syscalls" "$(policy ClusterMmapPolicy bad-syscall '  rules:
    - name: r
      match: {syscalls: [mmap3]}')"
# minLength is int-or-string (bytes or a quantity such as 8Gi): the API server checks the type,
# mapsentry's own validation (policy check, the collector) checks the quantity.
refuse "minLength as a list" "spec.rules[0].match.minLength" "$(policy MmapPolicy bad-length '  rules:
    - name: r
      match: {minLength: [1]}')"

# 4. RBAC: the chart's ServiceAccounts, roles and bindings, as rendered by default.
k create namespace mapsentry >/dev/null 2>&1
if "$HELM" template mapsentry helm/mapsentry --namespace mapsentry \
  --show-only templates/serviceaccounts.yaml --show-only templates/agent-rbac.yaml \
  --show-only templates/collector-rbac.yaml >"$state/rbac.yaml" 2>"$state/out" \
  && k apply -f "$state/rbac.yaml" >>"$state/out" 2>&1; then
  ok "chart ServiceAccounts, ClusterRoles and bindings applied"
else
  bad "chart ServiceAccounts, ClusterRoles and bindings applied" "$state/out"
fi
# Each line: yes|no COMPONENT VERB RESOURCE[.GROUP][/SUBRESOURCE]. One SubjectAccessReview per line
# for the component's ServiceAccount (user and groups as the API server authenticates its token),
# all created by one kubectl call; the real RBAC authorizer answers.
expectations="$state/expectations"
{
  for verb in get list watch; do
    echo "yes agent $verb pods"
    echo "yes agent $verb namespaces"
    echo "yes collector $verb pods"
    echo "yes collector $verb namespaces"
    echo "yes collector $verb mmappolicies.mapsentry.dev"
    echo "yes collector $verb clustermmappolicies.mapsentry.dev"
  done
  echo "yes agent get replicasets.apps"
  echo "yes agent get jobs.batch"
  for verb in update patch; do
    echo "yes collector $verb mmappolicies.mapsentry.dev/status"
    echo "yes collector $verb clustermmappolicies.mapsentry.dev/status"
  done
  for verb in create patch; do
    echo "yes collector $verb events"
    echo "yes collector $verb events.events.k8s.io"
  done
  # ... and nothing more.
  for sa in agent collector; do
    echo "no $sa get secrets"
    echo "no $sa list configmaps"
    echo "no $sa create pods"
    echo "no $sa delete pods"
    echo "no $sa update namespaces"
    echo "no $sa create clusterrolebindings.rbac.authorization.k8s.io"
    echo "no $sa impersonate users"
  done
  echo "no agent list replicasets.apps"
  echo "no agent list jobs.batch"
  echo "no agent list mmappolicies.mapsentry.dev"
  echo "no agent update mmappolicies.mapsentry.dev/status"
  echo "no agent create events"
  echo "no collector update mmappolicies.mapsentry.dev"
  echo "no collector patch clustermmappolicies.mapsentry.dev"
  echo "no collector delete clustermmappolicies.mapsentry.dev"
  echo "no collector create mmappolicies.mapsentry.dev"
  echo "no collector delete events"
} >"$expectations"
"$CHART_PY" - "$expectations" >"$state/sars.yaml" <<'PY'
import sys, yaml
docs = []
for line in open(sys.argv[1]):
    _, component, verb, target = line.split()
    resource, _, sub = target.partition("/")
    resource, _, group = resource.partition(".")
    docs.append({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": f"system:serviceaccount:mapsentry:mapsentry-{component}",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:mapsentry", "system:authenticated"],
        "resourceAttributes": {"namespace": "policy-test", "verb": verb, "group": group,
                               "resource": resource, "subresource": sub}}})
yaml.safe_dump_all(docs, sys.stdout)
PY
if k create -f "$state/sars.yaml" -o json >"$state/sars.json" 2>"$state/out"; then
  "$CHART_PY" - "$expectations" "$state/sars.json" >"$state/results" 2>&1 <<'PY'
import json, sys
text, answers, pos, decoder = open(sys.argv[2]).read(), [], 0, json.JSONDecoder()
try:
    while text[pos:].strip():  # kubectl prints one object per review, or a List
        obj, pos = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
        answers += obj["items"] if obj.get("kind") == "List" else [obj]
except (ValueError, KeyError) as e:
    print(f"FAIL the SubjectAccessReview answers do not parse: {e}")
lines = open(sys.argv[1]).read().splitlines()
if len(answers) != len(lines):
    print(f"FAIL {len(lines)} SubjectAccessReviews sent, {len(answers)} answered")
for line, answer in zip(lines, answers):
    want, component, verb, target = line.split()
    allowed = answer["status"].get("allowed", False)
    text = f"{component} may {'' if want == 'yes' else 'not '}{verb} {target}"
    print(("ok " if allowed == (want == "yes") else "FAIL ") + text)
PY
  while IFS= read -r line; do
    case "$line" in
      ok\ *) ok "${line#ok }" ;;
      FAIL\ *) bad "${line#FAIL }" ;;
    esac
  done <"$state/results"
  [ "$(grep -c '^ok ' "$state/results")" -eq "$(wc -l <"$expectations")" ] \
    || { grep -v '^ok ' "$state/results" >"$state/out"; bad "every SubjectAccessReview answered as expected" "$state/out"; }
else
  bad "SubjectAccessReviews created" "$state/out"
fi

echo "apiserver-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
