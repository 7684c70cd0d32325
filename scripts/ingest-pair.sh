#!/usr/bin/env bash
# Compares the collector's ingest between two builds, one setup at a time, in pairs of
# single-round runs (order ABBA, so a machine that speeds up or slows down favours neither):
#   scripts/ingest-pair.sh BASE_BENCH NEW_BENCH [PAIRS] [SETUP...]
# BASE_BENCH and NEW_BENCH are built ingest benchmarks, e.g. for a commit REV:
#   git worktree add /tmp/rev REV && (cd /tmp/rev && cargo bench -p mapsentry-collector --bench ingest --no-run)
#   (the path it prints: target/release/deps/ingest-*)
# SETUP names a row of the benchmark's table (default: the two multi-thread rows). Prints each
# run's events per collector CPU-second, then per setup the median of NEW/BASE over the pairs
# and in how many pairs NEW was ahead. BENCH_EVENTS (default here 4,000,000) and BENCH_AGENTS
# pass through.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,11p "$0" >&2; exit 2; }
base=$1 new=$2 pairs=${3:-10}
shift $(($# < 3 ? $# : 3))
setups=("$@")
[ ${#setups[@]} -gt 0 ] || setups=("multi-thread (now), in memory" "multi-thread (now), retention log")
for bin in "$base" "$new"; do
    [ -x "$bin" ] || { echo "ingest-pair.sh: $bin is not an executable benchmark" >&2; exit 2; }
done
export BENCH_EVENTS=${BENCH_EVENTS:-4000000} BENCH_ROUNDS=1
# Builds with BENCH_SETUPS run only the rows asked for; older ones run all four and are read
# by label all the same.
BENCH_SETUPS=$(IFS=";"; echo "${setups[*]}")
export BENCH_SETUPS
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for i in $(seq "$pairs"); do
    order=("base" "new")
    [ $((i % 2)) = 1 ] || order=("new" "base")
    for which in "${order[@]}"; do
        bin=$base
        [ "$which" = new ] && bin=$new
        out=$("$bin" --bench ingest ingest 2>&1)
        for setup in "${setups[@]}"; do
            # | label | wall clock | per CPU-second ("1.23M events") | cores |
            rate=$(awk -F'|' -v s="$setup" '$2 == " " s " " { split($4, f, " "); sub(/M/, "", f[1]); print f[1] }' <<<"$out")
            [ -n "$rate" ] || { echo "ingest-pair.sh: no row \"$setup\" in $bin's output:" >&2; echo "$out" >&2; exit 1; }
            printf '%s\t%s\t%s\t%s\n' "$i" "$which" "$setup" "$rate" | tee -a "$results"
        done
    done
done
python3 - "$results" "${setups[@]}" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
for setup in sys.argv[2:]:
    runs = {}
    for pair, which, s, rate in rows:
        if s == setup:
            runs.setdefault(pair, {})[which] = float(rate)
    ratios = [r["new"] / r["base"] for r in runs.values()]
    base = statistics.median(r["base"] for r in runs.values())
    new = statistics.median(r["new"] for r in runs.values())
    ahead = sum(x > 1 for x in ratios)
    print(f"| {setup} | {base:.2f}M | {new:.2f}M | {statistics.median(ratios):.2f}x | {ahead} of {len(ratios)} |")
PY
