#!/usr/bin/env bash
# Server CPU time per request of two builds of l2d, side by side: the bare forwarding proxy and
# the scheduler with a learned route policy of each build, every server in its own process,
# each forwarding to bert-large of the default pool, saturated (32 calls in flight). Rounds
# interleave the four servers, the order reversed every other round, so that the machine's
# drift falls on all of them. CPU is the server process's user + system time (/proc/PID/stat)
# over the measured calls.
#
# Usage: benches/cpu-per-request.sh BUILD_A BUILD_B [ROUNDS] [REQUESTS]
#   defaults: 6 rounds of 30,000 requests per server, after 2,000 not measured.
#   e.g. benches/cpu-per-request.sh target/release/l2d target/dist/l2d
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { sed -n 2,11p "$0" >&2; exit 1; }
a=$(realpath -m "$1")
b=$(realpath -m "$2")
rounds=${3:-6}
requests=${4:-30000}
for l2d in "$a" "$b"; do
    [ -x "$l2d" ] || { echo "no l2d binary at $l2d" >&2; exit 1; }
done
cd "$repo"

# shellcheck source=benches/nodes.sh
source benches/nodes.sh
train_route_policy "$a"

declare -A pid address
# Starts `l2d bench-node ARGS` as NAME and notes its process and listening address.
node() {
    local name=$1
    shift
    start_node "$work/$name" "$@"
    pid[$name]=$node_pid
    address[$name]=$(awk '$1 == "listening" {print $2}' "$work/$name")
}

node experts "$a" bench-node experts
bert=$(awk '$1 == "bert-large" {print $2}' "$work/experts")
for build in a b; do
    l2d=${!build}
    node "proxy-$build" "$l2d" bench-node proxy --upstream "$bert"
    node "route-$build" "$l2d" bench-node scheduler --experts "bert-large=$bert" \
        --policy "$work/route.json"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf '%-6s %-8s %10s %18s\n' round server "req/s" "CPU µs/request"
for r in $(seq "$rounds"); do
    order=(proxy-a route-a proxy-b route-b)
    [ $((r % 2)) = 0 ] && order=(route-b proxy-b route-a proxy-a)
    for node in "${order[@]}"; do
        "$a" load --router "${address[$node]}" --limit 2000 --concurrency 32 --warmup 0s \
            --duration 1h > /dev/null 2>&1
        before=$(cpu_ticks "${pid[$node]}")
        "$a" load --router "${address[$node]}" --limit "$requests" --concurrency 32 --warmup 0s \
            --duration 1h --json "$work/$node.json" > "$work/$node.load" 2>&1 ||
            { cat "$work/$node.load" >&2; exit 1; }
        after=$(cpu_ticks "${pid[$node]}")
        python3 - "$work/$node.json" "$r" "$node" "$before" "$after" <<'PY'
import json, os, sys
path, r, node, before, after = sys.argv[1:]
report = json.load(open(path))
if report["errors"]:
    sys.exit(f"{node}: {report['errors']} errors")
cpu_us = (int(after) - int(before)) / os.sysconf("SC_CLK_TCK") * 1e6
print(f"{r:<6} {node:<8} {report['goodput_rps']:10.0f} {cpu_us / report['count']:18.1f}")
PY
    done
done
