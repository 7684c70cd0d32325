#!/usr/bin/env bash
# Chart tests, called by scripts/test.sh (after cargo build):
#  1. helm lint --strict and helm template for each values scenario (default and helm/mapsentry/ci/),
#     every document validated against the Kubernetes 1.33 schemas (kubernetes-validate --strict),
#     and helm/assertions.py: privileges, exact RBAC, references, each scenario's settings;
#  2. the checks themselves catch a wider role, a missing capability, an unknown field;
#  3. values.schema.json and the templates refuse wrong types and broken combinations;
#  4. checksum/config rolls exactly the component whose config changed;  5. NOTES.txt;
#  6. the built mapsentry binary accepts every argument the chart renders;
#  7. the agent's rendered capabilities suffice for real BPF, and BPF/PERFMON are each needed;
#  8. chart files/crds/ (rendered by templates/crds.yaml) equals manifests/crds/;  9. the Dockerfile matches the workspace;
# 10. manifests/install.yaml and the chart README's values table are current;
# 11. CRDs and RBAC on a real kube-apiserver (helm/apiserver-test.sh), when e2e/kube/ is present.
# Ends with `helm/test.sh: N passed, N failed`. About 10 s warm without the API server, 30-45 s with
# it; the first run also installs helm and kubernetes-validate (helm/tools.sh, ~40 s).
# MAPSENTRY_BIN: the binary for 6, 7 (default target/debug/mapsentry); MAPSENTRY_SKIP_APISERVER=1
# skips 11.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
source helm/tools.sh

CHART=helm/mapsentry
RELEASE=mapsentry
NAMESPACE=mapsentry
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

pass() {
  passed=$((passed + 1))
  echo "ok   $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL $1"
  [ -n "${2:-}" ] && sed 's/^/     /' "$2" | head -n 40
}

# Run a named step; its output is shown only when it fails.
step() {
  local name="$1"
  shift
  if "$@" >"$work/out" 2>&1; then pass "$name"; else fail "$name" "$work/out"; fi
}

# A step that must fail, with an error containing $2.
refused() {
  local name="$1" expect="$2"
  shift 2
  if "$@" >"$work/out" 2>&1; then
    fail "$name (was accepted)" "$work/out"
  elif grep -qF -- "$expect" "$work/out"; then
    pass "$name"
  else
    echo "expected the error to contain: $expect" >>"$work/out"
    fail "$name (refused for another reason)" "$work/out"
  fi
}

render() { "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@"; }

echo "helm/test.sh: $("$HELM" version --short), $("$CHART_PY" -c 'import kubernetes_validate.version as v; print("kubernetes-validate", v.__version__)')"

# 1. Every scenario: lint, render, validate against the 1.33 schemas, assertions.
for scenario in default tls certmanager monitoring custom tokens jetstream; do
  args=()
  [ "$scenario" = default ] || args=(-f "$CHART/ci/$scenario-values.yaml")
  step "$scenario: helm lint --strict" "$HELM" lint --strict "$CHART" "${args[@]}"
  if render --include-crds "${args[@]}" >"$work/$scenario.yaml" 2>"$work/out"; then
    pass "$scenario: helm template"
    step "$scenario: kubernetes-validate --strict (1.33)" "$CHART_PY" helm/validate.py "$work/$scenario.yaml"
    step "$scenario: privileges, RBAC, references" "$CHART_PY" helm/assertions.py "$scenario" "$work/$scenario.yaml"
  else
    fail "$scenario: helm template" "$work/out"
  fi
done

