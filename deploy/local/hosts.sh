#!/usr/bin/env bash
# The Kubernetes topology on one machine, with a network between the nodes: every process in its
# own network namespace ("host") with a private address on one bridge, and a DNS server
# (dnsmasq) answering each expert's Service name (l2d-expert-<id>) with its replicas' addresses,
# as a headless Service does. The scheduler serves the shipped policy and finds the experts by
# DNS, as in deploy/k8s. Needs root, iproute2, nftables and dnsmasq (Debian: iproute2 nftables
# dnsmasq-base). Only the namespaces this script makes carry traffic; Ctrl-C (or any exit)
# stops every process and deletes them.
#
#   sudo deploy/local/hosts.sh                       # one replica per expert
#   sudo L2D_REPLICAS=2 deploy/local/hosts.sh
#
# Then, while it runs, from another terminal (the client host):
#   sudo ip netns exec l2dh-client target/release/l2d ask --router 10.78.0.3:50051 \
#        --data data/squad-v1.1/dev.json --id 56be4db0acb8001400a502ec
#   sudo ip netns exec l2dh-client target/release/l2d pool status --router 10.78.0.3:50051
# and to cut a replica's host off (packets dropped, no reset), then let it back:
#   sudo ip netns exec l2dh-bert-large-1 nft add table inet cut
#   sudo ip netns exec l2dh-bert-large-1 nft add chain inet cut in '{ type filter hook input priority 0; policy drop; }'
#   sudo ip netns exec l2dh-bert-large-1 nft delete table inet cut
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

for tool in ip nft dnsmasq; do
  command -v "$tool" >/dev/null || { echo "hosts.sh: $tool is needed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "hosts.sh: run as root (network namespaces)" >&2; exit 1; }
replicas=${L2D_REPLICAS:-1}
bin=${L2D_BIN:-target/release/l2d}
[ -x "$bin" ] || cargo build --release --quiet
subnet=10.78.0
prefix=l2dh
work=$(mktemp -d)
chmod 755 "$work"   # dnsmasq reads its hosts file as nobody
hosts_made=()

cleanup() {
  for ns in "${hosts_made[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
  done
  sleep 3   # the workers drain (--drain-delay 2s), then what is left is killed
  for ns in "${hosts_made[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$prefix-sw"
hosts_made+=("$prefix-sw")
ip -n "$prefix-sw" link add br0 type bridge
ip -n "$prefix-sw" link set br0 up
next=2
# host NAME: a namespace on the bridge; prints its address.
host() {
  local ns="$prefix-$1" address="$subnet.$next"
  ip netns add "$ns"
  hosts_made+=("$ns")
  ip -n "$prefix-sw" link add "v$next" type veth peer name eth0 netns "$ns"
  ip -n "$prefix-sw" link set "v$next" master br0 up
  ip -n "$ns" addr add "$address/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  mkdir -p "/etc/netns/$ns"
  echo "nameserver $subnet.2" > "/etc/netns/$ns/resolv.conf"
  next=$((next + 1))
}

host dns
host scheduler
host client

# The default pool, each expert placed by its Service name, as in deploy/k8s.
ids=$(awk -F'"' '/^id = /{print $2}' pools/squad-v1.1.toml)
sed "s#\"\.\./data#\"$root/data#" pools/squad-v1.1.toml > "$work/pool.toml"
awk -v ids="$ids" '
  /^\[\[expert\]\]/ && seen { print "dns = \"l2d-expert-" id ":50061\""; print "" }
  /^id = / { split($0, a, "\""); id = a[2]; seen = 1 }
  { print }
  END { if (seen) print "dns = \"l2d-expert-" id ":50061\"" }
' "$work/pool.toml" > "$work/pool.dns.toml"
: > "$work/hosts"
for id in $ids; do
  for r in $(seq 1 "$replicas"); do
    host "$id-$r"
    echo "$subnet.$((next - 1)) l2d-expert-$id" >> "$work/hosts"
    ip netns exec "$prefix-$id-$r" "$bin" expert --pool "$work/pool.dns.toml" --id "$id" \
      --listen 0.0.0.0:50061 --drain-delay 2s 2> "$work/$id-$r.log" &
  done
done
ip netns exec "$prefix-dns" dnsmasq --keep-in-foreground --log-facility=- --no-resolv --no-hosts --bind-interfaces \
  --local-ttl=0 --listen-address="$subnet.2" --addn-hosts="$work/hosts" 2> "$work/dnsmasq.log" &
sleep 2
ip netns exec "$prefix-scheduler" "$bin" scheduler --listen 0.0.0.0:50051 --pool "$work/pool.dns.toml" \
  --policy policies/squad-v1.1.json --registration off --dns-interval 1s --health-interval 1s \
  --try-timeout 1s --metrics-listen 0.0.0.0:9464 &
echo "hosts.sh: scheduler at $subnet.3:50051 (metrics :9464), client host $prefix-client; DNS names in $work/hosts; Ctrl-C stops" >&2
wait
