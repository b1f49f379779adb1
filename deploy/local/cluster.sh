#!/usr/bin/env bash
# A multi-process l2d cluster on loopback, mirroring the Kubernetes topology (deploy/k8s): one
# scheduler process with the shipped policy and Prometheus metrics, and separate worker processes
# for every expert of the default pool (L2D_REPLICAS each), which read their entry from the same
# pool file and join the scheduler's pool by registration (lease + heartbeats) where Kubernetes
# uses a headless Service. Ctrl-C stops everything (workers leave the pool first).
#
#   deploy/local/cluster.sh                          # scheduler on 127.0.0.1:50051
#   L2D_PORT=6000 L2D_REPLICAS=2 deploy/local/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

port=${L2D_PORT:-50051}
replicas=${L2D_REPLICAS:-1}
pool=deploy/local/pool.toml
cargo build --release --quiet
bin=target/release/l2d
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

"$bin" scheduler --listen "127.0.0.1:$port" --pool "$pool" --policy policies/squad-v1.1.json \
  --metrics-listen "127.0.0.1:$((port + 1))" &
scheduler=$!
sleep 0.5

next=$((port + 10))
for id in lr match-lstm rnet-plus slqa-plus bert-large typed; do
  for _ in $(seq "$replicas"); do
    "$bin" expert --listen "127.0.0.1:$next" --pool "$pool" --id "$id" \
      --register "127.0.0.1:$port" &
    workers+=($!)
    next=$((next + 1))
  done
done

echo "l2d: cluster up; try: $bin pool status --router 127.0.0.1:$port" >&2
echo "l2d: metrics at http://127.0.0.1:$((port + 1))/metrics" >&2
wait