# The oldest Kubernetes the chart supports (kubeVersion >=1.25): rendered for 1.25 and validated
# against the 1.25 schemas (AppArmor as the annotation, not the 1.30 field).
if render --include-crds --kube-version 1.25.0 >"$work/k125.yaml" 2>"$work/out"; then
  step "kube 1.25: kubernetes-validate --strict (1.25)" "$CHART_PY" helm/validate.py --kubernetes-version 1.25.0 "$work/k125.yaml"
  if grep -q 'container.apparmor.security.beta.kubernetes.io/agent: "unconfined"' "$work/k125.yaml" \
    && ! grep -q 'appArmorProfile:' "$work/k125.yaml" \
    && grep -q 'appArmorProfile:' "$work/default.yaml" \
    && ! grep -q 'container.apparmor.security.beta.kubernetes.io' "$work/default.yaml"; then
    pass "AppArmor: annotation before 1.30, field from 1.30"
  else
    fail "AppArmor: annotation before 1.30, field from 1.30"
  fi
else
  fail "kube 1.25: helm template" "$work/out"
fi

# 2. The checks can fail: a wider agent role and a missing capability are caught.
if [ -f "$work/default.yaml" ]; then
  sed 's/verbs: \[get, list, watch\]/verbs: [get, list, watch, delete]/' "$work/default.yaml" >"$work/wider.yaml"
  refused "assertions refuse a wider agent ClusterRole" "extra [('', 'namespaces', 'delete')" \
    "$CHART_PY" helm/assertions.py default "$work/wider.yaml"
  sed '/- PERFMON/d' "$work/default.yaml" >"$work/nocap.yaml"
  refused "assertions refuse a missing PERFMON" "agent capabilities are exactly" \
    "$CHART_PY" helm/assertions.py default "$work/nocap.yaml"
  # The chart before issue 15: a read-only root and no writable state directory refused every
  # pushed Enforce set ("policy set refused").
  sed 's|^\( *\)mountPath: /var/lib/mapsentry$|&\n\1readOnly: true|' "$work/default.yaml" >"$work/rostate.yaml"
  refused "assertions refuse a read-only agent state directory" "is a writable mount" \
    "$CHART_PY" helm/assertions.py default "$work/rostate.yaml"
  # Issue 21: the unused host mounts are gone and stay gone; the ServiceMonitors keep the
  # series' own namespace/pod labels; every node selector term requires the image's arch.
  sed 's|^\( *\)- name: tmp$|\1- name: bpffs\n\1  mountPath: /sys/fs/bpf\n&|' "$work/default.yaml" >"$work/bpffs.yaml"
  refused "assertions refuse a bpffs mount on the agent" "agent mounts nothing else: ['/sys/fs/bpf']" \
    "$CHART_PY" helm/assertions.py default "$work/bpffs.yaml"
  if [ -f "$work/monitoring.yaml" ]; then
    sed '/honorLabels: true/d' "$work/monitoring.yaml" >"$work/nohonor.yaml"
    refused "assertions refuse a ServiceMonitor without honorLabels" "(honorLabels)" \
      "$CHART_PY" helm/assertions.py monitoring "$work/nohonor.yaml"
  fi
  sed '/key: kubernetes.io\/arch/,+3d' "$work/default.yaml" >"$work/noarch.yaml"
  refused "assertions refuse pods without the arch requirement" "require kubernetes.io/arch" \
    "$CHART_PY" helm/assertions.py default "$work/noarch.yaml"
  sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: true\n            bogusField: 1/' "$work/default.yaml" >"$work/bogus.yaml"
  refused "kubernetes-validate refuses an unknown field" "'bogusField' was unexpected" \
    "$CHART_PY" helm/validate.py "$work/bogus.yaml"
fi

if [ -f "$work/jetstream.yaml" ]; then
  sed 's/verbs: \[get, update\]/verbs: [get, update, delete]/' "$work/jetstream.yaml" >"$work/widelease.yaml"
  refused "assertions refuse a wider Lease Role" "Lease Role rules are exactly" \
    "$CHART_PY" helm/assertions.py jetstream "$work/widelease.yaml"
fi

# 3. values.schema.json refuses wrong types and values; the templates refuse broken combinations.
refused "schema: --set agent.sysAdmin=yes (string for bool)" "agent.sysAdmin: Invalid type. Expected: boolean" \
  render --set agent.sysAdmin=yes
