#!/usr/bin/env bash
# A multi-process l2d cluster on loopback, mirroring the production topology: one scheduler
# process, and one worker process per expert of the default pool that joins the scheduler's pool
# by registration (lease + heartbeats). Ctrl-C stops everything (workers leave the pool first).
#
#   deploy/local/cluster.sh            # scheduler on 127.0.0.1:50051
#   L2D_PORT=6000 deploy/local/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

port=${L2D_PORT:-50051}
cargo build --release --quiet
bin=target/release/l2d
data=data/squad-v1.1
workers=()
scheduler=
cleanup() {
  # Workers first, so they leave the pool while the scheduler still listens.
  for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$scheduler" ] && kill -TERM "$scheduler" 2>/dev/null || true
  wait
}
trap cleanup EXIT INT TERM

"$bin" scheduler --listen "127.0.0.1:$port" --pool deploy/local/pool.toml &
scheduler=$!
sleep 0.5

next=$((port + 10))
while read -r id cost file; do
  "$bin" expert --listen "127.0.0.1:$next" --id "$id" --backend replay \
    --predictions "$data/predictions/$file" --data "$data/dev.json" --cost "$cost" \
    --register "127.0.0.1:$port" &
  workers+=($!)
  next=$((next + 1))
done <<'POOL'
lr 1 logistic-regression.json
match-lstm 5 match-lstm-ensemble.json
rnet-plus 20 rnet-plus-ensemble.json
slqa-plus 25 slqa-plus-ensemble.json
bert-large 100 bert-large-ensemble.json
POOL

echo "l2d: cluster up; try: $bin pool status --router 127.0.0.1:$port" >&2
wait
