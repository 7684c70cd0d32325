#!/usr/bin/env bash
# What tracepoint mode's hooks cost an unrelated system call (getppid), hook by hook, against
# bpftrace's floor (a counter on the per-syscall tracepoint) in the same run:
#   sudo bench/dispatch/run.sh [ROUNDS]
# Each round runs every variant once, in a rotated order; the table gives medians of the thread
# CPU time per getppid. Needs clang, libbpf-dev, bpftrace and tracefs (installed/mounted here).
set -euo pipefail
cd "$(dirname "$0")"
rounds=${1:-9}
out=../../target/dispatch
mkdir -p "$out"
for p in clang libbpf-dev bpftrace gcc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing ||
    { echo "dispatch: the per-syscall tracepoints need tracefs at /sys/kernel/tracing" >&2; exit 1; }
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I../../ebpf/include -c dispatch.bpf.c -o "$out/dispatch.bpf.o"
gcc -O2 -Wall -o "$out/loader" loader.c -lbpf
gcc -O2 -Wall -o "$out/getppid" getppid.c

names=(bare per-call-enter per-call-enter+exit generic-enter generic-enter+exit bpftrace-floor)
declare -A programs=(
    [per-call-enter]="per_call_enter"
    [per-call-enter+exit]="per_call_enter per_call_exit"
    [generic-enter]="generic_enter"
    [generic-enter+exit]="generic_enter generic_exit"
)
measure() { # NAME -> ns per getppid
    local name=$1 log="$out/hook.log" pid
    : >"$log"
    case $name in
    bare) "$out/getppid" 3000000; return ;;
    bpftrace-floor) bpftrace -e 'tracepoint:syscalls:sys_enter_mmap { @calls = count(); }' >"$log" 2>&1 & ;;
    *) # shellcheck disable=SC2086
       "$out/loader" "$out/dispatch.bpf.o" ${programs[$name]} >"$log" 2>&1 & ;;
    esac
    pid=$!
    for _ in $(seq 200); do grep -qE '^(attached|Attaching)' "$log" && break; sleep 0.05; done
    grep -qE '^(attached|Attaching)' "$log" || { echo "dispatch: $name did not attach: $(cat "$log")" >&2; kill "$pid"; exit 1; }
    "$out/getppid" 3000000
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}
declare -A samples
for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < ${#names[@]}; k++)); do
        name=${names[$(((r + k) % ${#names[@]}))]}
        samples[$name]+="$(measure "$name") "
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
bare=$(echo "${samples[bare]}" | median)
floor=$(echo "${samples[bpftrace-floor]}" | median)
echo "Kernel $(uname -r), $(nproc) cores, $rounds rounds; getppid CPU ns per call, medians"
echo
echo "| hooks attached | getppid ns | ratio to bare | minus bpftrace's floor |"
echo "|---|---:|---:|---:|"
for name in "${names[@]}"; do
    m=$(echo "${samples[$name]}" | median)
    awk -v n="$name" -v m="$m" -v b="$bare" -v f="$floor" \
        'BEGIN {printf "| %s | %.1f | %.2fx | %+.1f ns |\n", n, m, m / b, m - f}'
done