refused "schema: --set collector.port=grpc (string for int)" "collector.port: Invalid type. Expected: integer" \
  render --set collector.port=grpc
refused "schema: --set-json agent.tolerations={} (object for list)" "agent.tolerations: Invalid type. Expected: array" \
  render --set-json 'agent.tolerations={}'
refused "schema: --set agent.ringBufferBytes=big" "agent.ringBufferBytes" render --set agent.ringBufferBytes=big
refused "schema: --set agent.attach=uprobe (not a mode)" "agent.attach" render --set agent.attach=uprobe
refused "schema: --set agent.tracepointHooks=some (not a choice)" "agent.tracepointHooks" \
  render --set agent.tracepointHooks=some
refused "template: collector.replicas=2 without JetStream (one hub)" "collector.replicas > 1 needs jetstream.url" \
  render --set collector.replicas=2
refused "schema: jetstream.url without a scheme" "jetstream.url" render --set jetstream.url=nats.nats.svc:4222
refused "schema: --set jetstream.credentials.type=password (not a type)" "jetstream.credentials.type" \
  render --set jetstream.url=nats://n:4222 --set jetstream.credentials.type=password
refused "schema: --set agentt.enabled=true (unknown key)" "Additional property agentt is not allowed" \
  render --set agentt.enabled=true
refused "schema: tls.enabled without a server secret" "tls.server.secretName" render --set tls.enabled=true
refused "template: tls.enabled without an agent secret" "tls.agent.secretName" \
  render --set tls.enabled=true --set tls.server.secretName=s
refused "template: tokens without an agent token or client certificates" "auth.agentToken.secretName" \
  render --set auth.tokens.secretName=t
refused "schema: --set auth.tokens.key= (empty key)" "auth.tokens.key" \
  render --set auth.tokens.secretName=t --set auth.tokens.key=
refused "template: agents without a collector to stream to" "needs agent.collectorURL" \
  render --set collector.enabled=false
refused "schema: --set agent.hostPaths.state= (the agent needs a state directory)" "agent.hostPaths.state" \
  render --set agent.hostPaths.state=
refused "schema: agent.collectorURL without a scheme" "agent.collectorURL" \
  render --set collector.enabled=false --set agent.collectorURL=collector:50051
refused "template: a retention claim with a rolling update" "needs collector.strategy.type: Recreate" \
  render --set collector.retentionLog.existingClaim=pvc
refused "template: serviceMonitor with nothing to scrape" "needs something to scrape" \
  render --set serviceMonitor.enabled=true --set agent.metrics.service.enabled=false
refused "template: cert-manager without TLS" "tls.certManager.enabled needs tls.enabled" \
  render --set tls.certManager.enabled=true
refused "schema: a cert-manager issuerRef of another kind" "tls.certManager.issuerRef.kind" \
  render --set tls.enabled=true --set tls.certManager.enabled=true --set tls.certManager.issuerRef.kind=Vault \
  --set tls.certManager.issuerRef.name=v
refused "schema: --set agent.priorityClass.value=2000000000 (above user classes)" "agent.priorityClass.value" \
  render --set agent.priorityClass.value=2000000000

# 4. A config change rolls the pods (checksum/config changes); an unrelated change does not.
checksums() { grep -E '^ +checksum/config:' | awk '{print $2}' | tr '\n' ' '; }
base="$(render | checksums)"
agent_changed="$(render --set agent.logLevel=debug | checksums)"
other="$(render --set collector.port=50052 | checksums)"
if [ "$(echo "$base" | awk '{print $1}')" != "$(echo "$agent_changed" | awk '{print $1}')" ] \
  && [ "$(echo "$base" | awk '{print $2}')" = "$(echo "$agent_changed" | awk '{print $2}')" ] \
  && [ "$base" = "$other" ] && [ -n "$base" ]; then
  pass "checksum/config follows each component's ConfigMap"
