#!/usr/bin/env bash
# Stop what start-apiserver.sh started in STATE_DIR (by the pids it recorded).
# Usage: e2e/kube/stop-apiserver.sh STATE_DIR [--apiserver-only]
set -euo pipefail
STATE="${1:?usage: stop-apiserver.sh STATE_DIR [--apiserver-only]}"
names=(apiserver etcd)
[[ "${2:-}" == "--apiserver-only" ]] && names=(apiserver)
for name in "${names[@]}"; do
    pidfile="$STATE/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
done
