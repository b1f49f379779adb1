#!/usr/bin/env bash
# A soak run (not part of CI): the multi-process cluster of cluster.sh (a scheduler with the
# shipped policy, two registering worker processes per expert) under a steady open-loop load for
# MINUTES, with one BERT worker killed and started again halfway. Prints the load report (errors
# by status code, p50/p99, scheduler memory at the start and the end) and the scheduler's pool.
#
#   deploy/local/soak.sh [MINUTES] [RPS]        # default: 10 minutes at 500 queries/s
set -euo pipefail
cd "$(dirname "$0")/../.."

minutes=${1:-10}
rps=${2:-500}
port=${L2D_PORT:-50251}
pool=deploy/local/pool.toml
out=${L2D_SOAK_OUT:-target/soak}
cargo build --release --quiet
bin=target/release/l2d
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin" scheduler --listen "127.0.0.1:$port" --pool "$pool" --policy policies/squad-v1.1.json \
  --metrics-listen "127.0.0.1:$((port + 1))" 2> "$out/scheduler.log" &
scheduler=$!
pids+=("$scheduler")
sleep 0.5
worker() { # id port
  "$bin" expert --listen "127.0.0.1:$2" --pool "$pool" --id "$1" --register "127.0.0.1:$port" \
    > /dev/null 2>> "$out/workers.log" &
  echo $!
}
next=$((port + 10))
victim_port=
for id in lr match-lstm rnet-plus slqa-plus bert-large; do
  for _ in 1 2; do
    pid=$(worker "$id" "$next")
    pids+=("$pid")
    if [ "$id" = bert-large ] && [ -z "$victim_port" ]; then victim=$pid; victim_port=$next; fi
    next=$((next + 1))
  done
done
sleep 2

"$bin" load --router "127.0.0.1:$port" --rps "$rps" --duration "${minutes}m" --warmup 5s \
  --concurrency 256 --watch-pid "$scheduler" --json "$out/load.json" > "$out/load.txt" &
load=$!
sleep $((minutes * 30 + 5))
echo "soak: killing bert-large worker $victim (127.0.0.1:$victim_port) with SIGKILL and starting it again" >&2
kill -KILL "$victim"
sleep 1
pids+=("$(worker bert-large "$victim_port")")
wait "$load"
cat "$out/load.txt"
"$bin" pool status --router "127.0.0.1:$port"