else
  echo "base: $base / agent.logLevel=debug: $agent_changed / collector.port: $other" >"$work/out"
  fail "checksum/config follows each component's ConfigMap" "$work/out"
fi

# 5. NOTES.txt tells how to tail alerts. helm renders NOTES only on install, which wants a
# cluster, so a copy of the chart gets a template that includes NOTES.txt as a YAML string.
notes() {
  rm -rf "$work/notes-chart" && cp -r "$CHART" "$work/notes-chart"
  echo 'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}' >"$work/notes-chart/templates/zz-notes.yaml"
  "$HELM" template "$RELEASE" "$work/notes-chart" --namespace "$NAMESPACE" --show-only templates/zz-notes.yaml "$@" \
    | "$CHART_PY" -c 'import sys, yaml; print(next(d for d in yaml.safe_load_all(sys.stdin) if d)["notes"])'
}
expect_notes() {
  local name="$1" notes="$work/notes.txt"
  shift
  local missing=()
  while [ "$1" != "--" ]; do
    grep -qF -- "$1" "$notes" || missing+=("$1")
    shift
  done
  shift
  if [ "${#missing[@]}" -eq 0 ]; then pass "$name"; else
    printf 'missing: %s\n' "${missing[@]}" >>"$notes"
    fail "$name" "$notes"
  fi
}
notes >"$work/notes.txt" 2>&1
expect_notes "NOTES.txt: port-forward and mapsentry tail" \
  "kubectl -n mapsentry port-forward service/mapsentry-collector 50051:50051" \
  "mapsentry tail --server http://localhost:50051 --kind alerts" \
  "kubectl apply -f examples/policies/write-execute.yaml" \
  "WARNING: tls.enabled is false, so the collector runs with --plaintext" --
notes -f "$CHART/ci/tls-values.yaml" >"$work/notes.txt" 2>&1
expect_notes "NOTES.txt with mutual TLS: https and client certificates" \
  "mapsentry tail --server https://localhost:50051" "--ca ca.crt --cert client.crt --key client.key" --
if grep -qF -- "--plaintext" "$work/notes.txt"; then
  fail "NOTES.txt with TLS: no plaintext warning" "$work/notes.txt"
else pass "NOTES.txt with TLS: no plaintext warning"; fi
notes -f "$CHART/ci/tokens-values.yaml" >"$work/notes.txt" 2>&1
expect_notes "NOTES.txt with tokens: a token file and its namespaces" \
  "--ca ca.crt --token-file token" "a line of Secret mapsentry-tokens" --

# 6. The mapsentry binary accepts the arguments the chart gives it (clap parses every flag and value
# before it acts on the trailing --help). Flags that later issues add are checked once the binary
# has them; until then they are left out here and named. Today every flag the chart renders
# exists (TLS, metrics) and is checked.
PENDING_FLAGS=()
bin="${MAPSENTRY_BIN:-target/debug/mapsentry}"
if [ ! -x "$bin" ]; then
  echo "skip the binary accepts the chart's arguments: no $bin (scripts/test.sh builds it before calling this)"
else
  for scenario in default tls certmanager monitoring custom tokens jetstream; do
    [ -f "$work/$scenario.yaml" ] || continue
    for component in agent collector; do
      mapfile -t args < <("$CHART_PY" helm/assertions.py --args "$work/$scenario.yaml" "$component")
      name="$scenario: mapsentry ${args[0]:-?} accepts the chart's arguments"
      if ! "$bin" "${args[0]}" --help >/dev/null 2>&1; then
        echo "skip $name: this build has no '${args[0]}' subcommand"
        continue
      fi
      if "$bin" "${args[@]}" --help >/dev/null 2>"$work/out"; then
        pass "$name"
        continue
      fi
      kept=() left=()
      for a in "${args[@]}"; do
        flag="${a%%=*}"
        if printf '%s\n' "${PENDING_FLAGS[@]}" | grep -qx -- "$flag"; then left+=("$flag"); else kept+=("$a"); fi
      done
      if [ "${#left[@]}" -gt 0 ] && "$bin" "${kept[@]}" --help >/dev/null 2>"$work/out"; then
        pass "$name (without ${left[*]}: not in this build yet)"
      else
        printf 'args: %s\n' "${args[*]}" >>"$work/out"
        fail "$name" "$work/out"
      fi
    done
  done
