#!/usr/bin/env bash
# Compact the etcd of a start-apiserver.sh STATE_DIR at its current revision (so watches from any
# older resourceVersion are answered 410 Gone). Prints the revision.
# Usage: e2e/kube/etcd-compact.sh STATE_DIR
set -euo pipefail
STATE="${1:?usage: etcd-compact.sh STATE_DIR}"
# shellcheck source=/dev/null
source "$STATE/ports.env"
ETCD="http://127.0.0.1:$ETCD_PORT"
# The v3 JSON gateway. Write a scratch key first so the compacted revision is newer than any
# resourceVersion a client has seen; the put's answer carries the new revision.
key="$(printf 'mapsentry-compaction-bump' | base64)"
rev="$(curl -sf -X POST "$ETCD/v3/kv/put" --data "{\"key\":\"$key\",\"value\":\"$key\"}" \
    | sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')"
[[ -n "$rev" ]] || { echo "etcd-compact: cannot read the revision from $ETCD" >&2; exit 1; }
curl -sf -X POST "$ETCD/v3/kv/compaction" --data "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
echo "$rev"
