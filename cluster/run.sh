#!/usr/bin/env bash
# Run an Armoricore cluster on this machine: N nodes (default 3) on 127.0.0.1
# ports 4001.., a redis-server (unless REDIS_URL is set) and HAProxy on :4000 in
# front of them, health-checked on /ready. Ctrl-C stops everything.
#
# Usage: cluster/run.sh [N]
#   LB_PORT=4000 NODE_PORT=4001 JWT_SECRET=... ARMORICORE_API__KEY=... cluster/run.sh 3
# Watch: http://127.0.0.1:4000/ready, each node's /metrics (cluster/prometheus.yml
# scrapes them): armoricore_cluster_nodes, armoricore_redis_connected,
# armoricore_redis_roundtrip_seconds, armoricore_presences, armoricore_connections.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
n="${1:-3}"
lb_port="${LB_PORT:-4000}"
first="${NODE_PORT:-4001}"
export JWT_SECRET="${JWT_SECRET:-cluster-dev-secret-change-me}"
export ARMORICORE_API__KEY="${ARMORICORE_API__KEY:-cluster-dev-api-key}"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/armoricore-target ]; then
  export CARGO_TARGET_DIR=/var/tmp/armoricore-target
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
command -v haproxy >/dev/null || { echo "cluster/run.sh: haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
cargo build --release --bin armoricore >&2
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

if [ -z "${REDIS_URL:-}" ]; then
  redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$redis_port"
fi

servers=""
for i in $(seq 1 "$n"); do
  port=$((first + i - 1))
  mkdir -p "$work/node$i"
  PORT=$port ARMORICORE_SERVER__HOST=127.0.0.1 ARMORICORE_SERVER__DATA_DIR="$work/node$i" \
    ARMORICORE_CLUSTER__NODE_NAME="node$i" \
    "$target/release/armoricore" serve >"$work/node$i.log" 2>&1 &
  pids+=($!)
  servers+="    server node$i 127.0.0.1:$port check\n"
done
sed -e "s|\${LB_BIND}|127.0.0.1:$lb_port|" -e "s|    # SERVERS|$servers|" cluster/haproxy.cfg >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)

echo "redis:   $REDIS_URL"
echo "nodes:   $(for i in $(seq 1 "$n"); do printf '127.0.0.1:%s ' $((first + i - 1)); done)(logs in $work)"
echo "balancer: ws://127.0.0.1:$lb_port/socket/websocket   (HAProxy, health check GET /ready)"
echo "token:   $target/release/armoricore token --sub alice   (JWT_SECRET=$JWT_SECRET)"
echo "Ctrl-C stops the cluster."
wait