fi
if [ -x "$bin" ] && "$bin" tail --help >/dev/null 2>&1; then
  notes >"$work/notes.txt" 2>&1
  read -ra tail_cmd < <(grep -m1 '^ *mapsentry tail ' "$work/notes.txt")
  step "NOTES.txt: mapsentry accepts its tail command (${tail_cmd[*]:1})" "$bin" "${tail_cmd[@]:1}" --help
fi

# 7. The agent's capabilities as the chart grants them suffice to load and attach the BPF programs
# on this kernel (real BPF, as root: `mapsentry run` under setpriv with only those capabilities),
# and without CAP_BPF or without CAP_PERFMON loading is refused.
capture_with() { # CAPS OUT: run mapsentry with only CAPS until it attaches or exits (20 s at most)
  setpriv --bounding-set="-all${1:+,+${1//,/,+}}" --inh-caps="-all${1:+,+${1//,/,+}}" \
    "$bin" run --output json --pid $$ >"$2" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    grep -q '"kind":"attached"' "$2" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
if [ "$(id -u)" -ne 0 ] || [ ! -x "$bin" ] || ! command -v setpriv >/dev/null; then
  echo "skip the agent's capabilities suffice: needs root, setpriv and $bin"
else
  caps="$("$CHART_PY" helm/assertions.py --caps "$work/default.yaml" 2>"$work/caps-note")"
  note="$(cat "$work/caps-note")"
  capture_with "$caps" "$work/out"
  if grep -q '"kind":"attached"' "$work/out"; then
    pass "the agent attaches with only the chart's capabilities ($caps)${note:+; $note}"
  else
    fail "the agent attaches with only the chart's capabilities ($caps)" "$work/out"
  fi
  for needed in bpf perfmon; do
    fewer="$(echo ",$caps," | sed "s/,$needed,/,/; s/^,//; s/,$//")"
    capture_with "$fewer" "$work/out"
    if grep -q '"kind":"attached"' "$work/out"; then
      fail "without CAP_${needed^^} the agent cannot load (it did: the capability is needless)" "$work/out"
    elif grep -qi "CAP_${needed^^}\|Operation not permitted" "$work/out"; then
      pass "without CAP_${needed^^} the agent cannot load"
    else
      fail "without CAP_${needed^^} the agent cannot load (failed for another reason)" "$work/out"
    fi
  done
fi

# 8. The chart's CRDs are the generated ones.
if [ -f manifests/crds/mapsentry.dev.yaml ]; then
  echo "refresh with: cp manifests/crds/mapsentry.dev.yaml $CHART/files/crds/ && helm/render-manifests.sh" >"$work/out"
  if diff -u manifests/crds/mapsentry.dev.yaml "$CHART/files/crds/mapsentry.dev.yaml" >>"$work/out"; then
    pass "chart files/crds/ equals manifests/crds/"
  else
    fail "chart files/crds/ equals manifests/crds/" "$work/out"
  fi
  for f in manifests/crds/*.yaml; do
    [ -f "$CHART/files/crds/$(basename "$f")" ] || fail "chart files/crds/ lacks $(basename "$f")"
  done
  for f in "$CHART"/files/crds/*.yaml; do
    [ -f "manifests/crds/$(basename "$f")" ] || fail "chart files/crds/$(basename "$f") is not in manifests/crds/"
  done
  [ ! -e "$CHART/crds" ] || fail "chart crds/ exists: Helm would install those CRDs once and never upgrade them"
else
  fail "manifests/crds/mapsentry.dev.yaml is missing"
fi

# 9. The Dockerfile builds what exists (Docker builds cannot run here): the Rust of the workspace's
# rust-version, the package and binary of cli/Cargo.toml, clang and libbpf for ebpf/build.rs.
dockerfile_checks() {
  local rust pkg
  rust="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
  pkg="$(sed -n '0,/^name = /s/^name = "\(.*\)"/\1/p' cli/Cargo.toml)"
  grep -q "^FROM docker.io/library/rust:$rust-bookworm AS build" Dockerfile || { echo "not rust:$rust-bookworm"; return 1; }
  grep -q "cargo build --release --locked -p $pkg" Dockerfile || { echo "does not build -p $pkg"; return 1; }
  grep -A2 '^\[\[bin\]\]' cli/Cargo.toml | grep -q '^name = "mapsentry"' || { echo "cli has no bin mapsentry"; return 1; }
  grep -q 'target/release/mapsentry /out/mapsentry' Dockerfile || { echo "does not install target/release/mapsentry"; return 1; }
  grep -q 'clang llvm libbpf-dev linux-libc-dev' Dockerfile || { echo "lacks the BPF build packages"; return 1; }
  grep -q '^ENTRYPOINT \["/usr/local/bin/mapsentry"\]' Dockerfile || { echo "entrypoint is not mapsentry"; return 1; }
  # The test node's image (e2e/kube/build-images.sh) is laid out as the runtime stage.
  grep -q '^USER 65532:65532' Dockerfile || { echo "user is not 65532:65532"; return 1; }
  grep -q '"Entrypoint":\["/usr/local/bin/mapsentry"\],"Cmd":\["--help"\],"User":"65532:65532"' e2e/kube/build-images.sh \
    || { echo "e2e/kube/build-images.sh's mapsentry image differs from the Dockerfile's runtime stage"; return 1; }
}
step "Dockerfile: rust $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml), -p mapsentry-cli, BPF build packages, entrypoint, user; the test node's image alike" dockerfile_checks

# 10. Generated files are current.
echo "refresh with: helm/render-manifests.sh" >"$work/out"
if helm/render-manifests.sh --stdout 2>/dev/null | diff -u manifests/install.yaml - >>"$work/out"; then
  pass "manifests/install.yaml is current"
else
  fail "manifests/install.yaml is stale" "$work/out"
fi
step "manifests/install.yaml: kubernetes-validate --strict (1.33)" "$CHART_PY" helm/validate.py manifests/install.yaml
step "e2e/kind/wx-pod.yaml: kubernetes-validate --strict (1.33)" "$CHART_PY" helm/validate.py e2e/kind/wx-pod.yaml
if [ -x "$bin" ] && "$bin" policy check --help >/dev/null 2>&1; then
  step "e2e/kind/enforce-policy.yaml: mapsentry policy check" "$bin" policy check e2e/kind/enforce-policy.yaml
else
  echo "skip e2e/kind/enforce-policy.yaml: mapsentry policy check: no $bin with 'policy check'"
fi
for script in e2e/kind/*.sh; do
  step "$script: bash -n" bash -n "$script"
done
step "values documented (# --), in the schema, README table current" "$CHART_PY" helm/values-table.py --check

# 11. The CRDs and RBAC on a real kube-apiserver (the one the attribution tests run).
if [ ! -x e2e/kube/start-apiserver.sh ]; then
  echo "skip real kube-apiserver checks: e2e/kube/start-apiserver.sh is not in this tree"
elif [ "${MAPSENTRY_SKIP_APISERVER:-}" = 1 ]; then
  echo "skip real kube-apiserver checks: MAPSENTRY_SKIP_APISERVER=1"
elif helm/apiserver-test.sh >"$work/apiserver.out" 2>&1; then
  pass "real kube-apiserver: CRDs accept the examples and refuse invalid policies; RBAC exact ($(tail -n 1 "$work/apiserver.out"))"
else
  grep -v '^ok ' "$work/apiserver.out" >"$work/out"
  fail "real kube-apiserver: CRDs and RBAC" "$work/out"
fi

echo "helm/test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
