#!/usr/bin/env bash
# Core benchmark, loopback only: builds release, starts `armoricore serve` on a
# free port (temp data dir, random secret, JSON log to a file), then runs
#   1. idle    — N connections joined to one topic each, held idle: server RSS per
#                connection and CPU per connection-hour;
#   2. connect — a connect + JWT + join storm of N connections: connects/s, p50/p99;
# prints both results (a summary line and a JSON line each) and stops the server.
#
# Knobs (environment): CONNECTIONS (10000), PROCS (4), HOLD (20s), TIMEOUT (120s),
# RATE (unset: as fast as CONCURRENCY allows), CONCURRENCY (attempts in flight in
# total; past the server's listen backlog, server.listen_backlog = 4096, dropped
# SYNs add 1 s),
# OUT (default: a temp dir; gets server.log, idle.json, connect.json).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/armoricore-target}"
CONNECTIONS="${CONNECTIONS:-10000}"
PROCS="${PROCS:-4}"
HOLD="${HOLD:-20s}"
TIMEOUT="${TIMEOUT:-120s}"
CONCURRENCY="${CONCURRENCY:-100}"
OUT="${OUT:-$(mktemp -d -t armoricore-bench.XXXXXX)}"
mkdir -p "$OUT"

cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"

# 20,000 open files per process here: the server needs one per connection.
ulimit -n "$(ulimit -Hn)"

SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export JWT_SECRET="$SECRET"
PORT=0 ARMORICORE_SERVER__HOST=127.0.0.1 ARMORICORE_SERVER__DATA_DIR="$OUT/data" \
    "$BIN/armoricore" --log-format json serve >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
cleanup() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

ADDR=""
for _ in $(seq 300); do
    ADDR="$(grep '"message":"listening"' "$OUT/server.log" 2>/dev/null |
        grep -o '"addr":"[^"]*"' | head -n1 | cut -d'"' -f4 || true)"
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; echo "server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not log 'listening' in 30 s" >&2; exit 1; }
URL="ws://$ADDR/socket/websocket"
echo "server pid $SERVER_PID on $URL (log: $OUT/server.log)"

RATE_ARGS=()
[ -n "${RATE:-}" ] && RATE_ARGS=(--rate "$RATE")
COMMON=(--url "$URL" --connections "$CONNECTIONS" --procs "$PROCS" --topics-per-conn 1
    --concurrency "$CONCURRENCY" --server-pid "$SERVER_PID" --timeout "$TIMEOUT" --json
    "${RATE_ARGS[@]}")

echo "== idle: $CONNECTIONS connections x 1 topic, $PROCS procs, hold $HOLD"
"$BIN/armoricore-bench" idle "${COMMON[@]}" --hold "$HOLD" | tee "$OUT/idle.txt"
tail -n1 "$OUT/idle.txt" >"$OUT/idle.json"

# Let the server settle (sessions end, presences leave) before the storm.
sleep 3
echo "== connect: $CONNECTIONS connections, $PROCS procs, concurrency $CONCURRENCY${RATE:+, rate $RATE/s}"
"$BIN/armoricore-bench" connect "${COMMON[@]}" | tee "$OUT/connect.txt"
tail -n1 "$OUT/connect.txt" >"$OUT/connect.json"

echo "results in $OUT"
