#!/usr/bin/env bash
# Stop what start-node.sh STATE_DIR started and put the machine back as it was: workloads deleted
# through the API (so the kubelet tears their sandboxes and networks down), every component
# stopped by its recorded pid, containerd's shims ended, mounts under STATE_DIR unmounted, the
# kubepods cgroups removed, kube-proxy's iptables rules and the bridge gone, the sysctls the
# node changed restored and the directories it made outside STATE_DIR removed.
# Usage: e2e/kube/stop-node.sh STATE_DIR   (STATE_DIR itself is left for the caller to remove)
set -uo pipefail
STATE="${1:?usage: stop-node.sh STATE_DIR}"
[[ -d "$STATE" ]] || exit 0
STATE="$(cd "$STATE" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'stop-node: %s\n' "$*" >&2; }

# shellcheck source=/dev/null
[[ -f "$STATE/node.env" ]] && source "$STATE/node.env"
BRIDGE="${BRIDGE:-cni0}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
BIN="$("$HERE/build-kube.sh" 2>/dev/null | tail -n 1)"

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
stop() { # NAME: SIGTERM, then SIGKILL after 10 s
    local pid
    [[ -f "$STATE/$1.pid" ]] || return 0
    pid="$(cat "$STATE/$1.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$STATE/$1.pid"
}

# 1. Workloads: controllers first (so nothing is recreated), then pods; the kubelet stops each
# sandbox (CNI DEL, unmounts) before the API forgets the pod.
if running apiserver && running kubelet && [[ -x "$BIN/kubectl" ]]; then
    k() { timeout 60 "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }
    k delete daemonsets,deployments,replicasets,statefulsets,jobs,cronjobs --all --all-namespaces \
        --wait=false >/dev/null 2>&1
    k delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
    for _ in $(seq 120); do
        [[ -z "$(k get pods --all-namespaces -o name 2>/dev/null)" ]] && break
        sleep 0.5
    done
    left="$(k get pods --all-namespaces -o name 2>/dev/null)"
    [[ -n "$left" ]] && log "pods still there after 60 s (forced below): $left"
fi

# 2. The components.
for name in kubelet kube-proxy coredns scheduler controller-manager; do stop "$name"; done
CTRD="$STATE/containerd"
if running containerd; then
    ctr() { timeout 30 "$BIN/ctr" --address "$CTRD/containerd.sock" -n k8s.io "$@"; }
    for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$task" >/dev/null 2>&1; done
    sleep 0.5
    for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$task" >/dev/null 2>&1; done
fi
stop containerd
# The shims outlive containerd: end those serving this node's containerd (by the socket path in
# their command line).
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD/containerd.sock" 2>/dev/null); do
    kill -9 "$pid" 2>/dev/null
done
# Processes left in the node's cgroups (a container whose shim is gone).
for procs in /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/unified/kubepods/cgroup.procs; do
    [[ -d "${procs%/cgroup.procs}" ]] || continue
    for pid in $(find "${procs%/cgroup.procs}" -name cgroup.procs -exec cat {} + 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null
    done
done
stop apiserver
stop etcd

# 3. Mounts under STATE (pod volumes, container root filesystems, network namespaces), deepest first.
for _ in 1 2 3; do
    mounts="$(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)"
    [[ -z "$mounts" ]] && break
    while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done <<<"$mounts"
done

# 4. The kubepods cgroups, deepest first, in every hierarchy.
for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d "$root/kubepods" ]] || continue
    for _ in $(seq 20); do
        find "$root/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ -d "$root/kubepods" ]] || break
        sleep 0.1
    done
    [[ -d "$root/kubepods" ]] && log "could not remove ${root}kubepods"
done

# 5. The network.
[[ -x "$BIN/kube-proxy" ]] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e 2>/dev/null; do :; done
while iptables -D FORWARD -o "$BRIDGE" ! -i "$BRIDGE" -j DROP -m comment --comment mapsentry-e2e 2>/dev/null; do :; done
# The kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and any other
# KUBE-* chain the machine did not have, with the rules jumping to them; then the tables the node
# brought into being, once empty (iptables-nft: nft tables ip/ip6 filter, nat, mangle).
for family in ip ip6; do
    tool=iptables
    [[ "$family" == ip6 ]] && tool=ip6tables
    before="$STATE/$tool.before"
    [[ -f "$before" ]] || continue
    for table in mangle nat filter; do
        "$tool" -t "$table" -S >/dev/null 2>&1 || continue
        for chain in $("$tool" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
            grep -q "^:$chain " "$before" && continue
            "$tool" -t "$table" -S 2>/dev/null | grep -- "-j $chain\( \|$\)" | grep '^-A ' \
                | while IFS= read -r rule; do
                    # (iptables -S quotes words as the shell does)
                    eval "\"\$tool\" -t \"\$table\" -D ${rule#-A }" 2>/dev/null
                done
            "$tool" -t "$table" -F "$chain" 2>/dev/null
            "$tool" -t "$table" -X "$chain" 2>/dev/null || log "could not remove $tool -t $table chain $chain"
        done
        if ! grep -q "^\*$table$" "$before" && command -v nft >/dev/null \
            && ! "$tool" -t "$table" -S 2>/dev/null | grep -qv '^-P [A-Z]* ACCEPT$'; then
            nft delete table "$family" "$table" 2>/dev/null
        fi
    done
done
ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null
ip link del "$BRIDGE" 2>/dev/null

# 6. Sysctls and directories as they were.
if [[ -f "$STATE/host.env" ]]; then
    while IFS='=' read -r key name value; do
        case "$key" in
            SYSCTL_*) sysctl -qw "$name=$value" 2>/dev/null || log "could not restore $name=$value" ;;
            CREATED)
                # The kubelet's own directories may hold mounts if a pod was left: unmount first.
                awk -v s="$name/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r \
                    | while IFS= read -r m; do umount -l "$m" 2>/dev/null; done
                rm -rf "$name"
                ;;
            SAVED)
                rm -rf "$name" && mkdir -p "$name" && tar -C "$name" -xf "$value" \
                    || log "could not restore $name from $value"
                ;;
        esac
    done <"$STATE/host.env"
fi
exit 0
