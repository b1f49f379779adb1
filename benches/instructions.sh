#!/usr/bin/env bash
# Instructions per request of one gRPC hop, counted by callgrind: the bare forwarding proxy,
# the scheduler with the prior policy and the scheduler with a learned route policy, each
# forwarding to bert-large of the default pool (the servers `l2d bench` measures by time).
#
# Only the server under test runs under callgrind, and only while the counted requests are
# sent; the experts and the load generator run natively in their own processes. A count is
# user-space instructions (the kernel's TCP path is not in it): it does not move with the
# machine's load, so two runs of the same binary agree within about 0.5%, where times on a
# shared machine move by tens of percent. It is not a time: a cache miss or a system call counts as
# little as one instruction.
#
# Usage: benches/instructions.sh [L2D_BINARY] [REQUESTS] [CONCURRENCY]
#   defaults: target/release/l2d, 1000 requests, one call in flight.
#   KEEP=DIR copies each server's callgrind profile to DIR/ROLE.cg (for callgrind_annotate).
#   CACHE=1 also simulates the caches (callgrind --cache-sim=yes, the machine's L1 and last-level
#   sizes) and prints first-level instruction and data cache misses per request. They too leave
#   out the kernel and the other processes, which evict the server's lines in a real run.
# Needs valgrind (apt-get install valgrind) and python3.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# A binary given is found from where the script is run; the default is the repository's.
l2d=$(realpath -m "${1:-$repo/target/release/l2d}")
requests=${2:-1000}
concurrency=${3:-1}
for tool in valgrind callgrind_control python3; do
    command -v "$tool" > /dev/null || { echo "$tool is not installed (valgrind: apt-get install valgrind)" >&2; exit 1; }
done
[ -x "$l2d" ] || { echo "no l2d binary at $l2d (cargo build --release first)" >&2; exit 1; }
cd "$repo"

# shellcheck source=benches/nodes.sh
source benches/nodes.sh
train_route_policy "$l2d"

start_node "$work/experts" "$l2d" bench-node experts
bert=$(awk '$1 == "bert-large" {print $2}' "$work/experts")

declare -A args=(
    [proxy]="proxy --upstream $bert"
    [prior]="scheduler --experts bert-large=$bert"
    [route]="scheduler --experts bert-large=$bert --policy $work/route.json"
)
declare -A count i1 d1
cache_sim=()
[ -n "${CACHE:-}" ] && cache_sim=(--cache-sim=yes)
for role in proxy prior route; do
    node="$work/$role"
    # shellcheck disable=SC2086
    start_node "$node" valgrind --tool=callgrind "${cache_sim[@]}" --instr-atstart=no \
        --callgrind-out-file="$node.cg" "$l2d" bench-node ${args[$role]}
    address=$(awk '$1 == "listening" {print $2}' "$node")
    pid=$node_pid
    load() {
        "$l2d" load --router "$address" --limit "$1" --concurrency "$concurrency" \
            --warmup 0s --duration 1h --json "$node.load.json" > "$node.load.out" 2>&1 ||
            { cat "$node.load.out" >&2; exit 1; }
    }
    load 200 # connections opened, caches and the context cache warm
    callgrind_control -i on "$pid" > "$node.control" 2>&1 || { cat "$node.control" >&2; exit 1; }
    load "$requests"
    callgrind_control -i off "$pid" > "$node.control" 2>&1 || { cat "$node.control" >&2; exit 1; }
    callgrind_control -d "$pid" > "$node.control" 2>&1 || { cat "$node.control" >&2; exit 1; }
    errors=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['errors'])" "$node.load.json")
    [ "$errors" = 0 ] || { echo "$role: $errors errors" >&2; exit 1; }
    exec {node_pipe}>&-
    wait "$pid" || true
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cat "$node".cg* > "$KEEP/$role.cg"
    fi
    # Per request: instructions, and with --cache-sim (totals Ir Dr Dw I1mr D1mr D1mw ...) the
    # first-level instruction and data cache misses.
    read -r count[$role] i1[$role] d1[$role] < <(cat "$node".cg* | awk -v n="$requests" \
        '/^totals:/ {ir += $2; i1 += $5; d1 += $6 + $7} END {print int(ir / n), int(i1 / n), int(d1 / n)}')
done

header=$(printf '%-40s %14s %10s' "server ($requests requests, $concurrency in flight)" "instr/request" "/ proxy")
[ -n "${CACHE:-}" ] && header+=$(printf ' %12s %10s %12s %10s' "L1i misses" "/ proxy" "L1d misses" "/ proxy")
echo "$header"
for role in proxy prior route; do
    line=$(awk -v role="$role" -v n="${count[$role]}" -v base="${count[proxy]}" \
        'BEGIN { printf "%-40s %14d %10.3f", role, n, n / base }')
    [ -n "${CACHE:-}" ] && line+=$(awk -v i="${i1[$role]}" -v ib="${i1[proxy]}" \
        -v d="${d1[$role]}" -v db="${d1[proxy]}" \
        'BEGIN { printf " %12d %10.3f %12d %10.3f", i, i / ib, d, d / db }')
    echo "$line"
done
