#!/usr/bin/env bash
# Renders the default install, manifests/install.yaml, from the chart:
#   helm/render-manifests.sh            write it
#   helm/render-manifests.sh --stdout   print it (helm/test.sh compares this with the file)
# The release is `mapsentry` in namespace `mapsentry`, with default values, the CRDs included, and
# the namespace itself (labelled for privileged pods: the agent needs hostPID and BPF capabilities).
set -euo pipefail
cd "$(dirname "$0")/.."
source helm/tools.sh

render() {
  cat <<'HEADER'
# mapsentry: the default install, rendered from helm/mapsentry by helm/render-manifests.sh.
# Generated; do not edit (helm/test.sh fails when it is stale). For Kubernetes 1.30+ (older
# clusters: install the chart, which sets AppArmor by annotation there). Apply with:
#   kubectl apply --server-side -f manifests/install.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: mapsentry
  labels:
    app.kubernetes.io/part-of: mapsentry
    pod-security.kubernetes.io/enforce: privileged
    pod-security.kubernetes.io/warn: privileged
HEADER
  "$HELM" template mapsentry helm/mapsentry --namespace mapsentry --include-crds --kube-version 1.30.0
}

if [ "${1:-}" = "--stdout" ]; then
  render
else
  render >manifests/install.yaml.tmp
  mv manifests/install.yaml.tmp manifests/install.yaml
  echo "wrote manifests/install.yaml" >&2
fi
