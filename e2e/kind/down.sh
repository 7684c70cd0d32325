#!/usr/bin/env bash
# Deletes the kind cluster that e2e/kind/run.sh made.
set -euo pipefail
kind delete cluster --name "${CLUSTER:-mapsentry}"
