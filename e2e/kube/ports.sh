# shellcheck shell=bash
# Ports for the test clusters' servers; sourced by start-apiserver.sh and start-node.sh.
#
# claim_port STATE_DIR prints a port below the kernel's ephemeral range (so no outgoing connection
# can hold it between the choice and the bind) that no socket uses now and that no other live
# state directory has claimed. A claim is a directory under $PORT_CLAIMS, made atomically, naming
# its state directory; it holds the port until that directory is removed. `ss` alone saw a port
# free that a parallel start had chosen but not bound yet (the apiserver binds after etcd is up),
# or that an outage test's stopped apiserver was to bind again, and the later bind failed
# ("address already in use", kube_faults).
PORT_CLAIMS="${TMPDIR:-/tmp}/mapsentry-e2e-port-claims"

claim_port() {
    local state="$1" port low owner
    mkdir -p "$PORT_CLAIMS"
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    ((low > 11000)) || low=32768
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        ss -Htan "sport = :$port" | grep -q . && continue
        if mkdir "$PORT_CLAIMS/$port" 2>/dev/null; then
            echo "$state" >"$PORT_CLAIMS/$port/state"
            echo "$port"
            return
        fi
        # Claimed: stale once its state directory is gone (a claim being written has no owner yet).
        owner="$(cat "$PORT_CLAIMS/$port/state" 2>/dev/null)" || continue
        if [[ -n "$owner" && ! -d "$owner" ]]; then
            rm -rf "$PORT_CLAIMS/$port"
        fi
    done
}
